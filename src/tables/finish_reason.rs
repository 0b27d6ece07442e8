// The finish-reason table (read by src/result.rs, src/ffi/result.rs and build.rs; see
// src/c_enum.rs).
c_enum! {
    /// Why a generation ended.
    pub enum FinishReason;
    /// How a generation ended.
    c enum maze_finish_reason;
    /// The model produced an end-of-generation token.
    Stop = 0 => "stop",
    /// max_tokens was reached or the context is full.
    Length = 1 => "length",
    /// A stop sequence appeared (it is not part of the text).
    StopSequence = 2 => "stop_sequence",
    /// Cancelled by the caller: maze_session_cancel, or the stream callback returned false.
    Cancelled = 3 => "cancelled",
    /// The request's timeout (params.timeout_ms) passed.
    Timeout = 4 => "timeout",
    /// The computation failed midway; the result holds the error (maze_result_error_status).
    Error = 5 => "error",
    /// The reply is tool calls (maze_result_tool_call_count), complete: the model ended them.
    ToolCalls = 6 => "tool_calls",
}
