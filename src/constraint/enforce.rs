//! Enforcement during decoding: the allowed set at each step is the intersection of every active
//! constraint's mask; sampled tokens are committed to every matcher; when the intersection is
//! empty the lowest-priority constraint is relaxed and the result says so.

use std::sync::Arc;
use std::time::{Duration, Instant};

use llguidance::Matcher;
use serde::Serialize;
use toktrie::SimpleVob;

use super::compile::{CompiledConstraint, Program};
use super::schema::{IgnoredFormat, RelaxedKeyword, SchemaNotes};
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
    /// A JSON schema compiled without some of its keywords (`json_options.lenient`, or a `oneOf`
    /// approximated by `anyOf`): the output is complete under everything that was enforced, but
    /// may break the keywords listed in the report's `relaxed_keywords`. Not satisfied.
    PartiallyEnforced,
}

/// One constraint's line in a result's validation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConstraintReport {
    pub name: String,
    pub kind: super::ConstraintTag,
    pub priority: i32,
    pub outcome: ConstraintOutcome,
    /// Why, for `Violated`, `Relaxed` and `PartiallyEnforced`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// JSON schema keywords that were not enforced, each with its JSON pointer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub relaxed_keywords: Vec<RelaxedKeyword>,
    /// `format` values Maze does not enforce, ignored as annotations (JSON Schema's default for
    /// `format`): they alone leave the outcome `satisfied`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored_formats: Vec<IgnoredFormat>,
}

impl ConstraintReport {
    /// A constraint that cannot vouch for the text (it stopped before the end): violated, with
    /// `why`.
    pub fn unproven(c: &super::Constraint, why: &str) -> Self {
        Self {
            name: c.name.clone(),
            kind: c.kind.tag(),
            priority: c.priority,
            outcome: ConstraintOutcome::Violated,
            reason: Some(why.to_string()),
            relaxed_keywords: Vec::new(),
            ignored_formats: Vec::new(),
        }
    }
}

/// Timing and counts of constraint work in one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ConstraintStats {
    /// Compilation time of this request's constraints (cache hits cost microseconds),
    /// `setup_time_us` included.
    pub compile_time_us: f64,
    /// The engine's one-time constraint setup (token trie and parser factory, 0.1-1 s) paid
    /// by this request; 0 once the engine has it (from its first constrained request, or from
    /// load with `EngineConfig::prepare_constraints`).
    pub setup_time_us: f64,
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
        matches!(*self.compiled.program, Program::Grammars(..))
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
    setup_time: Duration,
    tokens: usize,
}

/// The combined allowed set for one step.
pub type Mask = SimpleVob;

impl Enforcer {
    /// `end_tokens`: the model's end-of-generation ids (allowed only when every grammar accepts).
    pub fn new(compiled: Vec<Arc<CompiledConstraint>>, vocab_size: usize, end_tokens: Vec<u32>) -> Self {
        let compile_time = compiled.iter().map(|c| c.compile_time).sum();
        let setup_time = compiled.iter().map(|c| c.setup_time).sum();
        let slots = compiled
            .into_iter()
            .map(|c| {
                let matchers = match &*c.program {
                    Program::Grammars(parsers, _) => {
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
            setup_time,
            tokens: 0,
        }
    }

    /// True when some active grammar has ended complete (nothing more may be generated). A
    /// grammar stopped where its output is incomplete is a dead end, not an end: the next mask
    /// reports it.
    pub fn grammar_finished(&mut self) -> bool {
        self.slots
            .iter_mut()
            .filter(|s| s.relaxed.is_none())
            .any(|s| s.matchers.iter_mut().any(|m| m.is_stopped() && complete(m)))
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
            Program::Grammars(..) => {
                let mut combined: Option<SimpleVob> = None;
                let tokens = self.tokens;
                for matcher in &mut slot.matchers {
                    // Stopped incomplete: no token continues it, and ending leaves it unmet.
                    if matcher.is_stopped() && !complete(matcher) {
                        return Err(dead_end(&slot.compiled, tokens, matcher.get_error()));
                    }
                    let m = matcher.compute_mask_or_eos().map_err(|e| {
                        if complete(matcher) {
                            grammar_error(&slot.compiled, e)
                        } else {
                            dead_end(&slot.compiled, tokens, Some(e.to_string()))
                        }
                    })?;
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
                let empty = SchemaNotes::default();
                let notes = match &*slot.compiled.program {
                    Program::Grammars(_, notes) => notes,
                    Program::Mask { .. } => &empty,
                };
                let (outcome, reason) = if let Some(why) = &slot.relaxed {
                    (ConstraintOutcome::Relaxed, Some(why.clone()))
                } else if slot.matchers.is_empty() {
                    (ConstraintOutcome::Satisfied, None)
                } else {
                    let accepting = slot.matchers.iter_mut().all(complete);
                    if accepting && natural_end && !notes.relaxed.is_empty() {
                        let why = format!(
                            "complete under what was enforced; {} schema keyword(s) listed in relaxed_keywords were not enforced",
                            notes.relaxed.len()
                        );
                        (ConstraintOutcome::PartiallyEnforced, Some(why))
                    } else if accepting && natural_end {
                        (ConstraintOutcome::Satisfied, None)
                    } else if !natural_end {
                        (ConstraintOutcome::Violated, Some(format!("generation ended ({ended_by}) before the output was checked complete")))
                    } else {
                        (ConstraintOutcome::Violated, Some(format!("generation ended ({ended_by}) with the output incomplete under this constraint")))
                    }
                };
                ConstraintReport {
                    name: c.name.clone(),
                    kind: c.kind.tag(),
                    priority: c.priority,
                    outcome,
                    reason,
                    relaxed_keywords: notes.relaxed.clone(),
                    ignored_formats: notes.ignored_formats.clone(),
                }
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
            setup_time_us: self.setup_time.as_secs_f64() * 1e6,
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

/// Whether the matcher's output so far is a complete match (an error never is).
fn complete(m: &mut Matcher) -> bool {
    !m.is_error() && m.is_accepting().unwrap_or(false)
}

/// A grammar that can neither go on nor end here.
fn dead_end(c: &CompiledConstraint, tokens: usize, detail: Option<String>) -> Error {
    let detail =
        detail.map(|d| format!(" (llguidance: {})", d.lines().next().unwrap_or(""))).unwrap_or_default();
    Error::new(
        ErrorKind::InvalidConstraint,
        format!(
            "constraint '{}' ({}) reached a dead end after {tokens} generated tokens: no token can continue it and the output is not complete under it, so it could not be continued{detail}",
            c.constraint.name,
            c.constraint.kind.label()
        ),
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constraint::{Compiler, Constraint, JsonSchemaOptions};
    use crate::model::tokenizer::{tests::smollm, Tokenizer};
    use serde_json::json;

    /// The SmolLM-style test vocabulary: 256 byte tokens, "hello"/" world" merges, and
    /// <|endoftext|>, <|im_start|>, <|im_end|> (two of which end a generation).
    struct Setup {
        tok: Arc<Tokenizer>,
        compiler: Compiler,
    }

    impl Setup {
        fn new() -> Self {
            let tok = Arc::new(smollm());
            let compiler = Compiler::new(tok.clone(), tok.vocab_size(), 16);
            Self { tok, compiler }
        }

        fn id(&self, text: &str) -> u32 {
            self.tok.token_id(text).unwrap_or_else(|| panic!("'{text}' is a token"))
        }

        fn ids(&self, texts: &[&str]) -> Vec<u32> {
            texts.iter().map(|t| self.id(t)).collect()
        }

        fn end(&self) -> Vec<u32> {
            self.tok.end_of_generation().to_vec()
        }

        fn enforcer(&self, constraints: &[Constraint]) -> Enforcer {
            let compiled = constraints.iter().map(|c| Arc::new(self.compiler.compile(c).unwrap())).collect();
            Enforcer::new(compiled, self.tok.vocab_size(), self.end())
        }

        /// Forced tokens when there are any, else the lowest allowed id that does not end the
        /// generation, until nothing but an end token is left. Returns the text.
        fn drive(&self, enforcer: &mut Enforcer) -> String {
            let mut out = Vec::new();
            for _ in 0..64 {
                let forced = enforcer.take_forced();
                if !forced.is_empty() {
                    out.extend(forced);
                    continue;
                }
                let mask = enforcer.compute_mask().unwrap();
                let Some(next) = mask.to_list().into_iter().find(|t| !self.end().contains(t)) else { break };
                enforcer.commit(next).unwrap();
                out.push(next);
            }
            self.tok.decode(&out).unwrap()
        }
    }

    fn sorted(mut ids: Vec<u32>) -> Vec<u32> {
        ids.sort_unstable();
        ids
    }

    fn digits(s: &Setup) -> Vec<u32> {
        s.ids(&["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"])
    }

    #[test]
    fn token_masks_allow_keep_stopping_possible_and_deny() {
        let s = Setup::new();
        let ab = s.ids(&["a", "b"]);
        let mask = s.enforcer(&[Constraint::token_mask("ab", ab.clone(), vec![])]).compute_mask().unwrap();
        assert_eq!(mask.to_list(), sorted([ab.clone(), s.end()].concat()));

        let stop = s.end()[0];
        let mut no_stop = s.enforcer(&[Constraint::token_mask("ab", ab.clone(), vec![stop])]);
        assert_eq!(no_stop.compute_mask().unwrap().to_list(), sorted([ab, s.end()[1..].to_vec()].concat()));

        let deny =
            s.enforcer(&[Constraint::token_mask("no h", vec![], vec![s.id("h")])]).compute_mask().unwrap();
        assert_eq!(deny.num_set(), s.tok.vocab_size() - 1);
        assert!(!deny.is_allowed(s.id("h")) && deny.is_allowed(s.id("e")));

        let free = Enforcer::new(Vec::new(), s.tok.vocab_size(), s.end()).compute_mask().unwrap();
        assert_eq!(free.num_set(), s.tok.vocab_size());
    }

    #[test]
    fn the_allowed_set_is_the_intersection_of_every_constraint() {
        let s = Setup::new();
        let mut e = s.enforcer(&[
            Constraint::token_mask("abc", s.ids(&["a", "b", "c"]), vec![]),
            Constraint::token_mask("bcd", s.ids(&["b", "c", "d"]), vec![]),
            Constraint::token_mask("not c", vec![], vec![s.id("c")]),
        ]);
        assert_eq!(e.compute_mask().unwrap().to_list(), sorted([vec![s.id("b")], s.end()].concat()));
        // A grammar and a mask: digits, minus the ones the mask forbids.
        let odd = s.ids(&["1", "3", "5", "7", "9"]);
        let mut e =
            s.enforcer(&[Constraint::regex("number", "[0-9]+"), Constraint::token_mask("even", vec![], odd)]);
        assert_eq!(e.compute_mask().unwrap().to_list(), sorted(s.ids(&["0", "2", "4", "6", "8"])));
        assert!(e.reports("stop", true).iter().all(|r| r.outcome != ConstraintOutcome::Relaxed));
    }

    #[test]
    fn an_empty_intersection_relaxes_the_lowest_priority_and_says_so() {
        let s = Setup::new();
        let only_a = Constraint::token_mask("only a", s.ids(&["a"]), s.end()).with_priority(5);
        let only_b = Constraint::token_mask("only b", s.ids(&["b"]), vec![]).with_priority(1);
        // The lower priority goes, wherever it stands in the list.
        for constraints in [[only_a.clone(), only_b.clone()], [only_b.clone(), only_a.clone()]] {
            let mut e = s.enforcer(&constraints);
            assert_eq!(e.compute_mask().unwrap().to_list(), s.ids(&["a"]));
            assert_eq!(e.compute_mask().unwrap().to_list(), s.ids(&["a"]), "relaxed stays relaxed");
            let reports = e.reports("stop", true);
            let b = reports.iter().find(|r| r.name == "only b").unwrap();
            assert_eq!((b.outcome, b.priority), (ConstraintOutcome::Relaxed, 1));
            let why = b.reason.as_deref().unwrap();
            assert!(why.contains("at generated token 0") && why.contains("'only a'"), "{why}");
            assert!(why.contains("relaxed as the lowest priority"), "{why}");
            let a = reports.iter().find(|r| r.name == "only a").unwrap();
            assert_eq!((a.outcome, a.reason.as_deref()), (ConstraintOutcome::Satisfied, None));
        }
        // Among equal priorities, the one added last goes.
        let first = Constraint::token_mask("first", s.ids(&["a"]), s.end());
        let second = Constraint::token_mask("second", s.ids(&["b"]), s.end());
        let mut e = s.enforcer(&[first, second]);
        assert_eq!(e.compute_mask().unwrap().to_list(), s.ids(&["a"]));
        let outcomes: Vec<_> = e.reports("stop", true).into_iter().map(|r| r.outcome).collect();
        assert_eq!(outcomes, [ConstraintOutcome::Satisfied, ConstraintOutcome::Relaxed]);
    }

    #[test]
    fn a_conflict_midway_relaxes_a_grammar_which_is_then_no_longer_fed() {
        let s = Setup::new();
        let letters = Constraint::token_mask("letters", s.ids(&["a", "b"]), s.end()).with_priority(1);
        let mut e = s.enforcer(&[Constraint::regex("a digit", "a[0-9]"), letters]);
        assert_eq!(e.compute_mask().unwrap().to_list(), s.ids(&["a"]));
        e.commit(s.id("a")).unwrap();
        assert_eq!(e.compute_mask().unwrap().to_list(), s.ids(&["a", "b"]));
        // "b" breaks the relaxed regex; it is not fed any more, so this is no error.
        e.commit(s.id("b")).unwrap();
        let reports = e.reports("stop", true);
        assert_eq!(reports[0].outcome, ConstraintOutcome::Relaxed);
        let why = reports[0].reason.as_deref().unwrap();
        assert!(why.contains("at generated token 1") && why.contains("'letters'"), "{why}");
        assert!(!e.grammar_finished());
    }

    #[test]
    fn a_constraint_that_alone_allows_nothing_fails_by_name() {
        let s = Setup::new();
        let forbid_all = [s.ids(&["a"]), s.end()].concat();
        let mut e = s.enforcer(&[Constraint::token_mask("nothing", s.ids(&["a"]), forbid_all)]);
        let err = e.compute_mask().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConstraint);
        assert_eq!(err.message(), "constraint 'nothing' allows no token at position 0");
    }

    #[test]
    fn grammars_allow_every_end_token_once_complete() {
        let s = Setup::new();
        let mut e = s.enforcer(&[Constraint::regex("number", "[0-9]+")]);
        assert_eq!(e.compute_mask().unwrap().to_list(), sorted(digits(&s)));
        e.commit(s.id("4")).unwrap();
        assert!(!e.grammar_finished(), "a number can go on");
        // llguidance knows one EOS; every end-of-generation token of the model is let through.
        assert_eq!(e.compute_mask().unwrap().to_list(), sorted([digits(&s), s.end()].concat()));
        assert!(!e.compute_mask().unwrap().is_allowed(s.id("<|im_start|>")));
    }

    #[test]
    fn a_token_the_grammar_refuses_is_an_error_naming_the_constraint() {
        let s = Setup::new();
        let mut e = s.enforcer(&[Constraint::regex("number", "[0-9]+")]);
        let err = e.commit(s.id("h")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConstraint);
        assert!(err.message().starts_with("constraint 'number'"), "{err}");
    }

    #[test]
    fn forced_tokens_are_taken_committed_and_counted() {
        let s = Setup::new();
        let mut e = s.enforcer(&[Constraint::choice("greeting", ["hello world"])]);
        let forced = e.take_forced();
        assert!(!forced.is_empty());
        assert!("hello world".starts_with(&s.tok.decode(&forced).unwrap()), "{forced:?}");
        assert_eq!(e.stats().forced_tokens, forced.len());
        let rest = s.drive(&mut e);
        assert_eq!(format!("{}{rest}", s.tok.decode(&forced).unwrap()), "hello world");
        assert_eq!(e.compute_mask().unwrap().to_list(), s.end(), "only stopping is left");
        let report = &e.reports("stop", true)[0];
        assert_eq!((report.outcome, report.reason.as_deref()), (ConstraintOutcome::Satisfied, None));
    }

    #[test]
    fn forced_tokens_pass_the_masks_and_need_a_single_grammar() {
        let s = Setup::new();
        let hello = s.id("hello");
        let mut alone = s.enforcer(&[Constraint::choice("greeting", ["hello world"])]);
        assert_eq!(alone.take_forced().first(), Some(&hello));

        let no_hello = Constraint::token_mask("no hello", vec![], vec![hello]);
        let mut masked = s.enforcer(&[Constraint::choice("greeting", ["hello world"]), no_hello]);
        assert_eq!(masked.take_forced(), Vec::<u32>::new());
        // A forced literal allows only its canonical tokens: forbidding one is a conflict, and
        // the mask (lowest priority, added last) gives way.
        assert_eq!(masked.compute_mask().unwrap().to_list(), [hello]);
        assert_eq!(masked.reports("stop", true)[1].outcome, ConstraintOutcome::Relaxed);
        assert_eq!(s.drive(&mut masked), "hello world");

        let two = [Constraint::choice("greeting", ["hello world"]), Constraint::regex("h", "h.*")];
        assert_eq!(s.enforcer(&two).take_forced(), Vec::<u32>::new());
        let patterns = crate::constraint::ConstraintKind::Regex(vec!["hello world".into(), "h.*".into()]);
        assert_eq!(
            s.enforcer(&[Constraint::new("two patterns", 0, patterns)]).take_forced(),
            Vec::<u32>::new()
        );
        assert_eq!(s.enforcer(&two).stats().forced_tokens, 0);
    }

    #[test]
    fn reports_tell_complete_incomplete_and_unproven_apart() {
        let s = Setup::new();
        let constraints = [
            Constraint::regex("number", "[0-9]+").with_priority(3),
            Constraint::token_mask("no h", vec![], vec![s.id("h")]),
        ];
        let mut e = s.enforcer(&constraints);
        let incomplete = e.reports("stop", true);
        assert_eq!((incomplete[0].name.as_str(), incomplete[0].priority), ("number", 3));
        assert_eq!(incomplete[0].outcome, ConstraintOutcome::Violated);
        let why = incomplete[0].reason.as_deref().unwrap();
        assert_eq!(why, "generation ended (stop) with the output incomplete under this constraint");
        e.commit(s.id("7")).unwrap();
        let cut = e.reports("length", false);
        assert_eq!(cut[0].outcome, ConstraintOutcome::Violated);
        let why = cut[0].reason.as_deref().unwrap();
        assert_eq!(why, "generation ended (length) before the output was checked complete");
        let done = e.reports("stop", true);
        assert_eq!((done[0].outcome, done[0].reason.as_deref()), (ConstraintOutcome::Satisfied, None));
        // A mask holds for every token it saw, however generation ended.
        for report in [&cut[1], &done[1], &incomplete[1]] {
            assert_eq!((report.outcome, report.reason.as_deref()), (ConstraintOutcome::Satisfied, None));
        }
    }

    #[test]
    fn a_grammar_that_has_ended_finishes_the_generation() {
        let s = Setup::new();
        let mut e = s.enforcer(&[Constraint::choice("yes", ["hello"])]);
        assert!(!e.grammar_finished());
        e.commit(s.id("hello")).unwrap();
        // Nothing can follow "hello": the grammar has ended, and the generation with it.
        assert!(e.grammar_finished());
        assert_eq!(e.reports("stop", true)[0].outcome, ConstraintOutcome::Satisfied);
        assert!(e.commit(s.id("o")).is_err(), "an ended grammar takes no more tokens");
    }

    fn schema(schema: serde_json::Value, options: JsonSchemaOptions) -> Constraint {
        Constraint::json_schema("s", schema).with_json_options(options)
    }

    #[test]
    fn a_lenient_schema_is_partially_enforced_and_names_what_it_left_out() {
        let s = Setup::new();
        let lenient = JsonSchemaOptions { lenient: true, ..Default::default() };
        // `not` is left out: the lowest digit, 0, is what `not` forbids, and it is generated.
        let integer = json!({"type": "integer", "minimum": 0, "not": {"const": 0}});
        let mut e = s.enforcer(&[schema(integer, lenient)]);
        assert_eq!(s.drive(&mut e), "0");
        let report = &e.reports("stop", true)[0];
        assert_eq!(report.outcome, ConstraintOutcome::PartiallyEnforced);
        assert!(report.reason.as_deref().unwrap().contains("relaxed_keywords"), "{report:?}");
        assert_eq!(report.relaxed_keywords.len(), 1);
        assert_eq!(
            (report.relaxed_keywords[0].keyword.as_str(), report.relaxed_keywords[0].pointer.as_str()),
            ("not", "/not")
        );
        let line = serde_json::to_value(report).unwrap();
        assert_eq!(line["outcome"], "partially_enforced");
        assert_eq!(line["relaxed_keywords"][0]["pointer"], "/not");
        // Incomplete, it is violated, and still says what was left out.
        let mut cut = s.enforcer(&[schema(
            json!({"type": "array", "uniqueItems": true}),
            JsonSchemaOptions { lenient: true, ..Default::default() },
        )]);
        cut.commit(s.id("[")).unwrap();
        let report = &cut.reports("length", false)[0];
        assert_eq!(report.outcome, ConstraintOutcome::Violated);
        assert_eq!(report.relaxed_keywords[0].keyword, "uniqueItems");
    }

    #[test]
    fn ignored_formats_are_listed_and_leave_the_schema_satisfied() {
        let s = Setup::new();
        let mut e = s.enforcer(&[Constraint::json_schema(
            "s",
            json!({"type": "string", "format": "regex", "maxLength": 1}),
        )]);
        let text = s.drive(&mut e);
        assert!(serde_json::from_str::<String>(&text).is_ok_and(|t| t.chars().count() <= 1), "{text}");
        let report = &e.reports("stop", true)[0];
        assert_eq!((report.outcome, report.reason.as_deref()), (ConstraintOutcome::Satisfied, None));
        assert_eq!(report.ignored_formats.len(), 1);
        assert_eq!(
            (report.ignored_formats[0].format.as_str(), report.ignored_formats[0].pointer.as_str()),
            ("regex", "/format")
        );
        assert_eq!(serde_json::to_value(report).unwrap()["ignored_formats"][0]["format"], "regex");
        // Nothing ignored, nothing listed.
        let mut plain =
            s.enforcer(&[Constraint::json_schema("p", json!({"type": "string", "maxLength": 1}))]);
        s.drive(&mut plain);
        let line = serde_json::to_value(&plain.reports("stop", true)[0]).unwrap();
        assert!(line.get("ignored_formats").is_none() && line.get("relaxed_keywords").is_none(), "{line}");
    }

    #[test]
    fn whitespace_between_tokens_is_compact_flexible_or_a_pattern() {
        let s = Setup::new();
        let object = json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]});
        let after_brace = |options: JsonSchemaOptions| {
            let mut e = s.enforcer(&[schema(object.clone(), options)]);
            e.commit(s.id("{")).unwrap();
            e.compute_mask().unwrap()
        };
        // Byte-level pieces: Ġ is a space, Ċ a newline.
        let (space, newline) = (s.id("Ġ"), s.id("Ċ"));
        let compact = after_brace(JsonSchemaOptions::default());
        assert!(compact.is_allowed(s.id("\"")) && !compact.is_allowed(space) && !compact.is_allowed(newline));
        let flexible = after_brace(JsonSchemaOptions { whitespace_flexible: true, ..Default::default() });
        assert!(flexible.is_allowed(space) && flexible.is_allowed(newline));
        let spaces =
            after_brace(JsonSchemaOptions { whitespace_pattern: Some(" +".into()), ..Default::default() });
        assert!(spaces.is_allowed(space) && !spaces.is_allowed(newline));
    }

    #[test]
    fn stats_count_masks_and_order_percentiles() {
        let s = Setup::new();
        let empty = Enforcer::new(Vec::new(), s.tok.vocab_size(), s.end()).stats();
        assert_eq!(empty, ConstraintStats::default());
        let mut e = s.enforcer(&[Constraint::regex("number", "[0-9]+")]);
        for _ in 0..3 {
            e.compute_mask().unwrap();
        }
        let stats = e.stats();
        assert_eq!(stats.masks_computed, 3);
        assert!(stats.p50_mask_time_us <= stats.p99_mask_time_us, "{stats:?}");
        assert!(stats.mean_mask_time_us > 0.0 && stats.compile_time_us > 0.0, "{stats:?}");
    }

    #[test]
    fn apply_mask_sets_everything_outside_to_minus_infinity() {
        let mut mask = Mask::alloc(5);
        mask.allow_token(1);
        mask.allow_token(3);
        let mut logits = [0.5f32; 5];
        apply_mask(&mask, &mut logits);
        let inf = f32::NEG_INFINITY;
        assert_eq!(logits, [inf, 0.5, inf, 0.5, inf]);
        // Logits shorter than the mask (a vocabulary padded in the tokenizer) are not overrun.
        let mut short = [1.0f32; 2];
        apply_mask(&mask, &mut short);
        assert_eq!(short, [inf, 1.0]);
    }

    #[test]
    fn a_grammar_at_a_dead_end_fails_by_name_and_is_not_satisfied() {
        let s = Setup::new();
        // After "a" the grammar needs an `x`, which can never be produced.
        let mut e = s.enforcer(&[Constraint::lark("stuck", "start: \"a\" x\nx: x \"b\"\n")]);
        assert_eq!(e.compute_mask().unwrap().to_list(), s.ids(&["a"]));
        e.commit(s.id("a")).unwrap();
        assert!(e.take_forced().is_empty());
        assert!(!e.grammar_finished(), "a dead end is not the grammar's end");
        let err = e.compute_mask().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConstraint);
        let msg = err.message();
        assert!(
            msg.starts_with("constraint 'stuck' (lark) reached a dead end after 1 generated tokens"),
            "{msg}"
        );
        assert!(msg.contains("could not be continued"), "{msg}");
        for (ended_by, natural) in [("error", false), ("stop", true)] {
            let report = &e.reports(ended_by, natural)[0];
            assert_eq!(report.outcome, ConstraintOutcome::Violated, "{ended_by}");
        }
    }
}
