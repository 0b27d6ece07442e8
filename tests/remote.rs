//! The remote backend against a real maze-server (the built binary, on loopback), and against
//! a small loopback server that misbehaves on purpose (500s, 429, hangs, garbage, a stream that
//! closes midway). Needs MAZE_MODEL (the Makefile sets it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use maze::backend::remote::{Protocol, RemoteConfig, RemoteEngine};
use maze::tools::{StreamEvent, Tool, ToolCall, ToolChoice, ToolFormat, ToolUse};
use maze::{
    ChatMessage, Constraint, ConstraintOutcome, Engine, EngineConfig, ErrorKind, FinishReason,
    GenerateOptions, Prompt, SamplingParams,
};
use serde_json::json;

fn model_path() -> String {
    std::env::var("MAZE_MODEL").expect("MAZE_MODEL must name the default model (make test sets it)")
}

/// A maze-server process, killed when dropped; one kept in a static (never dropped) stops when
/// this process ends and its stdin closes.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_maze-server"))
            .args(["--model", &model_path(), "--addr", "127.0.0.1:0", "--threads", "2"])
            .args(extra)
            .arg("--stop-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("maze-server starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in '{line}'"))
            .to_string();
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const KEY: &str = "test-key-123";

fn shared_server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| Server::start(&["--api-key", KEY, "--max-concurrent", "8"]))
}

fn local_engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        Engine::load(
            &EngineConfig { model_path: model_path().into(), threads: 1, ..Default::default() },
            None,
        )
        .unwrap()
    })
}

fn config(protocol: Protocol) -> RemoteConfig {
    let mut c = RemoteConfig::new(shared_server().url.clone(), protocol);
    c.api_key = Some(KEY.into());
    c.max_retries = 0;
    c
}

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions { max_tokens, sampling: SamplingParams::greedy(), ..Default::default() }
}

fn chat(text: &str) -> Prompt {
    Prompt::Chat(vec![ChatMessage::new("user", text)])
}

#[test]
fn maze_protocol_matches_local_generation() {
    let remote = RemoteEngine::connect(config(Protocol::Maze)).unwrap();
    remote.health().unwrap();
    assert_eq!(remote.models().unwrap(), vec![local_engine().info().name.clone()]);
    assert_eq!(remote.info().model, local_engine().info().name);

    let prompt = chat("What is the capital of France?");
    let local = local_engine().new_session().generate(&prompt, &greedy(24)).unwrap();
    let session = remote.new_session();
    let mut streamed = String::new();
    let r = session.generate_streaming(&prompt, &greedy(24), |t| {
        streamed.push_str(t);
        true
    });
    let r = r.unwrap();
    assert_eq!(r.text, local.text, "greedy output over HTTP equals the local one");
    assert_eq!(r.tokens, local.tokens);
    assert_eq!(streamed, r.text);
    assert_eq!(r.finish_reason, local.finish_reason);
    assert_eq!(r.stats.prompt_tokens, local.stats.prompt_tokens);
}

#[test]
fn maze_protocol_enforces_every_constraint_kind() {
    let remote = RemoteEngine::connect(config(Protocol::Maze)).unwrap();
    let session = remote.new_session();
    let schema = json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}}, "required": ["name", "age"], "additionalProperties": false});
    let opts = GenerateOptions { constraints: vec![Constraint::json_schema("person", schema)], ..greedy(80) };
    let r = session.generate(&chat("Describe a person as JSON."), &opts).unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.text).unwrap();
    assert!(v["name"].is_string() && v["age"].is_i64(), "{}", r.text);
    assert!(r.constraints_satisfied(), "{}", r.validation_json());
    assert!(r.constraint_stats.is_some_and(|s| s.masks_computed > 0));

    // Token masks travel too (the server knows its token ids).
    let tokenizer = local_engine().local().unwrap().tokenizer();
    let mut digits: Vec<u32> =
        (0..10).map(|d| tokenizer.encode(&d.to_string(), false, false).unwrap()[0]).collect();
    digits.push(2);
    let opts = GenerateOptions {
        constraints: vec![Constraint::token_mask("digits", digits.clone(), vec![])],
        ..greedy(6)
    };
    let r = session.generate(&chat("Write a word."), &opts).unwrap();
    assert!(!r.text.is_empty() && r.text.chars().all(|c| c.is_ascii_digit()), "{:?}", r.text);
    assert!(r.tokens.iter().all(|t| digits.contains(t)));

    let bad = GenerateOptions { constraints: vec![Constraint::regex("broken", "[0-9")], ..greedy(4) };
    let err = session.generate(&chat("x"), &bad).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidConstraint, "{err}");
    assert!(err.message().contains("broken") && err.message().contains("HTTP 400"), "{err}");
}

#[test]
fn openai_protocol_chat_completions_and_structured_outputs() {
    let remote = RemoteEngine::connect(config(Protocol::OpenAi)).unwrap();
    remote.health().unwrap();
    let session = remote.new_session();
    let prompt = chat("Name a fruit.");
    let local = local_engine().new_session().generate(&prompt, &greedy(16)).unwrap();
    let r = session.generate(&prompt, &greedy(16)).unwrap();
    assert_eq!(r.text, local.text);
    assert_eq!(r.stats.generated_tokens, local.stats.generated_tokens, "usage comes back");
    assert_eq!(r.finish_reason, local.finish_reason, "the maze extension gives the exact reason");

    // Completions (text prompt).
    let r = session.generate(&Prompt::Text("The sky is".into()), &greedy(5)).unwrap();
    assert_eq!(r.finish_reason, FinishReason::Length);
    assert!(!r.text.is_empty());

    // JSON schema → response_format; regex → structured_outputs.
    let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": false});
    let opts = GenerateOptions { constraints: vec![Constraint::json_schema("answer", schema)], ..greedy(20) };
    let r = session.generate(&chat("Is water wet? Answer as JSON."), &opts).unwrap();
    assert!(serde_json::from_str::<serde_json::Value>(&r.text).unwrap()["ok"].is_boolean(), "{}", r.text);
    assert!(r.constraints_satisfied() && r.validation[0].name == "answer", "{}", r.validation_json());
    let opts =
        GenerateOptions { constraints: vec![Constraint::regex("year", "(19|20)[0-9]{2}")], ..greedy(8) };
    let r = session.generate(&Prompt::Text("The year the war ended:".into()), &opts).unwrap();
    assert!(r.text.len() == 4 && r.text.chars().all(|c| c.is_ascii_digit()), "{:?}", r.text);

    // GBNF → llama-server's `grammar` field, enforced by the server.
    let yes_no = "root ::= (\"yes\" | \"no\") \".\" # an answer\n";
    for protocol in [Protocol::OpenAi, Protocol::Maze] {
        let session = RemoteEngine::connect(config(protocol)).unwrap().new_session();
        let opts = GenerateOptions { constraints: vec![Constraint::gbnf("answer", yes_no)], ..greedy(8) };
        let r = session.generate(&chat("Is water wet?"), &opts).unwrap();
        assert!(r.text == "yes." || r.text == "no.", "{protocol:?}: {:?}", r.text);
        assert!(r.constraints_satisfied(), "{protocol:?}: {}", r.validation_json());
    }
    // As a llama-server client sends it, and refused with its line and column.
    let body = |grammar: &str| {
        json!({"messages": [{"role": "user", "content": "Is water wet?"}], "max_tokens": 8, "temperature": 0, "grammar": grammar})
            .to_string()
    };
    let (status, text) = http(&shared_server().url, &post("/v1/chat/completions", KEY, &body(yes_no)));
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"content\":\"yes.\"") || text.contains("\"content\":\"no.\""), "{text}");
    let (status, text) =
        http(&shared_server().url, &post("/v1/chat/completions", KEY, &body("root ::= \"a\"\nx ::= y\n")));
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("GBNF line 2, column 7: undefined rule y"), "{text}");

    // What the OpenAI API cannot carry is refused, never dropped.
    for (constraints, needle) in [
        (vec![Constraint::token_mask("mask", vec![1, 2], vec![])], "token masks"),
        (vec![Constraint::regex("a", "a+"), Constraint::choice("b", ["b"])], "2 constraints"),
    ] {
        let err = session.generate(&chat("x"), &GenerateOptions { constraints, ..greedy(4) }).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.message().contains(needle), "{err}");
    }
}

#[test]
fn authentication_and_bad_endpoints_are_clear_errors() {
    let mut c = config(Protocol::OpenAi);
    c.api_key = Some("wrong".into());
    let err = RemoteEngine::connect(c).err().expect("a wrong key is refused");
    assert!(err.message().contains("HTTP 401") && err.message().contains("API key"), "{err}");

    let mut c = config(Protocol::OpenAi);
    c.model = Some("no-such-model".into());
    let err = RemoteEngine::connect(c).err().unwrap();
    assert!(err.message().contains("no-such-model"), "{err}");

    let err = RemoteEngine::connect(RemoteConfig::new("ftp://example", Protocol::Maze)).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);

    // Nothing listens on this port: a connect error, retried, then reported.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut c = RemoteConfig::new(format!("http://127.0.0.1:{port}"), Protocol::Maze);
    c.max_retries = 2;
    c.initial_backoff = Duration::from_millis(10);
    let err = RemoteEngine::connect(c).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Backend);
    assert!(err.message().contains("cannot reach") && err.message().contains("3 attempts"), "{err}");
}

#[test]
fn cancel_and_timeout_end_remote_generations_promptly() {
    let remote = RemoteEngine::connect(config(Protocol::Maze)).unwrap();
    let session = Arc::new(remote.new_session());
    let canceller = {
        let session = session.clone();
        thread::spawn(move || {
            while !session.is_busy() {
                thread::sleep(Duration::from_millis(5));
            }
            thread::sleep(Duration::from_millis(200));
            session.cancel();
        })
    };
    let started = Instant::now();
    let r = session.generate(&Prompt::Text("The history of Rome".into()), &greedy(2000)).unwrap();
    canceller.join().unwrap();
    assert_eq!(r.finish_reason, FinishReason::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());

    let opts = GenerateOptions { timeout: Some(Duration::from_millis(300)), ..greedy(2000) };
    let r = session.generate(&Prompt::Text("The history of Rome".into()), &opts).unwrap();
    assert_eq!(r.finish_reason, FinishReason::Timeout);
    assert!(r.stats.generated_tokens < 2000);

    // The server is fine afterwards.
    let r = session.generate(&Prompt::Text("Hello".into()), &greedy(3)).unwrap();
    assert_eq!(r.finish_reason, FinishReason::Length);
}

/// Raw HTTP to a server: (status, headers+body text).
#[test]
fn ignore_eos_crosses_both_protocols() {
    let prompt = chat("What is the capital of France? Answer in one word.");
    let short = local_engine().new_session().generate(&prompt, &greedy(40)).unwrap();
    assert_eq!(short.finish_reason, FinishReason::Stop, "the answer ends before 40 tokens: {short:?}");
    let opts = GenerateOptions { ignore_eos: true, ..greedy(40) };
    let local = local_engine().new_session().generate(&prompt, &opts).unwrap();
    assert_eq!((local.finish_reason, local.stats.generated_tokens), (FinishReason::Length, 40));
    for protocol in [Protocol::Maze, Protocol::OpenAi] {
        let r =
            RemoteEngine::connect(config(protocol)).unwrap().new_session().generate(&prompt, &opts).unwrap();
        assert_eq!((r.finish_reason, r.stats.generated_tokens), (FinishReason::Length, 40), "{protocol:?}");
        assert_eq!(r.text, local.text, "{protocol:?}");
    }
}

fn http(url: &str, request: &str) -> (u16, String) {
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(request.replace("HOST", addr).as_bytes()).unwrap();
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    let status = out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, out)
}

fn post(path: &str, key: &str, body: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: HOST\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}

#[test]
fn server_limits_errors_and_metrics() {
    let server = Server::start(&["--max-concurrent", "1", "--max-body-bytes", "2048"]);
    // Too large: 413, as JSON.
    let big = format!("{{\"prompt\": \"{}\"}}", "x".repeat(4096));
    let (status, text) = http(&server.url, &post("/maze/v1/generate", "", &big));
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("\"error\"") && text.contains("larger than"), "{text}");
    // Malformed and unknown: 400 / 404 with messages.
    let (status, text) = http(&server.url, &post("/maze/v1/generate", "", "{\"prompt\": 5}"));
    assert_eq!(status, 400, "{text}");
    let (status, text) =
        http(&server.url, &post("/maze/v1/generate", "", "{\"prompt\": \"a\", \"bogus\": 1}"));
    assert!(status == 400 && text.contains("bogus"), "{text}");
    let (status, _) = http(&server.url, "GET /nope HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 404);

    // One generation at a time: a second one meanwhile gets 429 with Retry-After.
    let busy = {
        let url = server.url.clone();
        thread::spawn(move || {
            http(&url, &post("/maze/v1/generate", "", "{\"prompt\": \"The history of Rome\", \"max_tokens\": 400, \"sampling\": {\"temperature\": 0}}"))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !http(&server.url, "GET /metrics HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n")
        .1
        .contains("maze_generations_running 1")
    {
        assert!(Instant::now() < deadline, "the long generation never started");
        thread::sleep(Duration::from_millis(10));
    }
    let (status, refused) =
        http(&server.url, &post("/v1/completions", "", "{\"prompt\": \"Hi\", \"max_tokens\": 1}"));
    assert_eq!(status, 429, "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 1") && refused.contains("limit of 1"),
        "{refused}"
    );
    assert_eq!(busy.join().unwrap().0, 200);

    let (status, metrics) =
        http(&server.url, "GET /metrics HTTP/1.1\r\nHost: HOST\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("maze_http_responses_total{route=\"/maze/v1/generate\",status=\"413\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("status=\"429\"") && metrics.contains("maze_generated_tokens_total"),
        "{metrics}"
    );
}

/// Fields the server does not implement are refused with 400 naming them, over both protocols;
/// the ones it accepts and ignores (or that ask for nothing) pass.
#[test]
fn unimplemented_and_unknown_request_fields_are_refused_by_name() {
    let url = &shared_server().url;
    let chat = |extra: &str| {
        let body = format!(
            "{{\"messages\": [{{\"role\": \"user\", \"content\": \"Hi\"}}], \"max_tokens\": 2, \"temperature\": 0{extra}}}"
        );
        http(url, &post("/v1/chat/completions", KEY, &body))
    };
    for (extra, named) in [
        (", \"logprobs\": true", "`logprobs`: true"),
        (", \"logprobs\": true, \"top_logprobs\": 2", "`top_logprobs`: 2"),
        (", \"n\": 2", "`n`: 2"),
        // The tiny model's template has no tool syntax (the server was not started with
        // --tool-format generic), and `required` needs tools.
        (", \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}]", "generic tool format"),
        (", \"tool_choice\": \"required\"", "tool_choice is required but no tools are declared"),
        (", \"reasoning_effort\": \"low\"", "`reasoning_effort`"),
        (", \"stream_options\": {\"include_usage\": true, \"extra\": 1}", "unknown field `extra`"),
    ] {
        let (status, text) = chat(extra);
        assert_eq!(status, 400, "{extra}: {text}");
        assert!(text.contains(named) && text.contains("invalid_request_error"), "{extra}: {text}");
    }
    let (status, text) = http(url, &post("/v1/completions", KEY, "{\"prompt\": \"Hi\", \"echo\": true}"));
    assert!(status == 400 && text.contains("`echo`: true"), "{text}");
    for fine in [
        ", \"logprobs\": false, \"n\": 1, \"user\": \"u-1\", \"tools\": null",
        ", \"service_tier\": \"auto\"",
    ] {
        let (status, text) = chat(fine);
        assert_eq!(status, 200, "{fine}: {text}");
    }

    // The Maze protocol: the nested sampling object, messages and constraints too.
    for (body, named) in [
        (
            "{\"prompt\": \"a\", \"sampling\": {\"temperature\": 0, \"top_kk\": 3}}",
            "at sampling.top_kk: unknown field `top_kk`",
        ),
        (
            "{\"messages\": [{\"role\": \"user\", \"content\": \"a\", \"name\": \"b\"}]}",
            "unknown field `name`",
        ),
        (
            "{\"prompt\": \"a\", \"constraints\": [{\"regex\": [\"a\"], \"priorty\": 1}]}",
            "unknown field `priorty`",
        ),
    ] {
        let (status, text) = http(url, &post("/maze/v1/generate", KEY, body));
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(named), "{body}: {text}");
    }
}

// ------------------------------------------------------------------------------ fault injection

#[derive(Clone, Copy)]
enum Fault {
    /// 500 to every generation request.
    Always500,
    /// 503 to the first two, then a good stream.
    TwoFailuresThenOk,
    /// 429 with Retry-After: 1 once, then a good stream.
    RateLimitedOnce,
    /// Accepts and never answers.
    Hang,
    /// Bytes that are not HTTP.
    Garbage,
    /// A good start, then the connection closes.
    CloseMidStream,
    /// An event stream whose events are not JSON.
    GarbageEvents,
}

/// A loopback server that answers the model list properly and generation requests with
/// `fault`; it counts generation requests and stops with the test process.
fn fault_server(fault: Fault) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(mut stream) = stream else { continue };
            let counter = counter.clone();
            thread::spawn(move || {
                let request = read_request(&mut stream);
                if request.starts_with("GET /v1/models") {
                    let body = r#"{"object":"list","data":[{"id":"fake","object":"model"}]}"#;
                    let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                    return;
                }
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let good = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\ndata: {\"choices\":[{\"index\":0,\"text\":\"Hello\",\"finish_reason\":null}]}\n\ndata: {\"choices\":[{\"index\":0,\"text\":\" world\",\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
                let status = |code: &str, extra: &str| {
                    format!("HTTP/1.1 {code}\r\nContent-Type: application/json\r\n{extra}Content-Length: 27\r\nConnection: close\r\n\r\n{{\"error\":{{\"message\":\"no\"}}}}")
                };
                let reply = match (fault, n) {
                    (Fault::Always500, _) => status("500 Internal Server Error", ""),
                    (Fault::TwoFailuresThenOk, 0 | 1) => status("503 Service Unavailable", ""),
                    (Fault::RateLimitedOnce, 0) => status("429 Too Many Requests", "Retry-After: 1\r\n"),
                    (Fault::TwoFailuresThenOk | Fault::RateLimitedOnce, _) => good.to_string(),
                    (Fault::Hang, _) => {
                        thread::sleep(Duration::from_secs(30));
                        return;
                    }
                    (Fault::Garbage, _) => "\x00\x01garbage that is not HTTP\r\n\r\n".to_string(),
                    (Fault::CloseMidStream, _) => "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\ndata: {\"choices\":[{\"index\":0,\"text\":\"Hello\",\"finish_reason\":null}]}\n\n".to_string(),
                    (Fault::GarbageEvents, _) => "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\ndata: {this is not json\n\n".to_string(),
                };
                let _ = stream.write_all(reply.as_bytes());
            });
        }
    });
    (url, count)
}

/// The head of a request (its body is read and dropped).
fn read_request(stream: &mut TcpStream) -> String {
    read_request_and_body(stream).0
}

fn read_request_and_body(stream: &mut TcpStream) -> (String, String) {
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        head.push_str(&line);
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    (head, String::from_utf8_lossy(&body).into_owned())
}

fn faulty(fault: Fault, retries: u32) -> (RemoteEngine, Arc<AtomicUsize>) {
    let (url, count) = fault_server(fault);
    let mut c = RemoteConfig::new(url, Protocol::OpenAi);
    c.max_retries = retries;
    c.initial_backoff = Duration::from_millis(20);
    c.request_timeout = Some(Duration::from_secs(5));
    (RemoteEngine::connect(c).unwrap(), count)
}

fn text_prompt() -> Prompt {
    Prompt::Text("Say hello".into())
}

#[test]
fn retries_then_a_clear_error_on_500() {
    let (remote, count) = faulty(Fault::Always500, 2);
    let err = remote.new_session().generate(&text_prompt(), &greedy(5)).unwrap_err();
    assert_eq!(count.load(Ordering::SeqCst), 3, "one try and two retries");
    assert_eq!(err.kind(), ErrorKind::Backend);
    assert!(err.message().contains("HTTP 500") && err.message().contains("after 2 retries"), "{err}");
}

#[test]
fn retries_recover_from_503() {
    let (remote, count) = faulty(Fault::TwoFailuresThenOk, 3);
    let r = remote.new_session().generate(&text_prompt(), &greedy(5)).unwrap();
    assert_eq!(r.text, "Hello world");
    assert_eq!(r.finish_reason, FinishReason::Stop);
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[test]
fn retry_after_is_honoured() {
    let (remote, count) = faulty(Fault::RateLimitedOnce, 1);
    let started = Instant::now();
    let r = remote.new_session().generate(&text_prompt(), &greedy(5)).unwrap();
    assert_eq!(r.text, "Hello world");
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert!(started.elapsed() >= Duration::from_millis(950), "waited only {:?}", started.elapsed());
}

#[test]
fn a_hanging_server_times_out() {
    let (remote, _) = faulty(Fault::Hang, 0);
    let started = Instant::now();
    let opts = GenerateOptions { timeout: Some(Duration::from_millis(400)), ..greedy(5) };
    let r = remote.new_session().generate(&text_prompt(), &opts).unwrap();
    assert_eq!(r.finish_reason, FinishReason::Timeout);
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    // A cancel ends the wait as well.
    let session = Arc::new(remote.new_session());
    let s = session.clone();
    let canceller = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        s.cancel();
    });
    let r = session.generate(&text_prompt(), &greedy(5)).unwrap();
    canceller.join().unwrap();
    assert_eq!(r.finish_reason, FinishReason::Cancelled);
}

#[test]
fn garbage_is_a_clear_error() {
    let (remote, _) = faulty(Fault::Garbage, 0);
    let err = remote.new_session().generate(&text_prompt(), &greedy(5)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Backend);
    assert!(err.message().contains("cannot reach"), "{err}");

    let (remote, _) = faulty(Fault::GarbageEvents, 0);
    let err = remote.new_session().generate(&text_prompt(), &greedy(5)).unwrap_err();
    assert!(err.message().contains("invalid chunk"), "{err}");
}

#[test]
fn a_stream_closed_midway_keeps_the_text() {
    let (remote, _) = faulty(Fault::CloseMidStream, 0);
    let opts = GenerateOptions { constraints: vec![Constraint::regex("r", "[A-Za-z ]+")], ..greedy(5) };
    let r = remote.new_session().generate(&text_prompt(), &opts).unwrap();
    assert_eq!(r.finish_reason, FinishReason::Error);
    assert_eq!(r.text, "Hello");
    assert!(r.error.as_ref().is_some_and(|e| e.message().contains("closed the stream")), "{:?}", r.error);
    assert_eq!(r.validation[0].outcome, ConstraintOutcome::Violated);
}

#[test]
fn config_from_environment_variables() {
    let vars = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    };
    assert!(RemoteConfig::from_vars(vars(&[])).is_none());
    let c = RemoteConfig::from_vars(vars(&[
        ("MAZE_ENDPOINT", "http://h:1/v1"),
        ("MAZE_API_KEY", "k"),
        ("MAZE_MODEL", "m"),
        ("MAZE_PROTOCOL", "maze"),
        ("MAZE_RETRIES", "5"),
        ("MAZE_TIMEOUT_MS", "1500"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(
        (c.endpoint.as_str(), c.api_key.as_deref(), c.model.as_deref(), c.protocol, c.max_retries),
        ("http://h:1/v1", Some("k"), Some("m"), Protocol::Maze, 5)
    );
    assert_eq!(c.request_timeout, Some(Duration::from_millis(1500)));
    let err = RemoteConfig::from_vars(vars(&[("MAZE_ENDPOINT", "http://h"), ("MAZE_PROTOCOL", "grpc")]))
        .unwrap()
        .unwrap_err();
    assert!(err.message().contains("grpc"));
}

// ------------------------------------------------------------------------------ tool calls

fn weather_tools() -> Vec<Tool> {
    vec![Tool::new(
        "get_weather",
        "The current weather in a city",
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false}),
    )]
}

/// A loopback OpenAI server that lists model "fake" and answers every chat request with the
/// event stream made of `chunks` (each a `data:` line, then `[DONE]`); it keeps each request body.
fn scripted_server(chunks: Vec<serde_json::Value>) -> (RemoteEngine, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    let stream_body: String =
        chunks.iter().map(|c| format!("data: {c}\n\n")).chain(["data: [DONE]\n\n".to_string()]).collect();
    thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(mut stream) = stream else { continue };
            let (head, body) = read_request_and_body(&mut stream);
            if head.starts_with("GET /v1/models") {
                let body = r#"{"object":"list","data":[{"id":"fake","object":"model"}]}"#;
                let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                continue;
            }
            kept.lock().unwrap().push(serde_json::from_str(&body).unwrap_or(serde_json::Value::Null));
            let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n{stream_body}");
        }
    });
    let mut c = RemoteConfig::new(url, Protocol::OpenAi);
    c.max_retries = 0;
    c.request_timeout = Some(Duration::from_secs(5));
    (RemoteEngine::connect(c).unwrap(), bodies)
}

fn delta(d: serde_json::Value, finish: Option<&str>) -> serde_json::Value {
    json!({"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": d, "finish_reason": finish}]})
}

#[test]
fn openai_tools_are_forwarded_and_streamed_calls_parsed_back() {
    let (remote, bodies) = scripted_server(vec![
        delta(json!({"role": "assistant", "content": null}), None),
        delta(
            json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
            None,
        ),
        delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]}), None),
        delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}), None),
        // A second call, in one piece, of a tool the request did not declare.
        delta(
            json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "launch", "arguments": "{}"}}]}),
            None,
        ),
        delta(json!({}), Some("tool_calls")),
    ]);
    let earlier =
        ToolCall { id: "call_0".into(), name: "get_weather".into(), arguments: r#"{"city": "Oslo"}"#.into() };
    let prompt = Prompt::Chat(vec![
        ChatMessage::new("user", "Weather in Oslo?"),
        ChatMessage::assistant_calls("", vec![earlier]),
        ChatMessage::tool_result("call_0", "-3 C, snow"),
        ChatMessage::new("user", "And in Paris?"),
    ]);
    let opts = GenerateOptions { tools: Some(ToolUse::new(weather_tools())), ..greedy(64) };
    let (r, events) = generate_with_events(&remote, &prompt, &opts);

    // The request, shaped as the OpenAI API shapes it.
    let body = bodies.lock().unwrap()[0].clone();
    assert_eq!(
        body["tools"],
        json!([{"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city",
            "parameters": weather_tools()[0].parameters}}])
    );
    assert_eq!((&body["tool_choice"], &body["parallel_tool_calls"]), (&json!("auto"), &json!(true)));
    assert_eq!(
        body["messages"][1],
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_0", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]})
    );
    assert_eq!(
        body["messages"][2],
        json!({"role": "tool", "content": "-3 C, snow", "tool_call_id": "call_0"})
    );

    // The streamed pieces, reassembled.
    assert_eq!(r.finish_reason, FinishReason::ToolCalls);
    assert_eq!(r.text, "");
    assert_eq!(
        r.tool_calls,
        vec![
            ToolCall {
                id: "call_a".into(),
                name: "get_weather".into(),
                arguments: r#"{"city": "Paris"}"#.into()
            },
            ToolCall { id: "call_b".into(), name: "launch".into(), arguments: "{}".into() },
        ]
    );
    assert_eq!(
        events,
        vec![
            StreamEvent::CallStart { index: 0, id: "call_a".into(), name: "get_weather".into() },
            StreamEvent::CallArguments { index: 0, fragment: "{\"city\": ".into() },
            StreamEvent::CallArguments { index: 0, fragment: "\"Paris\"}".into() },
            StreamEvent::CallStart { index: 1, id: "call_b".into(), name: "launch".into() },
            StreamEvent::CallArguments { index: 1, fragment: "{}".into() },
        ]
    );
    // The server made them: Maze vouches for neither, and says what is wrong with the second.
    let checks = &r.tool_call_checks;
    assert_eq!(checks.len(), 2);
    assert!(checks.iter().all(|c| !c.satisfied) && !r.constraints_satisfied());
    let reason = |i: usize| checks[i].reason.clone().unwrap_or_default();
    assert!(reason(0).contains("Maze did not enforce its schema"), "{}", reason(0));
    assert!(
        reason(1).contains("'launch', which is not among the declared tools (get_weather)"),
        "{}",
        reason(1)
    );

    // A single call: parallel_tool_calls false; a named choice: OpenAI's object.
    let single = ToolUse { parallel: false, ..ToolUse::new(weather_tools()) };
    let r = remote
        .new_session()
        .generate(&prompt, &GenerateOptions { tools: Some(single), ..greedy(8) })
        .unwrap();
    assert_eq!(bodies.lock().unwrap()[1]["parallel_tool_calls"], json!(false));
    assert!(reason_of(&r, 1).contains("2 calls where one was allowed"), "{}", reason_of(&r, 1));
    let named = ToolUse::new(weather_tools()).with_choice(ToolChoice::Named("get_weather".into()));
    remote.new_session().generate(&prompt, &GenerateOptions { tools: Some(named), ..greedy(8) }).unwrap();
    assert_eq!(
        bodies.lock().unwrap()[2]["tool_choice"],
        json!({"type": "function", "function": {"name": "get_weather"}})
    );

    // What the OpenAI API cannot say is refused before anything is sent.
    let refuse = |prompt: &Prompt, tools: ToolUse| {
        remote
            .new_session()
            .generate(prompt, &GenerateOptions { tools: Some(tools), ..greedy(8) })
            .unwrap_err()
    };
    let err = refuse(&Prompt::Text("x".into()), ToolUse::new(weather_tools()));
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.message().contains("tools need a chat prompt"), "{err}");
    let err = refuse(&prompt, ToolUse::new(weather_tools()).with_format(ToolFormat::Generic));
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.message().contains("tool format 'generic'"), "{err}");
    let err = refuse(&prompt, ToolUse { max_calls: 3, ..ToolUse::new(weather_tools()) });
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.message().contains("max_calls 3"), "{err}");
    let err = refuse(&prompt, ToolUse::new(weather_tools()).with_choice(ToolChoice::Named("nope".into())));
    assert!(err.message().contains("names 'nope'"), "{err}");
    assert_eq!(bodies.lock().unwrap().len(), 3, "nothing refused reached the server");
}

/// The result and the events streamed on the way.
fn generate_with_events(
    remote: &RemoteEngine,
    prompt: &Prompt,
    opts: &GenerateOptions,
) -> (maze::GenerationResult, Vec<StreamEvent>) {
    let mut events = Vec::new();
    let r = remote.new_session().generate_events(prompt, opts, |e| {
        events.push(e.clone());
        true
    });
    (r.unwrap(), events)
}

fn reason_of(r: &maze::GenerationResult, i: usize) -> String {
    r.tool_call_checks.get(i).and_then(|c| c.reason.clone()).unwrap_or_default()
}

/// The reply's calls, without their ids (generated per request).
fn calls_of(r: &maze::GenerationResult) -> Vec<(String, String)> {
    r.tool_calls.iter().map(|c| (c.name.clone(), c.arguments.clone())).collect()
}

/// Each call of `r` names get_weather with a city string, and validation vouches for it.
fn assert_enforced_weather_calls(r: &maze::GenerationResult) {
    assert_eq!(r.finish_reason, FinishReason::ToolCalls, "{r:?}");
    assert!(!r.tool_calls.is_empty());
    for c in &r.tool_calls {
        let args: serde_json::Value = serde_json::from_str(&c.arguments).unwrap();
        assert!(c.name == "get_weather" && args["city"].is_string(), "{c:?}");
    }
    assert_eq!(r.tool_call_checks.len(), r.tool_calls.len());
    assert!(r.tool_call_checks.iter().all(|c| c.satisfied), "{:?}", r.tool_call_checks);
}

#[test]
fn maze_protocol_carries_tools_and_calls() {
    let remote = RemoteEngine::connect(config(Protocol::Maze)).unwrap();
    // The default model's template has no tool support: the generic format, carried by the protocol.
    let tools = ToolUse { parallel: false, ..ToolUse::new(weather_tools()) }
        .with_format(ToolFormat::Generic)
        .with_choice(ToolChoice::Required);
    let opts = GenerateOptions { tools: Some(tools), ..greedy(60) };
    let prompt = chat("What is the weather in Paris?");
    let local = local_engine().new_session().generate(&prompt, &opts).unwrap();
    let (r, events) = generate_with_events(&remote, &prompt, &opts);
    assert_enforced_weather_calls(&r);
    assert_eq!(calls_of(&r), calls_of(&local), "greedy calls over HTTP equal the local ones");
    // The streamed pieces put together are the calls.
    let mut streamed: Vec<(String, String)> = Vec::new();
    for e in &events {
        match e {
            StreamEvent::CallStart { name, .. } => streamed.push((name.clone(), String::new())),
            StreamEvent::CallArguments { index, fragment } => streamed[*index].1.push_str(fragment),
            StreamEvent::Text(_) => {}
        }
    }
    assert_eq!(streamed, calls_of(&r));
}

#[test]
fn openai_protocol_to_a_maze_server_reports_its_call_validation() {
    static SERVER: OnceLock<Server> = OnceLock::new();
    let server = SERVER.get_or_init(|| Server::start(&["--tool-format", "generic"]));
    let mut c = RemoteConfig::new(server.url.clone(), Protocol::OpenAi);
    c.max_retries = 0;
    let remote = RemoteEngine::connect(c).unwrap();
    let tools =
        ToolUse { parallel: false, ..ToolUse::new(weather_tools()) }.with_choice(ToolChoice::Required);
    let opts = GenerateOptions { tools: Some(tools), ..greedy(60) };
    let r = remote.new_session().generate(&chat("What is the weather in Paris?"), &opts).unwrap();
    // The maze extension carries the server's checks: enforced, so satisfied.
    assert_enforced_weather_calls(&r);
}

/// Against a real llama-server (scripts/remote-tools-llama-server.sh starts one with --jinja
/// on Qwen2.5-Coder-0.5B-Instruct and sets MAZE_LLAMA_SERVER_URL).
#[test]
#[ignore = "needs a llama-server: scripts/remote-tools-llama-server.sh"]
fn llama_server_tool_call() {
    let url = std::env::var("MAZE_LLAMA_SERVER_URL").expect("MAZE_LLAMA_SERVER_URL names a llama-server");
    let mut c = RemoteConfig::new(url, Protocol::OpenAi);
    c.request_timeout = Some(Duration::from_secs(300));
    let remote = RemoteEngine::connect(c).unwrap();
    for choice in [ToolChoice::Auto, ToolChoice::Required] {
        let tools = ToolUse::new(weather_tools()).with_choice(choice.clone());
        let opts = GenerateOptions { tools: Some(tools), ..greedy(128) };
        let (r, events) =
            generate_with_events(&remote, &chat("What is the weather in Paris right now?"), &opts);
        let pieces = events.iter().filter(|e| !matches!(e, StreamEvent::Text(_))).count();
        println!(
            "llama-server, tool_choice {choice:?}: finish {}, {} call pieces streamed, calls {:?}, checks {:?}, text {:?}",
            r.finish_reason.as_str(),
            pieces,
            r.tool_calls,
            r.tool_call_checks,
            r.text
        );
        if choice == ToolChoice::Auto {
            // The model decides; a 0.5B model may write the call as plain text, which
            // llama-server then returns as text (seen with Qwen2.5-Coder-0.5B): reported above.
            continue;
        }
        assert_eq!(r.finish_reason, FinishReason::ToolCalls, "{}", r.text);
        assert_eq!(r.tool_calls.len(), 1);
        let call = &r.tool_calls[0];
        let args: serde_json::Value = serde_json::from_str(&call.arguments).unwrap();
        assert_eq!(call.name, "get_weather");
        assert!(args["city"].as_str().is_some_and(|c| c.contains("Paris")), "{args}");
        assert!(!call.id.is_empty());
        let check = &r.tool_call_checks[0];
        assert!(!check.satisfied && check.reason.as_deref().unwrap_or("").contains("did not enforce"));
    }
}

// ------------------------------------------------------------------------------ the C ABI path

mod c_abi {
    use super::*;
    use maze::ffi::constraint::{maze_constraint, maze_constraint_free, maze_constraint_from_json};
    use maze::ffi::engine::*;
    use maze::ffi::error::{maze_error_free, maze_error_message, maze_error_status};
    use maze::ffi::result::*;
    use maze::ffi::session::*;
    use maze::ffi::{maze_error, maze_status};
    use std::ffi::{CStr, CString};
    use std::ptr::{null, null_mut};

    unsafe fn message(err: *mut maze_error) -> String {
        let m = CStr::from_ptr(maze_error_message(err)).to_string_lossy().into_owned();
        maze_error_free(err);
        m
    }

    #[test]
    fn a_remote_engine_through_the_c_api() {
        unsafe {
            let endpoint = CString::new(shared_server().url.clone()).unwrap();
            let key = CString::new(KEY).unwrap();
            let mut params = maze_engine_params_default();
            params.endpoint = endpoint.as_ptr();
            params.api_key = key.as_ptr();
            params.protocol = maze_protocol::Maze as u32;
            let mut engine = null_mut();
            let mut err = null_mut();
            assert_eq!(maze_engine_new(null(), &params, &mut engine, &mut err), maze_status::Ok);
            assert_eq!(
                CStr::from_ptr(maze_engine_model_name(engine)).to_str().unwrap(),
                local_engine().info().name
            );
            assert_eq!(CStr::from_ptr(maze_engine_architecture(engine)).to_str().unwrap(), "remote");
            assert_eq!(maze_engine_health(engine, &mut err), maze_status::Ok);
            let mut buf = [0 as std::ffi::c_char; 256];
            let mut len = 0usize;
            assert_eq!(
                maze_engine_list_models(engine, buf.as_mut_ptr(), buf.len(), &mut len, &mut err),
                maze_status::Ok
            );
            let names: Vec<String> =
                serde_json::from_str(CStr::from_ptr(buf.as_ptr()).to_str().unwrap()).unwrap();
            assert_eq!(names, vec![local_engine().info().name.clone()]);

            // No local tokenizer: a clear refusal.
            let mut n = 0usize;
            assert_eq!(
                maze_tokenize(engine, c"hi".as_ptr(), 2, false, false, null_mut(), 0, &mut n, &mut err),
                maze_status::Unsupported
            );
            assert!(message(err).contains("remote"));

            let json = r#"{"name": "yesno", "choice": ["yes", "no"]}"#;
            let mut constraint: *mut maze_constraint = null_mut();
            assert_eq!(
                maze_constraint_from_json(
                    engine,
                    json.as_ptr() as *const _,
                    json.len(),
                    &mut constraint,
                    &mut err
                ),
                maze_status::Ok
            );
            let mut session = null_mut();
            assert_eq!(maze_session_new(engine, &mut session, &mut err), maze_status::Ok);
            let mut gp = maze_generate_params_default();
            gp.temperature = 0.0;
            gp.max_tokens = 4;
            let list = [constraint as *const maze_constraint];
            gp.constraints = list.as_ptr();
            gp.n_constraints = 1;
            let prompt = "Is the sky blue? Answer:";
            let mut result = null_mut();
            let status = maze_session_generate(
                session,
                prompt.as_ptr() as *const _,
                prompt.len(),
                &gp,
                None,
                null_mut(),
                &mut result,
                &mut err,
            );
            assert_eq!(
                status,
                maze_status::Ok,
                "{}",
                if status == maze_status::Ok { String::new() } else { message(err) }
            );
            let text = CStr::from_ptr(maze_result_text(result, null_mut())).to_str().unwrap().to_string();
            assert!(text == "yes" || text == "no", "{text}");
            assert!(maze_result_constraints_satisfied(result));
            maze_result_free(result);
            maze_session_free(session);
            maze_constraint_free(constraint);
            maze_engine_free(engine);

            // NULL model path and no endpoint anywhere: named in the error (MAZE_ENDPOINT is
            // unset in the test environment).
            if std::env::var_os("MAZE_ENDPOINT").is_none() {
                let params = maze_engine_params_default();
                assert_eq!(
                    maze_engine_new(null(), &params, &mut engine, &mut err),
                    maze_status::NullArgument
                );
                assert_eq!(maze_error_status(err), maze_status::NullArgument);
                assert!(message(err).contains("MAZE_ENDPOINT"));
            }
            let mut params = maze_engine_params_default();
            params.endpoint = endpoint.as_ptr();
            params.protocol = 7;
            assert_eq!(maze_engine_new(null(), &params, &mut engine, &mut err), maze_status::InvalidArgument);
            assert!(message(err).contains("protocol 7"));
        }
    }
}
