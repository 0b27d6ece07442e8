//! maze-server: a local engine over HTTP. Speaks the Maze protocol (`/maze/v1/*`, see
//! docs/PROTOCOL.md) and the OpenAI-compatible API (`/v1/chat/completions` with
//! `response_format` json_schema and streaming, `/v1/completions`, `/v1/models`), plus
//! `/health` and Prometheus `/metrics`. Optional API key, request size and concurrency
//! limits; every error is JSON with an HTTP status.
//!
//! Each request runs on a fresh session of the one engine, whose worker batches concurrent
//! requests. A client that disconnects cancels its generation.

mod http;
mod metrics;
mod openai;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Semaphore;

use crate::engine::Engine;
use crate::protocol::{maze as proto, openai as oai};
pub use metrics::Metrics;

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Requests must carry `Authorization: Bearer KEY` (health checks excepted).
    pub api_key: Option<String>,
    /// Larger request bodies are refused with 413.
    pub max_body_bytes: usize,
    /// Generations running at once; more are refused with 429 and `Retry-After`.
    pub max_concurrent: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { api_key: None, max_body_bytes: 4 << 20, max_concurrent: 16 }
    }
}

pub(crate) struct AppState {
    engine: Engine,
    config: ServerConfig,
    slots: Arc<Semaphore>,
    metrics: Metrics,
}

/// The routes of the server, for `axum::serve` or tests.
pub fn router(engine: Engine, config: ServerConfig) -> Router {
    let state = Arc::new(AppState {
        slots: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
        metrics: Metrics::default(),
        engine,
        config,
    });
    let body_limit = state.config.max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route(proto::HEALTH_PATH, get(health))
        .route(proto::MODELS_PATH, get(maze_models))
        .route(proto::GENERATE_PATH, post(http::maze_generate))
        .route(oai::MODELS_PATH, get(openai::models))
        .route(oai::CHAT_PATH, post(openai::chat))
        .route(oai::COMPLETIONS_PATH, post(openai::completions))
        .route("/metrics", get(metrics_text))
        .fallback(http::not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), http::authorize_and_count))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Serves until `shutdown` completes; requests in flight are allowed to finish.
pub async fn serve(
    engine: Engine,
    config: ServerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(engine, config)).with_graceful_shutdown(shutdown).await
}

/// Binds `addr` (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

async fn health(State(state): State<Arc<AppState>>) -> axum::Json<proto::Health> {
    axum::Json(proto::Health {
        status: "ok".into(),
        model: state.engine.info().name.clone(),
        version: crate::VERSION.into(),
    })
}

async fn maze_models(State(state): State<Arc<AppState>>) -> axum::Json<proto::Models> {
    let info = state.engine.info();
    axum::Json(proto::Models {
        models: vec![proto::ModelEntry {
            name: info.name.clone(),
            architecture: info.architecture.clone(),
            context_length: info.context_length,
            vocab_size: info.vocab_size,
        }],
    })
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> String {
    state.metrics.render(state.slots.available_permits(), state.config.max_concurrent)
}
