//! A session: one conversation with its own KV cache on the engine's model worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::control::Control;
use super::worker::{worker_gone, Command, Event, Job, Outcome, SessionId};
use super::EngineInner;
use crate::constraint::{Constraint, ConstraintTag};
use crate::error::{Error, ErrorKind, Result};
use crate::model::chat::ChatMessage;
use crate::result::{AppliedConstraint, FinishReason, GenerationResult, GenerationStats, Provenance};
use crate::sampling::SamplingParams;

/// What to continue from.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Raw text, tokenized with the model's BOS rule. Special-token text in it (e.g.
    /// `<|im_start|>`) becomes special tokens, as in llama.cpp's completion API.
    Text(String),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
    /// Messages rendered with the model's chat template, ending in an assistant turn.
    Chat(Vec<ChatMessage>),
}

/// Per-request settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate; 0 = until the context is full.
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops before the first occurrence of any of these.
    pub stop: Vec<String>,
    /// Wall-clock limit from the call, queueing included.
    pub timeout: Option<Duration>,
    /// Report each generated token's log-probability.
    pub logprobs: bool,
    /// Constraints the output must obey, all at once (see [`crate::constraint`]).
    pub constraints: Vec<Constraint>,
    /// Keep generating past the model's end-of-generation tokens until `max_tokens` (fixed-length
    /// output, benchmarks). The end tokens are kept in the output. A constrained request still
    /// stops where its grammar ends.
    pub ignore_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            timeout: None,
            logprobs: false,
            constraints: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// One conversation. Thread-safe: any thread may call [`Session::cancel`] at any time; a second
/// generation while one runs is refused with [`ErrorKind::Busy`].
///
/// A session keeps the tokens of its last request in its KV cache; the next request reuses
/// the longest common prefix, so a multi-turn chat only computes the new turn.
pub struct Session {
    engine: Arc<EngineInner>,
    id: SessionId,
    busy: AtomicBool,
    running: Mutex<Option<Arc<Control>>>,
}

impl Session {
    pub(crate) fn new(engine: Arc<EngineInner>, id: SessionId) -> Self {
        Self { engine, id, busy: AtomicBool::new(false), running: Mutex::new(None) }
    }

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
        let submitted = Instant::now();
        let created_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        opts.sampling.validate()?;
        let constraints = opts
            .constraints
            .iter()
            .map(|c| self.engine.compiler.compile(c).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        let prompt = self.engine.prompt_tokens(prompt)?;
        let ctx = self.engine.info.context_length;
        if prompt.len() >= ctx {
            return Err(Error::new(
                ErrorKind::ContextOverflow,
                format!(
                    "the prompt is {} tokens but the context holds {ctx} (one more is needed to generate)",
                    prompt.len()
                ),
            ));
        }
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(Error::new(
                ErrorKind::Busy,
                "this session is already generating; use another session or wait",
            ));
        }
        let _busy = BusyGuard(&self.busy);

        let control = Arc::new(Control::new());
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(control.clone());
        let _running = RunningGuard(&self.running);
        let timer = opts.timeout.map(|t| self.engine.start_timer(t, control.clone()));
        let (events, receiver) = mpsc::channel();
        let seed = opts.sampling.seed.unwrap_or_else(|| self.engine.next_seed());
        let job = Job {
            session: self.id,
            prompt,
            sampling: opts.sampling.clone(),
            seed,
            max_tokens: opts.max_tokens,
            stop: opts.stop.clone(),
            logprobs: opts.logprobs,
            ignore_eos: opts.ignore_eos,
            constraints,
            control: control.clone(),
            events,
            submitted,
        };
        self.engine.send(Command::Generate(Box::new(job)))?;

        let mut text = String::new();
        let mut tokens = Vec::new();
        let mut logprobs = opts.logprobs.then(Vec::new);
        let mut stopped_by_caller = false;
        let mut deliver = |piece: &str, text: &mut String| -> bool {
            if piece.is_empty() {
                return true;
            }
            text.push_str(piece);
            on_text(piece)
        };
        let outcome: Outcome = loop {
            match receiver.recv() {
                Ok(Event::Token { id, logprob, text: piece }) => {
                    if stopped_by_caller {
                        continue;
                    }
                    tokens.push(id);
                    if let (Some(all), Some(lp)) = (logprobs.as_mut(), logprob) {
                        all.push(lp);
                    }
                    if !deliver(&piece, &mut text) {
                        stopped_by_caller = true;
                        control.cancel();
                    }
                }
                Ok(Event::Tail { text: piece }) => {
                    if !stopped_by_caller && !deliver(&piece, &mut text) {
                        stopped_by_caller = true;
                    }
                }
                Ok(Event::Done(outcome)) => break *outcome,
                Err(_) => return Err(worker_gone()),
            }
        };
        if let Some(timer) = timer {
            timer.abort();
        }
        let Outcome { finish, stats, error, mut validation, constraint_stats } = outcome;
        let finish = if stopped_by_caller {
            // The caller cut the text: grammar constraints cannot vouch for it any more.
            for report in validation.iter_mut().filter(|r| {
                r.outcome == crate::constraint::ConstraintOutcome::Satisfied
                    && r.kind != ConstraintTag::TokenMask
            }) {
                report.outcome = crate::constraint::ConstraintOutcome::Violated;
                report.reason =
                    Some("the streaming callback stopped generation before the output was complete".into());
            }
            FinishReason::Cancelled
        } else {
            finish
        };
        let stats = GenerationStats { generated_tokens: tokens.len(), ..stats };
        let provenance = Provenance {
            model: self.engine.info.name.clone(),
            architecture: self.engine.info.architecture.clone(),
            created_unix_ms,
            constraints: AppliedConstraint::list(&opts.constraints),
            sampling: SamplingParams { seed: Some(seed), ..opts.sampling.clone() },
            seed,
            max_tokens: opts.max_tokens,
            stop: opts.stop.clone(),
        };
        Ok(GenerationResult {
            text,
            tokens,
            logprobs,
            finish_reason: finish,
            stats,
            error,
            validation,
            constraint_stats,
            provenance,
        })
    }

    /// Stops the running generation, if any (prefill included). Safe from any thread; a no-op
    /// when idle — it does not affect the next generation.
    pub fn cancel(&self) {
        if let Some(control) = self.running.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            control.cancel();
        }
    }

    /// Forgets the conversation: the next call starts from an empty context. The forgotten keys
    /// and values go to the engine's prefix cache, for other sessions' identical prompt openings.
    pub fn reset(&self) -> Result<()> {
        if self.busy.load(Ordering::Acquire) {
            return Err(Error::new(ErrorKind::Busy, "cannot reset a session while it is generating"));
        }
        self.engine.send(Command::Reset { session: self.id })
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.engine.send(Command::Close { session: self.id });
    }
}

struct BusyGuard<'a>(&'a AtomicBool);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

struct RunningGuard<'a>(&'a Mutex<Option<Arc<Control>>>);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
