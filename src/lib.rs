//! Maze: an embeddable LLM inference engine with a C ABI.
//!
//! The Rust API is the same engine the C ABI wraps:
//!
//! ```no_run
//! use maze::{Engine, EngineConfig, GenerateOptions, Prompt, ChatMessage};
//! let engine = Engine::load(&EngineConfig { model_path: "model.gguf".into(), ..Default::default() }, None)?;
//! let session = engine.new_session();
//! let result = session.generate_streaming(
//!     &Prompt::Chat(vec![ChatMessage::new("user", "Say hi")]),
//!     &GenerateOptions::default(),
//!     |text| { print!("{text}"); true },
//! )?;
//! println!("\n[{}]", result.finish_reason.as_str());
//! # Ok::<(), maze::Error>(())
//! ```

pub mod backend;
mod c_enum;
pub mod constraint;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod kernels;
pub mod model;
pub mod protocol;
pub mod result;
pub mod sampling;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing;
pub mod tools;

pub use constraint::{
    Constraint, ConstraintKind, ConstraintOutcome, ConstraintReport, ConstraintTag, JsonSchemaOptions,
};
pub use engine::{
    CancelToken, ComputeDevice, Engine, EngineConfig, EngineSpec, GenerateOptions, Prompt, Session,
    DEFAULT_PREFIX_CACHE_BYTES,
};
pub use error::{Error, ErrorKind, Result};
pub use model::chat::ChatMessage;
pub use result::{FinishReason, GenerationResult, GenerationStats};
pub use sampling::SamplingParams;
pub use tools::{Tool, ToolCall, ToolChoice, ToolFormat, ToolUse};

/// The library version, e.g. "0.1.0".
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
