//! maze-server: serves a local model over HTTP (Maze protocol and OpenAI-compatible API).
//! `maze-server --help` lists the flags and the environment variables that stand in for them.
//!
//! It stops on SIGINT or SIGTERM, or (with --stop-on-stdin-eof) when its standard input closes,
//! so a supervising process that dies takes it along. The first line on stdout is
//! "maze-server listening on http://ADDR" once requests are accepted.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use maze::server::{self, ModelSpec, Models, ServerConfig};
use maze::EngineConfig;

/// Serves local GGUF models over HTTP: the Maze protocol (/maze/v1/*), the OpenAI-compatible
/// API (/v1/chat/completions, /v1/completions, /v1/models), llama-server's /tokenize and
/// /detokenize, /health and /metrics.
#[derive(Parser)]
#[command(name = "maze-server", version)]
struct Args {
    /// A GGUF model to serve, as NAME=PATH or PATH (named by the file's general.name, else its
    /// stem). Repeat it to serve several: a request's `model` field picks one by name, the first
    /// is the default. The first is loaded at start-up, the others on first use.
    #[arg(long, env = "MAZE_MODEL", value_name = "[NAME=]MODEL.gguf", required = true)]
    model: Vec<String>,
    /// Models kept loaded at once (at least 1): when one more loads, the least recently used
    /// model that no request is using is unloaded (models in use stay, and go when done).
    #[arg(long, value_name = "N", default_value_t = server::DEFAULT_MAX_LOADED)]
    max_loaded_models: usize,
    /// Let browser pages from ORIGIN (e.g. http://localhost:3000) call the server: preflight
    /// requests are answered and responses carry Access-Control-Allow-Origin. Repeatable; `*`
    /// allows any origin. Without it, no CORS headers.
    #[arg(long, value_name = "ORIGIN")]
    cors_origin: Vec<String>,
    /// How tool calls are written: `template` (the chat template's own syntax; requests with
    /// tools are refused when it has none), or hermes, llama3, mistral, or generic (the tools
    /// described in a system message, for templates without tool support).
    #[arg(long, value_name = "FORMAT", default_value = "template", value_parser = parse_tool_format)]
    tool_format: ToolFormatArg,
    /// Address to listen on; port 0 takes a free port (the first line on stdout names it).
    #[arg(long, env = "MAZE_ADDR", value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Requests must carry `Authorization: Bearer KEY` (health checks excepted).
    #[arg(long, env = "MAZE_SERVER_API_KEY", value_name = "KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Generations running at once (at least 1); more are refused with 429.
    #[arg(long, value_name = "N", default_value_t = ServerConfig::default().max_concurrent)]
    max_concurrent: usize,
    /// Larger request bodies are refused with 413.
    #[arg(long, value_name = "N", default_value_t = ServerConfig::default().max_body_bytes)]
    max_body_bytes: usize,
    /// Seconds a request's headers, and then its body, may take to arrive: a late body is
    /// refused with 408, a connection with late headers (or idle that long) is closed.
    #[arg(long, value_name = "N", default_value_t = ServerConfig::default().read_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    read_timeout_secs: u64,
    /// Compute threads; 0 = one per available core.
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
    /// Context length served per session; 0 = the model's, capped at 8192.
    #[arg(long, value_name = "N", default_value_t = 0)]
    context: usize,
    /// A Jinja chat template file replacing the model's own (as llama-server's
    /// --chat-template-file).
    #[arg(long, env = "MAZE_CHAT_TEMPLATE_FILE", value_name = "FILE.jinja")]
    chat_template_file: Option<PathBuf>,
    /// Build the constraint machinery (token trie, parser factory: 0.1-1 s) in the first
    /// request with a schema or grammar instead of at start-up.
    #[arg(long)]
    lazy_constraints: bool,
    /// Stop when standard input closes (for a supervising process).
    #[arg(long)]
    stop_on_stdin_eof: bool,
}

/// `--tool-format`: `None` for the template's own.
#[derive(Clone)]
struct ToolFormatArg(Option<maze::ToolFormat>);

fn parse_tool_format(name: &str) -> Result<ToolFormatArg, String> {
    match name {
        "template" => Ok(ToolFormatArg(None)),
        other => maze::ToolFormat::parse(other)
            .map(|f| ToolFormatArg(Some(f)))
            .map_err(|e| e.message().to_string()),
    }
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("maze-server: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let chat_template = match &args.chat_template_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the chat template '{}': {e}", path.display()))?,
        ),
        None => None,
    };
    if chat_template.is_some() && args.model.len() > 1 {
        return Err("--chat-template-file is for one model; it cannot be given with several --model".into());
    }
    let engine_config = EngineConfig {
        threads: args.threads,
        context_length: args.context,
        chat_template,
        prepare_constraints: !args.lazy_constraints,
        ..EngineConfig::default()
    };
    let specs =
        args.model.iter().map(|arg| ModelSpec::parse(arg, &engine_config)).collect::<Result<_, _>>()?;
    let models = std::sync::Arc::new(Models::new(specs, args.max_loaded_models)?);
    let config = ServerConfig {
        api_key: args.api_key,
        max_body_bytes: args.max_body_bytes,
        max_concurrent: args.max_concurrent.max(1),
        read_timeout: std::time::Duration::from_secs(args.read_timeout_secs),
        cors_origins: args.cors_origin,
        tool_format: args.tool_format.0,
    };
    models.load_default().map_err(|e| format!("loading {}: {e}", args.model[0]))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // `models` (and the engines it holds) stays owned here, outside the runtime: an engine's own
    // runtime must not be dropped from inside an async context.
    let served = models.clone();
    let addr = args.addr;
    let stop_on_stdin_eof = args.stop_on_stdin_eof;
    runtime.block_on(async move {
        let listener = server::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        println!("maze-server listening on http://{local} (model {})", served.default_name());
        let _ = std::io::stdout().flush();
        server::serve(served, config, listener, shutdown_signal(stop_on_stdin_eof))
            .await
            .map_err(|e| e.to_string())
    })?;
    // A thread blocked reading stdin must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    drop(models);
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
