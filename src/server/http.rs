//! What every route shares: JSON errors with HTTP statuses, the API key and metrics middleware,
//! body parsing, the concurrency limit, and running a generation (whole or streamed) on a
//! fresh session that is cancelled when the client goes away.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::models::Lease;
use super::AppState;
use crate::engine::{CancelToken, GenerateOptions, Prompt};
use crate::error::{Error, ErrorKind};
use crate::protocol::maze::{
    ErrorBody, GenerateRequest, GenerateResponse, StreamPiece, TextEvent, WireError,
};
use crate::result::GenerationResult;
use crate::tools::StreamEvent;

/// An error response: `{"error": {"message", "status", "type"}}` with an HTTP status.
#[derive(Debug)]
pub(crate) struct ApiError {
    http: StatusCode,
    error: Error,
    retry_after: Option<u32>,
    /// OpenAI's `code` and `param` (e.g. "model_not_found", "model"), when it has one.
    code: Option<(&'static str, &'static str)>,
}

impl ApiError {
    pub(crate) fn new(http: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { http, error: Error::new(kind, message), retry_after: None, code: None }
    }

    #[cfg(test)]
    pub(crate) fn status(&self) -> StatusCode {
        self.http
    }

    #[cfg(test)]
    pub(crate) fn message(&self) -> &str {
        self.error.message()
    }

    pub(crate) fn with_code(self, code: &'static str, param: &'static str) -> Self {
        Self { code: Some((code, param)), ..self }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let http = match error.kind() {
            ErrorKind::InvalidArgument
            | ErrorKind::InvalidUtf8
            | ErrorKind::InvalidConstraint
            | ErrorKind::ContextOverflow
            | ErrorKind::Template
            | ErrorKind::Tokenizer
            | ErrorKind::Unsupported => StatusCode::BAD_REQUEST,
            ErrorKind::Busy => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self { http, error, retry_after: None, code: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.http {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_client_error() => "invalid_request_error",
            _ => "server_error",
        };
        let body = ErrorBody { error: WireError { kind: kind.into(), ..WireError::from(&self.error) } };
        let mut response = match self.code {
            None => (self.http, axum::Json(body)).into_response(),
            Some((code, param)) => {
                let mut body = serde_json::to_value(body).unwrap_or_default();
                body["error"]["code"] = code.into();
                body["error"]["param"] = param.into();
                (self.http, axum::Json(body)).into_response()
            }
        };
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

pub(crate) async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorKind::InvalidArgument,
        format!("no route {} {}", req.method(), req.uri().path()),
    )
}

/// A known path asked with a method it does not take.
pub(crate) async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::InvalidArgument,
        format!("method {} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// Checks the API key (health checks are open) and counts every response by route and status.
pub(crate) async fn authorize_and_count(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let open = route == "/health" || route == crate::protocol::maze::HEALTH_PATH;
    let response = match &state.config.api_key {
        Some(key) if !open && !has_key(req.headers(), key) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorKind::InvalidArgument,
            "missing or wrong API key (send Authorization: Bearer KEY)",
        )
        .into_response(),
        _ => next.run(req).await,
    };
    state.metrics.count_response(&route, response.status().as_u16());
    response
}

/// `--cors-origin`: answers a browser's preflight from an allowed origin (before the API key is
/// asked for: browsers send none with a preflight) and lets that origin read the responses.
/// Requests from other origins, and every request without the flag, get no CORS headers.
pub(crate) async fn cors(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let origins = &state.config.cors_origins;
    if origins.is_empty() {
        return next.run(req).await;
    }
    let any = origins.iter().any(|o| o == "*");
    let allowed = req.headers().get(header::ORIGIN).filter(|given| {
        any || origins.iter().any(|o| o.trim_end_matches('/').as_bytes() == given.as_bytes())
    });
    let allowed = allowed.map(|given| if any { HeaderValue::from_static("*") } else { given.clone() });
    let preflight =
        req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = match &allowed {
        Some(_) if preflight => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            let headers = response.headers_mut();
            headers
                .insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Authorization, Content-Type, X-API-Key"),
            );
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
            response
        }
        _ => next.run(req).await,
    };
    let headers = response.headers_mut();
    if let Some(origin) = allowed {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    if !any {
        // The answer depends on the origin: caches must not hand one origin's to another.
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

fn has_key(headers: &HeaderMap, key: &str) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let plain = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    // Constant-time comparison: the key must not leak through timing.
    let matches = |given: &str| {
        given.len() == key.len() && given.bytes().zip(key.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    };
    bearer.is_some_and(matches) || plain.is_some_and(matches)
}

/// Reads a request's body: at most `max_body_bytes` of it (413 beyond, before any of it is read
/// when the declared length says so) within `read_timeout` (408 after), then parses it as JSON.
pub(crate) async fn parse_body<T: DeserializeOwned>(state: &AppState, req: Request) -> Result<T, ApiError> {
    let bytes = read_body(state, req).await?;
    parse_json(&bytes)
}

async fn read_body(state: &AppState, req: Request) -> Result<Vec<u8>, ApiError> {
    let limit = state.config.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::InvalidArgument,
            format!("request body is larger than the server's limit of {limit} bytes (--max-body-bytes)"),
        )
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
    if declared.and_then(|v| v.parse::<u64>().ok()).is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = req.into_body().into_data_stream();
    let mut bytes = Vec::new();
    let read = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorKind::InvalidArgument,
                    format!("cannot read the request body: {e}"),
                )
            })?;
            if bytes.len() + chunk.len() > limit {
                return Err(too_large());
            }
            bytes.try_reserve(chunk.len()).map_err(|_| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorKind::Backend,
                    format!("out of memory reading a request body of {} bytes", bytes.len() + chunk.len()),
                )
            })?;
            bytes.extend_from_slice(&chunk);
        }
        Ok(())
    };
    let timeout = state.config.read_timeout;
    tokio::time::timeout(timeout, read).await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorKind::InvalidArgument,
            format!("request body not received within {} s (--read-timeout-secs)", timeout.as_secs_f64()),
        )
    })??;
    Ok(bytes)
}

/// Parses a JSON request body; malformed JSON is 400 naming where it went wrong.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let invalid = |at: String, e: &dyn std::fmt::Display| {
        let at = if at.is_empty() || at == "." { String::new() } else { format!(" at {at}") };
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorKind::InvalidArgument,
            format!("request body is not valid{at}: {e}"),
        )
    };
    // Every request is an object: say so, rather than what a struct read from an array lacks.
    if bytes.iter().find(|b| !b" \t\r\n".contains(b)).is_some_and(|&b| b != b'{') {
        let got = serde_json::from_slice(bytes).map_err(|e| invalid(String::new(), &e))?;
        let got = format!("expected a JSON object, got {}", crate::protocol::openai::json_kind(&got));
        return Err(invalid(String::new(), &got));
    }
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let value =
        serde_path_to_error::deserialize(&mut json).map_err(|e| invalid(e.path().to_string(), e.inner()))?;
    json.end().map_err(|e| invalid(String::new(), &e))?;
    Ok(value)
}

/// A slot of the concurrency limit, held for the whole generation (streams included).
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    state: Arc<AppState>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state.metrics.generation_ended();
    }
}

pub(crate) fn take_slot(state: &Arc<AppState>) -> Result<Slot, ApiError> {
    let permit = state.slots.clone().try_acquire_owned().map_err(|_| ApiError {
        retry_after: Some(1),
        ..ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Busy,
            format!("the server is at its limit of {} concurrent generations", state.config.max_concurrent),
        )
    })?;
    state.metrics.generation_started();
    Ok(Slot { _permit: permit, state: state.clone() })
}

/// The client's side of a generation: dropped armed (the client went away, dropping the
/// handler's future or the response stream), it cancels the generation's token, which stops it
/// wherever it is, also when it has not started yet (its blocking task not yet running, as
/// under load: `Session::cancel` would be a no-op then).
struct CancelOnDrop {
    token: CancelToken,
    armed: bool,
}

impl CancelOnDrop {
    /// Links `opts` to a fresh token that this guard cancels.
    fn new(opts: &mut GenerateOptions) -> Self {
        let token = CancelToken::new();
        opts.cancel = Some(token.clone());
        Self { token, armed: true }
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.token.cancel();
        }
    }
}

/// Runs a whole generation on a fresh session. The slot goes with the generation, not with the
/// request: a client that disconnects cancels the session, and the slot is free once the
/// generation has actually stopped.
pub(crate) async fn generate(
    state: &Arc<AppState>,
    engine: Lease,
    prompt: Prompt,
    mut opts: GenerateOptions,
) -> Result<GenerationResult, ApiError> {
    let slot = take_slot(state)?;
    let session = engine.new_session();
    let mut cancel = CancelOnDrop::new(&mut opts);
    let result = tokio::task::spawn_blocking(move || {
        let result = session.generate(&prompt, &opts);
        drop((session, engine, slot));
        result
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Internal,
            format!("generation task failed: {e}"),
        )
    })??;
    cancel.armed = false;
    state.metrics.count_tokens(&result);
    Ok(result)
}

/// What a streamed generation sends: pieces, then the end.
pub(crate) enum Piece {
    Text(String),
    /// A piece of a tool call.
    Call(StreamEvent),
    Done(Result<Box<GenerationResult>, Error>),
}

/// Starts a streamed generation. Errors before the first token come back as an HTTP error;
/// after that the pieces arrive in order and `Done` ends the stream. Dropping the stream
/// (client gone) cancels the generation at once, and its slot is free when it has stopped.
pub(crate) async fn generate_stream(
    state: &Arc<AppState>,
    engine: Lease,
    prompt: Prompt,
    mut opts: GenerateOptions,
) -> Result<impl Stream<Item = Piece> + Send + 'static, ApiError> {
    let slot = take_slot(state)?;
    let session = engine.new_session();
    let cancel = CancelOnDrop::new(&mut opts);
    let (tx, rx) = mpsc::unbounded_channel();
    let metrics_state = state.clone();
    tokio::task::spawn_blocking(move || {
        let result = session.generate_events(&prompt, &opts, |event| {
            let piece = match event {
                StreamEvent::Text(text) => Piece::Text(text.clone()),
                call => Piece::Call(call.clone()),
            };
            tx.send(piece).is_ok()
        });
        if let Ok(r) = &result {
            metrics_state.metrics.count_tokens(r);
        }
        drop((session, engine, slot));
        let _ = tx.send(Piece::Done(result.map(Box::new)));
    });
    let mut rx = UnboundedReceiverStream::new(rx);
    let first = rx.next().await;
    if let Some(Piece::Done(Err(e))) = first {
        return Err(e.into());
    }
    // The guard lives as long as the stream: dropped with it, it cancels the session (a no-op
    // once the generation has ended).
    Ok(stream::iter(first).chain(rx).map(move |piece| {
        let _ = &cancel;
        piece
    }))
}

pub(crate) fn sse<S: Stream<Item = Event> + Send + 'static>(events: S) -> Response {
    Sse::new(events.map(Ok::<_, Infallible>)).keep_alive(KeepAlive::default()).into_response()
}

pub(crate) fn json_event<T: serde::Serialize>(value: &T) -> Event {
    Event::default().data(serde_json::to_string(value).unwrap_or_default())
}

/// `POST /maze/v1/generate`.
pub(crate) async fn maze_generate(
    State(state): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    let request: GenerateRequest = parse_body(&state, req).await?;
    let stream = request.stream;
    let model = request.model.clone();
    let (prompt, opts) = request.into_call()?;
    let engine = state.models.lease(model.as_deref()).await?;
    if !stream {
        let result = generate(&state, engine, prompt, opts).await?;
        return Ok(axum::Json(GenerateResponse::from_result(&result)).into_response());
    }
    let pieces = generate_stream(&state, engine, prompt, opts).await?;
    Ok(sse(pieces.map(|piece| match piece {
        Piece::Text(text) => json_event(&TextEvent { text }),
        Piece::Call(call) => json_event(&StreamPiece::from(&call)),
        Piece::Done(Ok(result)) => json_event(&GenerateResponse::from_result(&result)).event("result"),
        Piece::Done(Err(e)) => json_event(&ErrorBody { error: WireError::from(&e) }).event("error"),
    })))
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::result::FinishReason;

    /// A client that leaves before its generation has started: `Session::cancel` would find
    /// nothing to cancel, and the generation must stop all the same (it ran to `max_tokens`
    /// before, holding its slot).
    #[test]
    fn a_client_gone_before_the_generation_starts_stops_it() {
        let engine = crate::server::tests::tiny_engine();
        let session = engine.new_session();
        let prompt = Prompt::Text("hello".into());
        let mut opts = GenerateOptions { max_tokens: 200, ignore_eos: true, ..GenerateOptions::default() };
        drop(CancelOnDrop::new(&mut opts));
        let r = session.generate(&prompt, &opts).unwrap();
        assert_eq!((r.finish_reason, r.stats.generated_tokens), (FinishReason::Cancelled, 0));

        // Kept (disarmed, as a finished request leaves it), it stops nothing.
        let mut opts = GenerateOptions { max_tokens: 200, ignore_eos: true, ..GenerateOptions::default() };
        let mut cancel = CancelOnDrop::new(&mut opts);
        cancel.armed = false;
        drop(cancel);
        let r = session.generate(&prompt, &opts).unwrap();
        assert_eq!((r.finish_reason, r.stats.generated_tokens), (FinishReason::Length, 200));
    }
}
