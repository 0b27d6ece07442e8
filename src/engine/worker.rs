//! The model worker: one thread per loaded model that owns every session's KV cache and serves
//! all sessions from one queue. Every step advances all active requests together in one batched
//! forward pass (a prefill chunk or the next decoded tokens each): continuous batching, so
//! sessions run side by side, none waits for another to finish, and the weights are read once
//! per step for all of them.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;

use super::control::Control;
use super::session::GenerateOptions;
use super::text::TextAssembler;
use crate::constraint::{apply_mask, CompiledConstraint, ConstraintReport, ConstraintStats, Enforcer, Mask};
use crate::error::{Error, ErrorKind};
use crate::model::tokenizer::Tokenizer;
use crate::model::{BatchStep, LanguageModel, SequenceCache};
use crate::result::{FinishReason, GenerationStats};
use crate::sampling::{log_prob, Sampler};

/// Prompt tokens computed per step, shared by every request still prefilling: bigger chunks are
/// faster, smaller ones keep other sessions' decode steps short. The interrupt poll inside the
/// forward pass keeps cancellation prompt regardless.
const PREFILL_CHUNK: usize = 128;

/// Shortest shared prefix worth copying from another sequence: below it, computing the tokens
/// costs about as much as copying their keys and values.
const MIN_SHARED_PREFIX: usize = 16;

pub(crate) type SessionId = u64;

pub(crate) enum Command {
    Generate(Box<Job>),
    Score(ScoreJob),
    Reset { session: SessionId },
    Close { session: SessionId },
}

/// A text to score: the log-probability of each of its tokens after the ones before.
pub(crate) struct ScoreJob {
    pub tokens: Vec<u32>,
    pub reply: Sender<crate::error::Result<Vec<f32>>>,
}

/// One generation request, tokenized and validated.
pub(crate) struct Job {
    pub session: SessionId,
    pub prompt: Vec<u32>,
    /// The caller's options (the session keeps the timeout; the worker never reads it).
    pub options: GenerateOptions,
    /// The seed this request samples with: `options.sampling.seed`, or one the engine drew.
    pub seed: u64,
    /// `options.constraints`, compiled.
    pub constraints: Vec<Arc<CompiledConstraint>>,
    pub control: Arc<Control>,
    pub events: Sender<Event>,
    pub submitted: Instant,
}

pub(crate) enum Event {
    Token {
        id: u32,
        logprob: Option<f32>,
        text: String,
    },
    /// Text released at the end without a token of its own (held-back bytes).
    Tail {
        text: String,
    },
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
    Prefill {
        next: usize,
    },
    /// Logits for the next token and, under constraints, the mask computed alongside them.
    Decode {
        logits: Vec<f32>,
        mask: Option<Result<Mask, Error>>,
    },
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

impl Active {
    fn new(job: Box<Job>, cached: usize, enforcer: Option<Enforcer>) -> Self {
        Self {
            phase: Phase::Prefill { next: cached },
            sampler: Sampler::new(job.options.sampling.clone(), job.seed),
            text: TextAssembler::new(job.options.stop.clone()),
            job,
            enforcer,
            generated: 0,
            cached,
            prefill_started: Instant::now(),
            first_token: None,
        }
    }

    /// The request's counts and timings, as of `now`.
    fn stats(&self, now: Instant) -> GenerationStats {
        let computed = self.job.prompt.len() - self.cached;
        let prefill_end = self.first_token.unwrap_or(now);
        let prefill_secs = prefill_end.duration_since(self.prefill_started).as_secs_f64();
        let decode_secs = self.first_token.map(|t| now.duration_since(t).as_secs_f64()).unwrap_or(0.0);
        GenerationStats {
            prompt_tokens: self.job.prompt.len(),
            cached_tokens: self.cached,
            generated_tokens: self.generated,
            time_to_first_token: self
                .first_token
                .map(|t| t.duration_since(self.job.submitted))
                .unwrap_or_default(),
            total_time: now.duration_since(self.job.submitted),
            prefill_tokens_per_second: if prefill_secs > 0.0 && self.first_token.is_some() {
                computed as f64 / prefill_secs
            } else {
                0.0
            },
            decode_tokens_per_second: if self.generated > 1 && decode_secs > 0.0 {
                (self.generated - 1) as f64 / decode_secs
            } else {
                0.0
            },
        }
    }
}

pub(crate) struct Worker {
    model: Arc<dyn LanguageModel>,
    tokenizer: Arc<Tokenizer>,
    pool: rayon::ThreadPool,
    sequences: HashMap<SessionId, Sequence>,
    active: Vec<Active>,
    prefixes: PrefixCache,
}

/// Sequences of closed or reset sessions, kept (least recently used first) so that a new
/// session whose prompt starts the same way (a shared system prompt) copies their keys and
/// values instead of recomputing them. Live sessions' sequences are searched as well.
struct PrefixCache {
    retired: VecDeque<Sequence>,
    budget_bytes: usize,
}

impl PrefixCache {
    fn keep(&mut self, seq: Sequence) {
        if self.budget_bytes == 0 || seq.tokens.len() < MIN_SHARED_PREFIX {
            return;
        }
        self.retired.push_back(seq);
        let mut total: usize = self.retired.iter().map(|s| s.cache.memory_bytes()).sum();
        while total > self.budget_bytes {
            let Some(oldest) = self.retired.pop_front() else { break };
            total -= oldest.cache.memory_bytes();
        }
    }
}

/// Tokens `seq` holds that `prompt` starts with.
fn shared_prefix(seq: &Sequence, prompt: &[u32]) -> usize {
    let held = seq.tokens.len().min(seq.cache.len());
    seq.tokens[..held].iter().zip(prompt).take_while(|(a, b)| a == b).count()
}

impl Worker {
    pub fn new(
        model: Arc<dyn LanguageModel>,
        tokenizer: Arc<Tokenizer>,
        pool: rayon::ThreadPool,
        prefix_cache_bytes: usize,
    ) -> Self {
        let prefixes = PrefixCache { retired: VecDeque::new(), budget_bytes: prefix_cache_bytes };
        Self { model, tokenizer, pool, sequences: HashMap::new(), active: Vec::new(), prefixes }
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
            Command::Score(job) => {
                let scores = self.score(&job.tokens);
                // The caller may have gone (its thread ended); nothing to tell it then.
                let _ = job.reply.send(scores);
            }
            Command::Reset { session } | Command::Close { session } => {
                if let Some(seq) = self.sequences.remove(&session) {
                    self.prefixes.keep(seq);
                }
            }
        }
    }

    /// Scores a text in one pass on a fresh cache, between two generation steps (running
    /// generations wait for it, as for a long prompt's prefill).
    fn score(&self, tokens: &[u32]) -> crate::error::Result<Vec<f32>> {
        let model = &self.model;
        self.pool.install(|| {
            catch_unwind(AssertUnwindSafe(|| {
                let mut cache = model.new_cache();
                model.score(&tokens[..tokens.len() - 1], &tokens[1..], cache.as_mut(), &|| false)
            }))
            .unwrap_or_else(|payload| Err(Error::from_panic(payload.as_ref())))
        })
    }

    fn start(&mut self, job: Box<Job>) {
        let cached = self.prepare_sequence(job.session, &job.prompt);
        let enforcer = (!job.constraints.is_empty()).then(|| {
            Enforcer::new(
                job.constraints.clone(),
                self.model.info().vocab_size,
                self.tokenizer.end_of_generation().to_vec(),
            )
        });
        self.active.push(Active::new(job, cached, enforcer));
    }

    /// Readies the session's sequence for `prompt`, keeping the longest prefix of it that the
    /// sequence holds or copying a longer one from another sequence; returns how many prompt
    /// tokens that leaves cached. At least the last prompt token is recomputed for its logits.
    fn prepare_sequence(&mut self, session: SessionId, prompt: &[u32]) -> usize {
        let usable = prompt.len().saturating_sub(1);
        let own = self.sequences.get(&session).map_or(0, |seq| shared_prefix(seq, prompt)).min(usable);
        let keep = match self.borrow_prefix(session, &prompt[..usable], own) {
            Some(borrowed) => {
                let keep = borrowed.tokens.len();
                if let Some(replaced) = self.sequences.insert(session, borrowed) {
                    self.prefixes.keep(replaced);
                }
                keep
            }
            None => own,
        };
        let model = &self.model;
        let seq = self
            .sequences
            .entry(session)
            .or_insert_with(|| Sequence { cache: model.new_cache(), tokens: Vec::new() });
        seq.cache.truncate(keep);
        seq.tokens.truncate(seq.cache.len());
        seq.tokens.len()
    }

    /// A copy of the longest prefix of `prompt` that another sequence (another session's, or a
    /// retired one) holds, when it is longer than `own` by enough to be worth copying.
    fn borrow_prefix(&mut self, session: SessionId, prompt: &[u32], own: usize) -> Option<Sequence> {
        let live = self.sequences.iter().filter(|(id, _)| **id != session).map(|(_, seq)| (None, seq));
        let retired = self.prefixes.retired.iter().enumerate().map(|(i, seq)| (Some(i), seq));
        let (slot, donor, len) = live
            .chain(retired)
            .map(|(slot, seq)| (slot, seq, shared_prefix(seq, prompt)))
            .max_by_key(|&(_, _, len)| len)?;
        if len < own + MIN_SHARED_PREFIX {
            return None;
        }
        let cache = donor.cache.fork(len)?;
        let copy = Sequence { cache, tokens: prompt[..len].to_vec() };
        if let Some(i) = slot {
            // Recently useful: evicted last.
            let seq = self.prefixes.retired.remove(i).expect("index from the scan");
            self.prefixes.retired.push_back(seq);
        }
        Some(copy)
    }

    /// One step for every active request, as one batch: each plans its tokens (a prefill chunk,
    /// or the token it samples plus any the grammar forces), one forward pass computes them all
    /// (with the next constraint masks alongside), then each takes its logits. Requests join and
    /// leave between steps.
    fn step_all(&mut self) {
        let mut rows = self.take_rows();
        self.plan_rows(&mut rows);
        self.compute_rows(&mut rows);
        self.return_rows(rows);
    }

    /// Every active request with its sequence, out of the worker for the step. A request whose
    /// session's state is gone (closed or reset while it ran) ends here.
    fn take_rows(&mut self) -> Vec<Row> {
        let mut rows = Vec::with_capacity(self.active.len());
        for active in std::mem::take(&mut self.active) {
            match self.sequences.remove(&active.job.session) {
                Some(sequence) => rows.push(Row::new(active, sequence)),
                None => finish(active, FinishReason::Error, Some(state_gone())),
            }
        }
        rows
    }

    /// Plans every row, in one hand-over to the pool (each costs a thread wake-up). Prefill
    /// chunks share the step's token budget, in arrival order; decoding requests (sampling, stop
    /// checks, streaming) are independent of each other and plan in parallel.
    fn plan_rows(&self, rows: &mut [Row]) {
        let (model, tokenizer) = (self.model.as_ref(), self.tokenizer.as_ref());
        self.pool.install(|| {
            let mut budget = PREFILL_CHUNK;
            for row in rows.iter_mut().filter(|row| row.is_prefilling()) {
                row.plan_step(model, tokenizer, &mut budget);
            }
            rows.par_iter_mut()
                .filter(|row| !row.is_prefilling())
                .for_each(|row| row.plan_step(model, tokenizer, &mut 0));
        });
    }

    /// Computes the rows that planned tokens and gives each its logits (or its error).
    fn compute_rows(&self, rows: &mut [Row]) {
        let mut computing: Vec<&mut Row> = rows.iter_mut().filter(|row| row.computes()).collect();
        if computing.is_empty() {
            return;
        }
        let (results, masks) = self.forward_with_masks(&mut computing);
        let mut masks = masks.into_iter();
        for (row, result) in computing.into_iter().zip(results) {
            let mask = if row.wants_mask() { masks.next() } else { None };
            row.take_result(result, mask);
        }
    }

    /// The forward pass for the computing rows, as one batch, with the masks of the rows that
    /// want one computed at the same time (a mask depends only on committed tokens). Results
    /// come in row order; masks in the order of the rows that want them.
    fn forward_with_masks(&self, rows: &mut [&mut Row]) -> (Vec<Result<Vec<f32>, Error>>, Vec<MaskResult>) {
        let model = self.model.as_ref();
        let mut steps = Vec::with_capacity(rows.len());
        let mut controls = Vec::with_capacity(rows.len());
        let mut enforcers = Vec::new();
        for row in rows.iter_mut() {
            let wants_mask = row.wants_mask();
            let (tokens, sequence, active) = row.parts();
            steps.push(BatchStep { tokens, cache: sequence.cache.as_mut() });
            controls.push(active.job.control.as_ref());
            if wants_mask {
                enforcers.extend(active.enforcer.as_mut());
            }
        }
        let mask_count = enforcers.len();
        // The batch stops early only when every request in it is stopped; a request stopped
        // alone ends at the start of the next step.
        let interrupt = || controls.iter().all(|c| c.is_stopped());
        let (batch, masks) = self.pool.install(|| {
            rayon::join(
                || catch_unwind(AssertUnwindSafe(|| model.forward_batch(&mut steps, &interrupt))),
                || {
                    catch_unwind(AssertUnwindSafe(|| {
                        enforcers.into_iter().map(|e| e.compute_mask()).collect::<Vec<_>>()
                    }))
                },
            )
        });
        let results = match batch {
            Ok(results) => results,
            Err(_) => rows.iter_mut().map(|row| self.forward_alone(row)).collect(),
        };
        let masks = masks.unwrap_or_else(|payload| {
            let e = Error::from_panic(payload.as_ref());
            (0..mask_count).map(|_| Err(e.clone())).collect()
        });
        (results, masks)
    }

    /// After a panic inside the batch: the row's cache repaired and its tokens run alone, so
    /// only the request that triggers the panic fails.
    fn forward_alone(&self, row: &mut Row) -> Result<Vec<f32>, Error> {
        let len = row.cache_len_at_start;
        let (tokens, sequence, active) = row.parts();
        sequence.cache.truncate(len);
        if sequence.cache.len() != len {
            return Err(Error::new(
                ErrorKind::Panic,
                "the model panicked and this session's cache could not be repaired",
            ));
        }
        let model = self.model.as_ref();
        let control = active.job.control.as_ref();
        let interrupt = || control.is_stopped();
        self.pool
            .install(|| {
                catch_unwind(AssertUnwindSafe(|| model.forward(tokens, sequence.cache.as_mut(), &interrupt)))
            })
            .unwrap_or_else(|payload| {
                sequence.cache.truncate(len);
                Err(Error::from_panic(payload.as_ref()))
            })
    }

    /// Ends the rows that finished and puts the others back, in their order, with every
    /// sequence back in the map.
    fn return_rows(&mut self, rows: Vec<Row>) {
        for row in rows {
            if let Some(sequence) = row.sequence {
                self.sequences.insert(row.active.job.session, sequence);
            }
            match row.plan {
                Some(Plan::Finished(reason, error)) => finish(row.active, reason, error),
                _ => self.active.push(row.active),
            }
        }
    }
}

type MaskResult = Result<Mask, Error>;

/// One active request in a step: its sequence (out of the map while the step runs; sessions
/// run one request at a time, so no two rows share one) and what it does in this step.
struct Row {
    active: Active,
    /// `None` once a panic while planning left its state unknown: the session starts afresh.
    sequence: Option<Sequence>,
    /// Positions in the cache when the step began (what a panicking pass is cut back to).
    cache_len_at_start: usize,
    /// `None`: nothing this step (the prefill budget is spent), or it goes on after it.
    plan: Option<Plan>,
}

impl Row {
    fn new(active: Active, sequence: Sequence) -> Self {
        let cache_len_at_start = sequence.cache.len();
        Self { active, sequence: Some(sequence), cache_len_at_start, plan: None }
    }

    fn is_prefilling(&self) -> bool {
        matches!(self.active.phase, Phase::Prefill { .. })
    }

    fn computes(&self) -> bool {
        matches!(self.plan, Some(Plan::Compute { .. }))
    }

    /// Whether the step's next constraint mask is computed alongside its forward pass.
    fn wants_mask(&self) -> bool {
        self.active.enforcer.is_some()
            && matches!(&self.plan, Some(Plan::Compute { after, .. }) if after.wants_logits())
    }

    /// A computing row's tokens, sequence and request, borrowed apart.
    fn parts(&mut self) -> (&[u32], &mut Sequence, &mut Active) {
        let Some(Plan::Compute { tokens, .. }) = &self.plan else { unreachable!("only computing rows") };
        let sequence = self.sequence.as_mut().expect("a computing row has its sequence");
        (tokens, sequence, &mut self.active)
    }

    /// Plans the step; a panic fails only this request, and drops its sequence.
    fn plan_step(&mut self, model: &dyn LanguageModel, tokenizer: &Tokenizer, budget: &mut usize) {
        let sequence = self.sequence.as_mut().expect("a row starts with its sequence");
        let planned =
            catch_unwind(AssertUnwindSafe(|| plan(model, tokenizer, &mut self.active, sequence, budget)));
        self.plan = planned.unwrap_or_else(|payload| {
            self.sequence = None;
            Some(Plan::Finished(FinishReason::Error, Some(Error::from_panic(payload.as_ref()))))
        });
    }

    /// Takes the computed step's logits (and next mask): the request goes on; or its error: it
    /// ends.
    fn take_result(&mut self, result: Result<Vec<f32>, Error>, mask: Option<MaskResult>) {
        let Some(Plan::Compute { tokens, after }) = self.plan.take() else {
            unreachable!("only computing rows")
        };
        let sequence = self.sequence.as_mut().expect("a computing row has its sequence");
        match result {
            Ok(logits) => {
                sequence.tokens.extend_from_slice(&tokens);
                self.active.phase = after.next_phase(logits, mask);
            }
            Err(e) => {
                sequence.tokens.truncate(sequence.cache.len());
                self.plan = Some(stopped_or_failed(&self.active.job.control, e));
            }
        }
    }
}

/// What a request does this step.
enum Plan {
    Compute { tokens: Vec<u32>, after: After },
    Finished(FinishReason, Option<Error>),
}

/// Where a computed step leaves the request.
enum After {
    /// Prompt computed up to `end`; `last` when that is the whole prompt.
    Prefill { end: usize, last: bool },
    /// Generated tokens computed.
    Decode,
}

impl After {
    /// Whether the step's logits (and so the next mask) will be used.
    fn wants_logits(&self) -> bool {
        matches!(self, After::Decode | After::Prefill { last: true, .. })
    }

    fn next_phase(self, logits: Vec<f32>, mask: Option<MaskResult>) -> Phase {
        match self {
            After::Prefill { end, last: false } => Phase::Prefill { next: end },
            After::Prefill { last: true, .. } | After::Decode => Phase::Decode { logits, mask },
        }
    }
}

/// Plans one request's step. `None`: nothing this step (the prefill budget is spent).
fn plan(
    model: &dyn LanguageModel,
    tokenizer: &Tokenizer,
    a: &mut Active,
    seq: &Sequence,
    budget: &mut usize,
) -> Option<Plan> {
    if let Some(reason) = a.job.control.stop_reason() {
        return Some(Plan::Finished(reason, None));
    }
    match a.phase {
        Phase::Prefill { next } => plan_prefill(&a.job.prompt, next, budget),
        Phase::Decode { .. } => Some(plan_decode(model, tokenizer, a, seq)),
    }
}

/// The next chunk of the prompt from `next`, as much as the step's remaining budget allows.
fn plan_prefill(prompt: &[u32], next: usize, budget: &mut usize) -> Option<Plan> {
    let take = (*budget).min(prompt.len() - next);
    if take == 0 {
        return None;
    }
    *budget -= take;
    let end = next + take;
    Some(Plan::Compute {
        tokens: prompt[next..end].to_vec(),
        after: After::Prefill { end, last: end == prompt.len() },
    })
}

/// Samples the next token, streams it with any tokens the grammar forces after it and plans
/// computing them; or ends the request.
fn plan_decode(model: &dyn LanguageModel, tokenizer: &Tokenizer, a: &mut Active, seq: &Sequence) -> Plan {
    let Phase::Decode { logits, mask } = &mut a.phase else { unreachable!("only decoding requests") };
    let id = match sample_next(logits, mask.take(), a.enforcer.as_mut(), &mut a.sampler, &seq.tokens) {
        Ok(id) => id,
        Err(end) => return end,
    };
    a.first_token.get_or_insert_with(Instant::now);
    if tokenizer.is_end_of_generation(id) && (a.enforcer.is_some() || !a.job.options.ignore_eos) {
        return Plan::Finished(FinishReason::Stop, None);
    }
    let logprob = a.job.options.logprobs.then(|| log_prob(logits, id));
    let mut tokens = vec![id];
    if let Some(enf) = a.enforcer.as_mut() {
        if let Err(e) = enf.commit(id) {
            return Plan::Finished(FinishReason::Error, Some(e));
        }
        tokens.extend(enf.take_forced());
    }
    if let Some(end) = stream_tokens(model, tokenizer, a, seq, &tokens, logprob) {
        return end;
    }
    if a.enforcer.as_mut().is_some_and(|e| e.grammar_finished()) {
        return Plan::Finished(FinishReason::Stop, None);
    }
    Plan::Compute { tokens, after: After::Decode }
}

/// The next token, drawn from the logits under the constraints' mask when there is one. `Err`:
/// the request ends instead (its grammar is complete, or its mask failed).
fn sample_next(
    logits: &[f32],
    mask: Option<MaskResult>,
    enforcer: Option<&mut Enforcer>,
    sampler: &mut Sampler,
    history: &[u32],
) -> Result<u32, Plan> {
    let masked;
    let choose_from: &[f32] = match (mask, enforcer) {
        (Some(Ok(m)), Some(enf)) => {
            if enf.grammar_finished() {
                return Err(Plan::Finished(FinishReason::Stop, None));
            }
            let mut l = logits.to_vec();
            apply_mask(&m, &mut l);
            masked = l;
            &masked
        }
        (Some(Err(e)), _) => return Err(Plan::Finished(FinishReason::Error, Some(e))),
        _ => logits,
    };
    Ok(sampler.sample(choose_from, history))
}

/// Streams the step's tokens (the sampled one, then any forced ones) as text. `Some`: the
/// request ends at one of them (a stop sequence, its length, or the caller gone).
fn stream_tokens(
    model: &dyn LanguageModel,
    tokenizer: &Tokenizer,
    a: &mut Active,
    seq: &Sequence,
    tokens: &[u32],
    sampled_logprob: Option<f32>,
) -> Option<Plan> {
    let max_tokens = a.job.options.max_tokens;
    for (i, &t) in tokens.iter().enumerate() {
        // Forced tokens were not sampled: their log-probability is not computed (NaN).
        let logprob = if i == 0 { sampled_logprob } else { a.job.options.logprobs.then_some(f32::NAN) };
        let delta = a.text.push(tokenizer.piece(t).unwrap_or_default());
        a.generated += 1;
        // A closed channel means the caller is gone; stop spending compute on it.
        if a.job.events.send(Event::Token { id: t, logprob, text: delta.text }).is_err() {
            return Some(Plan::Finished(FinishReason::Cancelled, None));
        }
        if delta.stopped {
            return Some(Plan::Finished(FinishReason::StopSequence, None));
        }
        if (max_tokens > 0 && a.generated >= max_tokens)
            || seq.cache.len() + i + 1 >= model.info().context_length
        {
            return Some(Plan::Finished(FinishReason::Length, None));
        }
    }
    None
}

fn state_gone() -> Error {
    Error::new(ErrorKind::Internal, "the session's state is gone")
}

/// How a request whose forward pass failed ends: stopped (the pass was interrupted) or failed.
fn stopped_or_failed(control: &Control, e: Error) -> Plan {
    if e.kind() == ErrorKind::Cancelled {
        return Plan::Finished(control.stop_reason().unwrap_or(FinishReason::Cancelled), None);
    }
    Plan::Finished(FinishReason::Error, Some(e))
}

/// Sends the request's last text and its outcome.
fn finish(mut a: Active, reason: FinishReason, error: Option<Error>) {
    let tail = a.text.finish();
    if !tail.is_empty() && reason != FinishReason::StopSequence {
        let _ = a.job.events.send(Event::Tail { text: tail });
    }
    let stats = a.stats(Instant::now());
    let (validation, constraint_stats) = match a.enforcer.as_mut() {
        Some(e) => (e.reports(reason.as_str(), reason == FinishReason::Stop), Some(e.stats())),
        None => (Vec::new(), None),
    };
    let _ = a.job.events.send(Event::Done(Box::new(Outcome {
        finish: reason,
        stats,
        error,
        validation,
        constraint_stats,
    })));
}

/// Used by the session to turn a worker failure into an error for the caller.
pub(crate) fn worker_gone() -> Error {
    Error::new(ErrorKind::Internal, "the model worker has stopped")
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{channel, Receiver};
    use std::sync::{Mutex, OnceLock};

    use super::*;
    use crate::model::gguf::GgufFile;
    use crate::model::ModelInfo;
    use crate::sampling::SamplingParams;
    use crate::testing::TinyModel;

    /// The tiny model's byte-level vocabulary: token `b` below 256 stands for byte `b`.
    fn tokenizer() -> Arc<Tokenizer> {
        static TOKENIZER: OnceLock<Arc<Tokenizer>> = OnceLock::new();
        TOKENIZER
            .get_or_init(|| {
                let path =
                    std::env::temp_dir().join(format!("maze-worker-tests-{}.gguf", std::process::id()));
                TinyModel::default().write(&path).unwrap();
                let tokenizer = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
                let _ = std::fs::remove_file(&path);
                Arc::new(tokenizer)
            })
            .clone()
    }

    fn bytes(text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }

    /// A model that knows one document: holding `n` positions, its logits pick the document's
    /// token `n` (end of generation past its end), so a prompt taken from the document generates
    /// the rest of it however the steps are batched. It records what each batch computes.
    struct Document {
        info: ModelInfo,
        tokens: Vec<u32>,
        end: u32,
        /// Token counts of each forward pass's items.
        batches: Mutex<Vec<Vec<usize>>>,
        /// Requests stopped as the next pass begins (a cancel arriving mid-pass).
        stop_in_pass: Mutex<Vec<Arc<Control>>>,
        /// A token whose forward pass panics.
        poison: Option<u32>,
    }

    struct Positions(usize);

    impl SequenceCache for Positions {
        fn len(&self) -> usize {
            self.0
        }
        fn truncate(&mut self, len: usize) {
            self.0 = self.0.min(len);
        }
        fn fork(&self, len: usize) -> Option<Box<dyn SequenceCache>> {
            Some(Box::new(Positions(len.min(self.0))))
        }
        /// One byte a position, so prefix-cache budgets count positions.
        fn memory_bytes(&self) -> usize {
            self.0
        }
        fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
            self
        }
    }

    impl LanguageModel for Document {
        fn info(&self) -> &ModelInfo {
            &self.info
        }
        fn new_cache(&self) -> Box<dyn SequenceCache> {
            Box::new(Positions(0))
        }
        fn forward(
            &self,
            tokens: &[u32],
            cache: &mut dyn SequenceCache,
            interrupt: &dyn Fn() -> bool,
        ) -> crate::error::Result<Vec<f32>> {
            if interrupt() {
                return Err(Error::new(ErrorKind::Cancelled, "interrupted"));
            }
            assert!(self.poison.is_none_or(|p| !tokens.contains(&p)), "poison token");
            let cache = cache.as_any_mut().downcast_mut::<Positions>().unwrap();
            cache.0 += tokens.len();
            let mut logits = vec![0.0; self.info.vocab_size];
            logits[self.tokens.get(cache.0).copied().unwrap_or(self.end) as usize] = 1.0;
            Ok(logits)
        }
        fn forward_batch(
            &self,
            items: &mut [BatchStep<'_>],
            interrupt: &dyn Fn() -> bool,
        ) -> Vec<crate::error::Result<Vec<f32>>> {
            self.stop_in_pass.lock().unwrap().drain(..).for_each(|c| c.cancel());
            self.batches.lock().unwrap().push(items.iter().map(|it| it.tokens.len()).collect());
            items.iter_mut().map(|it| self.forward(it.tokens, &mut *it.cache, interrupt)).collect()
        }
    }

    /// A worker over a [`Document`], stepped by hand.
    struct Harness {
        worker: Worker,
        model: Arc<Document>,
    }

    /// One submitted request, seen from the caller's side.
    struct Request {
        control: Arc<Control>,
        events: Receiver<Event>,
    }

    /// What a request streamed, and its outcome once it has one.
    #[derive(Default)]
    struct Streamed {
        pieces: Vec<String>,
        tokens: Vec<u32>,
        tail: Option<String>,
        outcome: Option<Outcome>,
    }

    impl Streamed {
        fn text(&self) -> String {
            self.pieces.concat() + self.tail.as_deref().unwrap_or("")
        }
        fn finish(&self) -> FinishReason {
            self.outcome.as_ref().expect("the request has ended").finish
        }
        fn stats(&self) -> &GenerationStats {
            &self.outcome.as_ref().expect("the request has ended").stats
        }
    }

    impl Request {
        /// Everything streamed since the last look.
        fn streamed(&self) -> Streamed {
            let mut seen = Streamed::default();
            for event in self.events.try_iter() {
                match event {
                    Event::Token { id, text, .. } => {
                        seen.tokens.push(id);
                        seen.pieces.push(text);
                    }
                    Event::Tail { text } => seen.tail = Some(text),
                    Event::Done(outcome) => seen.outcome = Some(*outcome),
                }
            }
            seen
        }
    }

    impl Harness {
        fn new(document: &[u32], context_length: usize, prefix_cache_bytes: usize) -> Self {
            Self::with_poison(document, context_length, prefix_cache_bytes, None)
        }

        fn with_poison(
            document: &[u32],
            context_length: usize,
            prefix_cache_bytes: usize,
            poison: Option<u32>,
        ) -> Self {
            let tokenizer = tokenizer();
            let info = ModelInfo {
                architecture: "test".into(),
                name: "document".into(),
                vocab_size: tokenizer.vocab_size(),
                trained_context_length: context_length,
                context_length,
                n_layers: 0,
                embedding_length: 0,
                compute: "test".into(),
            };
            let model = Arc::new(Document {
                info,
                tokens: document.to_vec(),
                end: tokenizer.eos().expect("the tiny vocabulary has an end token"),
                batches: Mutex::new(Vec::new()),
                stop_in_pass: Mutex::new(Vec::new()),
                poison,
            });
            let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
            let worker = Worker::new(model.clone(), tokenizer, pool, prefix_cache_bytes);
            Self { worker, model }
        }

        fn submit(&mut self, session: SessionId, prompt: &[u32], options: GenerateOptions) -> Request {
            let (events, receiver) = channel();
            let control = Arc::new(Control::new());
            self.worker.handle(Command::Generate(Box::new(Job {
                session,
                prompt: prompt.to_vec(),
                options,
                seed: 1,
                constraints: Vec::new(),
                control: control.clone(),
                events,
                submitted: Instant::now(),
            })));
            Request { control, events: receiver }
        }

        /// Runs one step; what each request in its forward pass computed (empty: no pass).
        fn step(&mut self) -> Vec<usize> {
            let before = self.model.batches.lock().unwrap().len();
            self.worker.step_all();
            let batches = self.model.batches.lock().unwrap();
            if batches.len() > before {
                batches.last().unwrap().clone()
            } else {
                Vec::new()
            }
        }

        /// Steps until no request is active; every step's pass.
        fn run(&mut self) -> Vec<Vec<usize>> {
            let mut steps = Vec::new();
            while !self.worker.active.is_empty() {
                steps.push(self.step());
            }
            steps
        }

        /// First token of each retired sequence, least recently used first.
        fn retired_openings(&self) -> Vec<u32> {
            self.worker.prefixes.retired.iter().map(|seq| seq.tokens[0]).collect()
        }
    }

    fn greedy(max_tokens: usize) -> GenerateOptions {
        GenerateOptions { max_tokens, sampling: SamplingParams::greedy(), ..Default::default() }
    }

    /// 400 byte tokens, none of them special.
    fn long_document() -> Vec<u32> {
        (0..400).map(|i| 33 + i % 90).collect()
    }

    #[test]
    fn a_long_prompt_is_prefilled_in_chunks_then_decoded_a_token_a_step() {
        let doc = long_document();
        let mut h = Harness::new(&doc, 1024, 0);
        let r = h.submit(1, &doc[..300], greedy(3));
        assert_eq!(h.run(), [vec![128], vec![128], vec![44], vec![1], vec![1], vec![]]);
        let seen = r.streamed();
        assert_eq!(seen.tokens, doc[300..303]);
        assert_eq!(seen.finish(), FinishReason::Length);
        assert_eq!((seen.stats().prompt_tokens, seen.stats().generated_tokens), (300, 3));
    }

    #[test]
    fn requests_prefilling_together_share_one_chunk_in_arrival_order() {
        let doc = long_document();
        let mut h = Harness::new(&doc, 1024, 0);
        let a = h.submit(1, &doc[..100], greedy(3));
        let b = h.submit(2, &doc[..100], greedy(3));
        // B gets what A leaves of the chunk, then the rest while A decodes.
        assert_eq!(h.run(), [vec![100, 28], vec![1, 72], vec![1, 1], vec![1], vec![]]);
        assert_eq!(a.streamed().tokens, doc[100..103]);
        assert_eq!(b.streamed().tokens, doc[100..103]);
    }

    #[test]
    fn a_request_arriving_mid_run_joins_the_next_step() {
        let doc = long_document();
        let mut h = Harness::new(&doc, 1024, 0);
        let a = h.submit(1, &doc[..10], greedy(7));
        assert_eq!([h.step(), h.step(), h.step()], [vec![10], vec![1], vec![1]]);
        let b = h.submit(2, &doc[..5], greedy(2));
        assert_eq!([h.step(), h.step(), h.step()], [vec![1, 5], vec![1, 1], vec![1]]);
        assert_eq!(b.streamed().tokens, doc[5..7], "joining mid-run changes nothing for the newcomer");
        assert_eq!(h.run(), [vec![1], vec![]]);
        assert_eq!(a.streamed().tokens, doc[10..17], "nor for the request already running");
    }

    #[test]
    fn a_stopped_request_leaves_at_the_next_step_and_the_others_go_on() {
        let doc = long_document();
        let mut h = Harness::new(&doc, 1024, 0);
        let a = h.submit(1, &doc[..10], greedy(0));
        let b = h.submit(2, &doc[..10], greedy(0));
        let c = h.submit(3, &doc[..10], greedy(4));
        assert_eq!([h.step(), h.step()], [vec![10, 10, 10], vec![1, 1, 1]]);
        a.control.cancel();
        b.control.time_out();
        assert_eq!(h.step(), [1], "only C computes");
        assert_eq!(a.streamed().finish(), FinishReason::Cancelled);
        assert_eq!(b.streamed().finish(), FinishReason::Timeout);
        h.run();
        assert_eq!(c.streamed().finish(), FinishReason::Length);
    }

    #[test]
    fn a_stop_during_the_pass_interrupts_it_only_when_every_request_in_it_is_stopped() {
        let doc = long_document();
        let mut h = Harness::new(&doc, 1024, 0);
        let a = h.submit(1, &doc[..10], greedy(0));
        let b = h.submit(2, &doc[..10], greedy(0));
        h.step();
        h.model.stop_in_pass.lock().unwrap().push(a.control.clone());
        assert_eq!(h.step(), [1, 1]);
        assert_eq!(h.worker.sequences[&1].cache.len(), 11, "the pass went on for both");
        assert_eq!(h.step(), [1], "A leaves at the next step");
        assert_eq!(a.streamed().finish(), FinishReason::Cancelled);

        h.model.stop_in_pass.lock().unwrap().push(b.control.clone());
        assert_eq!(h.step(), [1]);
        assert_eq!(b.streamed().finish(), FinishReason::Cancelled, "B alone: the pass stops");
        let seq = &h.worker.sequences[&2];
        assert_eq!((seq.cache.len(), seq.tokens.len()), (12, 12), "the sequence is as before the pass");
        assert!(h.worker.active.is_empty());
    }

    #[test]
    fn a_session_reuses_its_own_prefix_recomputing_at_least_the_last_prompt_token() {
        let doc = long_document();
        let mut h = Harness::new(&doc, 1024, 0);
        h.submit(1, &doc[..40], greedy(2));
        h.run();
        let again = h.submit(1, &doc[..40], greedy(2));
        assert_eq!(h.step(), [1]);
        h.run();
        assert_eq!(again.streamed().stats().cached_tokens, 39);
        // The sequence holds the prompt and the first generated token (the last is never computed).
        let longer = h.submit(1, &doc[..50], greedy(2));
        assert_eq!(h.step(), [9]);
        h.run();
        assert_eq!(longer.streamed().stats().cached_tokens, 41);
        let other = h.submit(1, &bytes("something else entirely"), greedy(2));
        h.run();
        assert_eq!(other.streamed().stats().cached_tokens, 0);
    }

    #[test]
    fn a_live_sessions_prefix_is_copied_only_when_long_enough() {
        let doc = long_document();
        let mut h = Harness::new(&doc, 1024, 0);
        h.submit(1, &doc[..40], greedy(1));
        h.run();
        let tail = [5, 5, 5];
        let long = h.submit(2, &[&doc[..32], &tail[..]].concat(), greedy(1));
        assert_eq!(h.step(), [3], "the shared 32 tokens are copied, not computed");
        h.run();
        assert_eq!(long.streamed().stats().cached_tokens, 32);
        assert_eq!(h.worker.sequences[&1].cache.len(), 40, "the donor keeps its own");
        let short = h.submit(3, &[&doc[..MIN_SHARED_PREFIX - 1], &tail[..]].concat(), greedy(1));
        h.run();
        assert_eq!(short.streamed().stats().cached_tokens, 0);
    }

    #[test]
    fn retired_sequences_serve_new_sessions_and_the_least_recently_used_goes_first() {
        let doc = long_document();
        // Room for two 40-position sequences.
        let mut h = Harness::new(&doc, 1024, 100);
        let opening = |k: u32| vec![k; 40];
        for k in 1..=3 {
            h.submit(k as SessionId, &opening(k), greedy(1));
            h.run();
            h.worker.handle(Command::Close { session: k as SessionId });
        }
        assert_eq!(h.retired_openings(), [2, 3], "the oldest went over the budget");
        let gone = h.submit(4, &[opening(1), vec![9]].concat(), greedy(1));
        h.run();
        assert_eq!(gone.streamed().stats().cached_tokens, 0);
        let kept = h.submit(5, &[opening(2), vec![9]].concat(), greedy(1));
        h.run();
        assert_eq!(kept.streamed().stats().cached_tokens, 40);
        assert_eq!(h.retired_openings(), [3, 2], "a borrowed sequence is used most recently");
        h.worker.handle(Command::Reset { session: 5 });
        assert_eq!(h.retired_openings(), [2, 2], "a reset session's sequence is kept too");
    }

    #[test]
    fn the_prefix_cache_keeps_nothing_without_a_budget_nor_short_sequences() {
        let mut h = Harness::new(&long_document(), 1024, 0);
        h.submit(1, &[7; 40], greedy(1));
        h.run();
        h.worker.handle(Command::Close { session: 1 });
        assert!(h.retired_openings().is_empty());
        let mut h = Harness::new(&long_document(), 1024, 1000);
        h.submit(1, &[7; MIN_SHARED_PREFIX - 1], greedy(1));
        h.run();
        h.worker.handle(Command::Close { session: 1 });
        assert!(h.retired_openings().is_empty());
    }

    #[test]
    fn generation_ends_at_a_stop_sequence_and_never_streams_past_it() {
        let doc = bytes("Hello world\nUser: more text");
        let mut h = Harness::new(&doc, 1024, 0);
        let r = h.submit(1, &doc[..5], GenerateOptions { stop: vec!["\nUser:".into()], ..greedy(0) });
        h.run();
        let seen = r.streamed();
        assert_eq!(seen.finish(), FinishReason::StopSequence);
        assert_eq!(seen.text(), " world");
        assert!(seen.tail.is_none(), "the held-back start of the stop sequence is never sent");
        assert_eq!(seen.tokens, doc[5..17], "the tokens of the stop sequence are reported");
    }

    #[test]
    fn a_character_split_across_tokens_is_streamed_whole() {
        let doc = bytes("ab🦀c");
        let mut h = Harness::new(&doc, 1024, 0);
        let r = h.submit(1, &doc[..2], greedy(5));
        h.run();
        let seen = r.streamed();
        assert_eq!(seen.pieces, ["", "", "", "🦀", "c"]);
        assert_eq!(seen.finish(), FinishReason::Length);
    }

    #[test]
    fn an_unfinished_character_at_the_end_is_sent_as_a_replacement_tail() {
        let doc = bytes("ab🦀");
        let mut h = Harness::new(&doc, 1024, 0);
        let r = h.submit(1, &doc[..2], greedy(2));
        h.run();
        let seen = r.streamed();
        assert_eq!((seen.pieces.concat(), seen.tail.as_deref()), (String::new(), Some("\u{fffd}")));
    }

    #[test]
    fn the_end_of_generation_token_stops_unless_ignored() {
        let doc = bytes("hi");
        let mut h = Harness::new(&doc, 1024, 0);
        let r = h.submit(1, &doc[..1], greedy(5));
        h.run();
        let seen = r.streamed();
        assert_eq!((seen.finish(), seen.text()), (FinishReason::Stop, "i".to_string()));
        let end = h.model.end;
        let r = h.submit(2, &doc[..1], GenerateOptions { ignore_eos: true, ..greedy(3) });
        h.run();
        let seen = r.streamed();
        assert_eq!((seen.finish(), seen.tokens), (FinishReason::Length, vec![u32::from(b'i'), end, end]));
    }

    #[test]
    fn a_full_context_ends_generation_with_length() {
        let doc = long_document();
        let mut h = Harness::new(&doc, 64, 0);
        let r = h.submit(1, &doc[..60], greedy(0));
        h.run();
        let seen = r.streamed();
        assert_eq!(seen.finish(), FinishReason::Length);
        assert_eq!(seen.stats().prompt_tokens + seen.stats().generated_tokens, 64);
    }

    #[test]
    fn a_caller_gone_cancels_its_request() {
        let doc = long_document();
        let mut h = Harness::new(&doc, 1024, 0);
        let r = h.submit(1, &doc[..10], greedy(0));
        h.step();
        drop(r);
        assert_eq!(h.step(), Vec::<usize>::new());
        assert!(h.worker.active.is_empty());
        assert_eq!(h.worker.sequences[&1].cache.len(), 10, "the session keeps its sequence");
    }

    #[test]
    fn a_session_closed_mid_run_ends_its_request_with_an_error() {
        let doc = long_document();
        let mut h = Harness::new(&doc, 1024, 1000);
        let r = h.submit(1, &doc[..20], greedy(0));
        h.step();
        h.worker.handle(Command::Close { session: 1 });
        assert_eq!(h.step(), Vec::<usize>::new());
        let seen = r.streamed();
        assert_eq!(seen.finish(), FinishReason::Error);
        assert_eq!(seen.outcome.unwrap().error.unwrap().kind(), ErrorKind::Internal);
        assert_eq!(h.retired_openings(), [doc[0]]);
    }

    #[test]
    fn a_panic_in_the_batch_fails_only_the_request_that_triggers_it() {
        let doc = long_document();
        let poison = 260;
        let mut h = Harness::with_poison(&doc, 1024, 0, Some(poison));
        let healthy = h.submit(1, &doc[..10], greedy(5));
        h.step();
        let poisoned = h.submit(2, &[1, poison], greedy(5));
        assert_eq!(h.step(), [1, 2]);
        let failed = poisoned.streamed();
        assert_eq!(failed.finish(), FinishReason::Error);
        let error = failed.outcome.unwrap().error.unwrap();
        assert_eq!(error.kind(), ErrorKind::Panic);
        assert!(error.message().contains("poison token"), "{error}");
        assert_eq!(h.worker.sequences[&2].cache.len(), 0, "its cache is cut back");
        h.run();
        let seen = healthy.streamed();
        assert_eq!((seen.finish(), seen.tokens), (FinishReason::Length, doc[10..15].to_vec()));
    }
}
