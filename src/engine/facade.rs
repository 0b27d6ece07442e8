//! The engine every caller uses (the C ABI, the server, Rust programs): one type over whichever
//! backend runs, a model loaded here or a remote server, chosen here and nowhere else.

use std::any::Any;
use std::sync::Arc;

use super::{EngineConfig, GenerateOptions, LocalEngine, Prompt};
use crate::backend::remote::{RemoteConfig, RemoteEngine};
use crate::backend::{EngineBackend, SessionBackend};
use crate::constraint::{CacheStats, Constraint};
use crate::error::Result;
use crate::model::chat::ChatMessage;
use crate::model::tokenizer::Tokenizer;
use crate::model::{LanguageModel, ModelInfo};
use crate::result::GenerationResult;
use crate::tools::StreamEvent;

/// What to open: a model file loaded in this process, or an inference server.
#[derive(Debug, Clone)]
pub enum EngineSpec {
    Local(EngineConfig),
    Remote(RemoteConfig),
}

impl EngineSpec {
    /// The server to use when no model file is given: `explicit` when the caller names one,
    /// else the one the environment names ([`RemoteConfig::from_env`]); `None` when neither does.
    pub fn remote_or_env(explicit: Option<RemoteConfig>) -> Option<Result<Self>> {
        match explicit {
            Some(config) => Some(Ok(Self::Remote(config))),
            None => RemoteConfig::from_env().map(|config| config.map(Self::Remote)),
        }
    }
}

/// A model ready to serve sessions, wherever it runs. Cheap to clone (shared); thread-safe.
#[derive(Clone)]
pub struct Engine {
    backend: Arc<dyn EngineBackend>,
}

impl Engine {
    /// Loads a model or connects to a server, as `spec` says. `progress` is called while a
    /// model loads (see [`Engine::load`]).
    pub fn open(spec: &EngineSpec, progress: Option<&mut dyn FnMut(f32) -> bool>) -> Result<Self> {
        match spec {
            EngineSpec::Local(config) => Self::load(config, progress),
            EngineSpec::Remote(config) => Self::connect(config.clone()),
        }
    }

    /// Loads the model and starts its worker. `progress` (fraction in [0, 1]) is called on this
    /// thread; returning `false` aborts the load with [`crate::ErrorKind::Cancelled`].
    pub fn load(config: &EngineConfig, progress: Option<&mut dyn FnMut(f32) -> bool>) -> Result<Self> {
        LocalEngine::load(config, progress).map(Self::from_backend)
    }

    /// Connects to an inference server (see [`RemoteEngine::connect`]).
    pub fn connect(config: RemoteConfig) -> Result<Self> {
        RemoteEngine::connect(config).map(Self::from_backend)
    }

    /// Starts an engine over an already-built model (custom architectures, tests).
    pub fn from_parts(
        model: Arc<dyn LanguageModel>,
        tokenizer: Arc<Tokenizer>,
        chat_template: Option<Arc<crate::model::chat::ChatTemplate>>,
        threads: usize,
        seed: Option<u64>,
    ) -> Result<Self> {
        LocalEngine::from_parts(model, tokenizer, chat_template, threads, seed).map(Self::from_backend)
    }

    /// An engine over any backend.
    pub fn from_backend(backend: impl EngineBackend) -> Self {
        Self { backend: Arc::new(backend) }
    }

    /// The local engine, for what only a model loaded here has (its tokenizer, compiled
    /// constraints); `None` for another backend.
    pub fn local(&self) -> Option<&LocalEngine> {
        (self.backend.as_ref() as &dyn Any).downcast_ref()
    }

    /// What the engine serves (a remote engine: the server's model, architecture "remote").
    pub fn info(&self) -> &ModelInfo {
        self.backend.info()
    }

    pub fn has_chat_template(&self) -> bool {
        self.backend.has_chat_template()
    }

    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        self.backend.tokenize(text, add_special, parse_special)
    }

    pub fn detokenize(&self, tokens: &[u32]) -> Result<Vec<u8>> {
        self.backend.detokenize(tokens)
    }

    /// Renders messages with the model's chat template.
    pub fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.backend.render_chat(messages, add_generation_prompt)
    }

    pub fn eos_token(&self) -> Option<u32> {
        self.backend.eos_token()
    }

    pub fn is_end_of_generation(&self, token: u32) -> bool {
        self.backend.is_end_of_generation(token)
    }

    /// Reports a bad constraint before any generation (see [`EngineBackend::check_constraint`]).
    pub fn check_constraint(&self, constraint: &Constraint) -> Result<()> {
        self.backend.check_constraint(constraint).map(drop)
    }

    /// Like [`Engine::check_constraint`], keeping a local engine's compiled form while the
    /// returned value lives (`None` for a server, which compiles its own).
    pub fn hold_constraint(&self, constraint: &Constraint) -> Result<Option<super::HeldConstraint>> {
        self.backend.check_constraint(constraint)
    }

    pub fn constraint_cache_stats(&self) -> Result<CacheStats> {
        self.backend.constraint_cache_stats()
    }

    /// How long the local engine's one-time constraint setup took; `None` until it has been
    /// built, and for a remote engine (its server does the work).
    pub fn constraint_setup_time(&self) -> Option<std::time::Duration> {
        self.local().and_then(|l| l.constraint_setup_time())
    }

    pub fn clear_constraint_cache(&self) -> Result<()> {
        self.backend.clear_constraint_cache()
    }

    pub fn set_constraint_cache_limit(&self, limit: usize) -> Result<()> {
        self.backend.set_constraint_cache_limit(limit)
    }

    /// Whether the engine can serve: always for a local model; a server is asked.
    pub fn health(&self) -> Result<()> {
        self.backend.health()
    }

    /// The names of the models the engine serves.
    pub fn list_models(&self) -> Result<Vec<String>> {
        self.backend.list_models()
    }

    /// Opens a new, empty session.
    /// The log-probability (natural log) of each token of `tokens` after the ones before it:
    /// `tokens.len() − 1` values, the first for `tokens[1]`. A remote engine refuses it.
    pub fn score(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.backend.score(tokens)
    }

    pub fn new_session(&self) -> Session {
        Session { backend: self.backend.new_session() }
    }
}

/// One conversation. Thread-safe: any thread may call [`Session::cancel`] at any time; a second
/// generation while one runs is refused with [`crate::ErrorKind::Busy`].
///
/// A local session keeps the tokens of its last request in its KV cache; the next request
/// reuses the longest common prefix, so a multi-turn chat only computes the new turn.
pub struct Session {
    backend: Box<dyn SessionBackend>,
}

impl Session {
    /// Generates to the end and returns the result.
    pub fn generate(&self, prompt: &Prompt, opts: &GenerateOptions) -> Result<GenerationResult> {
        self.generate_streaming(prompt, opts, |_| true)
    }

    /// Generates, calling `on_text` on this thread with each new piece of text (whole UTF-8
    /// characters, never part of a stop sequence). Returning `false` stops the generation; the
    /// result then holds exactly the text delivered so far and finishes as `Cancelled`.
    ///
    /// `Err` only when the request could not start (bad options, prompt too long, busy); a
    /// failure during generation is reported in the result's `finish_reason` and `error`.
    pub fn generate_streaming(
        &self,
        prompt: &Prompt,
        opts: &GenerateOptions,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<GenerationResult> {
        self.generate_events(prompt, opts, crate::tools::text_only(&mut on_text))
    }

    /// Like [`Session::generate_streaming`], with a reply's tool calls told apart from its text:
    /// each call's name once complete ([`StreamEvent::CallStart`]), then its arguments in
    /// fragments, in order.
    pub fn generate_events(
        &self,
        prompt: &Prompt,
        opts: &GenerateOptions,
        mut on_event: impl FnMut(&StreamEvent) -> bool,
    ) -> Result<GenerationResult> {
        self.backend.generate_events(prompt, opts, &mut on_event)
    }

    /// Stops the running generation, if any (prefill included). Safe from any thread; a no-op
    /// when idle: it does not affect the next generation.
    pub fn cancel(&self) {
        self.backend.cancel()
    }

    /// Forgets the conversation: the next call starts from an empty context. Refused with
    /// [`crate::ErrorKind::Busy`] while generating.
    pub fn reset(&self) -> Result<()> {
        self.backend.reset()
    }

    pub fn is_busy(&self) -> bool {
        self.backend.is_busy()
    }
}
