//! What an engine can be: the interface every backend implements once, so that
//! [`crate::Engine`] and [`crate::Session`] (and through them the C ABI and the server) never
//! ask which one runs. Backends: the local engine ([`crate::engine::LocalEngine`], adapted in
//! `local`) and a remote inference server reached over HTTP ([`remote`]).
//!
//! A capability a backend lacks (a remote engine has no tokenizer or constraint cache here) is
//! refused with [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported), or reads as the
//! neutral value the method documents.

mod local;
pub mod remote;

use std::any::Any;

use crate::constraint::{CacheStats, Constraint};
use crate::engine::{GenerateOptions, Prompt};
use crate::error::Result;
use crate::model::chat::ChatMessage;
use crate::model::ModelInfo;
use crate::result::GenerationResult;
use crate::tools::StreamEvent;

/// A loaded model or a connection to one. Thread-safe: every method may run on any number of
/// threads at once.
pub trait EngineBackend: Any + Send + Sync {
    /// What the engine serves; a remote engine names the server's model, architecture
    /// "remote", and 0 for the sizes it does not know.
    fn info(&self) -> &ModelInfo;

    /// Whether chat prompts work (a remote server applies its own template: true).
    fn has_chat_template(&self) -> bool;

    fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>>;

    /// The exact bytes the ids stand for (UTF-8 unless they end inside a character).
    fn detokenize(&self, tokens: &[u32]) -> Result<Vec<u8>>;

    fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String>;

    /// `None` when the model declares none or the tokens are the server's.
    fn eos_token(&self) -> Option<u32>;

    /// False when the tokens are the server's.
    fn is_end_of_generation(&self, token: u32) -> bool;

    /// Reports a bad constraint before any generation: compiled here (and cached) when the
    /// engine enforces constraints itself, its compiled form kept while the returned value
    /// lives; a server checks its own (`None`).
    fn check_constraint(&self, constraint: &Constraint) -> Result<Option<crate::engine::HeldConstraint>>;

    fn constraint_cache_stats(&self) -> Result<CacheStats>;

    fn clear_constraint_cache(&self) -> Result<()>;

    fn set_constraint_cache_limit(&self, limit: usize) -> Result<()>;

    /// Whether the engine can serve; a server is asked.
    fn health(&self) -> Result<()>;

    /// The names of the models the engine serves.
    fn list_models(&self) -> Result<Vec<String>>;

    /// The log-probability of each token after the ones before it (see
    /// [`crate::engine::LocalEngine::score`]).
    fn score(&self, tokens: &[u32]) -> Result<Vec<f32>>;

    fn new_session(&self) -> Box<dyn SessionBackend>;
}

/// One conversation on a backend. Thread-safe: `cancel` may come from any thread at any time.
pub trait SessionBackend: Send + Sync {
    /// Generates, calling `on_event` on this thread with each new piece of text or of a tool
    /// call; returning false stops the generation.
    fn generate_events(
        &self,
        prompt: &Prompt,
        opts: &GenerateOptions,
        on_event: &mut dyn FnMut(&StreamEvent) -> bool,
    ) -> Result<GenerationResult>;

    /// Stops the running generation; a no-op when idle.
    fn cancel(&self);

    /// Forgets the conversation; refused with `Busy` while generating.
    fn reset(&self) -> Result<()>;

    fn is_busy(&self) -> bool;
}
