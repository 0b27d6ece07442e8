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
    Reset { session: SessionId },
    Close { session: SessionId },
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
            Command::Reset { session } | Command::Close { session } => {
                if let Some(seq) = self.sequences.remove(&session) {
                    self.prefixes.keep(seq);
                }
            }
        }
    }

    fn start(&mut self, job: Box<Job>) {
        // Reuse the cached prefix; at least the last prompt token is recomputed for its logits.
        let usable = job.prompt.len().saturating_sub(1);
        let own =
            self.sequences.get(&job.session).map_or(0, |seq| shared_prefix(seq, &job.prompt)).min(usable);
        let keep = match self.borrow_prefix(job.session, &job.prompt[..usable], own) {
            Some(borrowed) => {
                let keep = borrowed.tokens.len();
                if let Some(replaced) = self.sequences.insert(job.session, borrowed) {
                    self.prefixes.keep(replaced);
                }
                keep
            }
            None => own,
        };
        let model = &self.model;
        let seq = self
            .sequences
            .entry(job.session)
            .or_insert_with(|| Sequence { cache: model.new_cache(), tokens: Vec::new() });
        seq.cache.truncate(keep);
        seq.tokens.truncate(seq.cache.len());
        let cached = seq.tokens.len();
        let sampler = Sampler::new(job.options.sampling.clone(), job.seed);
        let text = TextAssembler::new(job.options.stop.clone());
        let enforcer = (!job.constraints.is_empty()).then(|| {
            Enforcer::new(
                job.constraints.clone(),
                self.model.info().vocab_size,
                self.tokenizer.end_of_generation().to_vec(),
            )
        });
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
        let (model, tokenizer) = (self.model.clone(), self.tokenizer.clone());
        let (actives, sequences) = (&mut self.active, &mut self.sequences);
        let sessions: Vec<SessionId> = actives.iter().map(|a| a.job.session).collect();
        // One hand-over to the pool for every request's plan (each costs a thread wake-up).
        let planned: Vec<std::thread::Result<Option<Plan>>> = self.pool.install(|| {
            let mut owned: HashMap<SessionId, &mut Sequence> =
                sequences.iter_mut().map(|(id, seq)| (*id, seq)).collect();
            let mut work: Vec<(&mut Active, Option<&mut Sequence>)> = actives
                .iter_mut()
                .map(|a| {
                    let seq = owned.remove(&a.job.session);
                    (a, seq)
                })
                .collect();
            let run = |(active, seq): &mut (&mut Active, Option<&mut Sequence>), budget: &mut usize| match seq
            {
                Some(seq) => catch_unwind(AssertUnwindSafe(|| {
                    plan(model.as_ref(), tokenizer.as_ref(), active, seq, budget)
                })),
                None => Ok(Some(Plan::Finished(FinishReason::Error, Some(state_gone())))),
            };
            // Prefill chunks share the step's token budget, in order; decoding requests (sampling,
            // stop checks, streaming) are independent of each other and plan in parallel.
            let mut budget = PREFILL_CHUNK;
            let mut out: Vec<Option<std::thread::Result<Option<Plan>>>> = work
                .iter_mut()
                .map(|w| matches!(w.0.phase, Phase::Prefill { .. }).then(|| run(w, &mut budget)))
                .collect();
            work.par_iter_mut()
                .zip(out.par_iter_mut())
                .filter(|(_, o)| o.is_none())
                .for_each(|(w, o)| *o = Some(run(w, &mut 0)));
            out.into_iter().map(|o| o.expect("every request planned")).collect()
        });
        let mut plans: Vec<Option<Plan>> = planned
            .into_iter()
            .zip(sessions)
            .map(|(planned, session)| {
                planned.unwrap_or_else(|payload| {
                    self.sequences.remove(&session);
                    Some(Plan::Finished(FinishReason::Error, Some(Error::from_panic(payload.as_ref()))))
                })
            })
            .collect();

        let computing: Vec<usize> =
            (0..plans.len()).filter(|&i| matches!(plans[i], Some(Plan::Compute { .. }))).collect();
        if !computing.is_empty() {
            let results = self.compute(&computing, &plans);
            for (&i, result) in computing.iter().zip(results) {
                let session = self.active[i].job.session;
                let Some(Plan::Compute { tokens, after, .. }) = plans[i].take() else {
                    unreachable!("filtered above")
                };
                plans[i] = match (result, self.sequences.get_mut(&session)) {
                    (Ok((logits, mask)), Some(seq)) => {
                        apply(&mut self.active[i], seq, tokens, after, logits, mask)
                    }
                    (Err(e), Some(seq)) => failed(&self.active[i], seq, e),
                    (Err(e), None) => Some(Plan::Finished(FinishReason::Error, Some(e))),
                    (Ok(_), None) => Some(Plan::Finished(FinishReason::Error, Some(state_gone()))),
                };
            }
        }
        // Finish from the back so indices stay valid.
        for i in (0..plans.len()).rev() {
            if let Some(Plan::Finished(reason, error)) = plans[i].take() {
                finish(self.active.swap_remove(i), reason, error);
            }
        }
    }

    /// The forward pass for the planned requests `which`, as one batch, with the masks of the
    /// constrained ones computed at the same time (a mask depends only on committed tokens).
    fn compute(
        &mut self,
        which: &[usize],
        plans: &[Option<Plan>],
    ) -> Vec<Result<(Vec<f32>, Option<Result<Mask, Error>>), Error>> {
        let model = self.model.clone();
        let tokens: Vec<&[u32]> = which
            .iter()
            .map(|&i| match &plans[i] {
                Some(Plan::Compute { tokens, .. }) => tokens.as_slice(),
                _ => &[],
            })
            .collect();
        // Positions (in `which`) whose next mask is computed alongside the forward pass.
        let mask_owners: Vec<usize> = (0..which.len())
            .filter(|&k| matches!(&plans[which[k]], Some(Plan::Compute { after, constrained: true, .. }) if after.wants_logits()))
            .collect();
        // Each sequence leaves the map for the step (sessions run one request at a time, so
        // they are distinct) and comes back after it.
        let mut seqs: Vec<(SessionId, Sequence)> = which
            .iter()
            .filter_map(|&i| {
                let id = self.active[i].job.session;
                self.sequences.remove(&id).map(|s| (id, s))
            })
            .collect();
        if seqs.len() != which.len() {
            self.sequences.extend(seqs);
            return which.iter().map(|_| Err(state_gone())).collect();
        }
        let before: Vec<usize> = seqs.iter().map(|(_, s)| s.cache.len()).collect();
        let controls: Vec<Arc<Control>> = which.iter().map(|&i| self.active[i].job.control.clone()).collect();
        // The batch stops early only when every request in it is stopped; a request stopped
        // alone ends at the start of the next step.
        let interrupt = || controls.iter().all(|c| c.is_stopped());
        let owner_indices: Vec<usize> = mask_owners.iter().map(|&k| which[k]).collect();
        let enforcers: Vec<&mut Enforcer> = self
            .active
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| owner_indices.contains(i))
            .filter_map(|(_, a)| a.enforcer.as_mut())
            .collect();
        let (batch, masks) = self.pool.install(|| {
            rayon::join(
                || {
                    catch_unwind(AssertUnwindSafe(|| {
                        let mut steps: Vec<BatchStep<'_>> = seqs
                            .iter_mut()
                            .zip(&tokens)
                            .map(|((_, s), t)| BatchStep { tokens: t, cache: s.cache.as_mut() })
                            .collect();
                        model.forward_batch(&mut steps, &interrupt)
                    }))
                },
                || {
                    catch_unwind(AssertUnwindSafe(|| {
                        enforcers.into_iter().map(|e| e.compute_mask()).collect::<Vec<_>>()
                    }))
                },
            )
        });
        let batch = match batch {
            Ok(results) => results,
            Err(_) => {
                // A panic inside the batch: repair each cache and run each request alone, so
                // only the request that triggers it fails.
                seqs.iter_mut()
                    .zip(&before)
                    .zip(&tokens)
                    .zip(&controls)
                    .map(|((((_, s), &len), t), control)| {
                        s.cache.truncate(len);
                        if s.cache.len() != len {
                            return Err(Error::new(
                                ErrorKind::Panic,
                                "the model panicked and this session's cache could not be repaired",
                            ));
                        }
                        let interrupt = || control.is_stopped();
                        self.pool
                            .install(|| {
                                catch_unwind(AssertUnwindSafe(|| {
                                    model.forward(t, s.cache.as_mut(), &interrupt)
                                }))
                            })
                            .unwrap_or_else(|payload| {
                                s.cache.truncate(len);
                                Err(Error::from_panic(payload.as_ref()))
                            })
                    })
                    .collect()
            }
        };
        let mut masks = match masks {
            Ok(m) => m.into_iter().map(Some).collect::<Vec<_>>(),
            Err(payload) => {
                let e = Error::from_panic(payload.as_ref());
                mask_owners.iter().map(|_| Some(Err(e.clone()))).collect()
            }
        };
        let mut mask_of = vec![None; which.len()];
        for (slot, &k) in masks.iter_mut().zip(&mask_owners) {
            mask_of[k] = slot.take();
        }
        self.sequences.extend(seqs);
        batch.into_iter().zip(mask_of).map(|(r, m)| r.map(|logits| (logits, m))).collect()
    }
}

/// What a request does this step.
enum Plan {
    Compute { tokens: Vec<u32>, after: After, constrained: bool },
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
}

/// Plans one request's step. `None`: nothing this step (the prefill budget is spent).
fn plan(
    model: &dyn LanguageModel,
    tokenizer: &Tokenizer,
    a: &mut Active,
    seq: &mut Sequence,
    budget: &mut usize,
) -> Option<Plan> {
    if let Some(reason) = a.job.control.stop_reason() {
        return Some(Plan::Finished(reason, None));
    }
    let constrained = a.enforcer.is_some();
    match &mut a.phase {
        Phase::Prefill { next } => {
            let take = (*budget).min(a.job.prompt.len() - *next);
            if take == 0 {
                return None;
            }
            *budget -= take;
            let end = *next + take;
            Some(Plan::Compute {
                tokens: a.job.prompt[*next..end].to_vec(),
                after: After::Prefill { end, last: end == a.job.prompt.len() },
                constrained,
            })
        }
        Phase::Decode { logits, mask } => {
            let masked;
            let choose_from: &[f32] = match (mask.take(), a.enforcer.as_ref()) {
                (Some(Ok(m)), Some(enf)) => {
                    if enf.grammar_finished() {
                        return Some(Plan::Finished(FinishReason::Stop, None));
                    }
                    let mut l = logits.clone();
                    apply_mask(&m, &mut l);
                    masked = l;
                    &masked
                }
                (Some(Err(e)), _) => return Some(Plan::Finished(FinishReason::Error, Some(e))),
                _ => logits,
            };
            let id = a.sampler.sample(choose_from, &seq.tokens);
            a.first_token.get_or_insert_with(Instant::now);
            if tokenizer.is_end_of_generation(id) && (constrained || !a.job.options.ignore_eos) {
                return Some(Plan::Finished(FinishReason::Stop, None));
            }
            let logprob = a.job.options.logprobs.then(|| log_prob(logits, id));
            let mut batch = vec![id];
            if let Some(enf) = a.enforcer.as_mut() {
                if let Err(e) = enf.commit(id) {
                    return Some(Plan::Finished(FinishReason::Error, Some(e)));
                }
                batch.extend(enf.take_forced());
            }
            for (i, &t) in batch.iter().enumerate() {
                // Forced tokens were not sampled: their log-probability is not computed (NaN).
                let lp = if i == 0 { logprob } else { a.job.options.logprobs.then_some(f32::NAN) };
                let delta = a.text.push(tokenizer.piece(t).unwrap_or_default());
                a.generated += 1;
                // A closed channel means the caller is gone; stop spending compute on it.
                if a.job.events.send(Event::Token { id: t, logprob: lp, text: delta.text }).is_err() {
                    return Some(Plan::Finished(FinishReason::Cancelled, None));
                }
                if delta.stopped {
                    return Some(Plan::Finished(FinishReason::StopSequence, None));
                }
                if (a.job.options.max_tokens > 0 && a.generated >= a.job.options.max_tokens)
                    || seq.cache.len() + i + 1 >= model.info().context_length
                {
                    return Some(Plan::Finished(FinishReason::Length, None));
                }
            }
            if a.enforcer.as_ref().is_some_and(|e| e.grammar_finished()) {
                return Some(Plan::Finished(FinishReason::Stop, None));
            }
            Some(Plan::Compute { tokens: batch, after: After::Decode, constrained })
        }
    }
}

/// Takes a computed step's logits (and next mask). `None`: the request goes on.
fn apply(
    a: &mut Active,
    seq: &mut Sequence,
    tokens: Vec<u32>,
    after: After,
    logits: Vec<f32>,
    mask: Option<Result<Mask, Error>>,
) -> Option<Plan> {
    seq.tokens.extend_from_slice(&tokens);
    match after {
        After::Prefill { end, last: false } => a.phase = Phase::Prefill { next: end },
        After::Prefill { last: true, .. } | After::Decode => a.phase = Phase::Decode { logits, mask },
    }
    None
}

fn state_gone() -> Error {
    Error::new(ErrorKind::Internal, "the session's state is gone")
}

fn failed(a: &Active, seq: &mut Sequence, e: Error) -> Option<Plan> {
    seq.tokens.truncate(seq.cache.len());
    if e.kind() == ErrorKind::Cancelled {
        return Some(Plan::Finished(a.job.control.stop_reason().unwrap_or(FinishReason::Cancelled), None));
    }
    Some(Plan::Finished(FinishReason::Error, Some(e)))
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
        prefill_tokens_per_second: if prefill_secs > 0.0 && a.first_token.is_some() {
            computed as f64 / prefill_secs
        } else {
            0.0
        },
        decode_tokens_per_second: if a.generated > 1 && decode_secs > 0.0 {
            (a.generated - 1) as f64 / decode_secs
        } else {
            0.0
        },
    };
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
