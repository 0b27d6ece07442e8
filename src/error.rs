//! One error type for the whole crate: a kind (each is also a C status code, see
//! src/tables/status.rs) and a message that names the offending input.

use std::fmt;

use crate::c_enum::rust_side as c_enum;
include!("tables/status.rs");

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
