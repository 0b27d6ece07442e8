//! maze-server: a local engine over HTTP. Speaks the Maze protocol (`/maze/v1/*`, see
//! docs/PROTOCOL.md) and the OpenAI-compatible API (`/v1/chat/completions` with
//! `response_format` json_schema and streaming, `/v1/completions`, `/v1/models`), plus
//! `/health` and Prometheus `/metrics`. Optional API key, request size, read timeout and
//! concurrency limits; every error the routes give is JSON with an HTTP status.
//!
//! llama-server's `/tokenize` and `/detokenize` too, and CORS for browsers (`--cors-origin`).
//!
//! One process serves one model or several (see [`Models`]): the request's `model` picks one,
//! loaded on first use. Each request runs on a fresh session of its model's engine, whose worker
//! batches concurrent requests. A client that disconnects (or shuts its sending side) cancels
//! its generation.

mod http;
mod metrics;
mod models;
mod openai;
mod tokens;

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

use crate::protocol::{maze as proto, openai as oai};
pub use metrics::Metrics;
pub use models::{ModelSpec, Models, DEFAULT_MAX_LOADED};

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
    /// Origins whose browser pages may call the server (`*`: any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// The syntax tool calls are written in; `None`: each model's chat template's own.
    pub tool_format: Option<crate::tools::ToolFormat>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            max_body_bytes: 4 << 20,
            max_concurrent: 16,
            read_timeout: Duration::from_secs(30),
            cors_origins: Vec::new(),
            tool_format: None,
        }
    }
}

pub(crate) struct AppState {
    models: Arc<Models>,
    config: ServerConfig,
    slots: Arc<Semaphore>,
    metrics: Metrics,
}

/// The routes of the server, for [`serve`] (which adds the header and idle timeouts) or tests.
/// (One engine already loaded: `Arc::new(Models::single(engine))`.)
pub fn router(models: Arc<Models>, config: ServerConfig) -> Router {
    let state = Arc::new(AppState {
        slots: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
        metrics: Metrics::default(),
        models,
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
        .route(tokens::TOKENIZE_PATH, post(tokens::tokenize))
        .route(tokens::DETOKENIZE_PATH, post(tokens::detokenize))
        .route("/metrics", get(metrics_text))
        .fallback(http::not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), http::authorize_and_count))
        // Outside the key check: a browser's preflight carries no key.
        .layer(axum::middleware::from_fn_with_state(state.clone(), http::cors))
        .with_state(state)
}

/// Serves until `shutdown` completes; requests in flight are allowed to finish.
///
/// Its own accept loop rather than `axum::serve`, which gives hyper no timer: without one a
/// client that never finishes its headers, or an idle keep-alive connection, is kept forever.
///
/// The engines in `models` are dropped wherever the last reference to it goes: keep one outside
/// the runtime (an engine's own runtime must not be dropped on an async thread).
pub async fn serve(
    models: Arc<Models>,
    config: ServerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let read_timeout = config.read_timeout;
    let app = router(models, config);
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
        model: state.models.default_name().to_string(),
        version: crate::VERSION.into(),
    })
}

async fn maze_models(State(state): State<Arc<AppState>>) -> axum::Json<proto::Models> {
    let models = state.models.list().into_iter().map(|m| proto::ModelEntry {
        architecture: m.info.as_ref().map(|i| i.architecture.clone()).unwrap_or_default(),
        context_length: m.info.as_ref().map_or(0, |i| i.context_length),
        vocab_size: m.info.as_ref().map_or(0, |i| i.vocab_size),
        name: m.name,
        loaded: m.loaded,
    });
    axum::Json(proto::Models { models: models.collect() })
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> String {
    let mut text = state.metrics.render(state.slots.available_permits(), state.config.max_concurrent);
    metrics::render_models(&mut text, &state.models.load_counts());
    text
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

    use crate::engine::Engine;

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
        start_with(ServerConfig::default())
    }

    /// A server on a tiny model with `config`, but 1 KiB bodies and a 1 s read timeout.
    fn start_with(config: ServerConfig) -> Running {
        let engine = tiny_engine();
        let models = Arc::new(Models::single(engine.clone()));
        serve_models(models, config, engine)
    }

    fn serve_models(models: Arc<Models>, config: ServerConfig, engine: Engine) -> Running {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let config = ServerConfig { max_body_bytes: LIMIT, read_timeout: TIMEOUT, ..config };
        let listener = runtime.block_on(bind("127.0.0.1:0".parse().unwrap())).unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(serve(models, config, listener, std::future::pending()));
        Running { addr, _runtime: runtime, _engine: engine }
    }

    /// One request on a fresh connection: (status, lower-cased head, body).
    fn call(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &str) -> (u16, String, String) {
        let data = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (status, reply, _) = exchange_full(addr, data.as_bytes());
        let (head, body) = reply.split_once("\r\n\r\n").unwrap_or_default();
        (status, head.to_ascii_lowercase(), body.to_string())
    }

    fn json(body: &str) -> serde_json::Value {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    /// Sends `data`, then reads until the server closes: (status, body, seconds waited).
    fn exchange(addr: SocketAddr, data: &[u8]) -> (u16, String, f64) {
        let (status, reply, waited) = exchange_full(addr, data);
        let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body, waited)
    }

    /// Sends `data`, then reads until the server closes: (status, whole reply, seconds waited).
    fn exchange_full(addr: SocketAddr, data: &[u8]) -> (u16, String, f64) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(data).unwrap();
        let started = Instant::now();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        let reply = String::from_utf8_lossy(&reply).into_owned();
        let status = reply.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, reply, started.elapsed().as_secs_f64())
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

    #[test]
    fn tokenize_and_detokenize_round_trip_as_the_engine_does() {
        let server = start();
        let engine = &server._engine;
        let text = "hello world <|im_end|>";
        let (status, _, body) =
            call(server.addr, "POST", "/tokenize", "", &format!(r#"{{"content": "{text}"}}"#));
        assert_eq!(status, 200, "{body}");
        let ids: Vec<u32> = serde_json::from_value(json(&body)["tokens"].clone()).unwrap();
        // llama-server's defaults: no BOS/EOS added, special-token text parsed.
        assert_eq!(ids, engine.tokenize(text, false, true).unwrap());
        let (_, _, body) = call(
            server.addr,
            "POST",
            "/tokenize",
            "",
            &format!(r#"{{"content": "{text}", "add_special": true, "parse_special": false}}"#),
        );
        assert_eq!(json(&body)["tokens"], serde_json::json!(engine.tokenize(text, true, false).unwrap()));

        // With pieces: each token's own bytes, a string when they are UTF-8.
        let (status, _, body) =
            call(server.addr, "POST", "/tokenize", "", r#"{"content": "h\u00e9 ok", "with_pieces": true}"#);
        assert_eq!(status, 200, "{body}");
        let mut bytes = Vec::new();
        for token in json(&body)["tokens"].as_array().unwrap() {
            assert!(token["id"].is_u64(), "{token}");
            match &token["piece"] {
                serde_json::Value::String(s) => bytes.extend_from_slice(s.as_bytes()),
                serde_json::Value::Array(list) => {
                    bytes.extend(list.iter().map(|b| b.as_u64().unwrap() as u8))
                }
                other => panic!("piece {other}"),
            }
        }
        assert_eq!(String::from_utf8(bytes).unwrap(), "hé ok");

        let request = serde_json::json!({"tokens": ids}).to_string();
        let (status, _, body) = call(server.addr, "POST", "/detokenize", "", &request);
        assert_eq!(status, 200, "{body}");
        assert_eq!(json(&body)["content"], text);

        // Bad input: JSON errors with a 400 naming the problem.
        for (path, body, needle) in [
            ("/tokenize", "not json", "request body is not valid"),
            ("/tokenize", r#"{"content": 5}"#, "at content: invalid type"),
            ("/tokenize", r#"{"text": "x"}"#, "unknown field `text`"),
            ("/tokenize", r#"{"content": "x", "model": "other"}"#, "model 'other' is not served here"),
            ("/detokenize", r#"{"tokens": [1, "a"]}"#, "at tokens[1]"),
            ("/detokenize", r#"{"tokens": [-1]}"#, "at tokens[0]"),
            (
                "/detokenize",
                r#"{"tokens": [4000000000]}"#,
                "token id 4000000000 at position 0 is out of range",
            ),
        ] {
            let (status, _, reply) = call(server.addr, "POST", path, "", body);
            let expected = if needle.contains("not served") { 404 } else { 400 };
            assert_eq!(status, expected, "{path} {body}: {reply}");
            assert!(message(&reply).contains(needle), "{path} {body}: {reply}");
        }
        let (status, _, reply) = call(server.addr, "GET", "/tokenize", "", "");
        assert_eq!(status, 405, "{reply}");
    }

    #[test]
    fn cors_answers_preflights_before_the_key_check_for_allowed_origins_only() {
        let config = ServerConfig {
            api_key: Some("k".into()),
            cors_origins: vec!["http://app.example".into()],
            ..ServerConfig::default()
        };
        let server = start_with(config);
        let preflight = |origin: &str| {
            let headers = format!(
                "Origin: {origin}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type\r\n"
            );
            call(server.addr, "OPTIONS", "/v1/chat/completions", &headers, "")
        };
        let (status, head, body) = preflight("http://app.example");
        assert_eq!(status, 204, "{head}{body}");
        assert!(head.contains("access-control-allow-origin: http://app.example"), "{head}");
        assert!(head.contains("access-control-allow-methods: get, post, options"), "{head}");
        assert!(head.contains("access-control-allow-headers: authorization, content-type"), "{head}");
        assert!(head.contains("vary: origin"), "{head}");

        // Another origin gets what it would without CORS: the key check's 401, no allow header.
        let (status, head, _) = preflight("http://evil.example");
        assert_eq!(status, 401, "{head}");
        assert!(!head.contains("access-control-allow-origin"), "{head}");

        // Actual requests from the origin are readable by it, errors included.
        let origin = "Origin: http://app.example\r\n";
        let (status, head, _) = call(server.addr, "POST", "/tokenize", origin, r#"{"content": "x"}"#);
        assert_eq!(status, 401);
        assert!(head.contains("access-control-allow-origin: http://app.example"), "{head}");
        let authorized = format!("{origin}Authorization: Bearer k\r\n");
        let (status, head, _) = call(server.addr, "POST", "/tokenize", &authorized, r#"{"content": "x"}"#);
        assert_eq!(status, 200);
        assert!(head.contains("access-control-allow-origin: http://app.example"), "{head}");

        // `*` allows every origin; no flag, no CORS headers.
        let any = start_with(ServerConfig { cors_origins: vec!["*".into()], ..ServerConfig::default() });
        let (status, head, _) = call(any.addr, "GET", "/health", "Origin: http://x.example\r\n", "");
        assert_eq!(status, 200);
        assert!(head.contains("access-control-allow-origin: *"), "{head}");
        let plain = start();
        let headers = "Origin: http://app.example\r\nAccess-Control-Request-Method: POST\r\n";
        let (status, head, _) = call(plain.addr, "OPTIONS", "/v1/chat/completions", headers, "");
        assert_eq!(status, 405, "{head}");
        assert!(!head.contains("access-control"), "{head}");
    }

    #[test]
    fn several_models_are_served_by_name_and_loaded_on_first_use() {
        let files = models::tests::TinyFiles::new(2);
        let models = Arc::new(Models::new(files.specs(&["first", "second"]), 1).unwrap());
        models.load_default().unwrap();
        let server = serve_models(models.clone(), ServerConfig::default(), tiny_engine());
        let listed = |path: &str| json(&call(server.addr, "GET", path, "", "").2);
        let openai = listed("/v1/models");
        let ids: Vec<_> = openai["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["id"].clone(), m["loaded"].clone()))
            .collect();
        assert_eq!(
            ids,
            [(serde_json::json!("first"), serde_json::json!(true)), ("second".into(), false.into())]
        );

        let chat = |model: &str| {
            let body = format!(
                r#"{{"model": "{model}", "messages": [{{"role": "user", "content": "hi"}}], "max_tokens": 2}}"#
            );
            call(server.addr, "POST", "/v1/chat/completions", "", &body)
        };
        let (status, _, body) = chat("second");
        assert_eq!(status, 200, "{body}");
        assert_eq!(json(&body)["model"], "second");
        // One model may stay loaded: the first went when the second came.
        let maze = listed("/maze/v1/models");
        let loaded: Vec<_> =
            maze["models"].as_array().unwrap().iter().map(|m| m["loaded"].as_bool().unwrap()).collect();
        assert_eq!(loaded, [false, true]);
        assert!(maze["models"][0]["vocab_size"].as_u64().unwrap() > 0, "known once loaded: {maze}");

        // The Maze protocol picks by `model` too; no model means the default.
        let (status, _, body) = call(
            server.addr,
            "POST",
            "/maze/v1/generate",
            "",
            r#"{"model": "second", "prompt": "a", "max_tokens": 1}"#,
        );
        assert_eq!(status, 200, "{body}");
        let (status, _, body) =
            call(server.addr, "POST", "/v1/completions", "", r#"{"prompt": "a", "max_tokens": 1}"#);
        assert_eq!((status, json(&body)["model"].as_str()), (200, Some("first")), "{body}");

        let (status, _, body) = chat("third");
        assert_eq!(status, 404, "{body}");
        let error = &json(&body)["error"];
        assert_eq!(
            (error["code"].as_str(), error["param"].as_str()),
            (Some("model_not_found"), Some("model"))
        );
        assert!(message(&body).contains("serves 'first', 'second'"), "{body}");
        let metrics = call(server.addr, "GET", "/metrics", "", "").2;
        assert!(metrics.contains("maze_model_loads_total{model=\"first\"} 2"), "{metrics}");
        assert!(metrics.contains("maze_model_loaded{model=\"second\"} 0"), "{metrics}");
    }
}
