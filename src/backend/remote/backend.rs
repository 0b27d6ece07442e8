//! The remote engine as a backend: generation and the model list come from the server; what
//! only a model loaded here has (tokenizer, chat template, constraint cache) is refused.

use super::{RemoteEngine, RemoteSession};
use crate::backend::{EngineBackend, SessionBackend};
use crate::constraint::{CacheStats, Constraint};
use crate::engine::{GenerateOptions, Prompt};
use crate::error::{Error, ErrorKind, Result};
use crate::model::chat::ChatMessage;
use crate::model::ModelInfo;
use crate::result::GenerationResult;
use crate::tools::StreamEvent;

impl EngineBackend for RemoteEngine {
    fn info(&self) -> &ModelInfo {
        &self.inner.served
    }

    fn has_chat_template(&self) -> bool {
        // The server applies its own.
        true
    }

    fn tokenize(&self, _: &str, _: bool, _: bool) -> Result<Vec<u32>> {
        Err(self.needs_local("tokenize"))
    }

    fn detokenize(&self, _: &[u32]) -> Result<Vec<u8>> {
        Err(self.needs_local("detokenize"))
    }

    fn render_chat(&self, _: &[ChatMessage], _: bool) -> Result<String> {
        Err(self.needs_local("the chat template"))
    }

    fn eos_token(&self) -> Option<u32> {
        None
    }

    fn is_end_of_generation(&self, _: u32) -> bool {
        false
    }

    fn check_constraint(&self, _: &Constraint) -> Result<Option<crate::engine::HeldConstraint>> {
        // The server compiles and checks constraints itself.
        Ok(None)
    }

    fn constraint_cache_stats(&self) -> Result<CacheStats> {
        Err(self.needs_local("the constraint cache"))
    }

    fn clear_constraint_cache(&self) -> Result<()> {
        Err(self.needs_local("the constraint cache"))
    }

    fn set_constraint_cache_limit(&self, _: usize) -> Result<()> {
        Err(self.needs_local("the constraint cache"))
    }

    fn health(&self) -> Result<()> {
        RemoteEngine::health(self)
    }

    fn list_models(&self) -> Result<Vec<String>> {
        self.models()
    }

    fn score(&self, _: &[u32]) -> Result<Vec<f32>> {
        Err(self.needs_local("score"))
    }

    fn new_session(&self) -> Box<dyn SessionBackend> {
        Box::new(RemoteEngine::new_session(self))
    }
}

impl RemoteEngine {
    /// The refusal of what only a model loaded here can do (it has no tokenizer or cache here).
    fn needs_local(&self, what: &str) -> Error {
        Error::new(
            ErrorKind::Unsupported,
            format!("{what} needs a local model; this engine is remote ({})", self.inner.base),
        )
    }
}

impl SessionBackend for RemoteSession {
    fn generate_events(
        &self,
        prompt: &Prompt,
        opts: &GenerateOptions,
        on_event: &mut dyn FnMut(&StreamEvent) -> bool,
    ) -> Result<GenerationResult> {
        RemoteSession::generate_events(self, prompt, opts, on_event)
    }

    fn cancel(&self) {
        RemoteSession::cancel(self)
    }

    fn reset(&self) -> Result<()> {
        RemoteSession::reset(self)
    }

    fn is_busy(&self) -> bool {
        RemoteSession::is_busy(self)
    }
}
