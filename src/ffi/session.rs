//! Sessions: generate from text, tokens or chat messages; stream; cancel; reset.

use std::ffi::{c_char, c_void};
use std::time::Duration;

use super::cancel::maze_cancel_token;
use super::constraint::maze_constraint;
use super::engine::{maze_chat_message, maze_engine, read_messages};
use super::result::maze_result;
use super::tools::{
    deliver_tool_event, maze_tool, maze_tool_call_callback, maze_tool_choice, maze_tool_format, read_tool_use,
};
use super::{
    arg_out, arg_slice, arg_str, ffi_boundary, maze_error, maze_status, maze_string, read_params, FfiError,
    FfiResult, Handle, MAZE_SEED_RANDOM,
};
use crate::engine::{GenerateOptions, Prompt, Session};
use crate::sampling::SamplingParams;
use crate::tools::StreamEvent;

/// One conversation with its own KV cache. Thread-safe: maze_session_cancel may be called from
/// any thread at any time; a generate call while another runs on the same session fails with
/// MAZE_STATUS_BUSY. Must not be freed while a call on it is running.
pub struct maze_session {
    session: Session,
}

impl Handle for maze_session {}

/// Streaming callback: `text` is the next piece of generated text (`len` bytes of whole UTF-8
/// characters, followed by a NUL for convenience; the text itself may contain NUL bytes, so
/// `len` is authoritative; valid only during the call). Runs on the thread
/// that called the generate function. It may call maze_session_cancel and functions on other
/// sessions; a generate call on the same session from inside it fails with MAZE_STATUS_BUSY.
/// Return false to stop generating: the result then finishes with MAZE_FINISH_CANCELLED and
/// holds exactly the text delivered so far.
pub type maze_stream_callback =
    Option<unsafe extern "C" fn(text: *const c_char, len: usize, userdata: *mut c_void) -> bool>;

/// Generation settings. Initialise with maze_generate_params_default(), then change fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct maze_generate_params {
    /// sizeof(maze_generate_params), set by maze_generate_params_default().
    pub struct_size: u32,
    /// Most tokens to generate; 0 = until the context is full. Default 256.
    pub max_tokens: u32,
    /// 0 = greedy. Default 0.8.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off. Default 40.
    pub top_k: u32,
    /// Nucleus sampling mass in (0, 1]; 1 = off. Default 0.95.
    pub top_p: f32,
    /// Drop tokens below min_p × the top probability, in [0, 1]; 0 = off. Default 0.05.
    pub min_p: f32,
    /// Repetition penalty (> 0); 1 = off. Default 1.
    pub repetition_penalty: f32,
    /// Recent tokens (prompt included) the penalties look at; 0 = all. Default 64.
    pub penalty_last_n: u32,
    /// Subtracted per earlier occurrence of a token. Default 0.
    pub frequency_penalty: f32,
    /// Subtracted once if a token occurred. Default 0.
    pub presence_penalty: f32,
    /// Same seed + same input = same output. MAZE_SEED_RANDOM (default) = from the engine.
    pub seed: u64,
    /// Stop sequences (array of n_stop strings; NULL when n_stop is 0). The text ends before the
    /// first one that appears; it is never streamed.
    pub stop: *const maze_string,
    pub n_stop: usize,
    /// Wall-clock limit in milliseconds from the call (constraint compilation, tokenization and
    /// queueing included); 0 = none. When it passes the result finishes with
    /// MAZE_FINISH_TIMEOUT.
    pub timeout_ms: u32,
    /// Record each generated token's log-probability (maze_result_logprobs). Default false.
    pub logprobs: bool,
    /// Constraints the output must obey, all at once (array of n_constraints handles; NULL when
    /// 0). See maze_result_validation_json for how each fared.
    pub constraints: *const *const maze_constraint,
    pub n_constraints: usize,
    /// Keep generating past the model's end-of-generation tokens until max_tokens (fixed-length
    /// output, benchmarks); the end tokens stay in the output. A constrained request still stops
    /// where its grammar ends. Default false.
    pub ignore_eos: bool,
    /// A cancel token (maze_cancel_token_new) that stops this call when cancelled, also when
    /// the cancel comes before the call starts; NULL = none. maze_session_cancel works either
    /// way.
    pub cancel: *const maze_cancel_token,
    /// Tools the model may call (array of n_tools; NULL when 0). Chat prompts only
    /// (maze_session_chat): the chat template renders them, the reply's calls are enforced
    /// (names declared, arguments valid under each tool's schema) and returned by
    /// maze_result_tool_call. Bad declarations fail with MAZE_STATUS_INVALID_ARGUMENT or, for a
    /// schema that does not compile, MAZE_STATUS_INVALID_CONSTRAINT, naming the tool.
    pub tools: *const maze_tool,
    pub n_tools: usize,
    /// A maze_tool_choice value. Default MAZE_TOOL_CHOICE_AUTO: text, or calls as the model
    /// decides; the constraints of `constraints` then govern a text reply (token masks hold on
    /// every token).
    pub tool_choice: u32,
    /// The tool MAZE_TOOL_CHOICE_NAMED names (empty otherwise).
    pub tool_choice_name: maze_string,
    /// More than one call in a reply. Default true.
    pub parallel_tool_calls: bool,
    /// Most calls in one reply when parallel; 0 = 8.
    pub max_tool_calls: u32,
    /// A maze_tool_format value. Default MAZE_TOOL_FORMAT_TEMPLATE: the chat template's own
    /// syntax, refused with MAZE_STATUS_UNSUPPORTED when it cannot render tools.
    pub tool_format: u32,
    /// Receives each call's name and then its argument fragments while the reply streams
    /// (text still goes to the stream callback, without the call syntax); NULL = none.
    pub tool_callback: maze_tool_call_callback,
    pub tool_userdata: *mut c_void,
}

/// Default generation settings (llama.cpp's sampling defaults, 256 tokens, random seed).
#[no_mangle]
pub extern "C" fn maze_generate_params_default() -> maze_generate_params {
    let s = SamplingParams::default();
    let o = GenerateOptions::default();
    maze_generate_params {
        struct_size: std::mem::size_of::<maze_generate_params>() as u32,
        max_tokens: o.max_tokens as u32,
        temperature: s.temperature,
        top_k: s.top_k as u32,
        top_p: s.top_p,
        min_p: s.min_p,
        repetition_penalty: s.repetition_penalty,
        penalty_last_n: s.penalty_last_n as u32,
        frequency_penalty: s.frequency_penalty,
        presence_penalty: s.presence_penalty,
        seed: MAZE_SEED_RANDOM,
        stop: std::ptr::null(),
        n_stop: 0,
        timeout_ms: 0,
        logprobs: false,
        constraints: std::ptr::null(),
        n_constraints: 0,
        ignore_eos: o.ignore_eos,
        cancel: std::ptr::null(),
        tools: std::ptr::null(),
        n_tools: 0,
        tool_choice: maze_tool_choice::Auto as u32,
        tool_choice_name: maze_string { data: std::ptr::null(), len: 0 },
        parallel_tool_calls: true,
        max_tool_calls: 0,
        tool_format: maze_tool_format::Template as u32,
        tool_callback: None,
        tool_userdata: std::ptr::null_mut(),
    }
}

unsafe fn read_options(params: *const maze_generate_params) -> FfiResult<GenerateOptions> {
    let p = read_params(params, maze_generate_params_default(), "params")?;
    let tools = read_tool_use(
        p.tools,
        p.n_tools,
        p.tool_choice,
        p.tool_choice_name,
        p.parallel_tool_calls,
        p.max_tool_calls,
        p.tool_format,
    )?;
    let stop = arg_slice(p.stop, p.n_stop, "params.stop")?
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let text = s.to_str(&format!("params.stop[{i}]"))?;
            if text.is_empty() {
                return Err(FfiError::new(
                    maze_status::InvalidArgument,
                    format!("params.stop[{i}] is empty"),
                ));
            }
            Ok(text.to_string())
        })
        .collect::<FfiResult<Vec<_>>>()?;
    Ok(GenerateOptions {
        max_tokens: p.max_tokens as usize,
        sampling: SamplingParams {
            temperature: p.temperature,
            top_k: p.top_k as usize,
            top_p: p.top_p,
            min_p: p.min_p,
            repetition_penalty: p.repetition_penalty,
            penalty_last_n: p.penalty_last_n as usize,
            frequency_penalty: p.frequency_penalty,
            presence_penalty: p.presence_penalty,
            seed: (p.seed != MAZE_SEED_RANDOM).then_some(p.seed),
        },
        stop,
        timeout: (p.timeout_ms > 0).then(|| Duration::from_millis(p.timeout_ms as u64)),
        logprobs: p.logprobs,
        constraints: arg_slice(p.constraints, p.n_constraints, "params.constraints")?
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                Ok(maze_constraint::from_ptr(c, &format!("params.constraints[{i}]"))?.constraints.clone())
            })
            .collect::<FfiResult<Vec<_>>>()?
            .concat(),
        ignore_eos: p.ignore_eos,
        cancel: maze_cancel_token::from_nullable(p.cancel).map(|t| t.token.clone()),
        tools,
    })
}

/// Opens a session on an engine. Free it with maze_session_free.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn maze_session_new(
    engine: *const maze_engine,
    out_session: *mut *mut maze_session,
    error: *mut *mut maze_error,
) -> maze_status {
    ffi_boundary!(error, {
        let engine = maze_engine::from_ptr(engine, "engine")?;
        arg_out(out_session, "out_session")?;
        maze_session { session: engine.engine.new_session() }.box_into(out_session, "out_session")
    })
}

/// Frees a session and its KV cache. NULL is a no-op. No call on it may be running.
#[no_mangle]
pub unsafe extern "C" fn maze_session_free(session: *mut maze_session) {
    ffi_boundary!({ maze_session::free(session) })
}

unsafe fn run(
    session: *const maze_session,
    prompt: impl FnOnce() -> FfiResult<Prompt>,
    params: *const maze_generate_params,
    callback: maze_stream_callback,
    userdata: *mut c_void,
    out_result: *mut *mut maze_result,
) -> FfiResult<()> {
    let session = maze_session::from_ptr(session, "session")?;
    arg_out(out_result, "out_result")?;
    let prompt = prompt()?;
    let opts = read_options(params)?;
    let (tool_callback, tool_userdata) = match params.is_null() {
        true => (None, std::ptr::null_mut()),
        false => {
            let p = read_params(params, maze_generate_params_default(), "params")?;
            (p.tool_callback, p.tool_userdata)
        }
    };
    let on_event = |event: &StreamEvent| match (event, callback) {
        (StreamEvent::Text(text), Some(cb)) => {
            let mut chunk = Vec::with_capacity(text.len() + 1);
            chunk.extend_from_slice(text.as_bytes());
            chunk.push(0);
            cb(chunk.as_ptr() as *const c_char, text.len(), userdata)
        }
        (StreamEvent::Text(_), None) => true,
        (call, _) => deliver_tool_event(call, tool_callback, tool_userdata),
    };
    let result = session.session.generate_events(&prompt, &opts, on_event)?;
    maze_result::new(result).box_into(out_result, "out_result")
}

/// Continues the session from a text prompt (`prompt_len` bytes of UTF-8) and blocks until done.
///
/// The session reuses the longest prefix it already computed, so passing the whole conversation
/// each time costs only the new part. `params`: NULL for defaults. `callback` (may be NULL)
/// streams text on this thread. On success `*out_result` receives the result (free with
/// maze_result_free) — also when generation was cancelled, timed out or failed midway (see
/// maze_result_finish_reason). Fails before generating with MAZE_STATUS_CONTEXT_OVERFLOW,
/// MAZE_STATUS_BUSY, MAZE_STATUS_INVALID_ARGUMENT (bad params, empty prompt), among others.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn maze_session_generate(
    session: *const maze_session,
    prompt: *const c_char,
    prompt_len: usize,
    params: *const maze_generate_params,
    callback: maze_stream_callback,
    userdata: *mut c_void,
    out_result: *mut *mut maze_result,
    error: *mut *mut maze_error,
) -> maze_status {
    ffi_boundary!(error, {
        run(
            session,
            || Ok(Prompt::Text(arg_str(prompt, prompt_len, "prompt")?.to_string())),
            params,
            callback,
            userdata,
            out_result,
        )
    })
}

/// Like maze_session_generate, from token ids used as they are (no BOS added).
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn maze_session_generate_tokens(
    session: *const maze_session,
    tokens: *const u32,
    n_tokens: usize,
    params: *const maze_generate_params,
    callback: maze_stream_callback,
    userdata: *mut c_void,
    out_result: *mut *mut maze_result,
    error: *mut *mut maze_error,
) -> maze_status {
    ffi_boundary!(error, {
        run(
            session,
            || Ok(Prompt::Tokens(arg_slice(tokens, n_tokens, "tokens")?.to_vec())),
            params,
            callback,
            userdata,
            out_result,
        )
    })
}

/// Like maze_session_generate, from chat messages rendered with the model's chat template and
/// ending in an assistant turn. Fails with MAZE_STATUS_TEMPLATE when the model has no template.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn maze_session_chat(
    session: *const maze_session,
    messages: *const maze_chat_message,
    n_messages: usize,
    params: *const maze_generate_params,
    callback: maze_stream_callback,
    userdata: *mut c_void,
    out_result: *mut *mut maze_result,
    error: *mut *mut maze_error,
) -> maze_status {
    ffi_boundary!(error, {
        run(
            session,
            || Ok(Prompt::Chat(read_messages(messages, n_messages)?)),
            params,
            callback,
            userdata,
            out_result,
        )
    })
}

/// Stops the session's call in flight from any thread, wherever it is: compiling its
/// constraints, tokenizing, queued, prefilling, decoding or still delivering text to a slow
/// stream callback. The generate call returns soon after with MAZE_FINISH_CANCELLED, its
/// callback called no more: the result holds exactly the text delivered before (cancelled
/// before generation began: no text, every constraint violated). A call is in flight from the
/// moment it has checked that the session is not busy until it returns; a cancel outside that
/// span is a no-op and does not affect the next call (a cancel token, maze_generate_params.cancel,
/// has no such window). Fails only with MAZE_STATUS_NULL_ARGUMENT.
#[no_mangle]
pub unsafe extern "C" fn maze_session_cancel(session: *const maze_session) -> maze_status {
    ffi_boundary!({
        match maze_session::from_nullable(session) {
            Some(s) => {
                s.session.cancel();
                maze_status::Ok
            }
            None => maze_status::NullArgument,
        }
    })
}

/// Forgets the conversation: the next call starts from an empty context (a remote session keeps
/// none). The forgotten keys and values may still serve other sessions' identical prompt
/// prefixes from the engine's prefix cache. Fails with MAZE_STATUS_BUSY while generating.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn maze_session_reset(
    session: *const maze_session,
    error: *mut *mut maze_error,
) -> maze_status {
    ffi_boundary!(error, { Ok(maze_session::from_ptr(session, "session")?.session.reset()?) })
}
