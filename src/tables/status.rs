// The status table (read by src/error.rs, src/ffi/mod.rs and build.rs; see src/c_enum.rs).
c_enum! {
    /// What went wrong, coarse enough to act on. The FFI reports each kind as the `maze_status`
    /// of the same name; the HTTP protocols carry it by its name.
    pub enum ErrorKind;
    /// Result of every fallible call. 0 is success.
    c enum maze_status {
        /// Success.
        Ok = 0 => "ok",
        /// A required pointer argument was NULL.
        NullArgument = 1 => "null_argument",
        /// A parameter struct comes from a newer ABI than this library (struct_size too large).
        AbiMismatch = 14 => "abi_mismatch",
    };
    /// An argument is out of range or inconsistent.
    InvalidArgument = 2 => "invalid_argument",
    /// A string argument is not valid UTF-8.
    InvalidUtf8 = 3 => "invalid_utf8",
    /// A file could not be opened or read.
    Io = 4 => "io",
    /// The model file is not a usable GGUF model (not GGUF, truncated, missing data).
    ModelFormat = 5 => "model_format",
    /// The model or request needs something this build does not support.
    Unsupported = 6 => "unsupported",
    /// Tokenizer construction or tokenization failed.
    Tokenizer = 7 => "tokenizer",
    /// The chat template is missing or failed to render.
    Template = 8 => "template",
    /// The prompt does not fit in the context window.
    ContextOverflow = 9 => "context_overflow",
    /// The session is already generating.
    Busy = 10 => "busy",
    /// The operation was cancelled (e.g. loading aborted by the progress callback).
    Cancelled = 11 => "cancelled",
    /// A caller-provided buffer is too small; the needed size was written.
    BufferTooSmall = 12 => "buffer_too_small",
    /// The model computation failed.
    Backend = 13 => "backend",
    /// An internal invariant broke (a bug; please report).
    Internal = 15 => "internal",
    /// A panic was caught at the ABI boundary (a bug; please report). The library stays usable.
    Panic = 16 => "panic",
    /// A constraint is malformed or unsupported: bad JSON schema, regex, grammar or token id.
    /// The message names the constraint and the offending part.
    InvalidConstraint = 17 => "invalid_constraint",
}
