//! maze-server: serves a local model over HTTP (Maze protocol and OpenAI-compatible API).
//!
//!   maze-server --model MODEL.gguf [--addr 127.0.0.1:8080] [--api-key KEY]
//!               [--max-concurrent 16] [--max-body-bytes 4194304] [--threads 0] [--context 0]
//!               [--stop-on-stdin-eof]
//!
//! It stops on SIGINT or SIGTERM, or (with --stop-on-stdin-eof) when its standard input closes,
//! so a supervising process that dies takes it along.
//! The API key may also come from MAZE_SERVER_API_KEY. The first line on stdout is
//! "maze-server listening on http://ADDR" once requests are accepted.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use maze::server::{self, ServerConfig};
use maze::{Engine, EngineConfig};

const USAGE: &str = "usage: maze-server --model MODEL.gguf [--addr HOST:PORT] [--api-key KEY] [--max-concurrent N] [--max-body-bytes N] [--threads N] [--context N] [--stop-on-stdin-eof]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("maze-server: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut engine_config = EngineConfig::default();
    let mut config = ServerConfig {
        api_key: std::env::var("MAZE_SERVER_API_KEY").ok().filter(|k| !k.is_empty()),
        ..ServerConfig::default()
    };
    let mut addr: SocketAddr = "127.0.0.1:8080".parse().expect("valid address");
    let mut stop_on_stdin_eof = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            return Ok(());
        }
        if flag == "--stop-on-stdin-eof" {
            stop_on_stdin_eof = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = |v: &str| v.parse::<usize>().map_err(|_| format!("{flag}: '{v}' is not a number"));
        match flag.as_str() {
            "--model" => engine_config.model_path = value.into(),
            "--addr" => addr = value.parse().map_err(|e| format!("--addr '{value}': {e}"))?,
            "--api-key" => config.api_key = Some(value),
            "--max-concurrent" => config.max_concurrent = number(&value)?.max(1),
            "--max-body-bytes" => config.max_body_bytes = number(&value)?,
            "--threads" => engine_config.threads = number(&value)?,
            "--context" => engine_config.context_length = number(&value)?,
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    if engine_config.model_path.as_os_str().is_empty() {
        return Err(format!("--model is required\n{USAGE}"));
    }
    let engine = Engine::load(&engine_config, None)
        .map_err(|e| format!("loading {}: {e}", engine_config.model_path.display()))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // `engine` stays owned here, outside the runtime: the engine's own runtime must not be
    // dropped from inside an async context.
    let served = engine.clone();
    runtime.block_on(async move {
        let listener = server::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        println!("maze-server listening on http://{local} (model {})", served.info().name);
        let _ = std::io::stdout().flush();
        server::serve(served, config, listener, shutdown_signal(stop_on_stdin_eof))
            .await
            .map_err(|e| e.to_string())
    })?;
    // A thread blocked reading stdin must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    drop(engine);
    Ok(())
}

async fn shutdown_signal(stop_on_stdin_eof: bool) {
    let stdin_closed = async move {
        if !stop_on_stdin_eof {
            return std::future::pending().await;
        }
        let _ =
            tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink()))
                .await;
    };
    tokio::select! {
        _ = signals() => {}
        _ = stdin_closed => {}
    }
}

async fn signals() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return interrupt.await.unwrap_or(()),
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    interrupt.await.unwrap_or(());
}
