//! The OpenAI-compatible routes: chat and text completions (whole or streamed as SSE chunks
//! ending in `data: [DONE]`) and the model list. Defaults follow OpenAI (temperature 1, top_p
//! 1, no top-k or min-p; completions stop after 16 tokens unless told otherwise). Responses add
//! a `maze` object with Maze's exact finish reason, the seed and the constraint validation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use super::http::{generate, generate_stream, json_event, parse_body, sse, ApiError, Piece};
use super::AppState;
use crate::engine::{GenerateOptions, Prompt};
use crate::protocol::maze::{ErrorBody, WireError};
use crate::protocol::openai::{finish_reason, ChatRequest, CommonFields, CompletionRequest};
use crate::protocol::openai_tools;
use crate::result::GenerationResult;
use crate::sampling::SamplingParams;
use crate::tools::ToolFormat;

/// `GET /v1/models`: every configured model, the default first, with whether it is loaded.
pub(crate) async fn models(State(state): State<Arc<AppState>>) -> axum::Json<Value> {
    let data: Vec<Value> = state
        .models
        .list()
        .into_iter()
        .map(|m| json!({"id": m.name, "object": "model", "created": 0, "owned_by": "maze", "loaded": m.loaded}))
        .collect();
    axum::Json(json!({"object": "list", "data": data}))
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let request: ChatRequest = parse_body(&state, req).await?;
    let prompt = Prompt::Chat(request.chat_messages()?);
    respond(&state, &request.common, prompt, Kind::Chat).await
}

/// `POST /v1/completions`.
pub(crate) async fn completions(
    State(state): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    let request: CompletionRequest = parse_body(&state, req).await?;
    let prompt = Prompt::Text(request.prompt_text()?);
    respond(&state, &request.common, prompt, Kind::Completion).await
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

/// The options an OpenAI request stands for; tool calls in `tool_format` (`None`: the chat
/// template's own).
fn options(
    f: &CommonFields,
    kind: Kind,
    tool_format: Option<ToolFormat>,
) -> Result<GenerateOptions, ApiError> {
    f.check_supported()?;
    let tools = openai_tools::tool_use(
        f.tools.as_deref(),
        f.tool_choice.as_ref(),
        f.parallel_tool_calls,
        tool_format,
    )?;
    if tools.is_some() && kind == Kind::Completion {
        return Err(ApiError::from(crate::Error::invalid_argument(
            "tools need /v1/chat/completions (the chat template renders them)",
        )));
    }
    let default_max = if kind == Kind::Completion { 16 } else { 0 };
    let sampling = SamplingParams {
        temperature: f.temperature.unwrap_or(1.0),
        top_p: f.top_p.unwrap_or(1.0),
        top_k: f.top_k.filter(|&k| k > 0).unwrap_or(0) as usize,
        min_p: f.min_p.unwrap_or(0.0),
        repetition_penalty: f.repetition_penalty.unwrap_or(1.0),
        frequency_penalty: f.frequency_penalty.unwrap_or(0.0),
        presence_penalty: f.presence_penalty.unwrap_or(0.0),
        seed: f.seed,
        ..SamplingParams::default()
    };
    Ok(GenerateOptions {
        max_tokens: f.max_completion_tokens.or(f.max_tokens).unwrap_or(default_max),
        sampling,
        stop: f.stop.clone().map(|s| s.into_vec()).unwrap_or_default(),
        timeout: None,
        logprobs: false,
        constraints: f.constraints()?,
        ignore_eos: f.ignore_eos,
        cancel: None,
        tools,
    })
}

fn response_id(kind: Kind) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
    format!("{prefix}-maze{:016x}", NEXT.fetch_add(1, Ordering::Relaxed) ^ unix_seconds().rotate_left(32))
}

fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

fn usage(r: &GenerationResult) -> Value {
    json!({"prompt_tokens": r.stats.prompt_tokens, "completion_tokens": r.stats.generated_tokens, "total_tokens": r.stats.prompt_tokens + r.stats.generated_tokens})
}

/// The assistant message of a reply: its text (null when the reply is calls only) and calls.
fn reply_message(r: &GenerationResult) -> Value {
    let mut message = json!({"role": "assistant", "content": r.text});
    if !r.tool_calls.is_empty() {
        if r.text.is_empty() {
            message["content"] = Value::Null;
        }
        message["tool_calls"] = openai_tools::calls_value(&r.tool_calls);
    }
    message
}

/// Maze's extension: what OpenAI's fields cannot say.
fn maze_extension(r: &GenerationResult) -> Value {
    json!({
        "finish_reason": r.finish_reason.as_str(),
        "seed": r.provenance.seed,
        "validation": r.validation_value(),
        "error": r.error.as_ref().map(WireError::from),
    })
}

async fn respond(
    state: &Arc<AppState>,
    fields: &CommonFields,
    prompt: Prompt,
    kind: Kind,
) -> Result<Response, ApiError> {
    let opts = options(fields, kind, state.config.tool_format)?;
    // The model the request names (or the default), loaded if it is not.
    let engine = state.models.lease(fields.model.as_deref()).await?;
    let id = response_id(kind);
    let created = unix_seconds();
    let model = engine.name().to_string();
    if !fields.stream {
        let r = generate(state, engine, prompt, opts).await?;
        if let Some(e) = &r.error {
            // Failed midway: OpenAI clients know no partial results.
            return Err(ApiError::from(e.clone()));
        }
        let choice = match kind {
            Kind::Chat => {
                json!({"index": 0, "message": reply_message(&r), "finish_reason": finish_reason(r.finish_reason), "logprobs": null})
            }
            Kind::Completion => {
                json!({"index": 0, "text": r.text, "finish_reason": finish_reason(r.finish_reason), "logprobs": null})
            }
        };
        let object = if kind == Kind::Chat { "chat.completion" } else { "text_completion" };
        return Ok(axum::Json(json!({
            "id": id, "object": object, "created": created, "model": model,
            "choices": [choice], "usage": usage(&r), "maze": maze_extension(&r),
        }))
        .into_response());
    }

    let include_usage = fields.include_usage();
    let pieces = generate_stream(state, engine, prompt, opts).await?;
    let object = if kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" };
    let chunk = move |choice: Value, extra: Option<(&str, Value)>| {
        let choices = if choice.is_null() { json!([]) } else { json!([choice]) };
        let mut c =
            json!({"id": id, "object": object, "created": created, "model": model, "choices": choices});
        if let Some((key, value)) = extra {
            c[key] = value;
        }
        json_event(&c)
    };
    let opening = (kind == Kind::Chat).then(|| {
        chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}), None)
    });
    let events = pieces.flat_map(move |piece| {
        let events: Vec<Event> = match piece {
            Piece::Text(text) => vec![chunk(
                match kind {
                    Kind::Chat => json!({"index": 0, "delta": {"content": text}, "finish_reason": null}),
                    Kind::Completion => json!({"index": 0, "text": text, "finish_reason": null, "logprobs": null}),
                },
                None,
            )],
            Piece::Call(call) => match openai_tools::delta_value(&call) {
                Some(delta) => vec![chunk(json!({"index": 0, "delta": delta, "finish_reason": null}), None)],
                None => Vec::new(),
            },
            Piece::Done(Ok(r)) => {
                let last = match kind {
                    Kind::Chat => json!({"index": 0, "delta": {}, "finish_reason": finish_reason(r.finish_reason)}),
                    Kind::Completion => json!({"index": 0, "text": "", "finish_reason": finish_reason(r.finish_reason), "logprobs": null}),
                };
                let mut out = vec![chunk(last, Some(("maze", maze_extension(&r))))];
                if include_usage {
                    out.push(chunk(Value::Null, Some(("usage", usage(&r)))));
                }
                out.push(Event::default().data("[DONE]"));
                out
            }
            Piece::Done(Err(e)) => vec![json_event(&ErrorBody { error: WireError::from(&e) }).event("error")],
        };
        stream::iter(events)
    });
    Ok(sse(stream::iter(opening).chain(events)))
}
