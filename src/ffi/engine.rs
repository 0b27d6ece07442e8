//! Engine: load a model, inspect it, tokenize, render chat templates.

use std::ffi::{c_char, c_void, CString};
use std::path::PathBuf;

use super::{
    arg_cstr, arg_out, arg_slice, arg_str, ffi_boundary, maze_error, maze_status, maze_string, read_params,
    FfiError, FfiResult, Handle, MAZE_SEED_RANDOM,
};
use crate::backend::remote::{Protocol, RemoteConfig};
use crate::constraint::ConstraintLimits;
use crate::engine::EngineSpec;
use crate::model::chat::ChatMessage;
use crate::{ComputeDevice, Engine, EngineConfig, DEFAULT_PREFIX_CACHE_BYTES};

/// A loaded model with its worker, or a connection to a remote server. Thread-safe: every
/// function taking a `const maze_engine *` may be called from any number of threads at once.
/// Free it with maze_engine_free once no call on it is running; sessions opened on it stay
/// valid after it is freed.
pub struct maze_engine {
    pub(crate) engine: Engine,
    /// The model's name and architecture as C strings, so the getters hand out pointers that
    /// live as long as the handle.
    name: CString,
    architecture: CString,
}

impl maze_engine {
    fn new(engine: Engine) -> Self {
        let c_text = |text: &str| CString::new(text.replace('\0', "")).unwrap_or_default();
        let (name, architecture) = (c_text(&engine.info().name), c_text(&engine.info().architecture));
        Self { engine, name, architecture }
    }
}

impl Handle for maze_engine {}

use crate::c_enum::c_side as c_enum;
include!("../tables/protocol.rs");

/// Loading progress: `progress` in [0, 1]. Runs on the thread that called maze_engine_new; it
/// must not call maze_engine_* on the engine being loaded. Return false to abort the load
/// (maze_engine_new then fails with MAZE_STATUS_CANCELLED).
pub type maze_progress_callback = Option<unsafe extern "C" fn(progress: f32, userdata: *mut c_void) -> bool>;

/// Engine settings. Initialise with maze_engine_params_default(), then change fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct maze_engine_params {
    /// sizeof(maze_engine_params), set by maze_engine_params_default().
    pub struct_size: u32,
    /// Compute threads; 0 = one per available core.
    pub n_threads: u32,
    /// Context length (tokens) per session; 0 = the model's, capped at 8192.
    pub n_ctx: u32,
    /// Reserved, keep 0.
    pub reserved: u32,
    /// Seed for requests that bring none; MAZE_SEED_RANDOM = from the OS.
    pub seed: u64,
    /// Optional tokenizer.json replacing the GGUF's tokenizer (NUL-terminated path, or NULL).
    pub tokenizer_path: *const c_char,
    /// Optional loading progress callback (NULL for none).
    pub progress_callback: maze_progress_callback,
    /// Passed to progress_callback.
    pub progress_userdata: *mut c_void,
    /// Compiled constraints the cache keeps; 0 = default (256).
    pub constraint_cache_limit: u32,
    /// Remote backend: base URL of an inference server (NUL-terminated, e.g.
    /// "http://127.0.0.1:8000"), used when model_path is NULL. NULL = from MAZE_ENDPOINT.
    pub endpoint: *const c_char,
    /// Remote: sent as "Authorization: Bearer KEY" (NULL = none, or MAZE_API_KEY).
    pub api_key: *const c_char,
    /// Remote: model name for OpenAI-compatible servers (NULL = the first one the server lists).
    pub remote_model: *const c_char,
    /// Remote: a maze_protocol value. Default MAZE_PROTOCOL_OPENAI.
    pub protocol: u32,
    /// Remote: retries after connect errors, 429 and 5xx, with exponential backoff and jitter
    /// (Retry-After honoured). Default 3; 0 = none.
    pub max_retries: u32,
    /// Remote: time limit of requests that set no timeout_ms themselves; 0 = none.
    pub request_timeout_ms: u32,
    /// Memory (MiB) for the keys and values of closed or reset sessions, kept so that a new
    /// session whose prompt starts the same way (a shared system prompt) does not recompute
    /// them. Default 64; 0 = keep none (prefixes of live sessions are still shared).
    pub prefix_cache_mib: u32,
    /// -1 (default) = CPU; n >= 0 = CUDA device n, which needs a library built with the `cuda`
    /// feature (else MAZE_STATUS_UNSUPPORTED) and runs candle's GPU forward pass.
    pub gpu_device: i32,
    /// Optional Jinja chat template (NUL-terminated UTF-8) replacing the model's own, or the
    /// built-in one of its chat format for files without a template. NULL = the model's.
    pub chat_template: *const c_char,
    /// Deepest nesting a constraint may have (JSON-schema values, regex groups, Lark rules
    /// referring to rules, Lark brackets); deeper ones fail with MAZE_STATUS_INVALID_CONSTRAINT.
    /// 0 = default (128).
    pub constraint_max_depth: u32,
    /// Largest constraint in bytes of text (schema JSON, grammar, patterns or options together);
    /// 0 = default (262144).
    pub constraint_max_bytes: u32,
    /// Longest a constraint may take to compile (first mask included, the engine's one-time
    /// setup not: see prepare_constraints); 0 = default (10000 ms).
    pub constraint_compile_timeout_ms: u32,
    /// Reserved, keep 0.
    pub reserved2: u32,
    /// llguidance lexer fuel for building a lexer; 0 = default (1000000).
    pub constraint_initial_lexer_fuel: u64,
    /// llguidance lexer fuel for one token mask; 0 = default (200000).
    pub constraint_step_lexer_fuel: u64,
    /// llguidance Earley items in one row; 0 = default (2000).
    pub constraint_max_items_in_row: u32,
    /// llguidance Earley items for one token mask; 0 = default (50000).
    pub constraint_step_max_items: u32,
    /// llguidance lexer states; 0 = default (250000).
    pub constraint_max_lexer_states: u32,
    /// llguidance grammar symbols after compilation; 0 = default (500000).
    pub constraint_max_grammar_size: u32,
    /// Match very large regexes against the whole vocabulary while building the lexer (faster
    /// masks, slower compilation). Default true.
    pub constraint_precompute_large_lexemes: bool,
    /// Build the one-time constraint setup (token trie and parser factory: 0.1-1 s, growing
    /// with the vocabulary) while loading, instead of in the first constrained request
    /// (maze_result_constraint_setup_time_us). Default false.
    pub prepare_constraints: bool,
}

/// Default engine settings (all cores, model context, random seed, no callback).
#[no_mangle]
pub extern "C" fn maze_engine_params_default() -> maze_engine_params {
    maze_engine_params {
        struct_size: std::mem::size_of::<maze_engine_params>() as u32,
        n_threads: 0,
        n_ctx: 0,
        reserved: 0,
        seed: MAZE_SEED_RANDOM,
        tokenizer_path: std::ptr::null(),
        progress_callback: None,
        progress_userdata: std::ptr::null_mut(),
        constraint_cache_limit: 0,
        endpoint: std::ptr::null(),
        api_key: std::ptr::null(),
        remote_model: std::ptr::null(),
        protocol: maze_protocol::OpenAi as u32,
        max_retries: 3,
        request_timeout_ms: 0,
        prefix_cache_mib: (DEFAULT_PREFIX_CACHE_BYTES >> 20) as u32,
        gpu_device: -1,
        chat_template: std::ptr::null(),
        constraint_max_depth: 0,
        constraint_max_bytes: 0,
        constraint_compile_timeout_ms: 0,
        reserved2: 0,
        constraint_initial_lexer_fuel: 0,
        constraint_step_lexer_fuel: 0,
        constraint_max_items_in_row: 0,
        constraint_step_max_items: 0,
        constraint_max_lexer_states: 0,
        constraint_max_grammar_size: 0,
        constraint_precompute_large_lexemes: ConstraintLimits::default().precompute_large_lexemes,
        prepare_constraints: false,
    }
}

/// What maze_engine_new opens: the model file at `model_path`, else the server the params or the
/// environment name.
unsafe fn engine_spec(model_path: *const c_char, p: &maze_engine_params) -> FfiResult<EngineSpec> {
    if !model_path.is_null() {
        return Ok(EngineSpec::Local(local_config(arg_cstr(model_path, "model_path")?, p)?));
    }
    match EngineSpec::remote_or_env(remote_config(p)?) {
        Some(spec) => Ok(spec?),
        None => Err(FfiError::null(
            "model_path (NULL selects a remote server, but neither params.endpoint nor MAZE_ENDPOINT is set)",
        )),
    }
}

unsafe fn local_config(path: &str, p: &maze_engine_params) -> FfiResult<EngineConfig> {
    let tokenizer_path = if p.tokenizer_path.is_null() {
        None
    } else {
        Some(PathBuf::from(arg_cstr(p.tokenizer_path, "params.tokenizer_path")?))
    };
    let chat_template = match p.chat_template.is_null() {
        true => None,
        false => Some(arg_cstr(p.chat_template, "params.chat_template")?.to_string()),
    };
    Ok(EngineConfig {
        model_path: PathBuf::from(path),
        tokenizer_path,
        threads: p.n_threads as usize,
        context_length: p.n_ctx as usize,
        seed: (p.seed != MAZE_SEED_RANDOM).then_some(p.seed),
        constraint_cache_limit: p.constraint_cache_limit as usize,
        prefix_cache_bytes: Some((p.prefix_cache_mib as usize) << 20),
        chat_template,
        constraint_limits: constraint_limits(p),
        prepare_constraints: p.prepare_constraints,
        device: match p.gpu_device {
            -1 => ComputeDevice::Cpu,
            n if n >= 0 => ComputeDevice::Cuda(n as usize),
            n => {
                return Err(FfiError::new(
                    maze_status::InvalidArgument,
                    format!("params.gpu_device {n} is neither -1 (CPU) nor a CUDA device number"),
                ))
            }
        },
    })
}

/// The constraint limits the params set, each 0 giving its default.
fn constraint_limits(p: &maze_engine_params) -> ConstraintLimits {
    let d = ConstraintLimits::default();
    let or = |value: u64, default: u64| if value == 0 { default } else { value };
    let or_usize = |value: u32, default: usize| or(value as u64, default as u64) as usize;
    ConstraintLimits {
        max_depth: or_usize(p.constraint_max_depth, d.max_depth),
        max_size_bytes: or_usize(p.constraint_max_bytes, d.max_size_bytes),
        compile_timeout: std::time::Duration::from_millis(or(
            p.constraint_compile_timeout_ms as u64,
            d.compile_timeout.as_millis() as u64,
        )),
        initial_lexer_fuel: or(p.constraint_initial_lexer_fuel, d.initial_lexer_fuel),
        step_lexer_fuel: or(p.constraint_step_lexer_fuel, d.step_lexer_fuel),
        max_items_in_row: or_usize(p.constraint_max_items_in_row, d.max_items_in_row),
        step_max_items: or_usize(p.constraint_step_max_items, d.step_max_items),
        max_lexer_states: or_usize(p.constraint_max_lexer_states, d.max_lexer_states),
        max_grammar_size: or_usize(p.constraint_max_grammar_size, d.max_grammar_size),
        precompute_large_lexemes: p.constraint_precompute_large_lexemes,
    }
}

/// The server params.endpoint names, with the other remote params; `None` without an endpoint.
unsafe fn remote_config(p: &maze_engine_params) -> FfiResult<Option<RemoteConfig>> {
    let optional = |ptr: *const c_char, arg: &str| -> FfiResult<Option<String>> {
        if ptr.is_null() {
            Ok(None)
        } else {
            Ok(Some(arg_cstr(ptr, arg)?.to_string()))
        }
    };
    if let Some(endpoint) = optional(p.endpoint, "params.endpoint")? {
        let protocol =
            maze_protocol::from_raw(p.protocol.into()).and_then(maze_protocol::to_core).ok_or_else(|| {
                FfiError::new(
                    maze_status::InvalidArgument,
                    format!("params.protocol {} is not a maze_protocol", p.protocol),
                )
            })?;
        let mut config = RemoteConfig::new(endpoint, protocol);
        config.api_key = optional(p.api_key, "params.api_key")?;
        config.model = optional(p.remote_model, "params.remote_model")?;
        config.max_retries = p.max_retries;
        config.request_timeout =
            (p.request_timeout_ms > 0).then(|| std::time::Duration::from_millis(p.request_timeout_ms as u64));
        return Ok(Some(config));
    }
    Ok(None)
}

/// Loads a GGUF model (architecture llama, qwen2, qwen3, gemma3 or phi3) and starts its worker —
/// or, with `model_path` NULL, connects to a remote inference server (params.endpoint, else
/// MAZE_ENDPOINT with MAZE_API_KEY, MAZE_MODEL, MAZE_PROTOCOL, MAZE_RETRIES, MAZE_TIMEOUT_MS).
///
/// `model_path`: NUL-terminated UTF-8 path. `params`: NULL for defaults. On success `*out_engine`
/// receives the engine (free with maze_engine_free). Fails with MAZE_STATUS_IO (missing file),
/// MAZE_STATUS_MODEL_FORMAT (not GGUF, truncated), MAZE_STATUS_UNSUPPORTED (architecture or
/// tokenizer), MAZE_STATUS_CANCELLED (progress callback returned false), MAZE_STATUS_BACKEND
/// (server unreachable), among others. A remote engine has no local tokenizer: tokenize,
/// detokenize, the chat template and the constraint cache fail with MAZE_STATUS_UNSUPPORTED.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn maze_engine_new(
    model_path: *const c_char,
    params: *const maze_engine_params,
    out_engine: *mut *mut maze_engine,
    error: *mut *mut maze_error,
) -> maze_status {
    ffi_boundary!(error, {
        arg_out(out_engine, "out_engine")?;
        let p = read_params(params, maze_engine_params_default(), "params")?;
        let spec = engine_spec(model_path, &p)?;
        let (callback, userdata) = (p.progress_callback, p.progress_userdata);
        let mut progress = move |f: f32| match callback {
            Some(cb) => cb(f, userdata),
            None => true,
        };
        maze_engine::new(Engine::open(&spec, Some(&mut progress))?).box_into(out_engine, "out_engine")
    })
}

/// Frees an engine. NULL is a no-op. Sessions opened on it remain usable; the model is released
/// when the last of them is freed too.
#[no_mangle]
pub unsafe extern "C" fn maze_engine_free(engine: *mut maze_engine) {
    ffi_boundary!({ maze_engine::free(engine) })
}

/// Model name from the GGUF metadata (or the file name; for a remote engine, the server's
/// model). Valid while the engine lives; "" for NULL.
#[no_mangle]
pub unsafe extern "C" fn maze_engine_model_name(engine: *const maze_engine) -> *const c_char {
    ffi_boundary!({ maze_engine::from_nullable(engine).map(|e| e.name.as_ptr()).unwrap_or(c"".as_ptr()) })
}

/// Model architecture, e.g. "llama" ("remote" for a remote engine). Valid while the engine
/// lives; "" for NULL.
#[no_mangle]
pub unsafe extern "C" fn maze_engine_architecture(engine: *const maze_engine) -> *const c_char {
    ffi_boundary!({
        maze_engine::from_nullable(engine).map(|e| e.architecture.as_ptr()).unwrap_or(c"".as_ptr())
    })
}

/// The engine behind a handle; None for NULL.
unsafe fn engine_or_null<'a>(engine: *const maze_engine) -> Option<&'a Engine> {
    maze_engine::from_nullable(engine).map(|e| &e.engine)
}

/// Vocabulary size (valid token ids are below it); 0 for NULL or a remote engine.
#[no_mangle]
pub unsafe extern "C" fn maze_engine_vocab_size(engine: *const maze_engine) -> u32 {
    ffi_boundary!({ engine_or_null(engine).map(|e| e.info().vocab_size as u32).unwrap_or(0) })
}

/// Context length each session serves, in tokens; 0 for NULL or a remote engine.
#[no_mangle]
pub unsafe extern "C" fn maze_engine_context_length(engine: *const maze_engine) -> u32 {
    ffi_boundary!({ engine_or_null(engine).map(|e| e.info().context_length as u32).unwrap_or(0) })
}

/// Whether maze_session_chat works: the model has a chat template (a remote server applies its
/// own: true); false for NULL.
#[no_mangle]
pub unsafe extern "C" fn maze_engine_has_chat_template(engine: *const maze_engine) -> bool {
    ffi_boundary!({ engine_or_null(engine).is_some_and(Engine::has_chat_template) })
}

/// The end-of-sequence token id, or -1 when the model declares none (or engine is NULL or remote).
#[no_mangle]
pub unsafe extern "C" fn maze_engine_eos_token(engine: *const maze_engine) -> i64 {
    ffi_boundary!({ engine_or_null(engine).and_then(Engine::eos_token).map(i64::from).unwrap_or(-1) })
}

/// Whether `token` ends a generation (EOS, EOT, end-of-turn tokens); false for NULL or remote.
#[no_mangle]
pub unsafe extern "C" fn maze_engine_token_is_end_of_generation(
    engine: *const maze_engine,
    token: u32,
) -> bool {
    ffi_boundary!({ engine_or_null(engine).is_some_and(|e| e.is_end_of_generation(token)) })
}

/// Writes `needed` into `*out_len` and fails with MAZE_STATUS_BUFFER_TOO_SMALL when `capacity`
/// cannot hold it; this is the one case where an output is written on failure.
unsafe fn check_capacity(needed: usize, capacity: usize, out_len: *mut usize, what: &str) -> FfiResult<()> {
    if needed > capacity {
        out_len.write(needed);
        return Err(FfiError::new(
            maze_status::BufferTooSmall,
            format!("{what} needs {needed} but the buffer holds {capacity}"),
        ));
    }
    Ok(())
}

/// Tokenizes UTF-8 text (`text`, `text_len` bytes; NUL not needed).
///
/// `add_special`: add BOS/EOS as the model wants them. `parse_special`: let special-token text
/// (e.g. "<|im_start|>") become special tokens; keep false for untrusted text.
/// Writes up to `capacity` ids to `tokens` and their count to `*n_tokens`. When `capacity` is too
/// small (NULL `tokens` with capacity 0 asks for the size), fails with
/// MAZE_STATUS_BUFFER_TOO_SMALL and still writes the needed count to `*n_tokens`.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn maze_tokenize(
    engine: *const maze_engine,
    text: *const c_char,
    text_len: usize,
    add_special: bool,
    parse_special: bool,
    tokens: *mut u32,
    capacity: usize,
    n_tokens: *mut usize,
    error: *mut *mut maze_error,
) -> maze_status {
    ffi_boundary!(error, {
        let engine = maze_engine::from_ptr(engine, "engine")?;
        let text = arg_str(text, text_len, "text")?;
        arg_out(n_tokens, "n_tokens")?;
        let ids = engine.engine.tokenize(text, add_special, parse_special)?;
        check_capacity(ids.len(), capacity, n_tokens, "the token list")?;
        if !ids.is_empty() {
            arg_out(tokens, "tokens")?;
            std::ptr::copy_nonoverlapping(ids.as_ptr(), tokens, ids.len());
        }
        n_tokens.write(ids.len());
        Ok(())
    })
}

/// Turns token ids back into text: the exact bytes they stand for (special tokens as their text).
/// The bytes are UTF-8 unless the ids end inside a multi-byte character.
///
/// Writes the bytes plus a terminating NUL to `buf`; `*out_len` receives the byte count without
/// the NUL. Needs `capacity >= *out_len + 1`; otherwise fails with MAZE_STATUS_BUFFER_TOO_SMALL
/// and writes the needed byte count (without NUL) to `*out_len`. An id outside the vocabulary
/// fails with MAZE_STATUS_INVALID_ARGUMENT.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn maze_detokenize(
    engine: *const maze_engine,
    tokens: *const u32,
    n_tokens: usize,
    buf: *mut c_char,
    capacity: usize,
    out_len: *mut usize,
    error: *mut *mut maze_error,
) -> maze_status {
    ffi_boundary!(error, {
        let engine = maze_engine::from_ptr(engine, "engine")?;
        let ids = arg_slice(tokens, n_tokens, "tokens")?;
        arg_out(out_len, "out_len")?;
        let bytes = engine.engine.detokenize(ids)?;
        write_text(&bytes, buf, capacity, out_len, "the text")
    })
}

/// Scores a token sequence: the natural-log probability the model gives each token after the
/// ones before it (what ranking, classification and perplexity need). `tokens`: `n_tokens`
/// ids, at least 2; start with BOS, or with a context, to score a text's first token. Writes
/// `n_tokens - 1` values to `logprobs` (the first for `tokens[1]`) and that count to
/// `*n_logprobs`; a `capacity` below it fails with MAZE_STATUS_BUFFER_TOO_SMALL (the needed
/// count still written). One forward pass over the sequence on a fresh cache, between the steps
/// of running generations. Fails with MAZE_STATUS_CONTEXT_OVERFLOW beyond the context length,
/// MAZE_STATUS_INVALID_ARGUMENT for fewer than 2 tokens or an id outside the vocabulary,
/// MAZE_STATUS_UNSUPPORTED on a remote engine.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn maze_score(
    engine: *const maze_engine,
    tokens: *const u32,
    n_tokens: usize,
    logprobs: *mut f32,
    capacity: usize,
    n_logprobs: *mut usize,
    error: *mut *mut maze_error,
) -> maze_status {
    ffi_boundary!(error, {
        let engine = maze_engine::from_ptr(engine, "engine")?;
        let ids = arg_slice(tokens, n_tokens, "tokens")?;
        arg_out(n_logprobs, "n_logprobs")?;
        check_capacity(n_tokens.saturating_sub(1), capacity, n_logprobs, "the log-probabilities")?;
        let scores = engine.engine.score(ids)?;
        arg_out(logprobs, "logprobs")?;
        std::ptr::copy_nonoverlapping(scores.as_ptr(), logprobs, scores.len());
        n_logprobs.write(scores.len());
        Ok(())
    })
}

/// Copies bytes + NUL into a caller buffer, with the BUFFER_TOO_SMALL protocol.
pub(crate) unsafe fn write_text(
    bytes: &[u8],
    buf: *mut c_char,
    capacity: usize,
    out_len: *mut usize,
    what: &str,
) -> FfiResult<()> {
    if bytes.len() >= capacity {
        out_len.write(bytes.len());
        return Err(FfiError::new(
            maze_status::BufferTooSmall,
            format!("{what} needs {} bytes plus a NUL but the buffer holds {capacity}", bytes.len()),
        ));
    }
    arg_out(buf, "buf")?;
    std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf as *mut u8, bytes.len());
    *buf.add(bytes.len()) = 0;
    out_len.write(bytes.len());
    Ok(())
}

/// One chat message. Roles are those the model's template knows: usually "system", "user",
/// "assistant", "tool". An assistant message may carry the tool calls it made; a tool message
/// answers one by `tool_call_id`. Every message of an array has the same `struct_size`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct maze_chat_message {
    /// sizeof(maze_chat_message), or 0 for this header's size (so designated initialisers that
    /// leave it out keep working).
    pub struct_size: u32,
    pub role: maze_string,
    pub content: maze_string,
    /// The calls an assistant message made (NULL when n_tool_calls is 0).
    pub tool_calls: *const super::tools::maze_tool_call,
    pub n_tool_calls: usize,
    /// The call a "tool" message answers (empty otherwise).
    pub tool_call_id: maze_string,
}

pub(crate) unsafe fn read_messages(
    messages: *const maze_chat_message,
    n: usize,
) -> FfiResult<Vec<ChatMessage>> {
    if n == 0 {
        return Err(FfiError::new(
            maze_status::InvalidArgument,
            "a chat needs at least one message (n_messages is 0)",
        ));
    }
    if messages.is_null() {
        return Err(FfiError::null("messages"));
    }
    // One layout is known; an array's stride is the caller's struct_size, so any other size
    // is refused before the array is read.
    let known = std::mem::size_of::<maze_chat_message>();
    let stride = match std::ptr::read_unaligned(messages as *const u32) as usize {
        0 => known,
        size if size > known => {
            return Err(FfiError::new(
                maze_status::AbiMismatch,
                format!("messages[0] has struct_size {size} but this library knows {known} bytes: the caller was built against a newer maze.h"),
            ))
        }
        size if size < known => {
            return Err(FfiError::new(
                maze_status::AbiMismatch,
                format!("messages[0] has struct_size {size}, smaller than this ABI's {known} bytes (the ABI 1 maze_chat_message had no struct_size: rebuild against this maze.h)"),
            ))
        }
        size => size,
    };
    arg_slice(messages, n, "messages")?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let size = m.struct_size as usize;
            if size != 0 && size != stride {
                return Err(FfiError::new(
                    maze_status::InvalidArgument,
                    format!("messages[{i}].struct_size is {size} but messages[0] has {stride}: one array, one size"),
                ));
            }
            let at = format!("messages[{i}]");
            let tool_call_id = m.tool_call_id.to_str(&format!("{at}.tool_call_id"))?;
            Ok(ChatMessage {
                role: m.role.to_str(&format!("{at}.role"))?.to_string(),
                content: m.content.to_str(&format!("{at}.content"))?.to_string(),
                tool_calls: super::tools::read_tool_calls(m.tool_calls, m.n_tool_calls, &at)?,
                tool_call_id: (!tool_call_id.is_empty()).then(|| tool_call_id.to_string()),
            })
        })
        .collect()
}

/// Renders messages with the model's chat template into `buf` (same buffer protocol as
/// maze_detokenize). With `add_generation_prompt` the text ends where the assistant's reply
/// starts. Fails with MAZE_STATUS_TEMPLATE when the model has no template or it rejects the
/// messages.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn maze_chat_apply_template(
    engine: *const maze_engine,
    messages: *const maze_chat_message,
    n_messages: usize,
    add_generation_prompt: bool,
    buf: *mut c_char,
    capacity: usize,
    out_len: *mut usize,
    error: *mut *mut maze_error,
) -> maze_status {
    ffi_boundary!(error, {
        let engine = maze_engine::from_ptr(engine, "engine")?;
        arg_out(out_len, "out_len")?;
        let messages = read_messages(messages, n_messages)?;
        let text = engine.engine.render_chat(&messages, add_generation_prompt)?;
        write_text(text.as_bytes(), buf, capacity, out_len, "the rendered chat")
    })
}

/// Checks that the engine can serve: always MAZE_STATUS_OK for a local model; for a remote
/// engine, asks the server (its health route, or the model list of an OpenAI-compatible server)
/// and fails with MAZE_STATUS_BACKEND (unreachable, HTTP error) naming the problem.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn maze_engine_health(
    engine: *const maze_engine,
    error: *mut *mut maze_error,
) -> maze_status {
    ffi_boundary!(error, { Ok(maze_engine::from_ptr(engine, "engine")?.engine.health()?) })
}

/// The models the engine serves, as a JSON array of names (e.g. `["SmolLM2"]`), into `buf`
/// with the buffer protocol of maze_detokenize. A local engine lists its model; a remote one
/// asks the server.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn maze_engine_list_models(
    engine: *const maze_engine,
    buf: *mut c_char,
    capacity: usize,
    out_len: *mut usize,
    error: *mut *mut maze_error,
) -> maze_status {
    ffi_boundary!(error, {
        let engine = maze_engine::from_ptr(engine, "engine")?;
        arg_out(out_len, "out_len")?;
        let names = engine.engine.list_models()?;
        let json = serde_json::to_string(&names).expect("strings serialize");
        write_text(json.as_bytes(), buf, capacity, out_len, "the model list")
    })
}
