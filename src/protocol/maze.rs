//! The Maze protocol: Maze's own JSON over HTTP, spoken by `maze-server` and the remote backend.
//! It carries everything a local call has (every constraint kind, token masks included, and
//! the validation of each). Documented in docs/PROTOCOL.md.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::constraint::{
    Constraint, ConstraintOutcome, ConstraintReport, ConstraintStats, ConstraintTag, IgnoredFormat,
    RelaxedKeyword,
};
use crate::engine::{GenerateOptions, Prompt};
use crate::error::{Error, ErrorKind, Result};
use crate::model::chat::ChatMessage;
use crate::result::{AppliedConstraint, FinishReason, GenerationResult, GenerationStats, Provenance};
use crate::sampling::SamplingParams;
use crate::tools::{StreamEvent, ToolCall, ToolCallCheck, ToolUse};

pub const GENERATE_PATH: &str = "/maze/v1/generate";
pub const HEALTH_PATH: &str = "/maze/v1/health";
pub const MODELS_PATH: &str = "/maze/v1/models";

/// `POST /maze/v1/generate`: exactly one of `prompt`, `messages`, `tokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// Which of the server's models (see `/maze/v1/models`); absent: its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "messages_exactly")]
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub sampling: SamplingParams,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub logprobs: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_eos: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "constraints_exactly")]
    pub constraints: Vec<Constraint>,
    /// Tools the model may call (chat `messages` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<ToolUse>,
    /// Server-sent events: `data: {"text": ...}` per piece (or a tool-call piece, see
    /// [`StreamPiece`]), then `event: result`.
    #[serde(default)]
    pub stream: bool,
}

/// A chat message as the protocol reads it: other fields (`name`, ...) are refused, not dropped.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireMessage {
    role: String,
    content: String,
    #[serde(default)]
    tool_calls: Vec<ToolCall>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

fn messages_exactly<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Vec<ChatMessage>>, D::Error> {
    let messages = Option::<Vec<WireMessage>>::deserialize(d)?;
    Ok(messages.map(|list| {
        list.into_iter()
            .map(|m| ChatMessage {
                tool_calls: m.tool_calls,
                tool_call_id: m.tool_call_id,
                ..ChatMessage::new(m.role, m.content)
            })
            .collect()
    }))
}

/// Reads the constraints, refusing any key a constraint does not use: the constraint's JSON form
/// is what it writes back, so a key that is not written back (a typo, a second kind) would be
/// dropped silently.
fn constraints_exactly<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<Constraint>, D::Error> {
    use serde::de::Error as _;
    Vec::<Value>::deserialize(d)?
        .into_iter()
        .enumerate()
        .map(|(i, given)| {
            let constraint = Constraint::deserialize(&given).map_err(|e| D::Error::custom(format!("constraint {i}: {e}")))?;
            let used = serde_json::to_value(&constraint).map_err(D::Error::custom)?;
            match unused_key(&given, &used, "") {
                None => Ok(constraint),
                Some(key) => Err(D::Error::custom(format!(
                    "constraint {i}: unknown field `{key}` (a constraint has one of json_schema, lark, regex, token_mask, choice, gbnf, plus optional name, priority and json_options)"
                ))),
            }
        })
        .collect()
}

/// The first key (as a dotted path) of `given` that `used` lacks, looking into nested objects.
fn unused_key(given: &Value, used: &Value, path: &str) -> Option<String> {
    let (Value::Object(given), Value::Object(used)) = (given, used) else { return None };
    given.iter().find_map(|(key, value)| {
        let here = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
        match used.get(key) {
            None => Some(here),
            Some(kept) => unused_key(value, kept, &here),
        }
    })
}

impl GenerateRequest {
    pub fn new(prompt: &Prompt, opts: &GenerateOptions, stream: bool) -> Self {
        let mut req = Self {
            max_tokens: Some(opts.max_tokens),
            sampling: opts.sampling.clone(),
            stop: opts.stop.clone(),
            timeout_ms: opts.timeout.map(|t| t.as_millis().max(1) as u64),
            logprobs: opts.logprobs,
            ignore_eos: opts.ignore_eos,
            constraints: opts.constraints.clone(),
            tools: opts.tools.clone(),
            stream,
            ..Self::default()
        };
        match prompt {
            Prompt::Text(text) => req.prompt = Some(text.clone()),
            Prompt::Tokens(tokens) => req.tokens = Some(tokens.clone()),
            Prompt::Chat(messages) => req.messages = Some(messages.clone()),
        }
        req
    }

    /// The call this request stands for; refuses a request with no input or several.
    pub fn into_call(self) -> Result<(Prompt, GenerateOptions)> {
        let prompt = match (self.prompt, self.messages, self.tokens) {
            (Some(text), None, None) => Prompt::Text(text),
            (None, Some(messages), None) => Prompt::Chat(messages),
            (None, None, Some(tokens)) => Prompt::Tokens(tokens),
            (None, None, None) => {
                return Err(Error::invalid_argument(
                    "the request has no input: set prompt, messages or tokens",
                ))
            }
            _ => {
                return Err(Error::invalid_argument(
                    "the request has several inputs: set only one of prompt, messages or tokens",
                ))
            }
        };
        let opts = GenerateOptions {
            max_tokens: self.max_tokens.unwrap_or(GenerateOptions::default().max_tokens),
            sampling: self.sampling,
            stop: self.stop,
            timeout: self.timeout_ms.filter(|&ms| ms > 0).map(Duration::from_millis),
            logprobs: self.logprobs,
            constraints: self.constraints,
            ignore_eos: self.ignore_eos,
            cancel: None,
            tools: self.tools,
        };
        Ok((prompt, opts))
    }
}

/// An error as every Maze endpoint returns it (also the shape of OpenAI-style errors, whose
/// clients read `message` and `type`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: WireError,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    pub message: String,
    /// The Maze error kind, e.g. "invalid_constraint".
    pub status: ErrorKind,
    /// OpenAI-style category: "invalid_request_error", "authentication_error", ...
    #[serde(rename = "type", default)]
    pub kind: String,
}

impl From<&Error> for WireError {
    fn from(e: &Error) -> Self {
        Self { message: e.message().to_string(), status: e.kind(), kind: String::new() }
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        Error::new(e.status, e.message)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireStats {
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    pub time_to_first_token_ms: f64,
    pub total_time_ms: f64,
    pub prefill_tokens_per_second: f64,
    pub decode_tokens_per_second: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireReport {
    pub name: String,
    pub kind: String,
    pub priority: i32,
    pub outcome: ConstraintOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relaxed_keywords: Vec<RelaxedKeyword>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored_formats: Vec<IgnoredFormat>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireValidation {
    pub satisfied: bool,
    pub constraints: Vec<WireReport>,
    pub stats: Option<ConstraintStats>,
    /// One check per tool call of the reply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallCheck>,
}

/// The response of a generation (and the `result` event of a stream).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateResponse {
    pub text: String,
    pub tokens: Vec<u32>,
    #[serde(default)]
    pub logprobs: Option<Vec<f32>>,
    pub finish_reason: FinishReason,
    /// Set when generation failed midway (`finish_reason` "error"): the text is kept.
    #[serde(default)]
    pub error: Option<WireError>,
    pub stats: WireStats,
    pub validation: WireValidation,
    pub provenance: Value,
    /// The reply's tool calls (with tools; `text` is then the text part).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

impl GenerateResponse {
    pub fn from_result(r: &GenerationResult) -> Self {
        let s = &r.stats;
        Self {
            text: r.text.clone(),
            tokens: r.tokens.clone(),
            logprobs: r.logprobs.clone(),
            finish_reason: r.finish_reason,
            error: r.error.as_ref().map(WireError::from),
            stats: WireStats {
                prompt_tokens: s.prompt_tokens,
                cached_tokens: s.cached_tokens,
                generated_tokens: s.generated_tokens,
                time_to_first_token_ms: s.time_to_first_token.as_secs_f64() * 1e3,
                total_time_ms: s.total_time.as_secs_f64() * 1e3,
                prefill_tokens_per_second: s.prefill_tokens_per_second,
                decode_tokens_per_second: s.decode_tokens_per_second,
            },
            validation: WireValidation {
                satisfied: r.constraints_satisfied(),
                constraints: r
                    .validation
                    .iter()
                    .map(|v| WireReport {
                        name: v.name.clone(),
                        kind: v.kind.as_str().to_string(),
                        priority: v.priority,
                        outcome: v.outcome,
                        reason: v.reason.clone(),
                        relaxed_keywords: v.relaxed_keywords.clone(),
                        ignored_formats: v.ignored_formats.clone(),
                    })
                    .collect(),
                stats: r.constraint_stats,
                tool_calls: r.tool_call_checks.clone(),
            },
            provenance: serde_json::to_value(&r.provenance).unwrap_or(Value::Null),
            tool_calls: r.tool_calls.clone(),
        }
    }

    /// The result as the remote caller sees it: the server's text, stats and validation, and a
    /// provenance built from the request with the server's model and seed.
    pub fn into_result(self, opts: &GenerateOptions) -> GenerationResult {
        let ms = |v: f64| Duration::from_secs_f64((v / 1e3).max(0.0));
        let p = &self.provenance;
        let text_of = |key: &str| p.get(key).and_then(Value::as_str).unwrap_or("").to_string();
        let seed = p.get("seed").and_then(Value::as_u64).unwrap_or_default();
        GenerationResult {
            tool_calls: self.tool_calls,
            tool_call_checks: self.validation.tool_calls,
            text: self.text,
            tokens: self.tokens,
            logprobs: self.logprobs,
            finish_reason: self.finish_reason,
            stats: GenerationStats {
                prompt_tokens: self.stats.prompt_tokens,
                cached_tokens: self.stats.cached_tokens,
                generated_tokens: self.stats.generated_tokens,
                time_to_first_token: ms(self.stats.time_to_first_token_ms),
                total_time: ms(self.stats.total_time_ms),
                prefill_tokens_per_second: self.stats.prefill_tokens_per_second,
                decode_tokens_per_second: self.stats.decode_tokens_per_second,
            },
            error: self.error.map(Error::from),
            validation: self
                .validation
                .constraints
                .into_iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    // Reports come in the request's order: a kind this client does not know (a
                    // newer server) is the one it asked for at that place; a report for no
                    // constraint of the request says nothing about the caller's output.
                    let kind = ConstraintTag::from_name(&v.kind)
                        .or_else(|| opts.constraints.get(i).map(|c| c.kind.tag()))?;
                    Some(ConstraintReport {
                        name: v.name,
                        kind,
                        priority: v.priority,
                        outcome: v.outcome,
                        reason: v.reason,
                        relaxed_keywords: v.relaxed_keywords,
                        ignored_formats: v.ignored_formats,
                    })
                })
                .collect(),
            constraint_stats: self.validation.stats,
            provenance: Provenance {
                model: text_of("model"),
                architecture: text_of("architecture"),
                created_unix_ms: p.get("created_unix_ms").and_then(Value::as_u64).unwrap_or_default(),
                constraints: AppliedConstraint::list(&opts.constraints),
                sampling: SamplingParams { seed: Some(seed), ..opts.sampling.clone() },
                seed,
                max_tokens: opts.max_tokens,
                stop: opts.stop.clone(),
            },
        }
    }
}

/// One piece of streamed text (`data:` of an unnamed server-sent event).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TextEvent {
    pub text: String,
}

/// One streamed piece (`data:` of an unnamed server-sent event): `{"text": ...}`,
/// `{"tool_call": {"index", "id", "name"}}` when a call's name is complete, or
/// `{"tool_call_arguments": {"index", "fragment"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamPiece {
    ToolCall {
        index: usize,
        id: String,
        name: String,
    },
    ToolCallArguments {
        index: usize,
        fragment: String,
    },
    #[serde(untagged)]
    Text {
        text: String,
    },
}

impl From<&StreamEvent> for StreamPiece {
    fn from(e: &StreamEvent) -> Self {
        match e.clone() {
            StreamEvent::Text(text) => Self::Text { text },
            StreamEvent::CallStart { index, id, name } => Self::ToolCall { index, id, name },
            StreamEvent::CallArguments { index, fragment } => Self::ToolCallArguments { index, fragment },
        }
    }
}

impl From<StreamPiece> for StreamEvent {
    fn from(p: StreamPiece) -> Self {
        match p {
            StreamPiece::Text { text } => Self::Text(text),
            StreamPiece::ToolCall { index, id, name } => Self::CallStart { index, id, name },
            StreamPiece::ToolCallArguments { index, fragment } => Self::CallArguments { index, fragment },
        }
    }
}

/// `GET /maze/v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub model: String,
    pub version: String,
}

/// `GET /maze/v1/models`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Models {
    pub models: Vec<ModelEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelEntry {
    pub name: String,
    /// The facts below are known once the model has been loaded (empty or 0 before).
    pub architecture: String,
    pub context_length: usize,
    pub vocab_size: usize,
    /// Whether the model is loaded now (a server loads its models on first use).
    #[serde(default = "loaded_by_default")]
    pub loaded: bool,
}

fn loaded_by_default() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn options() -> GenerateOptions {
        GenerateOptions {
            max_tokens: 12,
            sampling: SamplingParams { seed: Some(9), top_k: 3, ..SamplingParams::greedy() },
            stop: vec!["\n\n".into(), "END".into()],
            timeout: Some(Duration::from_millis(1500)),
            logprobs: true,
            constraints: vec![
                Constraint::regex("number", "[0-9]+").with_priority(2),
                Constraint::token_mask("mask", vec![1, 2], vec![3]),
            ],
            ignore_eos: true,
            tools: None,
            cancel: None,
        }
    }

    fn parse(value: Value) -> serde_json::Result<GenerateRequest> {
        serde_json::from_value(value)
    }

    #[test]
    fn a_request_carries_every_prompt_kind_and_option_across_the_wire() {
        let prompts = [
            Prompt::Text("hi".into()),
            Prompt::Tokens(vec![1, 2, 3]),
            Prompt::Chat(vec![ChatMessage::new("user", "hi")]),
        ];
        for prompt in prompts {
            let wire = serde_json::to_string(&GenerateRequest::new(&prompt, &options(), true)).unwrap();
            let back: GenerateRequest = serde_json::from_str(&wire).unwrap();
            assert!(back.stream);
            assert_eq!(back.into_call().unwrap(), (prompt, options()), "{wire}");
        }
    }

    #[test]
    fn a_minimal_request_takes_the_defaults_and_writes_no_empty_fields() {
        let (prompt, opts) = parse(json!({"prompt": "x"})).unwrap().into_call().unwrap();
        assert_eq!((prompt, opts), (Prompt::Text("x".into()), GenerateOptions::default()));
        let wire = serde_json::to_value(GenerateRequest::new(
            &Prompt::Text("x".into()),
            &GenerateOptions::default(),
            false,
        ))
        .unwrap();
        let mut keys: Vec<&str> = wire.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["logprobs", "max_tokens", "prompt", "sampling", "stream"]);
        // A timeout under a millisecond is still a timeout; zero is none.
        let opts = GenerateOptions { timeout: Some(Duration::from_micros(100)), ..Default::default() };
        assert_eq!(GenerateRequest::new(&Prompt::Text("x".into()), &opts, false).timeout_ms, Some(1));
        let (_, opts) = parse(json!({"prompt": "x", "timeout_ms": 0})).unwrap().into_call().unwrap();
        assert_eq!(opts.timeout, None);
    }

    #[test]
    fn requests_with_no_input_or_several_are_refused() {
        let err = parse(json!({"max_tokens": 3})).unwrap().into_call().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.message().contains("has no input"), "{err}");
        for both in [json!({"prompt": "a", "tokens": [1]}), json!({"prompt": "a", "messages": []})] {
            let err = parse(both).unwrap().into_call().unwrap_err();
            assert!(err.message().contains("several inputs"), "{err}");
        }
    }

    #[test]
    fn unknown_fields_and_wrong_types_do_not_parse() {
        let err = parse(json!({"prompt": "a", "max_token": 3})).unwrap_err();
        assert!(err.to_string().contains("unknown field `max_token`"), "{err}");
        for bad in [
            json!({"prompt": 5}),
            json!({"tokens": [-1]}),
            json!({"tokens": "1 2"}),
            json!({"messages": [{"role": "user"}]}),
            json!({"prompt": "a", "max_tokens": "ten"}),
            json!({"prompt": "a", "stream": "yes"}),
            json!({"prompt": "a", "stop": "END"}),
            json!({"prompt": "a", "sampling": {"temperature": "hot"}}),
            json!({"prompt": "a", "constraints": [{"regex": 5}]}),
            json!({"prompt": "a", "constraints": [{"grammar": "x"}]}),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn nested_objects_refuse_keys_they_do_not_use() {
        for (bad, says) in [
            (json!({"prompt": "a", "sampling": {"temperature": 0, "top_kk": 5}}), "unknown field `top_kk`"),
            (json!({"prompt": "a", "sampling": {"logprobs": true}}), "unknown field `logprobs`"),
            (json!({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}), "unknown field `name`"),
            (
                json!({"prompt": "a", "constraints": [{"regex": ["a"], "nmae": "x"}]}),
                "constraint 0: unknown field `nmae`",
            ),
            (
                json!({"prompt": "a", "constraints": [{"choice": ["y"]}, {"regex": ["a"], "lark": "start: \"x\""}]}),
                "constraint 1: unknown field `",
            ),
            (
                json!({"prompt": "a", "constraints": [{"token_mask": {"allowed": [1], "forbiden": [2]}}]}),
                "constraint 0: unknown field `token_mask.forbiden`",
            ),
            (
                json!({"prompt": "a", "constraints": [{"json_schema": {}, "json_options": {"lenent": true}}]}),
                "constraint 0: unknown field `lenent`",
            ),
        ] {
            let err = parse(bad.clone()).unwrap_err();
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
        // What a constraint does use passes, a nested JSON schema included.
        let fine = json!({"prompt": "a", "sampling": {"top_k": 5}, "messages": null, "constraints": [
            {"name": "n", "priority": 1, "json_schema": {"type": "object", "properties": {"a": {"x-extra": 1}}}},
            {"token_mask": {"forbidden": [2]}},
            {"json_schema": {"not": {}}, "json_options": {"lenient": true, "whitespace_pattern": null}}
        ]});
        let req = parse(fine).unwrap();
        assert!(req.constraints[2].json_options.as_ref().is_some_and(|o| o.lenient), "the options travel");
        assert_eq!((req.sampling.top_k, req.constraints.len()), (5, 3));
    }

    #[test]
    fn errors_travel_as_message_status_and_type() {
        let err = Error::new(ErrorKind::InvalidConstraint, "bad regex");
        let body = serde_json::to_value(ErrorBody { error: WireError::from(&err) }).unwrap();
        assert_eq!(
            body,
            json!({"error": {"message": "bad regex", "status": "invalid_constraint", "type": ""}})
        );
        let back: ErrorBody =
            serde_json::from_value(json!({"error": {"message": "m", "status": "context_overflow"}})).unwrap();
        assert_eq!(Error::from(back.error), Error::new(ErrorKind::ContextOverflow, "m"));
        let unknown = json!({"error": {"message": "m", "status": "teapot"}});
        assert!(serde_json::from_value::<ErrorBody>(unknown).is_err());
    }

    fn server_response() -> Value {
        json!({
            "text": "42",
            "tokens": [52, 50],
            "logprobs": [-0.5, -0.25],
            "finish_reason": "stop_sequence",
            "error": null,
            "stats": {
                "prompt_tokens": 5, "cached_tokens": 2, "generated_tokens": 2,
                "time_to_first_token_ms": 12.5, "total_time_ms": 40.0,
                "prefill_tokens_per_second": 400.0, "decode_tokens_per_second": 50.0
            },
            "validation": {
                "satisfied": false,
                "constraints": [
                    {"name": "number", "kind": "regex", "priority": 2, "outcome": "partially_enforced", "reason": "r",
                     "relaxed_keywords": [{"keyword": "not", "pointer": "/not", "note": "not enforced"}],
                     "ignored_formats": [{"format": "regex", "pointer": "/format"}]},
                    {"name": "mask", "kind": "token_mask", "priority": 0, "outcome": "relaxed", "reason": "why"},
                    {"name": "new", "kind": "quantum", "priority": 0, "outcome": "violated", "reason": "r"}
                ],
                "stats": null
            },
            "provenance": {"model": "tiny", "architecture": "llama", "created_unix_ms": 123, "seed": 77}
        })
    }

    #[test]
    fn a_response_becomes_the_result_and_back() {
        let response: GenerateResponse = serde_json::from_value(server_response()).unwrap();
        let result = response.into_result(&options());
        assert_eq!((result.text.as_str(), result.tokens.as_slice()), ("42", &[52, 50][..]));
        assert_eq!(result.logprobs, Some(vec![-0.5, -0.25]));
        assert_eq!(result.finish_reason, FinishReason::StopSequence);
        assert_eq!(result.stats.time_to_first_token, Duration::from_micros(12_500));
        assert_eq!(result.stats.total_time, Duration::from_millis(40));
        assert_eq!((result.stats.prompt_tokens, result.stats.cached_tokens), (5, 2));
        assert_eq!(result.validation[1].outcome, ConstraintOutcome::Relaxed);
        assert_eq!(result.validation[1].reason.as_deref(), Some("why"));
        // What a lenient schema left out, and the formats it ignored, come across.
        assert_eq!(result.validation[0].outcome, ConstraintOutcome::PartiallyEnforced);
        assert_eq!(result.validation[0].relaxed_keywords[0].pointer, "/not");
        assert_eq!(result.validation[0].ignored_formats[0].format, "regex");
        assert!(!result.constraints_satisfied());
        // Provenance: the server's model and seed, the rest from the request.
        let p = &result.provenance;
        assert_eq!((p.model.as_str(), p.architecture.as_str(), p.created_unix_ms), ("tiny", "llama", 123));
        assert_eq!((p.seed, p.sampling.seed, p.sampling.top_k), (77, Some(77), 3));
        assert_eq!((p.max_tokens, &p.stop), (12, &options().stop));
        assert_eq!(p.constraints.len(), 2);

        let again = serde_json::to_value(GenerateResponse::from_result(&result)).unwrap();
        let sent = server_response();
        for key in ["text", "tokens", "logprobs", "finish_reason", "stats"] {
            assert_eq!(again[key], sent[key], "{key}");
        }
        let kinds: Vec<&str> = again["validation"]["constraints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["kind"].as_str().unwrap())
            .collect();
        // The third report names a kind this client does not know and no constraint it sent.
        assert_eq!(kinds, ["regex", "token_mask"], "a report for no constraint of the request is dropped");
        assert_eq!(again["validation"]["constraints"][0], sent["validation"]["constraints"][0]);
        assert_eq!(again["validation"]["satisfied"], false);
        assert_eq!(again["provenance"]["seed"], 77);
    }

    #[test]
    fn a_failed_generation_keeps_its_text_and_error() {
        let mut sent = server_response();
        sent["finish_reason"] = json!("error");
        sent["error"] = json!({"message": "boom", "status": "backend"});
        sent["stats"]["total_time_ms"] = json!(-5.0);
        let result = serde_json::from_value::<GenerateResponse>(sent).unwrap().into_result(&options());
        assert_eq!(result.finish_reason, FinishReason::Error);
        assert_eq!(result.error, Some(Error::new(ErrorKind::Backend, "boom")));
        assert_eq!(result.text, "42");
        assert_eq!(result.stats.total_time, Duration::ZERO, "a negative time is clamped");
        let again = serde_json::to_value(GenerateResponse::from_result(&result)).unwrap();
        assert_eq!(again["error"], json!({"message": "boom", "status": "backend", "type": ""}));
    }

    #[test]
    fn stream_health_and_model_bodies_have_their_documented_shape() {
        assert_eq!(serde_json::to_value(TextEvent { text: "hé".into() }).unwrap(), json!({"text": "hé"}));
        let health: Health =
            serde_json::from_value(json!({"status": "ok", "model": "m", "version": "0.1.0"})).unwrap();
        assert_eq!((health.status.as_str(), health.model.as_str()), ("ok", "m"));
        let models: Models = serde_json::from_value(json!({"models": [
            {"name": "m", "architecture": "llama", "context_length": 2048, "vocab_size": 49152}
        ]}))
        .unwrap();
        assert_eq!((models.models[0].context_length, models.models[0].vocab_size), (2048, 49152));
        assert!(serde_json::from_value::<Models>(json!({"models": [{"name": "m"}]})).is_err());
    }
}
