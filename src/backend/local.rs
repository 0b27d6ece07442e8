//! The local engine as a backend: a model loaded in this process, with its tokenizer and
//! constraint compile cache.

use super::{EngineBackend, SessionBackend};
use crate::constraint::{CacheStats, Constraint};
use crate::engine::{GenerateOptions, LocalEngine, LocalSession, Prompt};
use crate::error::Result;
use crate::model::chat::ChatMessage;
use crate::model::ModelInfo;
use crate::result::GenerationResult;
use crate::tools::StreamEvent;

impl EngineBackend for LocalEngine {
    fn info(&self) -> &ModelInfo {
        LocalEngine::info(self)
    }

    fn has_chat_template(&self) -> bool {
        LocalEngine::has_chat_template(self)
    }

    fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        self.tokenizer().encode(text, add_special, parse_special)
    }

    fn detokenize(&self, tokens: &[u32]) -> Result<Vec<u8>> {
        self.tokenizer().decode_bytes(tokens)
    }

    fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        LocalEngine::render_chat(self, messages, add_generation_prompt)
    }

    fn eos_token(&self) -> Option<u32> {
        self.tokenizer().eos()
    }

    fn is_end_of_generation(&self, token: u32) -> bool {
        self.tokenizer().is_end_of_generation(token)
    }

    fn check_constraint(&self, constraint: &Constraint) -> Result<Option<crate::engine::HeldConstraint>> {
        self.hold_constraint(constraint).map(Some)
    }

    fn constraint_cache_stats(&self) -> Result<CacheStats> {
        Ok(LocalEngine::constraint_cache_stats(self))
    }

    fn clear_constraint_cache(&self) -> Result<()> {
        LocalEngine::clear_constraint_cache(self);
        Ok(())
    }

    fn set_constraint_cache_limit(&self, limit: usize) -> Result<()> {
        LocalEngine::set_constraint_cache_limit(self, limit)
    }

    fn health(&self) -> Result<()> {
        Ok(())
    }

    fn list_models(&self) -> Result<Vec<String>> {
        Ok(vec![LocalEngine::info(self).name.clone()])
    }

    fn score(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        LocalEngine::score(self, tokens)
    }

    fn new_session(&self) -> Box<dyn SessionBackend> {
        Box::new(LocalEngine::new_session(self))
    }
}

impl SessionBackend for LocalSession {
    fn generate_events(
        &self,
        prompt: &Prompt,
        opts: &GenerateOptions,
        on_event: &mut dyn FnMut(&StreamEvent) -> bool,
    ) -> Result<GenerationResult> {
        LocalSession::generate_events(self, prompt, opts, on_event)
    }

    fn cancel(&self) {
        LocalSession::cancel(self)
    }

    fn reset(&self) -> Result<()> {
        LocalSession::reset(self)
    }

    fn is_busy(&self) -> bool {
        LocalSession::is_busy(self)
    }
}
