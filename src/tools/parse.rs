//! Splits a reply into text and tool calls as it streams, in the reply's call syntax: text is
//! delivered until a call opens (text that may be the start of the opening marker is held back
//! until it is ruled out), then each call's name once it is complete and its arguments in
//! fragments as they come.
//!
//! A reply generated under the tool grammar always parses. Anything else (a relaxed grammar)
//! that breaks the syntax mid-call is given back as text from the call's start, so nothing is
//! lost, and no further calls are read.

use super::format::CallSyntax;
use super::{ToolCall, ToolFormat};

/// One piece of a streamed reply: text, or part of a tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    Text(String),
    /// A call's name is complete; its arguments follow.
    CallStart {
        index: usize,
        id: String,
        name: String,
    },
    /// The next piece of call `index`'s arguments JSON.
    CallArguments {
        index: usize,
        fragment: String,
    },
}

/// A call as parsed: complete once its arguments object closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCall {
    pub call: ToolCall,
    pub complete: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Text; `held` may be the start of the opening marker.
    Text {
        held: String,
        at_start: bool,
    },
    /// Matching a fixed piece of the call (`{"name": "`, `", "arguments": `, `}`).
    Literal {
        expected: String,
        matched: usize,
        then: Box<State>,
    },
    Name(String),
    Arguments(JsonDepth),
    /// After a call: the separator to the next call, or the closing marker.
    Separator(String),
    /// After the last call, or after a broken one: the rest is text.
    Rest,
}

/// Where a JSON value's text is: its nesting depth and whether inside a string.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct JsonDepth {
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl JsonDepth {
    /// Takes one character; true when it closed the value.
    fn take(&mut self, c: char) -> bool {
        if self.in_string {
            match (self.escaped, c) {
                (true, _) => self.escaped = false,
                (false, '\\') => self.escaped = true,
                (false, '"') => self.in_string = false,
                _ => {}
            }
            return false;
        }
        match c {
            '"' => self.in_string = true,
            '{' | '[' => self.depth += 1,
            '}' | ']' => {
                self.depth = self.depth.saturating_sub(1);
                return self.depth == 0;
            }
            _ => {}
        }
        false
    }
}

/// The incremental splitter of one reply.
#[derive(Debug)]
pub struct ToolCallParser {
    format: ToolFormat,
    syntax: CallSyntax,
    seed: u64,
    state: State,
    text: String,
    calls: Vec<ParsedCall>,
    /// Raw text of the call being read, given back as text if it breaks.
    raw_call: String,
}

impl ToolCallParser {
    /// `seed` makes the call ids reproducible.
    pub fn new(format: ToolFormat, seed: u64) -> Self {
        Self {
            format,
            syntax: format.syntax(),
            seed,
            state: State::Text { held: String::new(), at_start: true },
            text: String::new(),
            calls: Vec::new(),
            raw_call: String::new(),
        }
    }

    /// Takes the next piece of the reply; the events it completes, in order.
    pub fn push(&mut self, piece: &str) -> Vec<StreamEvent> {
        let mut events = Vec::new();
        for c in piece.chars() {
            self.take(c, &mut events);
        }
        coalesce(events)
    }

    /// The end of the reply: text still held back, and the text and calls of the whole reply.
    pub fn finish(&mut self) -> (Vec<StreamEvent>, String, Vec<ParsedCall>) {
        let mut events = Vec::new();
        match std::mem::replace(&mut self.state, State::Rest) {
            State::Text { held, .. } => self.emit_text(held, &mut events),
            State::Literal { .. } | State::Name(_) if self.calls.last().is_none_or(|c| c.complete) => {
                // A call that had not reached its name: it was never announced; give it back.
                let raw = std::mem::take(&mut self.raw_call);
                self.emit_text(raw, &mut events);
            }
            _ => {}
        }
        (events, std::mem::take(&mut self.text), std::mem::take(&mut self.calls))
    }

    fn take(&mut self, c: char, events: &mut Vec<StreamEvent>) {
        let state = std::mem::replace(&mut self.state, State::Rest);
        if !matches!(state, State::Text { .. } | State::Rest) {
            self.raw_call.push(c);
        }
        self.state = match state {
            State::Text { mut held, at_start } => {
                if at_start && held.is_empty() && c == '{' && self.syntax.bare_call {
                    self.raw_call = c.to_string();
                    self.call_head(1)
                } else {
                    held.push(c);
                    self.text_state(held, events)
                }
            }
            State::Literal { expected, matched, then } => {
                let mut rest = expected[matched..].chars();
                if rest.next() != Some(c) {
                    self.broken(events)
                } else if matched + c.len_utf8() == expected.len() {
                    *then
                } else {
                    State::Literal { expected, matched: matched + c.len_utf8(), then }
                }
            }
            State::Name(mut name) if c == '"' => {
                let index = self.calls.len();
                let id = self.format.call_id(self.seed, index);
                events.push(StreamEvent::CallStart { index, id: id.clone(), name: name.clone() });
                self.calls.push(ParsedCall {
                    call: ToolCall { id, name: std::mem::take(&mut name), arguments: String::new() },
                    complete: false,
                });
                let expected = format!(", \"{}\": ", self.syntax.arguments_key);
                State::Literal {
                    expected,
                    matched: 0,
                    then: Box::new(State::Arguments(JsonDepth::default())),
                }
            }
            State::Name(mut name)
                if name.len() < 64 && (c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
            {
                name.push(c);
                State::Name(name)
            }
            State::Name(_) => self.broken(events),
            State::Arguments(mut depth) => {
                let index = self.calls.len() - 1;
                if depth.depth == 0 && !depth.in_string && c != '{' {
                    self.state = self.broken(events);
                    return;
                }
                let closed = depth.take(c);
                self.calls[index].call.arguments.push(c);
                events.push(StreamEvent::CallArguments { index, fragment: c.to_string() });
                if closed {
                    State::Literal {
                        expected: "}".into(),
                        matched: 0,
                        then: Box::new(State::Separator(String::new())),
                    }
                } else {
                    State::Arguments(depth)
                }
            }
            State::Separator(mut sep) => {
                sep.push(c);
                let (between, close) = (self.syntax.between, self.syntax.close);
                if sep == between && !sep.is_empty() {
                    self.raw_call.clear();
                    self.call_head(0)
                } else if between.starts_with(&sep) || close.starts_with(&sep) {
                    State::Separator(sep)
                } else {
                    // Past the closing marker (or no marker): the rest is text.
                    self.raw_call.clear();
                    let after = if !close.is_empty() && sep.starts_with(close) {
                        &sep[close.len()..]
                    } else {
                        &sep[..]
                    };
                    self.emit_text(after.to_string(), events);
                    State::Rest
                }
            }
            State::Rest => {
                self.emit_text(c.to_string(), events);
                State::Rest
            }
        };
        if let State::Separator(sep) = &self.state {
            if sep.is_empty() {
                // The closing brace of a call arrived: the call is complete.
                if let Some(call) = self.calls.last_mut() {
                    call.complete = true;
                }
            }
        }
    }

    /// Free text with the opening marker looked for; releases what cannot start it.
    fn text_state(&mut self, mut held: String, events: &mut Vec<StreamEvent>) -> State {
        let Some(open) = self.syntax.open else {
            self.emit_text(held, events);
            return State::Text { held: String::new(), at_start: false };
        };
        if let Some(at) = held.find(open) {
            let before = held[..at].to_string();
            self.emit_text(before, events);
            self.raw_call = held[at..].to_string();
            return self.call_head(0);
        }
        let keep = (1..open.len().min(held.len() + 1))
            .rev()
            .find(|&n| held.is_char_boundary(held.len() - n) && open.starts_with(&held[held.len() - n..]))
            .unwrap_or(0);
        let release = held[..held.len() - keep].to_string();
        held.drain(..held.len() - keep);
        self.emit_text(release, events);
        State::Text { held, at_start: false }
    }

    /// Expecting `{"name": "` with its first `matched` bytes already read.
    fn call_head(&self, matched: usize) -> State {
        State::Literal {
            expected: "{\"name\": \"".into(),
            matched,
            then: Box::new(State::Name(String::new())),
        }
    }

    /// The syntax broke: the current call's raw text goes back to the text, and parsing ends.
    fn broken(&mut self, events: &mut Vec<StreamEvent>) -> State {
        if self.calls.last().is_some_and(|c| !c.complete) {
            self.calls.pop();
        }
        let raw = std::mem::take(&mut self.raw_call);
        self.emit_text(raw, events);
        State::Rest
    }

    fn emit_text(&mut self, text: String, events: &mut Vec<StreamEvent>) {
        if text.is_empty() {
            return;
        }
        self.text.push_str(&text);
        events.push(StreamEvent::Text(text));
    }
}

/// An event callback that hands text pieces to `on_text` and lets calls pass (for callers
/// that stream text only).
pub fn text_only(on_text: &mut impl FnMut(&str) -> bool) -> impl FnMut(&StreamEvent) -> bool + '_ {
    move |event| match event {
        StreamEvent::Text(text) => on_text(text),
        _ => true,
    }
}

/// The start of `text` for an error message.
pub(crate) fn excerpt(text: &str) -> String {
    match text.char_indices().nth(60) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

/// Joins neighbouring pieces of the same kind (one event per piece of input, not per char).
fn coalesce(events: Vec<StreamEvent>) -> Vec<StreamEvent> {
    let mut out: Vec<StreamEvent> = Vec::with_capacity(events.len());
    for e in events {
        match (out.last_mut(), e) {
            (Some(StreamEvent::Text(a)), StreamEvent::Text(b)) => a.push_str(&b),
            (
                Some(StreamEvent::CallArguments { index: i, fragment: a }),
                StreamEvent::CallArguments { index: j, fragment: b },
            ) if *i == j => a.push_str(&b),
            (_, e) => out.push(e),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `reply` in pieces of `step` chars; the events and the final split.
    fn split(format: ToolFormat, reply: &str, step: usize) -> (Vec<StreamEvent>, String, Vec<ParsedCall>) {
        let mut p = ToolCallParser::new(format, 1);
        let chars: Vec<char> = reply.chars().collect();
        let mut events = Vec::new();
        for piece in chars.chunks(step) {
            events.extend(p.push(&piece.iter().collect::<String>()));
        }
        let (tail, text, calls) = p.finish();
        events.extend(tail);
        (coalesce(events), text, calls)
    }

    const TWO_CALLS: &str = "Checking.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris \\\"}\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>";

    #[test]
    fn hermes_calls_split_from_text_whatever_the_piece_size() {
        for step in [1, 2, 3, 7, 1000] {
            let (events, text, calls) = split(ToolFormat::Hermes, TWO_CALLS, step);
            assert_eq!(text, "Checking.", "step {step}");
            assert_eq!(calls.len(), 2);
            assert_eq!(calls[0].call.name, "get_weather");
            assert_eq!(calls[0].call.arguments, "{\"city\": \"Paris \\\"}\"}");
            assert_eq!((calls[1].call.name.as_str(), calls[1].call.arguments.as_str()), ("now", "{}"));
            assert!(calls.iter().all(|c| c.complete));
            let id0 = ToolFormat::Hermes.call_id(1, 0);
            assert_eq!(events[0], StreamEvent::Text("Checking.".into()), "step {step}");
            assert_eq!(events[1], StreamEvent::CallStart { index: 0, id: id0, name: "get_weather".into() });
            let args: String = events
                .iter()
                .filter_map(|e| match e {
                    StreamEvent::CallArguments { index: 0, fragment } => Some(fragment.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(args, calls[0].call.arguments);
        }
    }

    #[test]
    fn text_that_only_looks_like_the_start_of_a_call_is_released() {
        let (events, text, calls) = split(ToolFormat::Hermes, "a <tool and <tool_cal", 1);
        assert_eq!(text, "a <tool and <tool_cal");
        assert!(calls.is_empty());
        assert_eq!(events, [StreamEvent::Text("a <tool and <tool_cal".into())]);
    }

    #[test]
    fn a_bare_json_call_at_the_start_is_a_call() {
        let (_, text, calls) = split(ToolFormat::Hermes, "{\"name\": \"now\", \"arguments\": {}}", 1);
        assert_eq!((text.as_str(), calls.len()), ("", 1));
        let (_, text, calls) =
            split(ToolFormat::Llama3, "{\"name\": \"now\", \"parameters\": {\"a\": [1, {}]}}", 2);
        assert_eq!((text.as_str(), calls[0].call.arguments.as_str()), ("", "{\"a\": [1, {}]}"));
        assert!(calls[0].complete);
    }

    #[test]
    fn any_input_splits_without_losing_text() {
        // Pieces of call syntax in random order and sizes: the parser never panics, and
        // whatever is not a call comes back as text, in order.
        let atoms = [
            "<tool_call>\n",
            "{\"name\": \"",
            "f",
            "\", \"arguments\": ",
            "{",
            "}",
            "\"",
            "\\",
            "\n</tool_call>",
            "\n",
            "é",
            "x",
            "[TOOL_CALLS][",
            ", ",
            "]",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3000 {
            let mut reply = String::new();
            for _ in 0..(state % 24) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                reply.push_str(atoms[(state % atoms.len() as u64) as usize]);
            }
            for format in ToolFormat::ALL {
                let step = 1 + (state % 5) as usize;
                let (_, text, calls) = split(*format, &reply, step);
                if calls.is_empty() {
                    assert_eq!(text, reply, "{format:?} {reply:?}");
                } else {
                    assert!(reply.contains(&calls[0].call.name), "{reply:?}");
                }
            }
        }
    }

    #[test]
    fn mistral_calls_are_a_list() {
        let reply = "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"x\": 1}}, {\"name\": \"b\", \"arguments\": {}}]";
        let (_, text, calls) = split(ToolFormat::Mistral, reply, 3);
        assert_eq!(text, "");
        let names: Vec<&str> = calls.iter().map(|c| c.call.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(calls[0].call.id.len(), 9);
    }

    #[test]
    fn a_call_cut_short_is_incomplete_and_a_broken_one_is_given_back_as_text() {
        let (_, _, calls) =
            split(ToolFormat::Hermes, "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": ", 1);
        assert_eq!((calls.len(), calls[0].complete), (1, false));
        assert_eq!(calls[0].call.arguments, "{\"a\": ");
        let (_, text, calls) = split(ToolFormat::Hermes, "x<tool_call>\nnot json", 1);
        assert_eq!((text.as_str(), calls.len()), ("x<tool_call>\nnot json", 0));
        let (_, text, calls) = split(ToolFormat::Hermes, "<tool_call>\n{\"na", 1);
        assert_eq!((text.as_str(), calls.len()), ("<tool_call>\n{\"na", 0), "never announced: text");
    }
}
