//! Enforcement during decoding: the allowed set at each step is the intersection of every active
//! constraint's mask; sampled tokens are committed to every matcher; when the intersection is
//! empty the lowest-priority constraint is relaxed and the result says so.

use std::sync::Arc;
use std::time::{Duration, Instant};

use llguidance::Matcher;
use serde::Serialize;
use toktrie::SimpleVob;

use super::compile::{CompiledConstraint, Program};
use crate::error::{Error, ErrorKind, Result};

/// How a constraint fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintOutcome {
    /// Enforced on every token and the output is complete under it.
    Satisfied,
    /// Enforced, but the output is not complete under it (e.g. max_tokens cut it short).
    Violated,
    /// Dropped mid-generation to resolve a conflict with higher-priority constraints.
    Relaxed,
}

/// One constraint's line in a result's validation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConstraintReport {
    pub name: String,
    pub kind: super::ConstraintTag,
    pub priority: i32,
    pub outcome: ConstraintOutcome,
    /// Why, for `Violated` and `Relaxed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Timing and counts of constraint work in one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ConstraintStats {
    /// Compilation time of this request's constraints (cache hits cost microseconds).
    pub compile_time_us: f64,
    /// Mean time to compute one step's combined mask.
    pub mean_mask_time_us: f64,
    pub p50_mask_time_us: f64,
    pub p99_mask_time_us: f64,
    pub masks_computed: u64,
    /// Tokens the grammar dictated (appended without sampling).
    pub forced_tokens: usize,
}

struct Slot {
    compiled: Arc<CompiledConstraint>,
    matchers: Vec<Matcher>,
    relaxed: Option<String>,
}

impl Slot {
    fn is_grammar(&self) -> bool {
        matches!(*self.compiled.program, Program::Grammars(_))
    }
}

/// Per-request constraint state.
pub struct Enforcer {
    slots: Vec<Slot>,
    vocab_size: usize,
    end_tokens: Vec<u32>,
    mask_time: Duration,
    mask_times_us: Vec<f32>,
    masks: u64,
    forced: usize,
    compile_time: Duration,
    tokens: usize,
}

/// The combined allowed set for one step.
pub type Mask = SimpleVob;

impl Enforcer {
    /// `end_tokens`: the model's end-of-generation ids (allowed only when every grammar accepts).
    pub fn new(compiled: Vec<Arc<CompiledConstraint>>, vocab_size: usize, end_tokens: Vec<u32>) -> Self {
        let compile_time = compiled.iter().map(|c| c.compile_time).sum();
        let slots = compiled
            .into_iter()
            .map(|c| {
                let matchers = match &*c.program {
                    Program::Grammars(parsers) => {
                        parsers.iter().map(|p| Matcher::new(Ok(p.clone()))).collect()
                    }
                    Program::Mask { .. } => Vec::new(),
                };
                Slot { compiled: c, matchers, relaxed: None }
            })
            .collect();
        Self {
            slots,
            vocab_size,
            end_tokens,
            mask_time: Duration::ZERO,
            mask_times_us: Vec::new(),
            masks: 0,
            forced: 0,
            compile_time,
            tokens: 0,
        }
    }

    fn active(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().filter(|s| s.relaxed.is_none())
    }

    /// True when some active grammar has ended (nothing more may be generated).
    pub fn grammar_finished(&self) -> bool {
        self.active().any(|s| s.matchers.iter().any(|m| m.is_stopped()))
    }

    fn slot_mask(&mut self, i: usize) -> Result<SimpleVob> {
        let vocab = self.vocab_size;
        let slot = &mut self.slots[i];
        match &*slot.compiled.program {
            Program::Mask { allowed, forbidden } => {
                let mut m = SimpleVob::alloc(vocab);
                match allowed {
                    Some(ids) => {
                        ids.iter().for_each(|&t| m.allow_token(t));
                        // Stopping stays possible unless explicitly forbidden.
                        self.end_tokens.iter().for_each(|&t| m.allow_token(t));
                    }
                    None => m.set_all(true),
                }
                forbidden.iter().for_each(|&t| m.disallow_token(t));
                Ok(m)
            }
            Program::Grammars(_) => {
                let mut combined: Option<SimpleVob> = None;
                for matcher in &mut slot.matchers {
                    let m = matcher.compute_mask_or_eos().map_err(|e| grammar_error(&slot.compiled, e))?;
                    if m.len() != vocab {
                        return Err(Error::new(
                            ErrorKind::Internal,
                            format!("constraint mask has {} entries, the model {vocab}", m.len()),
                        ));
                    }
                    match combined.as_mut() {
                        Some(c) => c.and(&m),
                        None => combined = Some(m),
                    }
                }
                let mut m = combined.unwrap_or_else(|| SimpleVob::alloc_ones(vocab));
                // llguidance marks one EOS; the model may end with any of its end tokens.
                if self.end_tokens.iter().any(|&t| m.is_allowed(t)) {
                    self.end_tokens.iter().for_each(|&t| m.allow_token(t));
                }
                Ok(m)
            }
        }
    }

    /// The allowed set for the next token. Relaxes lowest-priority constraints while the
    /// intersection is empty; fails if even one constraint alone allows nothing.
    pub fn compute_mask(&mut self) -> Result<Mask> {
        let start = Instant::now();
        let result = self.compute_mask_inner();
        let took = start.elapsed();
        self.mask_time += took;
        self.mask_times_us.push(took.as_secs_f32() * 1e6);
        self.masks += 1;
        result
    }

    fn compute_mask_inner(&mut self) -> Result<Mask> {
        loop {
            let active: Vec<usize> =
                (0..self.slots.len()).filter(|&i| self.slots[i].relaxed.is_none()).collect();
            let mut masks = Vec::with_capacity(active.len());
            for &i in &active {
                masks.push((i, self.slot_mask(i)?));
            }
            let mut combined = SimpleVob::alloc_ones(self.vocab_size);
            for (_, m) in &masks {
                combined.and(m);
            }
            if !combined.is_zero() {
                return Ok(combined);
            }
            if active.len() <= 1 {
                let name = active
                    .first()
                    .map(|&i| self.slots[i].compiled.constraint.name.clone())
                    .unwrap_or_default();
                return Err(Error::new(
                    ErrorKind::InvalidConstraint,
                    format!("constraint '{name}' allows no token at position {}", self.tokens),
                ));
            }
            // Lowest priority first; among equals, the one added last.
            let victim = *active
                .iter()
                .rev()
                .min_by_key(|&&i| self.slots[i].compiled.constraint.priority)
                .expect("non-empty");
            let others: Vec<String> = active
                .iter()
                .filter(|&&i| i != victim)
                .map(|&i| format!("'{}'", self.slots[i].compiled.constraint.name))
                .collect();
            self.slots[victim].relaxed = Some(format!(
                "at generated token {} no token satisfied it together with {}; relaxed as the lowest priority",
                self.tokens,
                others.join(", ")
            ));
        }
    }

    /// Commits a sampled (or forced) token to every active grammar.
    pub fn commit(&mut self, token: u32) -> Result<()> {
        self.tokens += 1;
        for slot in self.slots.iter_mut().filter(|s| s.relaxed.is_none()) {
            for m in &mut slot.matchers {
                m.consume_token(token).map_err(|e| grammar_error(&slot.compiled, e))?;
            }
        }
        Ok(())
    }

    /// Tokens the grammar now dictates. Only when one grammar is active (with several, their
    /// forced strings would need to agree); mask constraints still filter them. The tokens are
    /// already committed when returned.
    pub fn take_forced(&mut self) -> Vec<u32> {
        let grammars: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].relaxed.is_none() && self.slots[i].is_grammar())
            .collect();
        let [only] = grammars[..] else { return Vec::new() };
        if self.slots[only].matchers.len() != 1 {
            return Vec::new();
        }
        let forced = self.slots[only].matchers[0].compute_ff_tokens();
        let mut taken = Vec::new();
        for t in forced {
            if self.end_tokens.contains(&t) {
                break;
            }
            let others: Vec<usize> =
                (0..self.slots.len()).filter(|&i| i != only && self.slots[i].relaxed.is_none()).collect();
            let masks_ok =
                others.into_iter().all(|i| self.slot_mask(i).map(|m| m.is_allowed(t)).unwrap_or(false));
            if !masks_ok || self.commit(t).is_err() {
                break;
            }
            taken.push(t);
        }
        self.forced += taken.len();
        taken
    }

    /// Final reports. `natural_end` is true only when generation ended on its own (end token or
    /// grammar end); anything else (length, stop sequence, cancel, timeout, error) leaves grammar
    /// constraints unproven, so they are reported violated with `ended_by` as the reason.
    pub fn reports(&mut self, ended_by: &str, natural_end: bool) -> Vec<ConstraintReport> {
        self.slots
            .iter_mut()
            .map(|slot| {
                let c = &slot.compiled.constraint;
                let (outcome, reason) = if let Some(why) = &slot.relaxed {
                    (ConstraintOutcome::Relaxed, Some(why.clone()))
                } else if slot.matchers.is_empty() {
                    (ConstraintOutcome::Satisfied, None)
                } else {
                    let accepting = slot.matchers.iter_mut().all(|m| m.is_accepting().unwrap_or(false) || m.is_stopped() && !m.is_error());
                    if accepting && natural_end {
                        (ConstraintOutcome::Satisfied, None)
                    } else if !natural_end {
                        (ConstraintOutcome::Violated, Some(format!("generation ended ({ended_by}) before the output was checked complete")))
                    } else {
                        (ConstraintOutcome::Violated, Some(format!("generation ended ({ended_by}) with the output incomplete under this constraint")))
                    }
                };
                ConstraintReport { name: c.name.clone(), kind: c.kind.tag(), priority: c.priority, outcome, reason }
            })
            .collect()
    }

    pub fn stats(&self) -> ConstraintStats {
        let mut sorted = self.mask_times_us.clone();
        sorted.sort_by(f32::total_cmp);
        let pct = |p: f64| {
            sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0) as f64
        };
        ConstraintStats {
            p50_mask_time_us: pct(0.5),
            p99_mask_time_us: pct(0.99),
            compile_time_us: self.compile_time.as_secs_f64() * 1e6,
            mean_mask_time_us: if self.masks > 0 {
                self.mask_time.as_secs_f64() * 1e6 / self.masks as f64
            } else {
                0.0
            },
            masks_computed: self.masks,
            forced_tokens: self.forced,
        }
    }
}

fn grammar_error(c: &CompiledConstraint, e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::InvalidConstraint,
        format!("constraint '{}' ({}): {e}", c.constraint.name, c.constraint.kind.label()),
    )
}

/// Sets every logit outside `mask` to -inf.
pub fn apply_mask(mask: &Mask, logits: &mut [f32]) {
    mask.iter_unset_entries(|i| {
        if let Some(l) = logits.get_mut(i) {
            *l = f32::NEG_INFINITY;
        }
    });
}
