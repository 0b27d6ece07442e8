//! What a generation returns.

use std::time::Duration;

use crate::error::Error;

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    Stop,
    /// `max_tokens` was reached or the context is full.
    Length,
    /// A stop sequence appeared; it is not part of the text.
    StopSequence,
    /// Cancelled by the caller (cancel call or a streaming callback returning false).
    Cancelled,
    /// The request's timeout passed.
    Timeout,
    /// The computation failed; see [`GenerationResult::error`].
    Error,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::StopSequence => "stop_sequence",
            Self::Cancelled => "cancelled",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

/// Counts and timings of one generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationStats {
    /// Tokens in the prompt, whether computed now or reused from the session's cache.
    pub prompt_tokens: usize,
    /// Prompt tokens reused from the session's KV cache (not recomputed).
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
}
