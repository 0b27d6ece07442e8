//! One error type for the whole crate: a kind (mapped 1:1 to a C status code by the FFI layer)
//! and a message that names the offending input.

use std::fmt;

/// What went wrong, coarse enough to act on. The FFI layer maps each kind to a `maze_status`;
/// the HTTP protocols carry it by its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A parameter is out of range or inconsistent with another.
    InvalidArgument,
    /// Text input is not valid UTF-8.
    InvalidUtf8,
    /// Reading a file failed (missing, unreadable).
    Io,
    /// The file is not a usable model (not GGUF, truncated, missing tensors or metadata).
    ModelFormat,
    /// The model or request uses something this build does not support.
    Unsupported,
    /// Tokenizer construction or encoding failed.
    Tokenizer,
    /// The chat template is missing or failed to render.
    Template,
    /// The prompt does not fit in the context window.
    ContextOverflow,
    /// The session is already generating.
    Busy,
    /// The operation was cancelled (e.g. loading aborted by the progress callback).
    Cancelled,
    /// A caller-provided buffer is too small; the needed size was reported.
    BufferTooSmall,
    /// The model computation failed.
    Backend,
    /// A constraint is malformed or unsupported (bad schema, regex, grammar, token id).
    InvalidConstraint,
    /// An internal invariant broke; a bug.
    Internal,
    /// A panic was caught at a boundary; a bug.
    Panic,
}

/// The crate's error: a kind and a human-readable message naming the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// A load aborted because the progress callback returned false.
    pub fn load_cancelled() -> Self {
        Self::new(ErrorKind::Cancelled, "model loading was cancelled by the progress callback")
    }

    pub fn model_format(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ModelFormat, message)
    }

    pub fn backend(err: candle_core::Error) -> Self {
        Self::new(ErrorKind::Backend, format!("model computation failed: {}", candle_message(&err)))
    }

    /// Turns a caught panic payload into an error that keeps the panic message.
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic payload".to_string());
        Self::new(ErrorKind::Panic, format!("internal panic caught: {what}"))
    }
}

/// A candle error's message without the backtrace candle may attach (users get a sentence, not
/// a stack dump).
pub fn candle_message(err: &candle_core::Error) -> String {
    match err {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        candle_core::Error::Context { inner, context } => format!("{context}: {}", candle_message(inner)),
        other => other.to_string(),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
