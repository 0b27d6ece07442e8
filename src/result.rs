//! What a generation returns.

use std::time::Duration;

use serde::Serialize;

use crate::constraint::{ConstraintReport, ConstraintStats};
use crate::error::Error;
use crate::sampling::SamplingParams;
use crate::tools::{ToolCall, ToolCallCheck};

use crate::c_enum::rust_side as c_enum;
include!("tables/finish_reason.rs");

/// Counts and timings of one generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationStats {
    /// Tokens in the prompt, whether computed now or reused from the session's cache.
    pub prompt_tokens: usize,
    /// Prompt tokens not recomputed: reused from the session's KV cache, or copied from another
    /// (live, closed or reset) session's identical prefix.
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    /// From the call to the first generated token (queueing and prefill included).
    pub time_to_first_token: Duration,
    pub total_time: Duration,
    /// Prompt tokens computed per second of prefill.
    pub prefill_tokens_per_second: f64,
    /// Generated tokens per second after the first one (decode speed).
    pub decode_tokens_per_second: f64,
}

/// A finished generation. `text` is exactly the concatenation of what was streamed.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationResult {
    pub text: String,
    pub tokens: Vec<u32>,
    /// log p of each generated token under the model's distribution, when requested.
    pub logprobs: Option<Vec<f32>>,
    pub finish_reason: FinishReason,
    pub stats: GenerationStats,
    /// Set when `finish_reason` is [`FinishReason::Error`].
    pub error: Option<Error>,
    /// One report per constraint of the request (empty without constraints).
    pub validation: Vec<ConstraintReport>,
    /// Constraint timing and counts (None without constraints).
    pub constraint_stats: Option<ConstraintStats>,
    /// What produced this output.
    pub provenance: Provenance,
    /// The tool calls of the reply, in order (with tools; `text` is then the reply's text
    /// part only). A call cut short is listed with the arguments generated so far.
    pub tool_calls: Vec<ToolCall>,
    /// One check per call: complete and enforced (see [`ToolCallCheck`]).
    pub tool_call_checks: Vec<ToolCallCheck>,
}

impl GenerationResult {
    /// True when every constraint was enforced throughout and the output is complete under it
    /// (vacuously true without constraints). A lenient JSON schema that left keywords out
    /// ([`crate::constraint::ConstraintOutcome::PartiallyEnforced`]) makes it false; formats
    /// ignored as annotations do not.
    pub fn constraints_satisfied(&self) -> bool {
        self.validation.iter().all(|r| r.outcome == crate::constraint::ConstraintOutcome::Satisfied)
            && self.tool_call_checks.iter().all(|c| c.satisfied)
    }

    /// `{"satisfied": bool, "constraints": [...], "stats": {...}}`, plus `"tool_calls": [...]`
    /// (one check per call) when the reply has calls.
    pub fn validation_value(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "satisfied": self.constraints_satisfied(),
            "constraints": self.validation,
            "stats": self.constraint_stats,
        });
        if !self.tool_call_checks.is_empty() {
            v["tool_calls"] = serde_json::to_value(&self.tool_call_checks).unwrap_or_default();
        }
        v
    }

    pub fn validation_json(&self) -> String {
        self.validation_value().to_string()
    }

    pub fn provenance_json(&self) -> String {
        serde_json::to_string(&self.provenance).unwrap_or_default()
    }
}

/// A constraint as applied to a request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppliedConstraint {
    pub name: String,
    pub kind: crate::constraint::ConstraintTag,
    pub priority: i32,
    /// A JSON schema's compile options, when given: they change what is generated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_options: Option<crate::constraint::JsonSchemaOptions>,
}

impl AppliedConstraint {
    pub fn list(constraints: &[crate::constraint::Constraint]) -> Vec<Self> {
        constraints
            .iter()
            .map(|c| Self {
                name: c.name.clone(),
                kind: c.kind.tag(),
                priority: c.priority,
                json_options: c.json_options.clone(),
            })
            .collect()
    }
}

/// Where an output came from: enough to reproduce it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Provenance {
    pub model: String,
    pub architecture: String,
    /// Milliseconds since the Unix epoch when the request was made.
    pub created_unix_ms: u64,
    pub constraints: Vec<AppliedConstraint>,
    pub sampling: SamplingParams,
    /// The seed actually used (drawn from the engine when the request had none).
    pub seed: u64,
    pub max_tokens: usize,
    pub stop: Vec<String>,
}
