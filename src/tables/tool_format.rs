// The tool-call format table (read by src/tools/format.rs, src/ffi/tools.rs and build.rs; see
// src/c_enum.rs). The names are the JSON form's `format` values and maze-server's
// --tool-format values.
c_enum! {
    /// A family's tool-call syntax (see [`ToolFormat::syntax`]).
    pub enum ToolFormat;
    /// How tool calls are written, for maze_generate_params.tool_format.
    c enum maze_tool_format {
        /// The chat template's own format; refused (MAZE_STATUS_UNSUPPORTED) when the template
        /// cannot render tools: choose MAZE_TOOL_FORMAT_GENERIC for such a model.
        Template = 0 => "template",
    };
    /// Qwen2.5, Qwen3, Hermes 2/3: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`.
    Hermes = 1 => "hermes",
    /// Llama 3.1-3.3: the reply is one JSON object `{"name": ..., "parameters": {...}}`.
    Llama3 = 2 => "llama3",
    /// Mistral Nemo / Small: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`.
    Mistral = 3 => "mistral",
    /// Any template: the tools described in a system message, calls written as Hermes writes
    /// them, tool results sent back in a user turn (docs/TOOLS.md).
    Generic = 4 => "generic",
}
