// The remote-protocol table (read by src/backend/remote/config.rs, src/ffi/engine.rs and
// build.rs; see src/c_enum.rs).
c_enum! {
    /// Which API the server speaks.
    pub enum Protocol;
    /// Which API a remote server speaks (maze_engine_params.protocol).
    c enum maze_protocol;
    /// OpenAI-compatible: /v1/chat/completions, /v1/completions (vLLM, SGLang, llama.cpp server).
    OpenAi = 0 => "openai",
    /// Maze's own protocol, served by maze-server: every constraint kind, with validation.
    Maze = 1 => "maze",
}
