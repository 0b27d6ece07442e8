//! A session: one conversation with its own KV cache on the engine's model worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cancel::{CancelLink, CancelToken};
use super::control::Control;
use super::worker::{worker_gone, Command, Event, Job, Outcome, SessionId};
use super::EngineInner;
use tokio::task::AbortHandle;

use crate::constraint::{CompiledConstraint, Constraint, ConstraintOutcome, ConstraintReport, ConstraintTag};
use crate::error::{Error, ErrorKind, Result};
use crate::model::chat::ChatMessage;
use crate::result::{AppliedConstraint, FinishReason, GenerationResult, GenerationStats, Provenance};
use crate::sampling::SamplingParams;
use crate::tools::{ParsedCall, StreamEvent, ToolCallCheck, ToolCallParser, ToolPlan, ToolUse};

/// A call ready for the worker: its prompt tokens, compiled constraints and tool plan.
type Prepared = (Vec<u32>, Vec<Arc<CompiledConstraint>>, Option<ToolPlan>);

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
    /// A caller's token: cancelling it ends this call as cancelled wherever it is, also when
    /// the cancel comes before the call starts (see [`CancelToken`]).
    pub cancel: Option<CancelToken>,
    /// Tools the model may call (chat prompts only): rendered by the chat template, calls
    /// enforced by a grammar, returned in [`GenerationResult::tool_calls`].
    pub tools: Option<ToolUse>,
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
            cancel: None,
            tools: None,
        }
    }
}

/// One conversation. Thread-safe: any thread may call [`LocalSession::cancel`] at any time; a second
/// generation while one runs is refused with [`ErrorKind::Busy`].
///
/// A session keeps the tokens of its last request in its KV cache; the next request reuses
/// the longest common prefix, so a multi-turn chat only computes the new turn.
pub struct LocalSession {
    engine: Arc<EngineInner>,
    id: SessionId,
    busy: AtomicBool,
    running: Mutex<Option<Arc<Control>>>,
}

impl LocalSession {
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
        self.generate_events(prompt, opts, crate::tools::text_only(&mut on_text))
    }

    /// Like [`LocalSession::generate_streaming`], with tool calls told apart from text: each
    /// call's name once complete, then its arguments in fragments.
    pub fn generate_events(
        &self,
        prompt: &Prompt,
        opts: &GenerateOptions,
        mut on_event: impl FnMut(&StreamEvent) -> bool,
    ) -> Result<GenerationResult> {
        let submitted = Instant::now();
        let created_unix_ms = unix_millis_now();
        // The call is in flight from here: its timeout counts and a cancel sticks to it through
        // compilation and tokenization too.
        let (_busy, running) = self.claim(opts.timeout, opts.cancel.as_ref())?;
        let seed = opts.sampling.seed.unwrap_or_else(|| self.engine.next_seed());
        let control = running.control.clone();
        let stopped = |control: &Control| control.stop_reason().map(|r| (r, submitted.elapsed()));
        let (prompt, constraints, plan) = match self.prepare(prompt, opts, &control) {
            Ok(ready) => ready,
            Err(e) if e.kind() == ErrorKind::Cancelled && control.is_stopped() => {
                let (reason, took) = stopped(&control).expect("stopped");
                return Ok(self.ended_before_generating(reason, took, opts, seed, created_unix_ms));
            }
            Err(e) => return Err(e),
        };
        if let Some((reason, took)) = stopped(&control) {
            return Ok(self.ended_before_generating(reason, took, opts, seed, created_unix_ms));
        }
        let (events, receiver) = mpsc::channel();
        self.engine.send(Command::Generate(Box::new(Job {
            session: self.id,
            prompt,
            options: opts.clone(),
            seed,
            constraints,
            control: running.control.clone(),
            events,
            submitted,
        })))?;
        let parser = plan.as_ref().filter(|p| p.calls_allowed).map(|p| ToolCallParser::new(p.format, seed));
        let mut delivered = Delivered::new(opts.logprobs).with_parser(parser);
        let outcome = receive(&receiver, &running.control, &mut delivered, &mut on_event)?;
        let outcome = match &plan {
            Some(plan) => tool_outcome(outcome, plan, &delivered),
            None => outcome,
        };
        Ok(self.result(delivered, outcome, opts, seed, created_unix_ms))
    }

    /// Checks the options, compiles the constraints and tokenizes the prompt, which must leave
    /// room in the context for one generated token.
    /// Compilation gives up (with [`ErrorKind::Cancelled`]) once `control` is stopped.
    fn prepare(&self, prompt: &Prompt, opts: &GenerateOptions, control: &Control) -> Result<Prepared> {
        opts.sampling.validate()?;
        let plan = match &opts.tools {
            None => None,
            Some(_) if !matches!(prompt, Prompt::Chat(_)) => return Err(Error::invalid_argument(
                "tools need a chat prompt (the chat template renders them); this prompt is text or tokens",
            )),
            Some(tools) => Some(tools.plan(self.engine.template_tool_format(), &opts.constraints)?),
        };
        let to_compile = plan.as_ref().map_or(&opts.constraints, |p| &p.constraints);
        let stop = || {
            control.stop_reason().map(|r| {
                Error::new(ErrorKind::Cancelled, format!("the call ended ({}) while compiling", r.as_str()))
            })
        };
        let constraints = to_compile
            .iter()
            .map(|c| self.engine.compiler.compile_until(c, &stop).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        let tools = opts.tools.as_ref().zip(plan.as_ref().map(|p| p.format));
        let prompt = self.engine.prompt_tokens_with(prompt, tools)?;
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
        Ok((prompt, constraints, plan))
    }

    /// Marks the session busy until the guards drop (refused while another generation runs),
    /// with a fresh stop switch for the call, reachable by [`LocalSession::cancel`] and armed
    /// with the timeout and linked to the caller's token. Both happen under the switch's lock, so
    /// a cancel that sees the session busy reaches this call.
    fn claim(
        &self,
        timeout: Option<Duration>,
        token: Option<&CancelToken>,
    ) -> Result<(BusyGuard<'_>, RunningGuard<'_>)> {
        let mut slot = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(Error::new(
                ErrorKind::Busy,
                "this session is already generating; use another session or wait",
            ));
        }
        let control = Arc::new(Control::new());
        *slot = Some(control.clone());
        drop(slot);
        let timer = timeout.map(|t| self.engine.start_timer(t, control.clone()));
        let link = token.map(|token| {
            let control = control.clone();
            token.link(move || control.cancel())
        });
        Ok((BusyGuard(&self.busy), RunningGuard { slot: &self.running, control, timer, _link: link }))
    }

    /// The result of a call cancelled or timed out before it reached the model (while its
    /// constraints compiled or its prompt was tokenized): no text, every constraint unproven.
    fn ended_before_generating(
        &self,
        reason: FinishReason,
        took: Duration,
        opts: &GenerateOptions,
        seed: u64,
        created_unix_ms: u64,
    ) -> GenerationResult {
        let why = format!("the call ended ({}) before generation began", reason.as_str());
        let validation = opts.constraints.iter().map(|c| ConstraintReport::unproven(c, &why)).collect();
        let outcome = Outcome {
            finish: reason,
            stats: GenerationStats { total_time: took, ..Default::default() },
            error: None,
            validation,
            constraint_stats: None,
        };
        self.result(Delivered::new(opts.logprobs), outcome, opts, seed, created_unix_ms)
    }

    /// The result: what the caller was given, and how the worker says the request ended unless
    /// the caller cut it short.
    fn result(
        &self,
        delivered: Delivered,
        outcome: Outcome,
        opts: &GenerateOptions,
        seed: u64,
        created_unix_ms: u64,
    ) -> GenerationResult {
        let Outcome { finish, stats, error, mut validation, constraint_stats } = outcome;
        let finish = if delivered.stopped_by_caller {
            void_grammar_guarantees(&mut validation, "the streaming callback stopped generation");
            FinishReason::Cancelled
        } else if let Some(reason) = delivered.cut {
            void_grammar_guarantees(&mut validation, &format!("the call ended ({})", reason.as_str()));
            reason
        } else {
            finish
        };
        let stats = GenerationStats { generated_tokens: delivered.tokens.len(), ..stats };
        let tools_enforced = validation.iter().any(|r| {
            r.name == crate::tools::grammar::TOOLS_CONSTRAINT_NAME && r.outcome != ConstraintOutcome::Relaxed
        });
        let tool_call_checks = delivered
            .calls
            .iter()
            .enumerate()
            .map(|(index, c)| check_call(index, c, tools_enforced, finish))
            .collect();
        let finish = match finish {
            FinishReason::Stop if delivered.calls.iter().any(|c| c.complete) => FinishReason::ToolCalls,
            other => other,
        };
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
        GenerationResult {
            tool_calls: delivered.calls.into_iter().map(|c| c.call).collect(),
            tool_call_checks,
            text: delivered.text,
            tokens: delivered.tokens,
            logprobs: delivered.logprobs,
            finish_reason: finish,
            stats,
            error,
            validation,
            constraint_stats,
            provenance,
        }
    }

    /// Stops the call in flight, if any, wherever it is: compiling its constraints, tokenizing,
    /// queued, prefilling or decoding. Safe from any thread. A no-op when no call is in flight
    /// (none has entered, or the last has returned): it does not affect the next generation.
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

impl Drop for LocalSession {
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

/// The running request's stop switch, registered for [`Session::cancel`], with its timeout
/// timer; both go when the generation ends.
struct RunningGuard<'a> {
    slot: &'a Mutex<Option<Arc<Control>>>,
    control: Arc<Control>,
    timer: Option<AbortHandle>,
    _link: Option<CancelLink>,
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// What the caller has been given so far.
struct Delivered {
    text: String,
    /// The tool calls delivered (with tools): complete once the parser closed them.
    calls: Vec<ParsedCall>,
    parser: Option<ToolCallParser>,
    tokens: Vec<u32>,
    /// Collected only when the request asked for them.
    logprobs: Option<Vec<f32>>,
    /// The streaming callback returned `false`: nothing after that point is taken.
    stopped_by_caller: bool,
    /// The call was cancelled or timed out while text the worker had already produced was
    /// still being delivered (a slow callback), or after its last piece: nothing after that
    /// point is taken, and the call ends for that reason however the worker ended.
    cut: Option<FinishReason>,
}

impl Delivered {
    fn new(logprobs: bool) -> Self {
        Self {
            text: String::new(),
            calls: Vec::new(),
            parser: None,
            tokens: Vec::new(),
            logprobs: logprobs.then(Vec::new),
            stopped_by_caller: false,
            cut: None,
        }
    }

    /// Splits what follows into text and tool calls.
    fn with_parser(mut self, parser: Option<ToolCallParser>) -> Self {
        self.parser = parser;
        self
    }

    /// Takes one event from the worker; `Some` when it is the last. A callback that stops the
    /// generation on a token cancels the request.
    fn take(
        &mut self,
        event: Event,
        control: &Control,
        on_text: &mut impl FnMut(&StreamEvent) -> bool,
    ) -> Option<Outcome> {
        match event {
            Event::Done(outcome) => {
                // Stopped after the worker's last event but before the call returns: the call
                // still ends for that reason (the header's promise for a call in flight).
                if !self.stopped_by_caller && self.cut.is_none() {
                    self.cut = control.stop_reason();
                }
                self.finish_calls(on_text);
                return Some(*outcome);
            }
            _ if self.stopped_by_caller || self.cut.is_some() => {}
            _ if control.is_stopped() => self.cut = control.stop_reason(),
            Event::Token { id, logprob, text } => {
                self.tokens.push(id);
                if let (Some(all), Some(lp)) = (self.logprobs.as_mut(), logprob) {
                    all.push(lp);
                }
                if !self.deliver(&text, on_text) {
                    control.cancel();
                }
            }
            Event::Tail { text } => {
                self.deliver(&text, on_text);
            }
        }
        None
    }

    /// Hands a piece of text to the caller, split into text and calls with tools; `false` when
    /// the caller stops the generation.
    fn deliver(&mut self, piece: &str, on_event: &mut impl FnMut(&StreamEvent) -> bool) -> bool {
        if piece.is_empty() {
            return true;
        }
        let events = match self.parser.as_mut() {
            Some(parser) => parser.push(piece),
            None => vec![StreamEvent::Text(piece.to_string())],
        };
        self.hand_over(events, on_event)
    }

    fn hand_over(
        &mut self,
        events: Vec<StreamEvent>,
        on_event: &mut impl FnMut(&StreamEvent) -> bool,
    ) -> bool {
        for event in events {
            if self.stopped_by_caller {
                break;
            }
            match &event {
                StreamEvent::Text(text) => self.text.push_str(text),
                StreamEvent::CallStart { id, name, .. } => self.calls.push(ParsedCall {
                    call: crate::tools::ToolCall {
                        id: id.clone(),
                        name: name.clone(),
                        arguments: String::new(),
                    },
                    complete: false,
                }),
                StreamEvent::CallArguments { index, fragment } => {
                    if let Some(c) = self.calls.get_mut(*index) {
                        c.call.arguments.push_str(fragment);
                    }
                }
            }
            self.stopped_by_caller = !on_event(&event);
        }
        !self.stopped_by_caller
    }

    /// The end of the reply: text the parser held back is delivered (unless the call was cut
    /// or stopped), and each delivered call is complete when the parser closed it and all of
    /// its arguments were delivered.
    fn finish_calls(&mut self, on_event: &mut impl FnMut(&StreamEvent) -> bool) {
        let Some(mut parser) = self.parser.take() else { return };
        let (tail, _, parsed) = parser.finish();
        if !self.stopped_by_caller && self.cut.is_none() {
            self.hand_over(tail, on_event);
        }
        for (mine, theirs) in self.calls.iter_mut().zip(parsed) {
            mine.complete = theirs.complete && mine.call == theirs.call;
        }
    }
}

/// What validation says of call `index`: satisfied when it is complete and the tool grammar held
/// throughout (never relaxed).
fn check_call(index: usize, c: &ParsedCall, enforced: bool, finish: FinishReason) -> ToolCallCheck {
    let reason = match (c.complete, enforced) {
        (true, true) => None,
        (false, _) => {
            Some(format!("the call was cut short ({}) before its arguments were complete", finish.as_str()))
        }
        (true, false) => Some("the tool grammar was relaxed: the arguments were not enforced".to_string()),
    };
    ToolCallCheck { index, name: c.call.name.clone(), satisfied: reason.is_none(), reason }
}

/// The worker's validation under a tool plan, as the caller's constraints read: each folded
/// text constraint fares as the tool grammar did on a text reply, and holds vacuously on a reply
/// of calls only (said in its reason); token masks report as they are; the tool grammar's own
/// report comes last.
fn tool_outcome(mut outcome: Outcome, plan: &ToolPlan, delivered: &Delivered) -> Outcome {
    if !plan.calls_allowed {
        // tool_choice none: the caller's reports as they are, the text-only grammar's last.
        if !outcome.validation.is_empty() {
            outcome.validation.rotate_left(1);
        }
        return outcome;
    }
    let mut reports = std::mem::take(&mut outcome.validation).into_iter();
    let Some(tools) = reports.next() else { return outcome };
    let mut masks = reports;
    let callers: Vec<ConstraintReport> = plan_callers(plan)
        .into_iter()
        .map(|(folded, name, kind, priority)| {
            if !folded {
                let missing = ConstraintReport {
                    name: name.clone(),
                    kind,
                    priority,
                    outcome: ConstraintOutcome::Violated,
                    reason: Some("no report came back for this constraint".into()),
                    relaxed_keywords: Vec::new(),
                    ignored_formats: Vec::new(),
                };
                return masks.next().unwrap_or(missing);
            }
            let calls_only = delivered.text.is_empty() && !delivered.calls.is_empty();
            ConstraintReport {
                name,
                kind,
                priority,
                outcome: tools.outcome,
                reason: if calls_only {
                    Some("the reply is tool calls only: this constraint governs text replies".into())
                } else {
                    tools.reason.clone()
                },
                relaxed_keywords: Vec::new(),
                ignored_formats: Vec::new(),
            }
        })
        .collect();
    outcome.validation = callers;
    outcome.validation.push(tools);
    outcome
}

/// The caller's constraints in order: (folded into the tool grammar, name, kind, priority).
fn plan_callers(plan: &ToolPlan) -> Vec<(bool, String, ConstraintTag, i32)> {
    plan.caller
        .iter()
        .enumerate()
        .map(|(i, c)| (plan.folded.contains(&i), c.name.clone(), c.kind.tag(), c.priority))
        .collect()
}

/// Streams the worker's events into `delivered` until the request's outcome arrives.
fn receive(
    events: &Receiver<Event>,
    control: &Control,
    delivered: &mut Delivered,
    on_text: &mut impl FnMut(&StreamEvent) -> bool,
) -> Result<Outcome> {
    loop {
        let event = events.recv().map_err(|_| worker_gone())?;
        if let Some(outcome) = delivered.take(event, control, on_text) {
            return Ok(outcome);
        }
    }
}

/// The text was cut short (`why`): grammar constraints cannot vouch for it any more (a token
/// mask held on every token still does).
fn void_grammar_guarantees(validation: &mut [ConstraintReport], why: &str) {
    for report in validation.iter_mut().filter(|r| {
        matches!(r.outcome, ConstraintOutcome::Satisfied | ConstraintOutcome::PartiallyEnforced)
            && r.kind != ConstraintTag::TokenMask
    }) {
        report.outcome = ConstraintOutcome::Violated;
        report.reason = Some(format!("{why} before the output was complete"));
    }
}

fn unix_millis_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::text_only;

    fn token(id: u32, text: &str) -> Event {
        Event::Token { id, logprob: Some(-(id as f32)), text: text.into() }
    }

    fn done(finish: FinishReason) -> Event {
        Event::Done(Box::new(Outcome {
            finish,
            stats: GenerationStats::default(),
            error: None,
            validation: Vec::new(),
            constraint_stats: None,
        }))
    }

    /// Feeds `events` through a session's receiving side; what the callback saw, what was
    /// delivered, the outcome and whether the request was cancelled.
    fn stream(
        events: Vec<Event>,
        logprobs: bool,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> (Delivered, Result<Outcome>, bool) {
        let mut on_text = text_only(&mut on_text);
        let (sender, receiver) = mpsc::channel();
        events.into_iter().for_each(|e| sender.send(e).unwrap());
        drop(sender);
        let control = Control::new();
        let mut delivered = Delivered::new(logprobs);
        let outcome = receive(&receiver, &control, &mut delivered, &mut on_text);
        (delivered, outcome, control.is_stopped())
    }

    #[test]
    fn pieces_reach_the_callback_in_order_and_empty_ones_not_at_all() {
        let mut seen = Vec::new();
        let events = vec![
            token(1, "Hel"),
            token(2, ""),
            token(3, "lo"),
            Event::Tail { text: "!".into() },
            done(FinishReason::Length),
        ];
        let (delivered, outcome, cancelled) = stream(events, true, |t| {
            seen.push(t.to_string());
            true
        });
        assert_eq!(seen, ["Hel", "lo", "!"]);
        assert_eq!((delivered.text.as_str(), delivered.tokens), ("Hello!", vec![1, 2, 3]));
        assert_eq!(delivered.logprobs, Some(vec![-1.0, -2.0, -3.0]));
        assert_eq!(outcome.unwrap().finish, FinishReason::Length);
        assert!(!cancelled && !delivered.stopped_by_caller);
    }

    #[test]
    fn log_probabilities_are_kept_only_when_asked_for() {
        let (delivered, _, _) = stream(vec![token(1, "a"), done(FinishReason::Stop)], false, |_| true);
        assert_eq!(delivered.logprobs, None);
    }

    #[test]
    fn a_callback_that_stops_cancels_the_request_and_takes_nothing_after() {
        let mut calls = 0;
        let events = vec![
            token(1, "a"),
            token(2, "b"),
            token(3, "c"),
            Event::Tail { text: "d".into() },
            done(FinishReason::Length),
        ];
        let (delivered, outcome, cancelled) = stream(events, true, |_| {
            calls += 1;
            calls < 2
        });
        assert!(cancelled, "the worker is told to stop");
        assert_eq!(calls, 2);
        assert_eq!((delivered.text.as_str(), delivered.tokens), ("ab", vec![1, 2]));
        assert_eq!(delivered.logprobs, Some(vec![-1.0, -2.0]));
        assert!(delivered.stopped_by_caller);
        assert_eq!(outcome.unwrap().finish, FinishReason::Length, "the session overrides it");
    }

    #[test]
    fn a_callback_that_stops_on_the_tail_does_not_cancel() {
        let events = vec![token(1, "a"), Event::Tail { text: "z".into() }, done(FinishReason::Stop)];
        let (delivered, _, cancelled) = stream(events, false, |t| t != "z");
        assert_eq!(delivered.text, "az");
        assert!(delivered.stopped_by_caller && !cancelled);
    }

    #[test]
    fn a_cancel_while_text_is_still_being_delivered_takes_nothing_after() {
        // The worker finished (Length) before the caller's slow callback had taken it all; a
        // cancel from another thread during the callback ends the call there.
        let (sender, receiver) = mpsc::channel();
        for e in [token(1, "a"), token(2, "b"), Event::Tail { text: "c".into() }, done(FinishReason::Length)]
        {
            sender.send(e).unwrap();
        }
        let control = Control::new();
        let mut delivered = Delivered::new(false);
        let mut seen = Vec::new();
        let mut on_text = |t: &str| {
            seen.push(t.to_string());
            control.cancel(); // as maze_session_cancel from another thread would
            true
        };
        let mut on_text = text_only(&mut on_text);
        let outcome = receive(&receiver, &control, &mut delivered, &mut on_text).unwrap();
        drop(on_text);
        assert_eq!(seen, ["a"]);
        assert_eq!((delivered.text.as_str(), delivered.tokens.as_slice()), ("a", &[1][..]));
        assert_eq!((delivered.cut, delivered.stopped_by_caller), (Some(FinishReason::Cancelled), false));
        assert_eq!(outcome.finish, FinishReason::Length, "the session overrides it");
    }

    #[test]
    fn a_cancel_during_the_last_piece_still_ends_the_call_cancelled() {
        let (sender, receiver) = mpsc::channel();
        for e in [token(1, "a"), done(FinishReason::Stop)] {
            sender.send(e).unwrap();
        }
        let control = Control::new();
        let mut delivered = Delivered::new(false);
        let mut on_text = |_: &str| {
            control.cancel();
            true
        };
        let mut on_text = text_only(&mut on_text);
        receive(&receiver, &control, &mut delivered, &mut on_text).unwrap();
        assert_eq!((delivered.text.as_str(), delivered.cut), ("a", Some(FinishReason::Cancelled)));
        // Not stopped at all: the worker's outcome stands.
        let (delivered, outcome, _) = stream(vec![token(1, "a"), done(FinishReason::Stop)], false, |_| true);
        assert_eq!((delivered.cut, outcome.unwrap().finish), (None, FinishReason::Stop));
    }

    #[test]
    fn a_worker_gone_before_the_outcome_is_an_error() {
        let (_, outcome, _) = stream(vec![token(1, "a")], false, |_| true);
        assert_eq!(outcome.err().unwrap().kind(), ErrorKind::Internal);
    }

    #[test]
    fn a_cut_by_the_caller_voids_grammar_guarantees_but_not_token_masks() {
        let report = |kind: ConstraintTag, outcome| ConstraintReport {
            name: kind.as_str().into(),
            kind,
            priority: 0,
            outcome,
            reason: None,
            relaxed_keywords: Vec::new(),
            ignored_formats: Vec::new(),
        };
        let mut validation = vec![
            report(ConstraintTag::JsonSchema, ConstraintOutcome::Satisfied),
            report(ConstraintTag::TokenMask, ConstraintOutcome::Satisfied),
            report(ConstraintTag::Regex, ConstraintOutcome::Relaxed),
        ];
        void_grammar_guarantees(&mut validation, "the streaming callback stopped generation");
        let outcomes: Vec<_> = validation.iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            [ConstraintOutcome::Violated, ConstraintOutcome::Satisfied, ConstraintOutcome::Relaxed]
        );
        assert!(validation[0].reason.as_deref().unwrap().contains("streaming callback"));
        assert_eq!((validation[1].reason.as_ref(), validation[2].reason.as_ref()), (None, None));
    }
}
