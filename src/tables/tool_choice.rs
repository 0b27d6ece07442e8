// The tool-choice table (read by src/tools/mod.rs, src/ffi/tools.rs and build.rs; see
// src/c_enum.rs).
c_enum! {
    /// Which [`ToolChoice`] a request makes, without the tool's name.
    pub enum ToolChoiceKind;
    /// Whether and which tools the model must call, for maze_generate_params.tool_choice.
    c enum maze_tool_choice;
    /// The model answers in text or calls tools, as it decides (default).
    Auto = 0 => "auto",
    /// The tools are shown to the model but it answers in text.
    None = 1 => "none",
    /// The reply is one or more calls and nothing else.
    Required = 2 => "required",
    /// The reply is exactly one call of the tool named by tool_choice_name.
    Named = 3 => "named",
}
