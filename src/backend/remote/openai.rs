//! The OpenAI half of the remote backend: `/v1/chat/completions` and `/v1/completions` of
//! vLLM, SGLang, llama.cpp's server or OpenAI, with structured outputs mapped to
//! `response_format` and vLLM's `structured_outputs`; what they cannot express is refused.

use serde_json::Value;

use super::sse::SseEvent;
use super::{preview, Inner, Run, Step};
use crate::constraint::{ConstraintOutcome, ConstraintReport};
use crate::engine::{GenerateOptions, Prompt};
use crate::error::{Error, ErrorKind, Result};
use crate::protocol::maze as proto;
use crate::protocol::openai::{
    self as oai, ChatRequest, CommonFields, CompletionRequest, Message, OneOrMany, StreamOptions,
};
use crate::result::{FinishReason, GenerationResult};

/// What the last OpenAI chunks said.
#[derive(Default)]
pub(super) struct OpenAiEnd {
    finish_reason: Option<String>,
    maze: Option<Value>,
    usage: Option<Value>,
}

impl Inner {
    pub(super) fn openai_models(&self) -> Result<Vec<String>> {
        let list: Value = self.get_json(oai::MODELS_PATH)?;
        let data = list.get("data").and_then(Value::as_array).ok_or_else(|| {
            Error::new(
                ErrorKind::Backend,
                format!("{}: no 'data' list in the model list", self.url(oai::MODELS_PATH)),
            )
        })?;
        Ok(data.iter().filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_string)).collect())
    }

    /// The route and body of a request; refuses what the OpenAI API cannot carry.
    pub(super) fn openai_request_body(
        &self,
        prompt: &Prompt,
        opts: &GenerateOptions,
    ) -> Result<(&'static str, Value)> {
        let s = &opts.sampling;
        let mut common = CommonFields {
            model: Some(self.model.clone()),
            max_tokens: (opts.max_tokens > 0).then_some(opts.max_tokens),
            temperature: Some(s.temperature),
            top_p: Some(s.top_p),
            top_k: (s.top_k > 0).then_some(s.top_k as i64),
            min_p: (s.min_p > 0.0).then_some(s.min_p),
            repetition_penalty: (s.repetition_penalty != 1.0).then_some(s.repetition_penalty),
            frequency_penalty: (s.frequency_penalty != 0.0).then_some(s.frequency_penalty),
            presence_penalty: (s.presence_penalty != 0.0).then_some(s.presence_penalty),
            seed: s.seed,
            // Sent only when set: vLLM takes it, strict OpenAI servers refuse unknown fields.
            ignore_eos: opts.ignore_eos,
            stop: (!opts.stop.is_empty()).then(|| OneOrMany::Many(opts.stop.clone())),
            stream: true,
            stream_options: Some(StreamOptions { include_usage: true }),
            ..CommonFields::default()
        };
        if opts.logprobs {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "logprobs are not supported over the OpenAI-compatible API; use the Maze protocol",
            ));
        }
        let chat = matches!(prompt, Prompt::Chat(_));
        common.set_constraints(&opts.constraints, chat)?;
        let body = match prompt {
            Prompt::Chat(messages) => serde_json::to_value(ChatRequest {
                messages: messages.iter().map(Message::from_chat).collect(),
                common,
            }),
            Prompt::Text(text) => serde_json::to_value(CompletionRequest { prompt: OneOrMany::One(text.clone()), common }),
            Prompt::Tokens(_) => return Err(Error::new(ErrorKind::Unsupported, "token-id prompts are not supported over the OpenAI-compatible API (the ids are the server's); use the Maze protocol")),
        };
        Ok((if chat { oai::CHAT_PATH } else { oai::COMPLETIONS_PATH }, body.expect("serializable")))
    }
}

impl Run {
    pub(super) fn openai_event(&mut self, event: SseEvent, end: &mut OpenAiEnd) -> Result<Step> {
        if event.data.trim() == "[DONE]" {
            return Ok(Step::OpenAiDone);
        }
        let chunk: Value = serde_json::from_str(&event.data).map_err(|e| {
            Error::new(
                ErrorKind::Backend,
                format!("invalid chunk from the server ({e}): {}", preview(event.data.as_bytes())),
            )
        })?;
        if let Some(error) = chunk.get("error") {
            let message = error.get("message").and_then(Value::as_str).unwrap_or("unknown error");
            return Err(Error::new(ErrorKind::Backend, format!("the server reported: {message}")));
        }
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            end.usage = Some(usage.clone());
        }
        if let Some(maze) = chunk.get("maze") {
            end.maze = Some(maze.clone());
        }
        let choice = chunk.get("choices").and_then(|c| c.get(0));
        if let Some(reason) = choice.and_then(|c| c.get("finish_reason")).and_then(Value::as_str) {
            end.finish_reason = Some(reason.to_string());
        }
        let text = choice
            .and_then(|c| c.pointer("/delta/content").or_else(|| c.get("text")))
            .and_then(Value::as_str)
            .unwrap_or("");
        Ok(if text.is_empty() { Step::Continue } else { self.piece(text.to_string()) })
    }

    /// The end of an OpenAI stream. A Maze server's `maze` extension gives the exact finish
    /// reason, seed and validation; from other servers a constraint they were sent counts as
    /// satisfied when generation stopped by itself (the server enforced it).
    pub(super) fn openai_result(
        &self,
        end: OpenAiEnd,
        opts: &GenerateOptions,
        model: &str,
    ) -> GenerationResult {
        let maze_finish = end.maze.as_ref().and_then(|m| m.get("finish_reason")).and_then(Value::as_str);
        let finish = oai::parse_finish_reason(end.finish_reason.as_deref(), maze_finish);
        let usage = |key: &str| {
            end.usage.as_ref().and_then(|u| u.get(key)).and_then(Value::as_u64).map(|n| n as usize)
        };
        let stats = self
            .stats(usage("prompt_tokens").unwrap_or(0), usage("completion_tokens").unwrap_or(self.pieces));
        let validation = match end
            .maze
            .as_ref()
            .and_then(|m| m.pointer("/validation/constraints"))
            .and_then(|v| serde_json::from_value::<Vec<proto::WireReport>>(v.clone()).ok())
        {
            Some(reports) => opts
                .constraints
                .iter()
                .zip(reports)
                .map(|(c, r)| ConstraintReport {
                    name: c.name.clone(),
                    kind: c.kind.tag(),
                    priority: c.priority,
                    outcome: r.outcome,
                    reason: r.reason,
                    relaxed_keywords: r.relaxed_keywords,
                    ignored_formats: r.ignored_formats,
                })
                .collect(),
            None => opts
                .constraints
                .iter()
                .map(|c| {
                    let (outcome, reason) = if finish == FinishReason::Stop {
                        (ConstraintOutcome::Satisfied, "enforced by the server (not verified locally)")
                    } else {
                        (ConstraintOutcome::Violated, "the server stopped before the output was complete")
                    };
                    ConstraintReport {
                        name: c.name.clone(),
                        kind: c.kind.tag(),
                        priority: c.priority,
                        outcome,
                        reason: Some(reason.into()),
                        relaxed_keywords: Vec::new(),
                        ignored_formats: Vec::new(),
                    }
                })
                .collect(),
        };
        let mut result = self.local_result(finish, None, validation, stats, opts, model);
        if let Some(seed) = end.maze.as_ref().and_then(|m| m.get("seed")).and_then(Value::as_u64) {
            result.provenance.seed = seed;
            result.provenance.sampling.seed = Some(seed);
        }
        result
    }
}
