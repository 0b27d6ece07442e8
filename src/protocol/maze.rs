//! The Maze protocol: Maze's own JSON over HTTP, spoken by `maze-server` and the remote backend.
//! It carries everything a local call has (every constraint kind, token masks included, and
//! the validation of each). Documented in docs/PROTOCOL.md.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::constraint::{Constraint, ConstraintOutcome, ConstraintReport, ConstraintStats, ConstraintTag};
use crate::engine::{GenerateOptions, Prompt};
use crate::error::{Error, ErrorKind, Result};
use crate::model::chat::ChatMessage;
use crate::result::{AppliedConstraint, FinishReason, GenerationResult, GenerationStats, Provenance};
use crate::sampling::SamplingParams;

pub const GENERATE_PATH: &str = "/maze/v1/generate";
pub const HEALTH_PATH: &str = "/maze/v1/health";
pub const MODELS_PATH: &str = "/maze/v1/models";

/// `POST /maze/v1/generate`: exactly one of `prompt`, `messages`, `tokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// Server-sent events: `data: {"text": ...}` per piece, then `event: result`.
    #[serde(default)]
    pub stream: bool,
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireValidation {
    pub satisfied: bool,
    pub constraints: Vec<WireReport>,
    pub stats: Option<ConstraintStats>,
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
                    })
                    .collect(),
                stats: r.constraint_stats,
            },
            provenance: serde_json::to_value(&r.provenance).unwrap_or(Value::Null),
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
                    // A kind this client does not know (a newer server) is the one it asked for.
                    let kind = ConstraintTag::from_name(&v.kind)
                        .or_else(|| opts.constraints.get(i).map(|c| c.kind.tag()))?;
                    Some(ConstraintReport {
                        name: v.name,
                        kind,
                        priority: v.priority,
                        outcome: v.outcome,
                        reason: v.reason,
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
    pub architecture: String,
    pub context_length: usize,
    pub vocab_size: usize,
}
