//! The remote backend: the same sessions and constraints API, served by an inference server
//! over HTTP — another Maze (the Maze protocol: every constraint kind, validation included) or
//! any OpenAI-compatible server such as vLLM, SGLang or llama.cpp's (structured outputs mapped
//! to `response_format` and vLLM's `structured_outputs`; what they cannot express, such as
//! token masks, is refused with `ErrorKind::Unsupported`, never dropped). Tools go to both: the
//! server's calls come back in the result and stream as [`StreamEvent`]s; only a Maze server's
//! calls can be reported satisfied (docs/PROTOCOL.md, "Tools through the remote backend").
//!
//! Requests run on the backend's own Tokio runtime and always stream, so that cancel and
//! timeouts act at once. Connect errors, 429 and 5xx are retried with exponential backoff and
//! jitter (`Retry-After` honoured) until the first byte of a response arrives; after that a
//! failure ends the generation with `FinishReason::Error` and keeps the text received.

mod backend;
mod config;
mod maze;
mod openai;
mod sse;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::watch;

use crate::constraint::ConstraintReport;
use crate::engine::{GenerateOptions, Prompt};
use crate::error::{Error, ErrorKind, Result};
use crate::model::ModelInfo;
use crate::protocol::maze::ErrorBody;
use crate::result::{AppliedConstraint, FinishReason, GenerationResult, GenerationStats, Provenance};
use crate::tools::{StreamEvent, ToolCall, ToolCallCheck};
pub use config::{Protocol, RemoteConfig};
pub use sse::{SseEvent, SseParser};

/// What a remote engine serves.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteInfo {
    pub endpoint: String,
    pub model: String,
    pub protocol: Protocol,
}

/// A connection to an inference server. Cheap to clone; thread-safe.
#[derive(Clone)]
pub struct RemoteEngine {
    inner: Arc<Inner>,
}

struct Inner {
    config: RemoteConfig,
    base: String,
    model: String,
    /// What the engine serves, as [`crate::backend::EngineBackend::info`] reports it.
    served: ModelInfo,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl RemoteEngine {
    /// Connects: checks the server answers (with the configured retries) and resolves the
    /// model name.
    pub fn connect(config: RemoteConfig) -> Result<Self> {
        let base = config.base_url()?;
        let mut headers = HeaderMap::new();
        if let Some(key) = &config.api_key {
            let value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                Error::invalid_argument("the API key contains characters not allowed in an HTTP header")
            })?;
            headers.insert(AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("maze/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::new(ErrorKind::Backend, format!("cannot build the HTTP client: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("maze-remote")
            .enable_all()
            .build()
            .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot start the remote runtime: {e}")))?;
        let served = served_info("", &base);
        let mut inner = Inner { base, model: String::new(), served, client, runtime, config };
        let models = inner.models()?;
        inner.model = match (&inner.config.model, inner.config.protocol) {
            (Some(name), Protocol::OpenAi) if !models.contains(name) => {
                return Err(Error::invalid_argument(format!(
                    "the server at {} does not serve model '{name}' (it serves {})",
                    inner.base,
                    models.join(", ")
                )));
            }
            (Some(name), _) => name.clone(),
            (None, _) => models.into_iter().next().ok_or_else(|| {
                Error::new(ErrorKind::Backend, format!("the server at {} lists no model", inner.base))
            })?,
        };
        inner.served = served_info(&inner.model, &inner.base);
        Ok(Self { inner: Arc::new(inner) })
    }

    pub fn info(&self) -> RemoteInfo {
        RemoteInfo {
            endpoint: self.inner.base.clone(),
            model: self.inner.model.clone(),
            protocol: self.inner.config.protocol,
        }
    }

    /// Asks the server whether it is up: the Maze protocol's health route, or the model list
    /// of an OpenAI-compatible server.
    pub fn health(&self) -> Result<()> {
        match self.inner.config.protocol {
            Protocol::Maze => self.inner.maze_health(),
            Protocol::OpenAi => self.inner.models().map(|_| ()),
        }
    }

    /// The models the server lists.
    pub fn models(&self) -> Result<Vec<String>> {
        self.inner.models()
    }

    pub fn new_session(&self) -> RemoteSession {
        RemoteSession { inner: self.inner.clone(), busy: AtomicBool::new(false), cancel: Mutex::new(None) }
    }
}

/// One conversation on a remote engine. The server keeps no state between requests: each
/// request sends the whole prompt (servers with prefix caching reuse it).
pub struct RemoteSession {
    inner: Arc<Inner>,
    busy: AtomicBool,
    cancel: Mutex<Option<Arc<watch::Sender<bool>>>>,
}

impl RemoteSession {
    pub fn generate(&self, prompt: &Prompt, opts: &GenerateOptions) -> Result<GenerationResult> {
        self.generate_streaming(prompt, opts, |_| true)
    }

    /// Generates, calling `on_text` with each piece of text on this thread; returning false
    /// cancels. Tool-call pieces are not shown to `on_text` (see [`RemoteSession::generate_events`]).
    pub fn generate_streaming(
        &self,
        prompt: &Prompt,
        opts: &GenerateOptions,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<GenerationResult> {
        self.generate_events(prompt, opts, crate::tools::text_only(&mut on_text))
    }

    /// Like [`RemoteSession::generate_streaming`], with the server's tool calls told apart from
    /// text: each call's start (index, id, name), then its arguments in fragments, as the server
    /// streams them.
    pub fn generate_events(
        &self,
        prompt: &Prompt,
        opts: &GenerateOptions,
        mut on_event: impl FnMut(&StreamEvent) -> bool,
    ) -> Result<GenerationResult> {
        opts.sampling.validate()?;
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(Error::new(ErrorKind::Busy, "the session is already generating"));
        }
        let (tx, rx) = watch::channel(false);
        let tx = Arc::new(tx);
        *self.cancel.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
        let link = opts.cancel.as_ref().map(|token| token.link(move || _ = tx.send(true)));
        let result = self.inner.runtime.block_on(self.inner.generate(prompt, opts, rx, &mut on_event));
        drop(link);
        *self.cancel.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.busy.store(false, Ordering::Release);
        result
    }

    /// Stops the running request from any thread; a no-op when idle.
    pub fn cancel(&self) {
        if let Some(tx) = self.cancel.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = tx.send(true);
        }
    }

    pub fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// The server keeps no conversation, so there is nothing to forget; refused while
    /// generating, as a local session refuses it.
    pub fn reset(&self) -> Result<()> {
        if self.is_busy() {
            return Err(Error::new(ErrorKind::Busy, "cannot reset a session while it is generating"));
        }
        Ok(())
    }
}

/// Why the wait for the server stopped early.
enum Interrupt {
    Cancelled,
    Timeout,
}

/// Waits for `future` unless the request is cancelled or its deadline passes.
async fn interruptible<T>(
    future: impl std::future::Future<Output = T>,
    cancel: &mut watch::Receiver<bool>,
    deadline: Option<Instant>,
) -> std::result::Result<T, Interrupt> {
    let sleep = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    let cancelled = async {
        // A closed channel (no canceller) never cancels.
        if cancel.wait_for(|&c| c).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        value = future => Ok(value),
        _ = cancelled => Err(Interrupt::Cancelled),
        _ = sleep => Err(Interrupt::Timeout),
    }
}

/// The model a server serves, described as far as a client knows it: the sizes it does not
/// report read 0.
fn served_info(model: &str, base: &str) -> ModelInfo {
    ModelInfo {
        architecture: "remote".into(),
        name: model.to_string(),
        vocab_size: 0,
        trained_context_length: 0,
        context_length: 0,
        n_layers: 0,
        embedding_length: 0,
        compute: format!("remote, {base}"),
    }
}

impl Inner {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn models(&self) -> Result<Vec<String>> {
        match self.config.protocol {
            Protocol::Maze => self.maze_models(),
            Protocol::OpenAi => self.openai_models(),
        }
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.runtime.block_on(async {
            let (_no_canceller, mut never) = watch::channel(false);
            let deadline = self.config.request_timeout.map(|t| Instant::now() + t);
            let response = match self.send(|| self.client.get(self.url(path)), &mut never, deadline).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::Backend,
                        format!("{} did not answer in time", self.url(path)),
                    ))
                }
            };
            let bytes = response.bytes().await.map_err(|e| {
                Error::new(ErrorKind::Backend, format!("{}: reading the response: {e}", self.url(path)))
            })?;
            serde_json::from_slice(&bytes).map_err(|e| {
                Error::new(
                    ErrorKind::Backend,
                    format!("{}: invalid response ({e}): {}", self.url(path), preview(&bytes)),
                )
            })
        })
    }

    /// Sends with retries: connect errors, 429 and 5xx are retried with backoff; a success or
    /// any other status ends the loop (other statuses become the server's error).
    async fn send(
        &self,
        request: impl Fn() -> reqwest::RequestBuilder,
        cancel: &mut watch::Receiver<bool>,
        deadline: Option<Instant>,
    ) -> std::result::Result<Result<reqwest::Response>, Interrupt> {
        let mut attempt = 0u32;
        loop {
            let outcome = interruptible(request().send(), cancel, deadline).await?;
            let wait = match outcome {
                Ok(response) if response.status().is_success() => return Ok(Ok(response)),
                Ok(response) if retryable(response.status()) && attempt < self.config.max_retries => {
                    retry_after(&response).unwrap_or_else(|| self.backoff(attempt))
                }
                Ok(response) => {
                    let retried =
                        if attempt > 0 { format!(" after {attempt} retries") } else { String::new() };
                    return Ok(Err(error_from_response(response, &retried).await));
                }
                Err(e) if (e.is_connect() || e.is_request()) && attempt < self.config.max_retries => {
                    self.backoff(attempt)
                }
                Err(e) => {
                    let url = e.url().map(|u| u.to_string()).unwrap_or_default();
                    return Ok(Err(Error::new(
                        ErrorKind::Backend,
                        format!(
                            "cannot reach {url}: {}{}",
                            error_chain(&e),
                            if attempt > 0 { format!(" ({} attempts)", attempt + 1) } else { String::new() }
                        ),
                    )));
                }
            };
            // Past the deadline the wait ends in Interrupt::Timeout.
            interruptible(tokio::time::sleep(wait), cancel, deadline).await?;
            attempt += 1;
        }
    }

    /// Exponential backoff with jitter: half the doubled delay, plus a random part of the other half.
    fn backoff(&self, attempt: u32) -> Duration {
        let doubled =
            self.config.initial_backoff.saturating_mul(1u32 << attempt.min(16)).min(self.config.max_backoff);
        doubled / 2 + doubled.mul_f64(rand::random::<f64>() / 2.0)
    }

    async fn generate(
        &self,
        prompt: &Prompt,
        opts: &GenerateOptions,
        mut cancel: watch::Receiver<bool>,
        on_event: &mut dyn FnMut(&StreamEvent) -> bool,
    ) -> Result<GenerationResult> {
        let started = Instant::now();
        let deadline = opts.timeout.or(self.config.request_timeout).map(|t| started + t);
        let (path, body) = self.request_body(prompt, opts)?;
        let url = self.url(path);
        let mut run = Run {
            started,
            first_token: None,
            text: String::new(),
            calls: Vec::new(),
            pieces: 0,
            stopped_by_caller: false,
        };

        let response = match self.send(|| self.client.post(&url).json(&body), &mut cancel, deadline).await {
            Ok(response) => response?,
            Err(interrupt) => return Ok(run.interrupted(interrupt, opts, &self.model)),
        };
        if !response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
        {
            let bytes = response.bytes().await.unwrap_or_default();
            return Err(Error::new(
                ErrorKind::Backend,
                format!("{url}: expected an event stream, got: {}", preview(&bytes)),
            ));
        }
        let mut body_stream = response.bytes_stream();
        let mut parser = SseParser::new(16 << 20);
        let mut openai = openai::OpenAiEnd::default();
        loop {
            let chunk = match interruptible(body_stream.next(), &mut cancel, deadline).await {
                Ok(chunk) => chunk,
                Err(interrupt) => return Ok(run.interrupted(interrupt, opts, &self.model)),
            };
            let bytes = match chunk {
                Some(Ok(bytes)) => bytes,
                Some(Err(e)) => {
                    return run.failed(
                        format!("{url}: the connection failed mid-stream: {}", error_chain(&e)),
                        opts,
                        &self.model,
                    )
                }
                None => {
                    return run.failed(
                        format!("{url}: the server closed the stream before the end of generation"),
                        opts,
                        &self.model,
                    )
                }
            };
            let events = match parser.push(&bytes) {
                Ok(events) => events,
                Err(e) => return run.failed(format!("{url}: {}", e.message()), opts, &self.model),
            };
            for event in events {
                let step = match self.config.protocol {
                    Protocol::Maze => run.maze_event(event, opts),
                    Protocol::OpenAi => run.openai_event(event, &mut openai),
                };
                match step {
                    Ok(Step::Continue) => {}
                    Ok(Step::Events(events)) => {
                        if !events.iter().all(&mut *on_event) {
                            run.stopped_by_caller = true;
                            return Ok(run.interrupted(Interrupt::Cancelled, opts, &self.model));
                        }
                    }
                    Ok(Step::Done(result)) => return Ok(*result),
                    Ok(Step::OpenAiDone) => return Ok(run.openai_result(openai, opts, &self.model)),
                    Err(e) if run.pieces == 0 => return Err(e),
                    Err(e) => return run.failed(format!("{url}: {}", e.message()), opts, &self.model),
                }
            }
        }
    }

    /// The route and body of a request; refuses what the protocol cannot carry.
    fn request_body(&self, prompt: &Prompt, opts: &GenerateOptions) -> Result<(&'static str, Value)> {
        match self.config.protocol {
            Protocol::Maze => Ok(maze::request_body(prompt, opts, self.config.model.as_deref())),
            Protocol::OpenAi => self.openai_request_body(prompt, opts),
        }
    }
}

fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// `Retry-After` in seconds (HTTP dates are not honoured: the backoff applies), capped at a minute.
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let seconds: f64 = response.headers().get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(60.0)))
}

/// The server's error: Maze's (kind and message) when it sent one, else by HTTP status.
async fn error_from_response(response: reqwest::Response, retried: &str) -> Error {
    let status = response.status();
    let url = response.url().to_string();
    let bytes = response.bytes().await.unwrap_or_default();
    if let Ok(body) = serde_json::from_slice::<ErrorBody>(&bytes) {
        return Error::new(
            body.error.status,
            format!("{} (HTTP {} from {url}{retried})", body.error.message, status.as_u16()),
        );
    }
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| preview(&bytes));
    let kind = match status.as_u16() {
        429 => ErrorKind::Busy,
        400..=499 => ErrorKind::InvalidArgument,
        _ => ErrorKind::Backend,
    };
    Error::new(kind, format!("HTTP {} from {url}{retried}: {message}", status.as_u16()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn preview(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).to_string();
    if text.trim().is_empty() {
        "(empty body)".into()
    } else {
        format!("'{text}'")
    }
}

enum Step {
    Continue,
    /// Pieces to stream, in order (one chunk may carry text and call pieces).
    Events(Vec<StreamEvent>),
    Done(Box<GenerationResult>),
    OpenAiDone,
}

/// One request in progress: the text and tool calls so far and its timing.
struct Run {
    started: Instant,
    first_token: Option<Instant>,
    text: String,
    /// The calls streamed so far, by index, put together from their pieces.
    calls: Vec<ToolCall>,
    pieces: usize,
    stopped_by_caller: bool,
}

impl Run {
    fn piece(&mut self, text: String) -> StreamEvent {
        self.first_token.get_or_insert_with(Instant::now);
        self.pieces += 1;
        self.text.push_str(&text);
        StreamEvent::Text(text)
    }

    /// A streamed piece of a tool call: kept in `calls` (a call the server gave no id gets
    /// `call_<index>`) and passed on.
    fn call_piece(&mut self, mut event: StreamEvent) -> StreamEvent {
        match &mut event {
            StreamEvent::Text(text) => return self.piece(std::mem::take(text)),
            StreamEvent::CallStart { index, id, name } => {
                if id.is_empty() {
                    *id = format!("call_{index}");
                }
                let call = self.call_at(*index);
                call.id = id.clone();
                call.name = name.clone();
            }
            StreamEvent::CallArguments { index, fragment } => {
                self.call_at(*index).arguments.push_str(fragment)
            }
        }
        self.first_token.get_or_insert_with(Instant::now);
        self.pieces += 1;
        event
    }

    /// The call at `index`, made (with the calls before it) when it is new. A server numbers
    /// its calls 0, 1, ...; an index far beyond the calls so far is treated as the next one.
    fn call_at(&mut self, index: usize) -> &mut ToolCall {
        let at = index.min(self.calls.len());
        if at == self.calls.len() {
            self.calls.push(ToolCall {
                id: format!("call_{index}"),
                name: String::new(),
                arguments: String::new(),
            });
        }
        &mut self.calls[at]
    }

    fn stats(&self, prompt_tokens: usize, generated: usize) -> GenerationStats {
        let total = self.started.elapsed();
        let ttft = self.first_token.map(|t| t - self.started).unwrap_or(total);
        let decode = total.saturating_sub(ttft).as_secs_f64();
        GenerationStats {
            prompt_tokens,
            cached_tokens: 0,
            generated_tokens: generated,
            time_to_first_token: ttft,
            total_time: total,
            prefill_tokens_per_second: 0.0,
            decode_tokens_per_second: if decode > 0.0 && generated > 1 {
                (generated - 1) as f64 / decode
            } else {
                0.0
            },
        }
    }

    /// A result built here (the server sent no final result): the text received so far.
    fn local_result(
        &self,
        finish: FinishReason,
        error: Option<Error>,
        validation: Vec<ConstraintReport>,
        stats: GenerationStats,
        opts: &GenerateOptions,
        model: &str,
    ) -> GenerationResult {
        let seed = opts.sampling.seed.unwrap_or_default();
        let tool_call_checks = match finish {
            FinishReason::Stop | FinishReason::ToolCalls => Vec::new(),
            other => {
                let why =
                    format!("the call was cut short ({}) before the reply was complete", other.as_str());
                self.calls
                    .iter()
                    .enumerate()
                    .map(|(index, c)| ToolCallCheck {
                        index,
                        name: c.name.clone(),
                        satisfied: false,
                        reason: Some(why.clone()),
                    })
                    .collect()
            }
        };
        GenerationResult {
            tool_calls: self.calls.clone(),
            tool_call_checks,
            text: self.text.clone(),
            tokens: Vec::new(),
            logprobs: None,
            finish_reason: finish,
            stats,
            error,
            validation,
            constraint_stats: None,
            provenance: Provenance {
                model: model.to_string(),
                architecture: "remote".into(),
                created_unix_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or_default(),
                constraints: AppliedConstraint::list(&opts.constraints),
                sampling: opts.sampling.clone(),
                seed,
                max_tokens: opts.max_tokens,
                stop: opts.stop.clone(),
            },
        }
    }

    /// Constraint reports for text that stopped before the end: no constraint vouches for it.
    fn cut_reports(opts: &GenerateOptions, why: &str) -> Vec<ConstraintReport> {
        opts.constraints.iter().map(|c| ConstraintReport::unproven(c, why)).collect()
    }

    fn interrupted(&self, why: Interrupt, opts: &GenerateOptions, model: &str) -> GenerationResult {
        let (finish, reason) = match why {
            Interrupt::Cancelled if self.stopped_by_caller => (
                FinishReason::Cancelled,
                "the streaming callback stopped generation before the output was complete",
            ),
            Interrupt::Cancelled => (FinishReason::Cancelled, "cancelled before the output was complete"),
            Interrupt::Timeout => {
                (FinishReason::Timeout, "the timeout passed before the output was complete")
            }
        };
        self.local_result(
            finish,
            None,
            Self::cut_reports(opts, reason),
            self.stats(0, self.pieces),
            opts,
            model,
        )
    }

    fn failed(&self, message: String, opts: &GenerateOptions, model: &str) -> Result<GenerationResult> {
        if self.pieces == 0 {
            return Err(Error::new(ErrorKind::Backend, message));
        }
        let reports = Self::cut_reports(opts, "the connection failed before the output was complete");
        Ok(self.local_result(
            FinishReason::Error,
            Some(Error::new(ErrorKind::Backend, message)),
            reports,
            self.stats(0, self.pieces),
            opts,
            model,
        ))
    }
}
