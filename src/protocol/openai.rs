//! The OpenAI-compatible API (`/v1/chat/completions`, `/v1/completions`, `/v1/models`) as far
//! as Maze speaks it, in both directions: maze-server reads these requests, the remote backend
//! writes them. Structured outputs: JSON schema travels as `response_format` (chat), and regex,
//! choice, grammar and JSON on completions as vLLM's `structured_outputs` object; a GBNF grammar
//! as llama-server's `grammar` field.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use crate::constraint::{Constraint, ConstraintKind};
use crate::error::{Error, ErrorKind, Result};
use crate::model::chat::ChatMessage;
use crate::protocol::openai_tools::{FunctionTool, WireToolCall};
use crate::result::FinishReason;

pub const CHAT_PATH: &str = "/v1/chat/completions";
pub const COMPLETIONS_PATH: &str = "/v1/completions";
pub const MODELS_PATH: &str = "/v1/models";

/// Message content: a string, or a list of parts of which the text parts count.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Value>),
}

/// By hand rather than `untagged`, whose error names no type ("did not match any variant").
impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(text) => Ok(Content::Text(text)),
            Value::Array(parts) => Ok(Content::Parts(parts)),
            other => Err(de::Error::custom(format!(
                "expected a string or an array of content parts, got {}",
                json_kind(&other)
            ))),
        }
    }
}

/// What kind of JSON value `v` is, for errors ("a number"); the value itself may be large.
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Content {
    fn text(&self) -> Result<String> {
        match self {
            Content::Text(t) => Ok(t.clone()),
            Content::Parts(parts) => parts
                .iter()
                .map(|p| {
                    match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => {
                            only_keys("a text content part", p, &["type", "text"]).map(|_| t)
                        }
                        (kind, _) => Err(Error::new(
                            ErrorKind::Unsupported,
                            format!("message content part of type {kind:?} is not supported (text only)"),
                        )),
                    }
                })
                .collect::<Result<Vec<_>>>()
                .map(|t| t.concat()),
        }
    }
}

/// A chat message: its other fields (`name`, ...) are refused, not dropped. `content` may be
/// null in an assistant message that called tools.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_is_empty")]
    pub tool_calls: Vec<WireToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

fn null_is_empty<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<WireToolCall>, D::Error> {
    Ok(Option::<Vec<WireToolCall>>::deserialize(d)?.unwrap_or_default())
}

impl Message {
    /// A chat message as a server reads it (content null for a reply of calls only).
    pub fn from_chat(m: &ChatMessage) -> Self {
        let calls_only = m.content.is_empty() && !m.tool_calls.is_empty();
        Self {
            role: m.role.clone(),
            content: (!calls_only).then(|| Content::Text(m.content.clone())),
            tool_calls: m.tool_calls.iter().map(WireToolCall::from).collect(),
            tool_call_id: m.tool_call_id.clone(),
        }
    }
}

/// A string or a list of strings (`stop`, completion `prompt`).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// By hand rather than `untagged`, whose error names no type ("did not match any variant").
impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let wrong = |v: &Value| {
            de::Error::custom(format!("expected a string or an array of strings, got {}", json_kind(v)))
        };
        match Value::deserialize(d)? {
            Value::String(one) => Ok(OneOrMany::One(one)),
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s),
                    other => Err(wrong(&Value::Array(vec![other]))),
                })
                .collect::<std::result::Result<_, _>>()
                .map(OneOrMany::Many),
            other => Err(wrong(&other)),
        }
    }
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// vLLM's structured-output fields (one of them); vLLM's others are refused, not dropped.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StructuredOutputs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grammar: Option<String>,
}

/// The sampling and output fields shared by chat and completions requests: the fields Maze
/// implements. Every other field lands in `other` and is sorted by [`CommonFields::check_supported`]
/// into accepted-and-ignored ([`IGNORED_FIELDS`]), accepted when it asks for nothing
/// ([`UNIMPLEMENTED_FIELDS`]), or refused. A field given as `null` counts as absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CommonFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// vLLM's extension: generate past end-of-sequence tokens until the token limit.
    #[serde(default, deserialize_with = "null_is_false", skip_serializing_if = "std::ops::Not::not")]
    pub ignore_eos: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<OneOrMany>,
    #[serde(default, deserialize_with = "null_is_false")]
    pub stream: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured_outputs: Option<StructuredOutputs>,
    /// Functions the model may call (chat only; see [`crate::protocol::openai_tools`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<FunctionTool>>,
    /// "auto", "none", "required" or `{"type": "function", "function": {"name": ...}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// llama-server's `grammar`: a GBNF grammar (a `gbnf` constraint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grammar: Option<String>,
    /// The request's other fields, by name: see `check_supported`.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// `stream_options`: only `include_usage` means something here; other keys are refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default, deserialize_with = "null_is_false")]
    pub include_usage: bool,
}

fn null_is_false<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// OpenAI request fields that Maze accepts and ignores: they identify or bill the caller and
/// change nothing about the output. docs/PROTOCOL.md lists them.
pub const IGNORED_FIELDS: &[&str] =
    &["user", "safety_identifier", "metadata", "service_tier", "prompt_cache_key"];

/// OpenAI request fields that Maze does not implement: accepted only with a value that asks for
/// nothing (`null`, or the value named), refused otherwise with the reason. docs/PROTOCOL.md
/// lists them. A field in none of these lists and not in [`CommonFields`] is refused.
pub const UNIMPLEMENTED_FIELDS: &[UnimplementedField] = &[
    UnimplementedField::new("n", &["1"], "one choice per request"),
    UnimplementedField::new("best_of", &["1"], "one choice per request"),
    UnimplementedField::new(
        "logprobs",
        &["false"],
        "no log-probabilities over the OpenAI-compatible API; the Maze protocol returns them per token",
    ),
    UnimplementedField::new("top_logprobs", &["0"], "no log-probabilities over the OpenAI-compatible API"),
    UnimplementedField::new("logit_bias", &["{}"], "use the Maze protocol's token_mask constraint"),
    UnimplementedField::new("functions", &["[]"], "the deprecated functions field; use tools"),
    UnimplementedField::new(
        "function_call",
        &["\"none\""],
        "the deprecated function_call field; use tool_choice",
    ),
    UnimplementedField::new("echo", &["false"], "the prompt is not echoed"),
    UnimplementedField::new("suffix", &["\"\""], "no insertion after a suffix"),
    UnimplementedField::new("store", &["false"], "nothing is stored"),
    UnimplementedField::new("modalities", &["[\"text\"]"], "text output only"),
];

/// One field of [`UNIMPLEMENTED_FIELDS`].
pub struct UnimplementedField {
    pub name: &'static str,
    /// JSON texts of the values that ask for nothing (besides `null`).
    pub accepted: &'static [&'static str],
    pub why: &'static str,
}

impl UnimplementedField {
    const fn new(name: &'static str, accepted: &'static [&'static str], why: &'static str) -> Self {
        Self { name, accepted, why }
    }

    fn asks_for_nothing(&self, value: &Value) -> bool {
        value.is_null()
            || self.accepted.iter().any(|a| serde_json::from_str::<Value>(a).is_ok_and(|a| a == *value))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub common: CommonFields,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompletionRequest {
    pub prompt: OneOrMany,
    #[serde(flatten)]
    pub common: CommonFields,
}

impl<'de> Deserialize<'de> for ChatRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (messages, common) = d.deserialize_map(RequestVisitor::new("messages", "a chat request"))?;
        Ok(Self { messages, common })
    }
}

impl<'de> Deserialize<'de> for CompletionRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (prompt, common) = d.deserialize_map(RequestVisitor::new("prompt", "a completion request"))?;
        Ok(Self { prompt, common })
    }
}

/// Reads a request object: its `primary` field (`messages`, `prompt`) and the [`CommonFields`].
/// By hand rather than `#[serde(flatten)]`, which buffers the other fields and so loses which
/// one was wrong ("invalid type: string, expected usize" and no name): here each field is
/// checked while its key is current, so the error (and serde_path_to_error's path) names it.
/// What is not a JSON object is refused as such.
struct RequestVisitor<P> {
    primary: &'static str,
    what: &'static str,
    primary_type: PhantomData<P>,
}

impl<P> RequestVisitor<P> {
    fn new(primary: &'static str, what: &'static str) -> Self {
        Self { primary, what, primary_type: PhantomData }
    }
}

impl<'de, P: Deserialize<'de>> Visitor<'de> for RequestVisitor<P> {
    type Value = (P, CommonFields);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} (a JSON object with `{}`)", self.what, self.primary)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
        let mut primary = None;
        let mut rest = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == self.primary {
                if primary.is_some() {
                    return Err(de::Error::duplicate_field(self.primary));
                }
                primary = Some(map.next_value()?);
            } else {
                let value = map.next_value_seed(CommonField(&key))?;
                if rest.insert(key.clone(), value).is_some() {
                    return Err(de::Error::custom(format!("duplicate field `{key}`")));
                }
            }
        }
        let primary = primary.ok_or_else(|| de::Error::missing_field(self.primary))?;
        // Every field has passed alone; together they cannot fail but for a bug.
        let common = CommonFields::deserialize(Value::Object(rest)).map_err(de::Error::custom)?;
        Ok((primary, common))
    }
}

/// One field of [`CommonFields`], read and checked alone.
struct CommonField<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for CommonField<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        let value = Value::deserialize(d)?;
        let mut alone = json!({});
        alone[self.0] = value;
        CommonFields::deserialize(&alone).map_err(de::Error::custom)?;
        Ok(alone[self.0].take())
    }
}

impl ChatRequest {
    pub fn chat_messages(&self) -> Result<Vec<ChatMessage>> {
        self.messages
            .iter()
            .map(|m| {
                let content = match &m.content {
                    Some(content) => content.text()?,
                    None => String::new(),
                };
                Ok(ChatMessage {
                    tool_calls: m.tool_calls.iter().cloned().map(Into::into).collect(),
                    tool_call_id: m.tool_call_id.clone(),
                    ..ChatMessage::new(m.role.clone(), content)
                })
            })
            .collect()
    }
}

impl CompletionRequest {
    pub fn prompt_text(&self) -> Result<String> {
        match self.prompt.clone().into_vec().as_slice() {
            [one] => Ok(one.clone()),
            other => Err(Error::new(
                ErrorKind::Unsupported,
                format!("prompt must be one string; got {} prompts", other.len()),
            )),
        }
    }
}

impl CommonFields {
    /// Refuses the fields whose meaning Maze does not implement (rather than ignoring them),
    /// naming each: fields of [`UNIMPLEMENTED_FIELDS`] asking for something, and fields no list
    /// knows. [`IGNORED_FIELDS`] pass.
    pub fn check_supported(&self) -> Result<()> {
        let refused: Vec<String> = self
            .other
            .iter()
            .filter(|(name, _)| !IGNORED_FIELDS.contains(&name.as_str()))
            .filter_map(|(name, value)| match UNIMPLEMENTED_FIELDS.iter().find(|f| f.name == name) {
                Some(f) if f.asks_for_nothing(value) => None,
                Some(f) => {
                    let accepted = f.accepted.join(" or ");
                    Some(format!(
                        "`{name}`: {value} is not supported ({}; accepted: null or {accepted})",
                        f.why
                    ))
                }
                None => Some(format!("`{name}` is not a field maze-server takes")),
            })
            .collect();
        if refused.is_empty() {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "unsupported request field{}: {} (docs/PROTOCOL.md lists the fields of the OpenAI-compatible API)",
                if refused.len() == 1 { "" } else { "s" },
                refused.join("; ")
            ),
        ))
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }

    /// The constraints these fields ask for: `response_format`, `structured_outputs` and
    /// llama-server's `grammar` (GBNF).
    pub fn constraints(&self) -> Result<Vec<Constraint>> {
        let mut out = Vec::new();
        if let Some(format) = &self.response_format {
            only_keys("response_format", format, &["type", "json_schema"])?;
            let kind = match format.get("type") {
                None | Some(Value::Null) => None,
                Some(Value::String(kind)) => Some(kind.as_str()),
                Some(other) => {
                    return Err(Error::invalid_argument(format!(
                        "response_format type must be a string (text, json_object or json_schema), got {}",
                        json_kind(other)
                    )))
                }
            };
            match kind {
                Some("text") | None => {}
                Some("json_object") => {
                    out.push(Constraint::json_schema("json_object", json!({"type": "object"})))
                }
                Some("json_schema") => {
                    let spec = format.get("json_schema").ok_or_else(|| {
                        Error::invalid_argument("response_format json_schema lacks the json_schema object")
                    })?;
                    // `strict` asks for what Maze always does; `description` guides models only.
                    only_keys(
                        "response_format.json_schema",
                        spec,
                        &["name", "schema", "strict", "description"],
                    )?;
                    let schema = spec
                        .get("schema")
                        .cloned()
                        .ok_or_else(|| Error::invalid_argument("response_format.json_schema lacks schema"))?;
                    let name = match spec.get("name") {
                        None | Some(Value::Null) => "response_format",
                        Some(Value::String(name)) => name.as_str(),
                        Some(other) => {
                            return Err(Error::invalid_argument(format!(
                                "response_format.json_schema name must be a string, got {}",
                                json_kind(other)
                            )))
                        }
                    };
                    out.push(Constraint::json_schema(name, schema));
                }
                Some(other) => {
                    return Err(Error::invalid_argument(format!(
                        "response_format type '{other}' is not one of text, json_object, json_schema"
                    )))
                }
            }
        }
        if let Some(s) = &self.structured_outputs {
            if let Some(schema) = &s.json {
                let schema = match schema {
                    Value::String(text) => serde_json::from_str(text).map_err(|e| {
                        Error::new(
                            ErrorKind::InvalidConstraint,
                            format!("structured_outputs.json is not JSON: {e}"),
                        )
                    })?,
                    v => v.clone(),
                };
                out.push(Constraint::json_schema("structured_outputs.json", schema));
            }
            if let Some(regex) = &s.regex {
                out.push(Constraint::regex("structured_outputs.regex", regex.clone()));
            }
            if let Some(choice) = &s.choice {
                out.push(Constraint::choice("structured_outputs.choice", choice.clone()));
            }
            if let Some(grammar) = &s.grammar {
                out.push(Constraint::lark("structured_outputs.grammar", grammar.clone()));
            }
        }
        if let Some(grammar) = &self.grammar {
            out.push(Constraint::gbnf("grammar", grammar.clone()));
        }
        Ok(out)
    }

    /// Sets the fields that carry `constraints` to a server. A server has one structured-output
    /// slot per request, so more than one constraint, a token mask, or a list of regexes that
    /// must all match cannot be expressed, and are refused rather than dropped.
    pub fn set_constraints(&mut self, constraints: &[Constraint], chat: bool) -> Result<()> {
        let refuse = |why: String| Err(Error::new(ErrorKind::Unsupported, why));
        match constraints {
            [] => Ok(()),
            [c] => match &c.kind {
                ConstraintKind::JsonSchema(_) if c.json_options.as_ref().is_some_and(|o| *o != Default::default()) => refuse(format!(
                    "constraint '{}': json_options (lenient, coerce_one_of, whitespace, strict_formats) cannot be sent over the OpenAI-compatible API; use the Maze protocol",
                    c.name
                )),
                ConstraintKind::JsonSchema(schema) if chat => {
                    let name = if c.name.is_empty() { "output" } else { &c.name };
                    self.response_format = Some(json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": true}}));
                    Ok(())
                }
                ConstraintKind::JsonSchema(schema) => {
                    self.structured_outputs = Some(StructuredOutputs { json: Some(schema.clone()), ..Default::default() });
                    Ok(())
                }
                ConstraintKind::Regex(patterns) if patterns.len() == 1 => {
                    self.structured_outputs = Some(StructuredOutputs { regex: Some(patterns[0].clone()), ..Default::default() });
                    Ok(())
                }
                ConstraintKind::Regex(patterns) => refuse(format!(
                    "constraint '{}': {} regexes that must all match cannot be sent over the OpenAI-compatible API (one pattern per request); use the Maze protocol",
                    c.name,
                    patterns.len()
                )),
                ConstraintKind::Choice(options) => {
                    self.structured_outputs = Some(StructuredOutputs { choice: Some(options.clone()), ..Default::default() });
                    Ok(())
                }
                ConstraintKind::Lark(grammar) => {
                    self.structured_outputs = Some(StructuredOutputs { grammar: Some(grammar.clone()), ..Default::default() });
                    Ok(())
                }
                ConstraintKind::Gbnf(grammar) => {
                    self.grammar = Some(grammar.clone());
                    Ok(())
                }
                ConstraintKind::TokenMask { .. } => refuse(format!(
                    "constraint '{}': token masks cannot be enforced over the OpenAI-compatible API (token ids are the server's); use the Maze protocol",
                    c.name
                )),
            },
            many => refuse(format!(
                "{} constraints at once cannot be sent over the OpenAI-compatible API (one structured output per request); use the Maze protocol",
                many.len()
            )),
        }
    }
}

/// Refuses the keys of the object `value` (at `path`) that are not in `keys`, naming them.
fn only_keys(path: &str, value: &Value, keys: &[&str]) -> Result<()> {
    let Some(object) = value.as_object() else {
        return Err(Error::invalid_argument(format!("{path} must be a JSON object, got {value}")));
    };
    let unknown: Vec<&str> = object.keys().map(String::as_str).filter(|k| !keys.contains(k)).collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Unsupported,
        format!(
            "unsupported field{} of {path}: `{}` (it takes {})",
            if unknown.len() == 1 { "" } else { "s" },
            unknown.join("`, `"),
            keys.join(", ")
        ),
    ))
}

/// OpenAI's finish reasons: "stop" or "length" (a stop sequence is "stop"; cancel and timeout,
/// which OpenAI lacks, are "length": the output was cut). The exact reason is in `maze`.
pub fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop | FinishReason::StopSequence => "stop",
        FinishReason::ToolCalls => "tool_calls",
        _ => "length",
    }
}

/// Reads a finish reason back: Maze's own (from the `maze` extension) when present.
pub fn parse_finish_reason(openai: Option<&str>, maze: Option<&str>) -> FinishReason {
    match maze.or(openai) {
        Some("length") => FinishReason::Length,
        Some("stop_sequence") => FinishReason::StopSequence,
        Some("cancelled") => FinishReason::Cancelled,
        Some("timeout") => FinishReason::Timeout,
        Some("error") => FinishReason::Error,
        Some("tool_calls") => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(value: Value) -> serde_json::Result<ChatRequest> {
        serde_json::from_value(value)
    }

    fn common(value: Value) -> CommonFields {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn message_content_is_a_string_or_text_parts() {
        let req = chat(json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]},
            {"role": "user", "content": []}
        ]}))
        .unwrap();
        let messages = req.chat_messages().unwrap();
        let want = [
            ChatMessage::new("system", "be brief"),
            ChatMessage::new("user", "hello"),
            ChatMessage::new("user", ""),
        ];
        assert_eq!(messages, want);
        for part in [
            json!({"type": "image_url", "image_url": {"url": "x"}}),
            json!({"type": "text"}),
            json!({"text": "x"}),
        ] {
            let req = chat(json!({"messages": [{"role": "user", "content": [part.clone()]}]})).unwrap();
            let err = req.chat_messages().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{part}");
            assert!(err.message().contains("(text only)"), "{err}");
        }
        let err = chat(json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}))
            .unwrap()
            .chat_messages()
            .unwrap_err();
        assert!(err.message().contains("Some(\"image_url\")"), "the part's type is named: {err}");
        let cached = json!({"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}});
        let err = chat(json!({"messages": [{"role": "user", "content": [cached]}]}))
            .unwrap()
            .chat_messages()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.message().contains("field of a text content part: `cache_control`"), "{err}");
    }

    #[test]
    fn wrong_types_do_not_parse() {
        for bad in [
            json!({"messages": "hi"}),
            json!({"messages": [{"role": "user", "content": 5}]}),
            json!({"messages": [{"content": "hi"}]}),
            json!({"messages": [], "temperature": "hot"}),
            json!({"messages": [], "max_tokens": -1}),
            json!({"messages": [], "stop": 5}),
            json!({"messages": [], "stream": "yes"}),
        ] {
            assert!(chat(bad.clone()).is_err(), "{bad}");
        }
        assert!(serde_json::from_value::<CompletionRequest>(json!({"prompt": 5})).is_err());
        assert!(serde_json::from_value::<CompletionRequest>(json!({"max_tokens": 5})).is_err());
    }

    #[test]
    fn stop_and_prompt_take_one_string_or_a_list() {
        let one = common(json!({"stop": "END"}));
        assert_eq!(one.stop.unwrap().into_vec(), ["END"]);
        let many = common(json!({"stop": ["a", "b"]}));
        assert_eq!(many.stop.unwrap().into_vec(), ["a", "b"]);
        let prompt = |p: Value| {
            serde_json::from_value::<CompletionRequest>(json!({"prompt": p})).unwrap().prompt_text()
        };
        assert_eq!(prompt(json!("hi")).unwrap(), "hi");
        assert_eq!(prompt(json!(["hi"])).unwrap(), "hi");
        for (list, n) in [(json!(["a", "b"]), 2), (json!([]), 0)] {
            let err = prompt(list).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsupported);
            assert!(err.message().contains(&format!("got {n} prompts")), "{err}");
        }
    }

    fn refusal(value: Value) -> Error {
        common(value.clone()).check_supported().expect_err(&value.to_string())
    }

    #[test]
    fn fields_maze_does_not_implement_are_refused_not_ignored() {
        for fine in [
            json!({}),
            json!({"n": 1}),
            json!({"n": null}),
            json!({"logprobs": false}),
            json!({"logprobs": null, "top_logprobs": 0}),
            json!({"logit_bias": {}}),
            json!({"tools": null}),
            json!({"tools": [], "tool_choice": "none", "parallel_tool_calls": false}),
            json!({"echo": false, "best_of": 1, "suffix": "", "store": false, "modalities": ["text"]}),
            json!({"user": "u-1", "safety_identifier": "s", "metadata": {"k": "v"}, "service_tier": "auto", "prompt_cache_key": "p"}),
        ] {
            common(fine.clone()).check_supported().unwrap_or_else(|e| panic!("{fine}: {e}"));
        }
        for (bad, field) in [
            (json!({"n": 2}), "`n`: 2 is not supported (one choice per request"),
            (json!({"logprobs": true}), "`logprobs`: true is not supported"),
            (json!({"logprobs": 3}), "`logprobs`: 3 is not supported"),
            (json!({"top_logprobs": 5}), "`top_logprobs`: 5"),
            (json!({"logit_bias": {"13": -100}}), "`logit_bias`"),
            (json!({"function_call": "auto"}), "`function_call`"),
            (json!({"echo": true}), "`echo`"),
            (json!({"modalities": ["text", "audio"]}), "`modalities`"),
            (json!({"logprobz": true}), "`logprobz` is not a field maze-server takes"),
            (json!({"reasoning_effort": "low"}), "`reasoning_effort` is not a field"),
        ] {
            let err = refusal(bad.clone());
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{bad}");
            assert!(
                err.message().contains(field) && err.message().contains("docs/PROTOCOL.md"),
                "{bad}: {err}"
            );
        }
        // Every offender is named, not only the first.
        let err = refusal(json!({"logprobs": true, "top_logprobs": 2, "bogus": 1, "user": "u"}));
        assert!(err.message().starts_with("unsupported request fields: `bogus`"), "{err}");
        assert!(err.message().contains("`logprobs`") && err.message().contains("`top_logprobs`"), "{err}");
        assert!(!err.message().contains("`user`"), "user is accepted: {err}");

        assert!(common(json!({"stream_options": {"include_usage": true}})).include_usage());
        assert!(!common(json!({"stream_options": {}})).include_usage());
        assert!(!common(json!({"stream_options": null})).include_usage());
        assert!(!common(json!({})).include_usage());
        // null stands for absent, as OpenAI's clients send it.
        let nulls = common(json!({"stream": null, "ignore_eos": null, "max_tokens": null}));
        assert!(!nulls.stream && !nulls.ignore_eos && nulls.max_tokens.is_none());
    }

    #[test]
    fn every_field_the_openai_python_client_can_send_is_implemented_ignored_or_refused() {
        // openai 3.54.0's chat.completions.create and completions.create keyword arguments.
        let chat_fields = [
            "messages",
            "model",
            "audio",
            "frequency_penalty",
            "function_call",
            "functions",
            "logit_bias",
            "logprobs",
            "max_completion_tokens",
            "max_tokens",
            "metadata",
            "modalities",
            "moderation",
            "n",
            "parallel_tool_calls",
            "prediction",
            "presence_penalty",
            "prompt_cache_key",
            "prompt_cache_options",
            "prompt_cache_retention",
            "reasoning_effort",
            "response_format",
            "safety_identifier",
            "seed",
            "service_tier",
            "stop",
            "store",
            "stream",
            "stream_options",
            "temperature",
            "tool_choice",
            "tools",
            "top_logprobs",
            "top_p",
            "user",
            "verbosity",
            "web_search_options",
        ];
        let completion_fields = ["prompt", "best_of", "echo", "suffix"];
        // messages and prompt are ChatRequest's and CompletionRequest's own.
        let implemented = [
            "model",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "frequency_penalty",
            "max_completion_tokens",
            "max_tokens",
            "presence_penalty",
            "response_format",
            "seed",
            "stop",
            "stream",
            "stream_options",
            "temperature",
            "top_p",
        ];
        for field in chat_fields.into_iter().chain(completion_fields) {
            if field == "messages" || field == "prompt" {
                continue;
            }
            let ignored = IGNORED_FIELDS.contains(&field);
            let in_other = common(json!({ field: null })).other.contains_key(field);
            if implemented.contains(&field) {
                assert!(!in_other && !ignored, "{field} is implemented");
                continue;
            }
            assert!(in_other, "{field} is not a typed field");
            let outcome = common(json!({ field: {"something": "asked"} })).check_supported();
            if ignored {
                assert!(outcome.is_ok(), "{field} is ignored");
            } else {
                let err = outcome.unwrap_err();
                assert!(err.message().contains(&format!("`{field}`")), "{field} is refused by name: {err}");
            }
        }
    }

    #[test]
    fn the_protocol_doc_lists_each_ignored_and_unimplemented_field() {
        let doc = include_str!("../../docs/PROTOCOL.md");
        for field in IGNORED_FIELDS.iter().chain(UNIMPLEMENTED_FIELDS.iter().map(|f| &f.name)) {
            assert!(doc.contains(&format!("`{field}`")), "docs/PROTOCOL.md does not name `{field}`");
        }
    }

    #[test]
    fn nested_objects_refuse_keys_they_do_not_use() {
        let err = chat(json!({"messages": [{"role": "user", "content": "hi", "name": "bob"}]})).unwrap_err();
        assert!(err.to_string().contains("unknown field `name`"), "{err}");
        let err =
            serde_json::from_value::<CommonFields>(json!({"stream_options": {"include_obfuscation": true}}))
                .unwrap_err();
        assert!(err.to_string().contains("unknown field `include_obfuscation`"), "{err}");
        let err = serde_json::from_value::<CommonFields>(
            json!({"structured_outputs": {"whitespace_pattern": " "}}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `whitespace_pattern`"), "{err}");
        for (format, says) in [
            (json!({"type": "json_object", "schema": {}}), "field of response_format: `schema`"),
            (
                json!({"type": "json_schema", "json_schema": {"schema": {}, "strict": true, "strictness": 1}}),
                "field of response_format.json_schema: `strictness`",
            ),
        ] {
            let err = common(json!({ "response_format": format })).constraints().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsupported);
            assert!(err.message().contains(says), "{err}");
        }
        let err = common(json!({"response_format": "json_object"})).constraints().unwrap_err();
        assert!(err.message().contains("response_format must be a JSON object"), "{err}");
        let described = json!({"type": "json_schema", "json_schema": {"name": "a", "description": "d", "schema": {}, "strict": false}});
        assert_eq!(common(json!({ "response_format": described })).constraints().unwrap().len(), 1);
    }

    #[test]
    fn response_format_maps_to_a_json_schema_constraint() {
        for none in [json!({}), json!({"response_format": {"type": "text"}}), json!({"response_format": {}})]
        {
            assert_eq!(common(none).constraints().unwrap(), []);
        }
        let object = common(json!({"response_format": {"type": "json_object"}})).constraints().unwrap();
        assert_eq!(object, [Constraint::json_schema("json_object", json!({"type": "object"}))]);
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let named = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}});
        assert_eq!(common(named).constraints().unwrap(), [Constraint::json_schema("answer", schema.clone())]);
        let unnamed = json!({"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}});
        assert_eq!(common(unnamed).constraints().unwrap()[0].name, "response_format");
        for (bad, says) in [
            (json!({"type": "json_schema"}), "lacks the json_schema object"),
            (json!({"type": "json_schema", "json_schema": {"name": "x"}}), "lacks schema"),
            (json!({"type": "xml"}), "'xml' is not one of text, json_object, json_schema"),
        ] {
            let err = common(json!({"response_format": bad})).constraints().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            assert!(err.message().contains(says), "{err}");
        }
    }

    #[test]
    fn structured_outputs_map_to_their_constraint_kinds() {
        let all = common(json!({
            "response_format": {"type": "json_object"},
            "structured_outputs": {"json": "{\"type\": \"array\"}", "regex": "[0-9]+", "choice": ["y", "n"], "grammar": "start: \"x\""},
            "grammar": "root ::= \"x\""
        }))
        .constraints()
        .unwrap();
        assert_eq!(
            all,
            [
                Constraint::json_schema("json_object", json!({"type": "object"})),
                Constraint::json_schema("structured_outputs.json", json!({"type": "array"})),
                Constraint::regex("structured_outputs.regex", "[0-9]+"),
                Constraint::choice("structured_outputs.choice", ["y", "n"]),
                Constraint::lark("structured_outputs.grammar", "start: \"x\""),
                Constraint::gbnf("grammar", "root ::= \"x\""),
            ]
        );
        let as_object =
            common(json!({"structured_outputs": {"json": {"type": "string"}}})).constraints().unwrap();
        assert_eq!(as_object[0].kind, ConstraintKind::JsonSchema(json!({"type": "string"})));
        let err = common(json!({"structured_outputs": {"json": "{not json"}})).constraints().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConstraint);
        assert!(err.message().contains("structured_outputs.json is not JSON"), "{err}");
    }

    #[test]
    fn one_constraint_is_sent_and_read_back_as_the_same_kind() {
        let schema = json!({"type": "object"});
        let sendable = [
            Constraint::json_schema("", schema.clone()),
            Constraint::regex("r", "[a-z]+"),
            Constraint::choice("c", ["yes", "no"]),
            Constraint::lark("g", "start: \"x\""),
            Constraint::gbnf("g", "root ::= \"x\""),
        ];
        for is_chat in [true, false] {
            for c in &sendable {
                let mut fields = CommonFields::default();
                fields.set_constraints(std::slice::from_ref(c), is_chat).unwrap();
                let wire: CommonFields =
                    serde_json::from_value(serde_json::to_value(&fields).unwrap()).unwrap();
                let back = wire.constraints().unwrap();
                assert_eq!(back.len(), 1);
                assert_eq!(back[0].kind, c.kind, "chat {is_chat}");
            }
        }
        let mut fields = CommonFields::default();
        fields.set_constraints(&[Constraint::json_schema("", schema.clone())], true).unwrap();
        let format = fields.response_format.unwrap();
        assert_eq!(format["json_schema"]["name"], "output");
        assert_eq!(format["json_schema"]["strict"], true);
        let mut fields = CommonFields::default();
        fields.set_constraints(&[], true).unwrap();
        assert!(fields.response_format.is_none() && fields.structured_outputs.is_none());
    }

    #[test]
    fn what_one_structured_output_cannot_carry_is_refused() {
        let two_patterns =
            Constraint::new("both", 0, ConstraintKind::Regex(vec!["a.*".into(), ".*b".into()]));
        let lenient = Constraint::json_schema("lenient", json!({"not": {}}))
            .with_json_options(crate::constraint::JsonSchemaOptions { lenient: true, ..Default::default() });
        let cases = [
            (
                vec![Constraint::token_mask("m", vec![], vec![1])],
                "constraint 'm': token masks cannot be enforced",
            ),
            (vec![two_patterns], "constraint 'both': 2 regexes that must all match"),
            (vec![Constraint::regex("a", "a"), Constraint::regex("b", "b")], "2 constraints at once"),
            (vec![lenient.clone()], "constraint 'lenient': json_options"),
        ];
        // Default options are no options: the schema goes out as usual.
        let defaults = Constraint::json_schema("d", json!({})).with_json_options(Default::default());
        CommonFields::default().set_constraints(&[defaults], true).unwrap();
        for (constraints, says) in cases {
            let err = CommonFields::default().set_constraints(&constraints, true).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsupported);
            assert!(err.message().contains(says) && err.message().contains("use the Maze protocol"), "{err}");
        }
    }

    #[test]
    fn finish_reasons_map_both_ways() {
        let openai = [
            (FinishReason::Stop, "stop"),
            (FinishReason::StopSequence, "stop"),
            (FinishReason::Length, "length"),
            (FinishReason::Cancelled, "length"),
            (FinishReason::Timeout, "length"),
            (FinishReason::Error, "length"),
        ];
        for (reason, name) in openai {
            assert_eq!(finish_reason(reason), name, "{reason:?}");
            // Maze's own name, from the `maze` extension, wins over the OpenAI one.
            assert_eq!(parse_finish_reason(Some(name), Some(reason.as_str())), reason);
        }
        assert_eq!(parse_finish_reason(Some("length"), None), FinishReason::Length);
        assert_eq!(parse_finish_reason(Some("stop"), None), FinishReason::Stop);
        assert_eq!(parse_finish_reason(Some("content_filter"), None), FinishReason::Stop);
        assert_eq!(parse_finish_reason(None, None), FinishReason::Stop);
    }

    /// Each wrong field is named where the server shows it (serde_path_to_error's path; with
    /// `#[serde(flatten)]` it was empty), and what is not a request object is refused as such.
    #[cfg(feature = "server")]
    #[test]
    fn request_errors_name_the_field() {
        fn err<T: serde::de::DeserializeOwned + fmt::Debug>(text: &str) -> String {
            let e = serde_path_to_error::deserialize::<_, T>(&mut serde_json::Deserializer::from_str(text))
                .unwrap_err();
            format!("{}: {}", e.path(), e.inner())
        }
        let m = r#""messages": [{"role": "user", "content": "hi"}]"#;
        for (body, named) in [
            (
                format!(r#"{{{m}, "max_tokens": "ten"}}"#),
                r#"max_tokens: invalid type: string "ten", expected usize"#,
            ),
            (format!(r#"{{{m}, "temperature": [1]}}"#), "temperature: invalid type: sequence, expected f32"),
            (format!(r#"{{{m}, "stream": 1}}"#), "stream: invalid type: integer `1`, expected a boolean"),
            (
                format!(r#"{{{m}, "stop": 5}}"#),
                "stop: expected a string or an array of strings, got a number",
            ),
            (
                format!(r#"{{{m}, "stop": ["a", 5]}}"#),
                "stop: expected a string or an array of strings, got an array",
            ),
            (format!(r#"{{{m}, "stream_options": {{"x": 1}}}}"#), "stream_options: unknown field `x`"),
            (format!(r#"{{{m}, "top_k": 1, "top_k": 2}}"#), "duplicate field `top_k`"),
            (format!(r#"{{{m}, {m}}}"#), "duplicate field `messages`"),
            (r#"{"max_tokens": 1}"#.to_string(), "missing field `messages`"),
            (
                r#"{"messages": [{"role": "user", "content": 5}]}"#.to_string(),
                "messages[0].content: expected a string or an array of content parts, got a number",
            ),
            (
                "[1]".to_string(),
                "invalid type: sequence, expected a chat request (a JSON object with `messages`)",
            ),
        ] {
            let e = err::<ChatRequest>(&body);
            assert!(e.contains(named), "{body}: {e}");
        }
        let e = err::<CompletionRequest>(r#"{"prompt": "x", "seed": -1}"#);
        assert!(e.contains("seed: invalid value: integer `-1`"), "{e}");
        let e = err::<CompletionRequest>(r#"{"prompt": 5}"#);
        assert!(e.contains("prompt: expected a string or an array of strings, got a number"), "{e}");
        let ok: ChatRequest =
            serde_json::from_str(&format!(r#"{{{m}, "max_tokens": 3, "stop": ["x"], "future": 1}}"#))
                .unwrap();
        assert_eq!(ok.common.max_tokens, Some(3));
        assert_eq!(
            ok.common.other.get("future"),
            Some(&json!(1)),
            "unknown fields still reach check_supported"
        );
    }

    #[test]
    fn response_format_type_and_name_must_be_strings() {
        for (format, named) in [
            (json!({"type": 5}), "response_format type must be a string"),
            (
                json!({"type": "json_schema", "json_schema": {"name": 1, "schema": {}}}),
                "json_schema name must be a string",
            ),
        ] {
            let err = common(json!({"response_format": format})).constraints().unwrap_err();
            assert!(err.message().contains(named), "{err}");
        }
        assert!(common(json!({"response_format": {"type": null}})).constraints().unwrap().is_empty());
    }
}
