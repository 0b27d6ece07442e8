//! Engine: load a model, inspect it, tokenize, render chat templates.

use std::ffi::{c_char, c_void, CString};
use std::path::PathBuf;

use super::{arg_cstr, arg_out, arg_ref, arg_slice, arg_str, ffi_call, ffi_infallible, maze_error, maze_status, maze_string, read_params, write_out, FfiError, FfiResult, MAZE_SEED_RANDOM};
use crate::model::chat::ChatMessage;
use crate::{Engine, EngineConfig};

/// A loaded model with its worker. Thread-safe: every function taking a `const maze_engine *`
/// may be called from any number of threads at once. Free it with maze_engine_free once no call
/// on it is running; sessions opened on it stay valid after it is freed.
pub struct maze_engine {
    pub(crate) engine: Engine,
    name: CString,
    architecture: CString,
}

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
    }
}

/// Loads a GGUF model (Llama family) and starts its worker.
///
/// `model_path`: NUL-terminated UTF-8 path. `params`: NULL for defaults. On success `*out_engine`
/// receives the engine (free with maze_engine_free). Fails with MAZE_STATUS_IO (missing file),
/// MAZE_STATUS_MODEL_FORMAT (not GGUF, truncated), MAZE_STATUS_UNSUPPORTED (architecture or
/// tokenizer), MAZE_STATUS_CANCELLED (progress callback returned false), among others.
#[no_mangle]
pub unsafe extern "C" fn maze_engine_new(model_path: *const c_char, params: *const maze_engine_params, out_engine: *mut *mut maze_engine, error: *mut *mut maze_error) -> maze_status {
    ffi_call!(error, {
        let path = arg_cstr(model_path, "model_path")?;
        arg_out(out_engine, "out_engine")?;
        let p = read_params(params, maze_engine_params_default(), "params")?;
        let tokenizer_path = if p.tokenizer_path.is_null() { None } else { Some(PathBuf::from(arg_cstr(p.tokenizer_path, "params.tokenizer_path")?)) };
        let config = EngineConfig {
            model_path: PathBuf::from(path),
            tokenizer_path,
            threads: p.n_threads as usize,
            context_length: p.n_ctx as usize,
            seed: (p.seed != MAZE_SEED_RANDOM).then_some(p.seed),
            constraint_cache_limit: p.constraint_cache_limit as usize,
        };
        let (callback, userdata) = (p.progress_callback, p.progress_userdata);
        let mut progress = move |f: f32| match callback {
            Some(cb) => cb(f, userdata),
            None => true,
        };
        let engine = Engine::load(&config, Some(&mut progress))?;
        let name = CString::new(engine.info().name.replace('\0', "")).unwrap_or_default();
        let architecture = CString::new(engine.info().architecture.replace('\0', "")).unwrap_or_default();
        write_out(out_engine, Box::into_raw(Box::new(maze_engine { engine, name, architecture })), "out_engine")
    })
}

/// Frees an engine. NULL is a no-op. Sessions opened on it remain usable; the model is released
/// when the last of them is freed too.
#[no_mangle]
pub unsafe extern "C" fn maze_engine_free(engine: *mut maze_engine) {
    ffi_infallible!((), {
        if !engine.is_null() {
            drop(Box::from_raw(engine));
        }
    })
}

/// Model name from the GGUF metadata (or the file name). Valid while the engine lives; "" for NULL.
#[no_mangle]
pub unsafe extern "C" fn maze_engine_model_name(engine: *const maze_engine) -> *const c_char {
    ffi_infallible!(c"".as_ptr(), { engine.as_ref().map(|e| e.name.as_ptr()).unwrap_or(c"".as_ptr()) })
}

/// Model architecture, e.g. "llama". Valid while the engine lives; "" for NULL.
#[no_mangle]
pub unsafe extern "C" fn maze_engine_architecture(engine: *const maze_engine) -> *const c_char {
    ffi_infallible!(c"".as_ptr(), { engine.as_ref().map(|e| e.architecture.as_ptr()).unwrap_or(c"".as_ptr()) })
}

/// Vocabulary size (valid token ids are below it); 0 for NULL.
#[no_mangle]
pub unsafe extern "C" fn maze_engine_vocab_size(engine: *const maze_engine) -> u32 {
    ffi_infallible!(0, { engine.as_ref().map(|e| e.engine.info().vocab_size as u32).unwrap_or(0) })
}

/// Context length each session serves, in tokens; 0 for NULL.
#[no_mangle]
pub unsafe extern "C" fn maze_engine_context_length(engine: *const maze_engine) -> u32 {
    ffi_infallible!(0, { engine.as_ref().map(|e| e.engine.info().context_length as u32).unwrap_or(0) })
}

/// Whether the model has a chat template (needed by maze_session_chat); false for NULL.
#[no_mangle]
pub unsafe extern "C" fn maze_engine_has_chat_template(engine: *const maze_engine) -> bool {
    ffi_infallible!(false, { engine.as_ref().map(|e| e.engine.has_chat_template()).unwrap_or(false) })
}

/// The end-of-sequence token id, or -1 when the model declares none (or engine is NULL).
#[no_mangle]
pub unsafe extern "C" fn maze_engine_eos_token(engine: *const maze_engine) -> i64 {
    ffi_infallible!(-1, { engine.as_ref().and_then(|e| e.engine.tokenizer().eos()).map(i64::from).unwrap_or(-1) })
}

/// Whether `token` ends a generation (EOS, EOT, end-of-turn tokens); false for NULL.
#[no_mangle]
pub unsafe extern "C" fn maze_engine_token_is_end_of_generation(engine: *const maze_engine, token: u32) -> bool {
    ffi_infallible!(false, { engine.as_ref().map(|e| e.engine.tokenizer().is_end_of_generation(token)).unwrap_or(false) })
}

/// Writes `needed` into `*out_len` and fails with MAZE_STATUS_BUFFER_TOO_SMALL when `capacity`
/// cannot hold it; this is the one case where an output is written on failure.
unsafe fn check_capacity(needed: usize, capacity: usize, out_len: *mut usize, what: &str) -> FfiResult<()> {
    if needed > capacity {
        out_len.write(needed);
        return Err(FfiError::new(maze_status::BufferTooSmall, format!("{what} needs {needed} but the buffer holds {capacity}")));
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
    ffi_call!(error, {
        let engine = arg_ref(engine, "engine")?;
        let text = arg_str(text, text_len, "text")?;
        arg_out(n_tokens, "n_tokens")?;
        let ids = engine.engine.tokenizer().encode(text, add_special, parse_special)?;
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
pub unsafe extern "C" fn maze_detokenize(
    engine: *const maze_engine,
    tokens: *const u32,
    n_tokens: usize,
    buf: *mut c_char,
    capacity: usize,
    out_len: *mut usize,
    error: *mut *mut maze_error,
) -> maze_status {
    ffi_call!(error, {
        let engine = arg_ref(engine, "engine")?;
        let ids = arg_slice(tokens, n_tokens, "tokens")?;
        arg_out(out_len, "out_len")?;
        let bytes = engine.engine.tokenizer().decode_bytes(ids)?;
        write_text(&bytes, buf, capacity, out_len, "the text")
    })
}

/// Copies bytes + NUL into a caller buffer, with the BUFFER_TOO_SMALL protocol.
pub(crate) unsafe fn write_text(bytes: &[u8], buf: *mut c_char, capacity: usize, out_len: *mut usize, what: &str) -> FfiResult<()> {
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
/// "assistant".
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct maze_chat_message {
    pub role: maze_string,
    pub content: maze_string,
}

pub(crate) unsafe fn read_messages(messages: *const maze_chat_message, n: usize) -> FfiResult<Vec<ChatMessage>> {
    if n == 0 {
        return Err(FfiError::new(maze_status::InvalidArgument, "a chat needs at least one message (n_messages is 0)"));
    }
    arg_slice(messages, n, "messages")?
        .iter()
        .enumerate()
        .map(|(i, m)| Ok(ChatMessage::new(m.role.to_str(&format!("messages[{i}].role"))?, m.content.to_str(&format!("messages[{i}].content"))?)))
        .collect()
}

/// Renders messages with the model's chat template into `buf` (same buffer protocol as
/// maze_detokenize). With `add_generation_prompt` the text ends where the assistant's reply
/// starts. Fails with MAZE_STATUS_TEMPLATE when the model has no template or it rejects the
/// messages.
#[no_mangle]
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
    ffi_call!(error, {
        let engine = arg_ref(engine, "engine")?;
        arg_out(out_len, "out_len")?;
        let messages = read_messages(messages, n_messages)?;
        let text = engine.engine.render_chat(&messages, add_generation_prompt)?;
        write_text(text.as_bytes(), buf, capacity, out_len, "the rendered chat")
    })
}
