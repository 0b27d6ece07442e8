//! The OpenAI half of the remote backend: `/v1/chat/completions` and `/v1/completions` of
//! vLLM, SGLang, llama.cpp's server or OpenAI, with structured outputs mapped to
//! `response_format` and vLLM's `structured_outputs`, and tools mapped to `tools`,
//! `tool_choice` and `parallel_tool_calls`; what they cannot express is refused. The calls a
//! server makes come back parsed, but only a Maze server vouches for their arguments: for any
//! other server each call is checked for structure (a declared tool, a JSON object) and reported
//! not satisfied, as Maze did not enforce its schema.

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
use crate::protocol::openai_tools;
use crate::result::{FinishReason, GenerationResult};
use crate::tools::{ToolCall, ToolCallCheck, ToolChoice, ToolUse};

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
        if let Some(tools) = &opts.tools {
            if !chat {
                return Err(Error::invalid_argument(
                    "tools need a chat prompt (the server's chat template renders them); this prompt is text or tokens",
                ));
            }
            set_tools(&mut common, tools)?;
        }
        if let Prompt::Chat(messages) = prompt {
            // A tool message answering no call is refused here, as a local engine refuses it.
            crate::model::chat::check_tool_history(messages)?;
        }
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

/// Writes `tools`, `tool_choice` and `parallel_tool_calls`; refuses what they cannot say: a call
/// format (the server renders tools with its own template) and a `max_calls` above 1 (the API
/// allows one call or as many as the server makes).
fn set_tools(common: &mut CommonFields, tools: &ToolUse) -> Result<()> {
    tools.check()?;
    if let Some(format) = tools.format {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "tool format '{}' cannot be sent to an OpenAI-compatible server (it renders tools with its own chat template); leave the format unset or use the Maze protocol",
                format.as_str()
            ),
        ));
    }
    let single = !tools.parallel || matches!(tools.choice, ToolChoice::Named(_));
    if !single && tools.max_calls > 1 {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "max_calls {} cannot be sent to an OpenAI-compatible server (parallel_tool_calls allows one call or as many as the server makes); use 0 (the server's limit) or 1, or the Maze protocol",
                tools.max_calls
            ),
        ));
    }
    if tools.tools.is_empty() {
        // tool_choice none with nothing declared asks for nothing (OpenAI refuses `tools: []`).
        return Ok(());
    }
    let (declared, choice, parallel) = openai_tools::request_fields(tools);
    common.tools = Some(declared);
    common.tool_choice = Some(choice);
    common.parallel_tool_calls = Some(parallel && tools.max_calls != 1);
    Ok(())
}

/// Most calls a reply may hold under `tools` as sent to an OpenAI server (`None`: no limit sent).
fn call_limit(tools: &ToolUse) -> Option<usize> {
    let single = !tools.parallel || matches!(tools.choice, ToolChoice::Named(_)) || tools.max_calls == 1;
    single.then_some(1)
}

/// What Maze can say of a call a server made that it did not enforce: never satisfied; the
/// reason names the first thing wrong with it, or says its schema was not enforced.
fn server_call_check(index: usize, call: &ToolCall, calls: usize, tools: Option<&ToolUse>) -> ToolCallCheck {
    let names = |t: &ToolUse| t.tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ");
    let name = &call.name;
    let reason = match tools {
        None => "the server made a call, but the request declared no tools".to_string(),
        Some(t) if t.choice == ToolChoice::None => {
            format!("tool_choice was none, but the server called '{name}'")
        }
        Some(t) if call_limit(t).is_some_and(|limit| index >= limit) => {
            format!("the server made {calls} calls where one was allowed")
        }
        Some(t) if !t.tools.iter().any(|d| &d.name == name) => {
            format!("the server called '{name}', which is not among the declared tools ({})", names(t))
        }
        Some(ToolUse { choice: ToolChoice::Named(wanted), .. }) if wanted != name => {
            format!("tool_choice named '{wanted}', but the server called '{name}'")
        }
        Some(_) => match serde_json::from_str::<Value>(&call.arguments) {
            Ok(Value::Object(_)) => "the server generated this call; Maze did not enforce its schema (it names a declared tool and its arguments are a JSON object)".to_string(),
            Ok(other) => format!("the arguments are not a JSON object but {}", oai::json_kind(&other)),
            Err(e) => format!("the arguments are not valid JSON ({e}): {}", preview(call.arguments.as_bytes())),
        },
    };
    ToolCallCheck { index, name: name.clone(), satisfied: false, reason: Some(reason) }
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
        let mut events = Vec::new();
        if !text.is_empty() {
            events.push(self.piece(text.to_string()));
        }
        if let Some(delta) = choice.and_then(|c| c.get("delta")) {
            for piece in openai_tools::delta_events(delta) {
                events.push(self.call_piece(piece));
            }
        }
        Ok(if events.is_empty() { Step::Continue } else { Step::Events(events) })
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
        let finish = match oai::parse_finish_reason(end.finish_reason.as_deref(), maze_finish) {
            // Some servers end a reply of calls with "stop".
            FinishReason::Stop if !self.calls.is_empty() => FinishReason::ToolCalls,
            other => other,
        };
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
                    } else if finish == FinishReason::ToolCalls {
                        (
                            ConstraintOutcome::Violated,
                            "the reply is tool calls and the server did not say whether it enforced this constraint",
                        )
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
        let maze_checks = end
            .maze
            .as_ref()
            .and_then(|m| m.pointer("/validation/tool_calls"))
            .and_then(|v| serde_json::from_value::<Vec<ToolCallCheck>>(v.clone()).ok())
            .filter(|checks| checks.len() == self.calls.len());
        if let Some(checks) = maze_checks {
            // A Maze server enforced the calls and says how each fared.
            result.tool_call_checks = checks;
        } else if matches!(finish, FinishReason::Stop | FinishReason::ToolCalls) {
            let n = self.calls.len();
            result.tool_call_checks = (self.calls.iter().enumerate())
                .map(|(i, c)| server_call_check(i, c, n, opts.tools.as_ref()))
                .collect();
        }
        if let Some(seed) = end.maze.as_ref().and_then(|m| m.get("seed")).and_then(Value::as_u64) {
            result.provenance.seed = seed;
            result.provenance.sampling.seed = Some(seed);
        }
        result
    }
}
