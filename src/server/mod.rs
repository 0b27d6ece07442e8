//! maze-server: a local engine over HTTP. Speaks the Maze protocol (`/maze/v1/*`, see
//! docs/PROTOCOL.md) and the OpenAI-compatible API (`/v1/chat/completions` with
//! `response_format` json_schema and streaming, `/v1/completions`, `/v1/models`), plus
//! `/health` and Prometheus `/metrics`. Optional API key, request size, read timeout and
//! concurrency limits; every error the routes give is JSON with an HTTP status.
//!
//! Each request runs on a fresh session of the one engine, whose worker batches concurrent
//! requests. A client that disconnects (or shuts its sending side) cancels its generation.

mod http;
mod metrics;
mod openai;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;

use crate::engine::Engine;
use crate::protocol::{maze as proto, openai as oai};
pub use metrics::Metrics;

/// How the server behaves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Requests must carry `Authorization: Bearer KEY` (health checks excepted).
    pub api_key: Option<String>,
    /// Larger request bodies are refused with 413 (a declared length before any of it is read).
    pub max_body_bytes: usize,
    /// Generations running at once; more are refused with 429 and `Retry-After`.
    pub max_concurrent: usize,
    /// A request's headers, and then its body, must arrive within this long: a body that does
    /// not is refused with 408; a connection whose headers do not (an idle keep-alive one
    /// included) is closed.
    pub read_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            max_body_bytes: 4 << 20,
            max_concurrent: 16,
            read_timeout: Duration::from_secs(30),
        }
    }
}

pub(crate) struct AppState {
    engine: Engine,
    config: ServerConfig,
    slots: Arc<Semaphore>,
    metrics: Metrics,
}

/// The routes of the server, for [`serve`] (which adds the header and idle timeouts) or tests.
pub fn router(engine: Engine, config: ServerConfig) -> Router {
    let state = Arc::new(AppState {
        slots: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
        metrics: Metrics::default(),
        engine,
        config,
    });
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
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), http::authorize_and_count))
        .with_state(state)
}

/// Serves until `shutdown` completes; requests in flight are allowed to finish.
///
/// Its own accept loop rather than `axum::serve`, which gives hyper no timer: without one a
/// client that never finishes its headers, or an idle keep-alive connection, is kept forever.
pub async fn serve(
    engine: Engine,
    config: ServerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let read_timeout = config.read_timeout;
    let app = router(engine, config);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: wait for some to be freed, keep serving.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(read_timeout)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A connection's failure (reset, timed out, malformed head) concerns it alone.
            let _ = connection.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
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

#[cfg(all(test, feature = "testing"))]
pub(crate) mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

    use super::*;
    use crate::testing::TinyModel;
    use crate::EngineConfig;

    const LIMIT: usize = 1024;
    const TIMEOUT: Duration = Duration::from_secs(1);

    /// A server on a tiny model (1 KiB bodies, 1 s read timeout) on its own runtime.
    struct Running {
        addr: SocketAddr,
        _runtime: tokio::runtime::Runtime,
        _engine: Engine,
    }

    /// An engine on a tiny random model (byte-level vocabulary).
    pub(crate) fn tiny_engine() -> Engine {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("maze-server-tests-{}-{n}.gguf", std::process::id()));
        TinyModel::default().write(&path).unwrap();
        let engine =
            Engine::load(&EngineConfig { model_path: path.clone(), ..EngineConfig::default() }, None)
                .unwrap();
        let _ = std::fs::remove_file(&path);
        engine
    }

    fn start() -> Running {
        let engine = tiny_engine();
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let config = ServerConfig { max_body_bytes: LIMIT, read_timeout: TIMEOUT, ..ServerConfig::default() };
        let listener = runtime.block_on(bind("127.0.0.1:0".parse().unwrap())).unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(serve(engine.clone(), config, listener, std::future::pending()));
        Running { addr, _runtime: runtime, _engine: engine }
    }

    /// Sends `data`, then reads until the server closes: (status, body, seconds waited).
    fn exchange(addr: SocketAddr, data: &[u8]) -> (u16, String, f64) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(data).unwrap();
        let started = Instant::now();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        let reply = String::from_utf8_lossy(&reply).into_owned();
        let status = reply.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body, started.elapsed().as_secs_f64())
    }

    fn message(body: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        v["error"]["message"].as_str().unwrap().to_string()
    }

    fn post(length: usize, body: &str) -> Vec<u8> {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {length}\r\n\r\n{body}"
        )
        .into_bytes()
    }

    #[test]
    fn request_limits_are_json_errors() {
        let server = start();
        // A declared length over the limit is refused without waiting for the body.
        let (status, body, _) = exchange(server.addr, &post(1 << 30, "{"));
        assert_eq!(status, 413, "{body}");
        assert!(message(&body).contains("limit of 1024 bytes (--max-body-bytes)"), "{body}");

        // A body that stops coming is refused once the read timeout passes.
        let (status, body, waited) = exchange(server.addr, &post(100, "{\"messages\": "));
        assert_eq!(status, 408, "{body}");
        assert!(message(&body).contains("within 1 s (--read-timeout-secs)"), "{body}");
        assert!(waited < 5.0, "{waited}");

        // Headers that stop coming: the connection is closed, without a response.
        let (status, body, waited) = exchange(server.addr, b"GET /health HTTP/1.1\r\nHost: x\r\n");
        assert_eq!((status, body.as_str()), (0, ""));
        assert!((0.5..5.0).contains(&waited), "{waited}");

        // A known route asked with the wrong method.
        let (status, body, _) = exchange(
            server.addr,
            b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status, 405, "{body}");
        assert_eq!(message(&body), "method GET is not allowed on /v1/chat/completions");

        // Malformed JSON within the limits, and the server still answers.
        let (status, body, _) = exchange(server.addr, &post(1, "["));
        assert_eq!(status, 400, "{body}");
        assert!(message(&body).contains("request body is not valid"), "{body}");
        let (status, body, _) =
            exchange(server.addr, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert_eq!(status, 200, "{body}");
    }
}
