//! The model worker: one thread per loaded model that owns every session's KV cache and serves
//! all sessions from one queue. Active requests advance in turn, one step each (a prefill chunk
//! or one decoded token), so sessions run side by side and none waits for another to finish.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use super::control::Control;
use super::text::TextAssembler;
use crate::constraint::{apply_mask, CompiledConstraint, ConstraintReport, ConstraintStats, Enforcer, Mask};
use crate::error::{Error, ErrorKind};
use crate::model::tokenizer::Tokenizer;
use crate::model::{LanguageModel, SequenceCache};
use crate::result::{FinishReason, GenerationStats};
use crate::sampling::{log_prob, Sampler, SamplingParams};

/// Prompt tokens computed per step. Bigger chunks are faster; the interrupt poll inside the
/// forward pass keeps cancellation prompt regardless.
const PREFILL_CHUNK: usize = 128;

pub(crate) type SessionId = u64;

pub(crate) enum Command {
    Generate(Box<Job>),
    Reset { session: SessionId },
    Close { session: SessionId },
}

/// One generation request, tokenized and validated.
pub(crate) struct Job {
    pub session: SessionId,
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub seed: u64,
    /// 0 = until the context is full.
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub logprobs: bool,
    pub constraints: Vec<Arc<CompiledConstraint>>,
    pub control: Arc<Control>,
    pub events: Sender<Event>,
    pub submitted: Instant,
}

pub(crate) enum Event {
    Token { id: u32, logprob: Option<f32>, text: String },
    /// Text released at the end without a token of its own (held-back bytes).
    Tail { text: String },
    Done(Box<Outcome>),
}

/// How a request ended.
pub(crate) struct Outcome {
    pub finish: FinishReason,
    pub stats: GenerationStats,
    pub error: Option<Error>,
    pub validation: Vec<ConstraintReport>,
    pub constraint_stats: Option<ConstraintStats>,
}

/// A session's sequence: its KV cache and the tokens in it.
struct Sequence {
    cache: Box<dyn SequenceCache>,
    tokens: Vec<u32>,
}

enum Phase {
    Prefill { next: usize },
    /// Logits for the next token and, under constraints, the mask computed alongside them.
    Decode { logits: Vec<f32>, mask: Option<Result<Mask, Error>> },
}

struct Active {
    job: Box<Job>,
    phase: Phase,
    sampler: Sampler,
    text: TextAssembler,
    enforcer: Option<Enforcer>,
    generated: usize,
    cached: usize,
    prefill_started: Instant,
    first_token: Option<Instant>,
}

enum Step {
    Continue,
    Finished(FinishReason, Option<Error>),
}

pub(crate) struct Worker {
    model: Arc<dyn LanguageModel>,
    tokenizer: Arc<Tokenizer>,
    pool: rayon::ThreadPool,
    sequences: HashMap<SessionId, Sequence>,
    active: Vec<Active>,
}

impl Worker {
    pub fn new(model: Arc<dyn LanguageModel>, tokenizer: Arc<Tokenizer>, pool: rayon::ThreadPool) -> Self {
        Self { model, tokenizer, pool, sequences: HashMap::new(), active: Vec::new() }
    }

    /// Serves commands until every sender is gone. Blocks (no spinning) while idle.
    pub fn run(mut self, commands: Receiver<Command>) {
        loop {
            if self.active.is_empty() {
                match commands.recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => return,
                }
            }
            loop {
                match commands.try_recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) if self.active.is_empty() => return,
                    Err(TryRecvError::Disconnected) => break,
                }
            }
            self.step_all();
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Generate(job) => self.start(job),
            Command::Reset { session } | Command::Close { session } => {
                self.sequences.remove(&session);
            }
        }
    }

    fn start(&mut self, job: Box<Job>) {
        let model = &self.model;
        let seq = self.sequences.entry(job.session).or_insert_with(|| Sequence { cache: model.new_cache(), tokens: Vec::new() });
        // Reuse the cached prefix; at least the last prompt token is recomputed for its logits.
        let common = seq.tokens.iter().zip(&job.prompt).take_while(|(a, b)| a == b).count();
        let keep = common.min(job.prompt.len().saturating_sub(1));
        seq.cache.truncate(keep);
        seq.tokens.truncate(seq.cache.len());
        let cached = seq.tokens.len();
        let sampler = Sampler::new(job.sampling.clone(), job.seed);
        let text = TextAssembler::new(job.stop.clone());
        let enforcer = (!job.constraints.is_empty())
            .then(|| Enforcer::new(job.constraints.clone(), self.model.info().vocab_size, self.tokenizer.end_of_generation().to_vec()));
        self.active.push(Active {
            phase: Phase::Prefill { next: cached },
            job,
            sampler,
            text,
            enforcer,
            generated: 0,
            cached,
            prefill_started: Instant::now(),
            first_token: None,
        });
    }

    fn step_all(&mut self) {
        let mut i = 0;
        while i < self.active.len() {
            let session = self.active[i].job.session;
            let outcome = {
                let active = &mut self.active[i];
                let seq = self.sequences.get_mut(&session);
                let (model, tokenizer) = (&self.model, &self.tokenizer);
                self.pool.install(|| catch_unwind(AssertUnwindSafe(|| match seq {
                    Some(seq) => step(model.as_ref(), tokenizer, active, seq),
                    None => Step::Finished(FinishReason::Error, Some(Error::new(ErrorKind::Internal, "the session's state is gone"))),
                })))
            };
            let outcome = outcome.unwrap_or_else(|payload| {
                // The sequence may be half-updated: forget it rather than trust it.
                self.sequences.remove(&session);
                Step::Finished(FinishReason::Error, Some(Error::from_panic(payload.as_ref())))
            });
            match outcome {
                Step::Continue => i += 1,
                Step::Finished(reason, error) => {
                    let done = self.active.swap_remove(i);
                    finish(done, reason, error);
                }
            }
        }
    }
}

/// Runs the forward pass and, when constrained, the next mask at the same time: the mask
/// depends only on tokens already committed, so it need not wait for the logits.
fn forward_and_mask(
    model: &dyn LanguageModel,
    tokens: &[u32],
    cache: &mut dyn SequenceCache,
    interrupt: &(dyn Fn() -> bool + Sync),
    enforcer: Option<&mut Enforcer>,
) -> (Result<Vec<f32>, Error>, Option<Result<Mask, Error>>) {
    match enforcer {
        Some(e) => {
            let (logits, mask) = rayon::join(|| model.forward(tokens, cache, interrupt), || e.compute_mask());
            (logits, Some(mask))
        }
        None => (model.forward(tokens, cache, interrupt), None),
    }
}

fn step(model: &dyn LanguageModel, tokenizer: &Tokenizer, a: &mut Active, seq: &mut Sequence) -> Step {
    if let Some(reason) = a.job.control.stop_reason() {
        return Step::Finished(reason, None);
    }
    let control = a.job.control.clone();
    let interrupt = move || control.is_stopped();
    match &mut a.phase {
        Phase::Prefill { next } => {
            let end = (*next + PREFILL_CHUNK).min(a.job.prompt.len());
            let chunk = &a.job.prompt[*next..end];
            let last = end == a.job.prompt.len();
            let enforcer = if last { a.enforcer.as_mut() } else { None };
            match forward_and_mask(model, chunk, seq.cache.as_mut(), &interrupt, enforcer) {
                (Ok(logits), mask) => {
                    seq.tokens.extend_from_slice(chunk);
                    if last {
                        a.phase = Phase::Decode { logits, mask };
                    } else {
                        *next = end;
                    }
                    Step::Continue
                }
                (Err(e), _) => failed(a, seq, e),
            }
        }
        Phase::Decode { logits, mask } => {
            let masked;
            let choose_from: &[f32] = match (mask.take(), a.enforcer.as_ref()) {
                (Some(Ok(m)), Some(enf)) => {
                    if enf.grammar_finished() {
                        return Step::Finished(FinishReason::Stop, None);
                    }
                    let mut l = logits.clone();
                    apply_mask(&m, &mut l);
                    masked = l;
                    &masked
                }
                (Some(Err(e)), _) => return Step::Finished(FinishReason::Error, Some(e)),
                _ => logits,
            };
            let id = a.sampler.sample(choose_from, &seq.tokens);
            a.first_token.get_or_insert_with(Instant::now);
            if tokenizer.is_end_of_generation(id) {
                return Step::Finished(FinishReason::Stop, None);
            }
            let logprob = a.job.logprobs.then(|| log_prob(logits, id));
            let mut batch = vec![id];
            if let Some(enf) = a.enforcer.as_mut() {
                if let Err(e) = enf.commit(id) {
                    return Step::Finished(FinishReason::Error, Some(e));
                }
                batch.extend(enf.take_forced());
            }
            for (i, &t) in batch.iter().enumerate() {
                // Forced tokens were not sampled: their log-probability is not computed (NaN).
                let lp = if i == 0 { logprob } else { a.job.logprobs.then_some(f32::NAN) };
                let delta = a.text.push(tokenizer.piece(t).unwrap_or_default());
                a.generated += 1;
                // A closed channel means the caller is gone; stop spending compute on it.
                if a.job.events.send(Event::Token { id: t, logprob: lp, text: delta.text }).is_err() {
                    return Step::Finished(FinishReason::Cancelled, None);
                }
                if delta.stopped {
                    return Step::Finished(FinishReason::StopSequence, None);
                }
                if (a.job.max_tokens > 0 && a.generated >= a.job.max_tokens) || seq.cache.len() + i + 1 >= model.info().context_length {
                    return Step::Finished(FinishReason::Length, None);
                }
            }
            if a.enforcer.as_ref().is_some_and(|e| e.grammar_finished()) {
                return Step::Finished(FinishReason::Stop, None);
            }
            match forward_and_mask(model, &batch, seq.cache.as_mut(), &interrupt, a.enforcer.as_mut()) {
                (Ok(next), next_mask) => {
                    seq.tokens.extend_from_slice(&batch);
                    *logits = next;
                    *mask = next_mask;
                    Step::Continue
                }
                (Err(e), _) => failed(a, seq, e),
            }
        }
    }
}

fn failed(a: &Active, seq: &mut Sequence, e: Error) -> Step {
    seq.tokens.truncate(seq.cache.len());
    if e.kind() == ErrorKind::Cancelled {
        return Step::Finished(a.job.control.stop_reason().unwrap_or(FinishReason::Cancelled), None);
    }
    Step::Finished(FinishReason::Error, Some(e))
}

fn finish(mut a: Active, reason: FinishReason, error: Option<Error>) {
    let tail = a.text.finish();
    if !tail.is_empty() && reason != FinishReason::StopSequence {
        let _ = a.job.events.send(Event::Tail { text: tail });
    }
    let now = Instant::now();
    let computed = a.job.prompt.len() - a.cached;
    let prefill_end = a.first_token.unwrap_or(now);
    let prefill_secs = prefill_end.duration_since(a.prefill_started).as_secs_f64();
    let decode_secs = a.first_token.map(|t| now.duration_since(t).as_secs_f64()).unwrap_or(0.0);
    let stats = GenerationStats {
        prompt_tokens: a.job.prompt.len(),
        cached_tokens: a.cached,
        generated_tokens: a.generated,
        time_to_first_token: a.first_token.map(|t| t.duration_since(a.job.submitted)).unwrap_or_default(),
        total_time: now.duration_since(a.job.submitted),
        prefill_tokens_per_second: if prefill_secs > 0.0 && a.first_token.is_some() { computed as f64 / prefill_secs } else { 0.0 },
        decode_tokens_per_second: if a.generated > 1 && decode_secs > 0.0 { (a.generated - 1) as f64 / decode_secs } else { 0.0 },
    };
    let (validation, constraint_stats) = match a.enforcer.as_mut() {
        Some(e) => (e.reports(reason.as_str(), reason == FinishReason::Stop), Some(e.stats())),
        None => (Vec::new(), None),
    };
    let _ = a.job.events.send(Event::Done(Box::new(Outcome { finish: reason, stats, error, validation, constraint_stats })));
}

/// Used by the session to turn a worker failure into an error for the caller.
pub(crate) fn worker_gone() -> Error {
    Error::new(ErrorKind::Internal, "the model worker has stopped")
}

