//! The engine: a loaded model, its worker thread and the internal Tokio runtime. Thread-safe;
//! share it freely and open any number of sessions on it.

mod cancel;
mod control;
mod facade;
mod session;
mod text;
mod worker;

pub use cancel::CancelToken;
pub use facade::{Engine, EngineSpec, Session};
pub use session::{GenerateOptions, LocalSession, Prompt};
pub use text::{Delta, TextAssembler};

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use candle_core::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::constraint::{
    CacheStats, CompiledConstraint, Compiler, Constraint, ConstraintLimits, DEFAULT_CACHE_LIMIT,
};
use crate::error::{Error, ErrorKind, Result};
use crate::model::chat::{ChatMessage, ChatTemplate};
use crate::model::tokenizer::Tokenizer;
use crate::model::{self, LanguageModel, LoadOptions, ModelInfo};
use control::Control;
use worker::{Command, Worker};

/// How to build an engine.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// A GGUF file.
    pub model_path: PathBuf,
    /// A `tokenizer.json` to use instead of the GGUF's tokenizer metadata.
    pub tokenizer_path: Option<PathBuf>,
    /// Compute threads; 0 = one per available core.
    pub threads: usize,
    /// Context length per session; 0 = the model's (capped at [`model::DEFAULT_MAX_CONTEXT`]).
    pub context_length: usize,
    /// Seed for requests that do not bring their own; `None` = from the OS.
    pub seed: Option<u64>,
    /// Compiled constraints kept in the cache; 0 = [`DEFAULT_CACHE_LIMIT`].
    pub constraint_cache_limit: usize,
    /// Memory for keys and values of closed or reset sessions, kept so that a new session whose
    /// prompt starts the same way (a shared system prompt) does not recompute them. `None` =
    /// [`DEFAULT_PREFIX_CACHE_BYTES`]; `Some(0)` = keep none (live sessions are still shared).
    pub prefix_cache_bytes: Option<usize>,
    /// Where the model runs. A GPU needs a build with the `cuda` feature; there the forward
    /// pass is candle's (our own kernels are CPU-only).
    pub device: ComputeDevice,
    /// A Jinja chat template replacing the file's `tokenizer.chat_template` (or, for a file
    /// without one, its format's built-in template).
    pub chat_template: Option<String>,
    /// Bounds on constraint compilation (nesting depth, ...); see [`ConstraintLimits`].
    pub constraint_limits: ConstraintLimits,
    /// Build the one-time constraint setup (token trie and parser factory, 0.1-1 s with the
    /// vocabulary) during the load instead of in the first constrained request.
    pub prepare_constraints: bool,
}

/// Where an engine computes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ComputeDevice {
    #[default]
    Cpu,
    /// CUDA device by ordinal.
    Cuda(usize),
}

impl ComputeDevice {
    fn open(self) -> Result<Device> {
        match self {
            ComputeDevice::Cpu => Ok(Device::Cpu),
            ComputeDevice::Cuda(ordinal) if !cfg!(feature = "cuda") => {
                Err(Error::new(ErrorKind::Unsupported, format!("CUDA device {ordinal} requested, but this build of Maze has no CUDA support (build with --features cuda)")))
            }
            ComputeDevice::Cuda(ordinal) => {
                Device::new_cuda(ordinal).map_err(|e| Error::new(ErrorKind::Backend, format!("cannot open CUDA device {ordinal}: {e}")))
            }
        }
    }
}

/// A constraint kept compiled by its engine while this lives (see
/// [`LocalEngine::hold_constraint`]).
pub struct HeldConstraint {
    engine: LocalEngine,
    key: u64,
}

impl Drop for HeldConstraint {
    fn drop(&mut self) {
        self.engine.inner.compiler.release(self.key);
    }
}

/// Default budget of [`EngineConfig::prefix_cache_bytes`].
pub const DEFAULT_PREFIX_CACHE_BYTES: usize = 64 << 20;

/// A model loaded in this process, ready to serve sessions. Cheap to clone (shared).
#[derive(Clone)]
pub struct LocalEngine {
    inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pub(crate) info: ModelInfo,
    tokenizer: Arc<Tokenizer>,
    chat_template: Option<Arc<ChatTemplate>>,
    commands: Mutex<Option<Sender<Command>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    runtime: Option<tokio::runtime::Runtime>,
    seeds: Mutex<ChaCha8Rng>,
    next_session: AtomicU64,
    pub(crate) compiler: Compiler,
}

/// The compute threads `requested` means: 0 is one per available core; more than
/// [`MAX_THREADS_PER_CORE`] per core (and more than 64) is refused, as such a pool only
/// oversubscribes the machine (100,000 threads once took it past a load average of 800).
fn compute_threads(requested: usize) -> Result<usize> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let limit = (MAX_THREADS_PER_CORE * cores).max(64);
    match requested {
        0 => Ok(cores),
        n if n <= limit => Ok(n),
        n => Err(Error::invalid_argument(format!(
            "threads {n} is more than the limit of {limit} ({MAX_THREADS_PER_CORE} per available core, \
             {cores} here, and at least 64); 0 means one per core"
        ))),
    }
}

const MAX_THREADS_PER_CORE: usize = 4;

impl LocalEngine {
    /// Loads the model and starts its worker. `progress` (fraction in [0, 1]) is called on this
    /// thread; returning `false` aborts the load with [`ErrorKind::Cancelled`].
    pub fn load(config: &EngineConfig, progress: Option<&mut dyn FnMut(f32) -> bool>) -> Result<Self> {
        let threads = compute_threads(config.threads)?;
        let mut no_progress = |_: f32| true;
        let progress: &mut dyn FnMut(f32) -> bool = match progress {
            Some(p) => p,
            None => &mut no_progress,
        };
        if !progress(0.0) {
            return Err(Error::load_cancelled());
        }
        let mut loaded = model::load(
            &LoadOptions {
                model_path: &config.model_path,
                tokenizer_path: config.tokenizer_path.as_deref(),
                context_length: config.context_length,
                device: config.device.open()?,
                tensor_forward: false,
            },
            progress,
        )?;
        if let Some(source) = &config.chat_template {
            loaded.chat_template = Some(Arc::new(ChatTemplate::new(source, &loaded.tokenizer)?));
        }
        let prefix_cache = config.prefix_cache_bytes.unwrap_or(DEFAULT_PREFIX_CACHE_BYTES);
        let engine = Self::start(
            loaded.model,
            loaded.tokenizer,
            loaded.chat_template,
            threads,
            config.seed,
            config.constraint_cache_limit,
            prefix_cache,
            config.constraint_limits,
        )?;
        if config.prepare_constraints {
            engine.inner.compiler.prepare()?;
        }
        Ok(engine)
    }

    /// Starts an engine over an already-built model (custom architectures, tests).
    pub fn from_parts(
        model: Arc<dyn LanguageModel>,
        tokenizer: Arc<Tokenizer>,
        chat_template: Option<Arc<ChatTemplate>>,
        threads: usize,
        seed: Option<u64>,
    ) -> Result<Self> {
        Self::start(
            model,
            tokenizer,
            chat_template,
            threads.max(1),
            seed,
            0,
            DEFAULT_PREFIX_CACHE_BYTES,
            ConstraintLimits::default(),
        )
    }

    #[allow(clippy::too_many_arguments)] // private: the parts of an EngineConfig, resolved
    fn start(
        model: Arc<dyn LanguageModel>,
        tokenizer: Arc<Tokenizer>,
        chat_template: Option<Arc<ChatTemplate>>,
        threads: usize,
        seed: Option<u64>,
        cache_limit: usize,
        prefix_cache_bytes: usize,
        constraint_limits: ConstraintLimits,
    ) -> Result<Self> {
        let internal = |what: &str, e: &dyn std::fmt::Display| {
            Error::new(ErrorKind::Internal, format!("cannot start the {what}: {e}"))
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("maze-compute-{i}"))
            .build()
            .map_err(|e| internal("compute threads", &e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("maze-runtime")
            .enable_time()
            .build()
            .map_err(|e| internal("runtime", &e))?;
        let info = model.info().clone();
        let compiler = Compiler::with_limits(
            tokenizer.clone(),
            info.vocab_size,
            if cache_limit == 0 { DEFAULT_CACHE_LIMIT } else { cache_limit },
            constraint_limits,
        );
        let (sender, receiver) = std::sync::mpsc::channel();
        let worker = Worker::new(model, tokenizer.clone(), pool, prefix_cache_bytes);
        let handle = std::thread::Builder::new()
            .name("maze-model-worker".into())
            .spawn(move || worker.run(receiver))
            .map_err(|e| internal("model worker", &e))?;
        let seeds = match seed {
            Some(s) => ChaCha8Rng::seed_from_u64(s),
            None => ChaCha8Rng::from_os_rng(),
        };
        Ok(Self {
            inner: Arc::new(EngineInner {
                info,
                tokenizer,
                chat_template,
                commands: Mutex::new(Some(sender)),
                worker: Mutex::new(Some(handle)),
                runtime: Some(runtime),
                seeds: Mutex::new(seeds),
                next_session: AtomicU64::new(1),
                compiler,
            }),
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.inner.info
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    pub fn has_chat_template(&self) -> bool {
        self.inner.chat_template.is_some()
    }

    /// Renders messages with the model's chat template.
    pub fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.inner.render_chat(messages, add_generation_prompt)
    }

    /// Compiles a constraint for this engine's tokenizer (or fetches it from the cache), so
    /// that bad input is reported before any generation.
    pub fn compile_constraint(&self, constraint: &Constraint) -> Result<CompiledConstraint> {
        self.inner.compiler.compile(constraint)
    }

    /// Compiles a constraint and keeps its compiled form for as long as the returned value
    /// lives, whatever the cache evicts.
    pub fn hold_constraint(&self, constraint: &Constraint) -> Result<HeldConstraint> {
        let key = self.inner.compiler.hold(constraint)?;
        Ok(HeldConstraint { engine: self.clone(), key })
    }

    pub fn constraint_cache_stats(&self) -> CacheStats {
        self.inner.compiler.stats()
    }

    /// How long the one-time constraint setup took; `None` until it has been built (by the
    /// first constrained request, or at load with [`EngineConfig::prepare_constraints`]).
    pub fn constraint_setup_time(&self) -> Option<Duration> {
        self.inner.compiler.setup_time()
    }

    pub fn clear_constraint_cache(&self) {
        self.inner.compiler.clear()
    }

    pub fn set_constraint_cache_limit(&self, limit: usize) -> Result<()> {
        self.inner.compiler.set_limit(limit)
    }

    /// Identifies the tokenizer; constraints compiled for one fingerprint work on any engine
    /// with the same one.
    pub fn tokenizer_fingerprint(&self) -> u64 {
        self.inner.compiler.fingerprint()
    }

    /// The log-probability (natural log) of each token of `tokens` after the ones before it:
    /// `tokens.len() − 1` values, the first for `tokens[1]`. Start with BOS (or a context) to
    /// score a text's first token. Runs in one pass over the text, between the steps of
    /// running generations.
    pub fn score(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.len() < 2 {
            return Err(Error::invalid_argument(format!(
                "scoring needs at least 2 tokens (a first one to condition on), got {}",
                tokens.len()
            )));
        }
        if tokens.len() > self.inner.info.context_length {
            return Err(Error::new(
                ErrorKind::ContextOverflow,
                format!(
                    "{} tokens to score exceed the context length {}",
                    tokens.len(),
                    self.inner.info.context_length
                ),
            ));
        }
        let (reply, scores) = std::sync::mpsc::channel();
        self.inner.send(Command::Score(worker::ScoreJob { tokens: tokens.to_vec(), reply }))?;
        scores.recv().map_err(|_| worker::worker_gone())?
    }

    /// Opens a new, empty session.
    pub fn new_session(&self) -> LocalSession {
        let id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        LocalSession::new(self.inner.clone(), id)
    }
}

impl EngineInner {
    pub(crate) fn send(&self, cmd: Command) -> Result<()> {
        let guard = self.commands.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().ok_or_else(worker::worker_gone)?.send(cmd).map_err(|_| worker::worker_gone())
    }

    pub(crate) fn next_seed(&self) -> u64 {
        self.seeds.lock().unwrap_or_else(|p| p.into_inner()).random()
    }

    /// Arms a timer on the internal runtime that times the request out.
    pub(crate) fn start_timer(&self, after: Duration, control: Arc<Control>) -> tokio::task::AbortHandle {
        let rt = self.runtime.as_ref().expect("runtime lives as long as the engine");
        rt.spawn(async move {
            tokio::time::sleep(after).await;
            control.time_out();
        })
        .abort_handle()
    }

    fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.template()?.render(messages, add_generation_prompt)
    }

    fn template(&self) -> Result<&ChatTemplate> {
        self.chat_template.as_deref().ok_or_else(|| {
            Error::new(
                ErrorKind::Template,
                format!(
                    "model '{}' has no chat template (tokenizer.chat_template); use a text prompt",
                    self.info.name
                ),
            )
        })
    }

    /// The tool-call format the chat template renders, if any.
    pub(crate) fn template_tool_format(&self) -> Option<crate::tools::ToolFormat> {
        self.chat_template.as_ref().and_then(|t| t.tool_format())
    }

    /// The prompt's tokens, a chat rendered with `tools` in their format when given.
    pub(crate) fn prompt_tokens_with(
        &self,
        prompt: &Prompt,
        tools: Option<(&crate::tools::ToolUse, crate::tools::ToolFormat)>,
    ) -> Result<Vec<u32>> {
        let tokens = match prompt {
            Prompt::Text(text) => self.tokenizer.encode(text, true, true)?,
            Prompt::Tokens(ids) => {
                if let Some((i, bad)) =
                    ids.iter().enumerate().find(|(_, &id)| id as usize >= self.info.vocab_size)
                {
                    return Err(Error::invalid_argument(format!(
                        "prompt token {i} has id {bad}, outside the vocabulary (size {})",
                        self.info.vocab_size
                    )));
                }
                ids.clone()
            }
            Prompt::Chat(messages) => {
                crate::model::chat::check_tool_history(messages)?;
                let text = match tools {
                    None => self.render_chat(messages, true)?,
                    Some((tools, crate::tools::ToolFormat::Generic)) => {
                        self.render_chat(&crate::tools::format::generic_messages(messages, tools), true)?
                    }
                    Some((tools, _)) => self.template()?.render_with_tools(messages, &tools.tools, true)?,
                };
                // Templates that write the BOS text themselves must not get a second BOS.
                let bos_in_text = self
                    .tokenizer
                    .bos()
                    .and_then(|b| self.tokenizer.token_text(b))
                    .is_some_and(|b| !b.is_empty() && text.starts_with(b));
                self.tokenizer.encode(&text, !bos_in_text, true)?
            }
        };
        if tokens.is_empty() {
            return Err(Error::invalid_argument("the prompt is empty: give at least one token of input"));
        }
        Ok(tokens)
    }
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        // Closing the queue ends the worker once it has no active request.
        self.commands.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = handle.join();
        }
        if let Some(rt) = self.runtime.take() {
            // Never blocks, so dropping an engine inside async code is fine too.
            rt.shutdown_background();
        }
    }
}
