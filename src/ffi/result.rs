//! Results: text, tokens, finish reason, statistics.

use std::ffi::{c_char, CString};

use super::{ffi_boundary, maze_status, Handle};
use crate::c_enum::c_side as c_enum;
use crate::result::{FinishReason, GenerationResult};

include!("../tables/finish_reason.rs");

/// A finished generation. Immutable: safe to read from any thread; free once with
/// maze_result_free. Pointers it returns stay valid until then.
pub struct maze_result {
    result: GenerationResult,
    /// The text with a trailing NUL.
    text: Vec<u8>,
    error_message: Option<CString>,
    validation_json: CString,
    provenance_json: CString,
    /// Each tool call's id, name and arguments, NUL-terminated.
    tool_calls: Vec<[CString; 3]>,
}

impl maze_result {
    pub(crate) fn new(result: GenerationResult) -> Self {
        let mut text = result.text.as_bytes().to_vec();
        text.push(0);
        let error_message =
            result.error.as_ref().map(|e| CString::new(e.message().replace('\0', "")).unwrap_or_default());
        let validation_json = CString::new(result.validation_json()).unwrap_or_default();
        let provenance_json = CString::new(result.provenance_json()).unwrap_or_default();
        let c = |s: &str| CString::new(s.replace('\0', "")).unwrap_or_default();
        let tool_calls = result.tool_calls.iter().map(|t| [c(&t.id), c(&t.name), c(&t.arguments)]).collect();
        Self { result, text, error_message, validation_json, provenance_json, tool_calls }
    }
}

impl Handle for maze_result {}

/// A getter: `$e` of the result, or `$default` for NULL.
macro_rules! getter {
    ($r:expr, $default:expr, |$x:ident| $e:expr) => {
        ffi_boundary!({ maze_result::from_nullable($r).map(|$x: &maze_result| $e).unwrap_or($default) })
    };
}

/// Generated text (UTF-8, NUL-terminated; it may itself contain NUL bytes, so prefer `*len`).
/// `len` may be NULL. "" for a NULL result.
#[no_mangle]
pub unsafe extern "C" fn maze_result_text(result: *const maze_result, len: *mut usize) -> *const c_char {
    ffi_boundary!({
        let (ptr, n) = match maze_result::from_nullable(result) {
            Some(r) => (r.text.as_ptr() as *const c_char, r.text.len() - 1),
            None => (c"".as_ptr(), 0),
        };
        if !len.is_null() {
            len.write(n);
        }
        ptr
    })
}

/// Generated token ids; their count goes to `*n` (may be NULL). NULL when there are none.
#[no_mangle]
pub unsafe extern "C" fn maze_result_tokens(result: *const maze_result, n: *mut usize) -> *const u32 {
    ffi_boundary!({
        let tokens = maze_result::from_nullable(result).map(|r| r.result.tokens.as_slice()).unwrap_or(&[]);
        if !n.is_null() {
            n.write(tokens.len());
        }
        if tokens.is_empty() {
            std::ptr::null()
        } else {
            tokens.as_ptr()
        }
    })
}

/// Log-probability of each generated token under the model (natural log), one per token; NULL
/// (and *n = 0) unless params.logprobs was set.
#[no_mangle]
pub unsafe extern "C" fn maze_result_logprobs(result: *const maze_result, n: *mut usize) -> *const f32 {
    ffi_boundary!({
        let lps =
            maze_result::from_nullable(result).and_then(|r| r.result.logprobs.as_deref()).unwrap_or(&[]);
        if !n.is_null() {
            n.write(lps.len());
        }
        if lps.is_empty() {
            std::ptr::null()
        } else {
            lps.as_ptr()
        }
    })
}

/// Why generation ended; MAZE_FINISH_ERROR for a NULL result.
#[no_mangle]
pub unsafe extern "C" fn maze_result_finish_reason(result: *const maze_result) -> maze_finish_reason {
    getter!(result, maze_finish_reason::Error, |r| r.result.finish_reason.into())
}

/// Name of a finish reason: "stop", "length", "stop_sequence", "cancelled", "timeout", "error";
/// "unknown" otherwise. Static string.
#[no_mangle]
pub extern "C" fn maze_finish_reason_name(reason: i32) -> *const c_char {
    maze_finish_reason::from_raw(reason.into()).map_or(c"unknown", maze_finish_reason::name).as_ptr()
}

/// Status of a midway failure (finish reason MAZE_FINISH_ERROR); MAZE_STATUS_OK otherwise.
#[no_mangle]
pub unsafe extern "C" fn maze_result_error_status(result: *const maze_result) -> maze_status {
    getter!(result, maze_status::NullArgument, |r| r
        .result
        .error
        .as_ref()
        .map(|e| e.kind().into())
        .unwrap_or(maze_status::Ok))
}

/// Message of a midway failure; NULL when there was none.
#[no_mangle]
pub unsafe extern "C" fn maze_result_error_message(result: *const maze_result) -> *const c_char {
    ffi_boundary!({ maze_result::from_nullable(result).and_then(|r| r.error_message.as_deref()) })
}

/// Tokens in the prompt (reused from the cache or computed).
#[no_mangle]
pub unsafe extern "C" fn maze_result_prompt_tokens(result: *const maze_result) -> u32 {
    getter!(result, 0, |r| r.result.stats.prompt_tokens as u32)
}

/// Prompt tokens not recomputed: reused from the session's KV cache, or copied from another
/// (live, closed or reset) session's identical prefix.
#[no_mangle]
pub unsafe extern "C" fn maze_result_cached_tokens(result: *const maze_result) -> u32 {
    getter!(result, 0, |r| r.result.stats.cached_tokens as u32)
}

/// Tokens generated (and delivered).
#[no_mangle]
pub unsafe extern "C" fn maze_result_generated_tokens(result: *const maze_result) -> u32 {
    getter!(result, 0, |r| r.result.stats.generated_tokens as u32)
}

/// Milliseconds from the call to the first generated token (queueing and prefill included).
#[no_mangle]
pub unsafe extern "C" fn maze_result_time_to_first_token_ms(result: *const maze_result) -> f64 {
    getter!(result, 0.0, |r| r.result.stats.time_to_first_token.as_secs_f64() * 1e3)
}

/// Milliseconds from the call to the end of generation.
#[no_mangle]
pub unsafe extern "C" fn maze_result_total_time_ms(result: *const maze_result) -> f64 {
    getter!(result, 0.0, |r| r.result.stats.total_time.as_secs_f64() * 1e3)
}

/// Decode speed: generated tokens per second after the first token.
#[no_mangle]
pub unsafe extern "C" fn maze_result_tokens_per_second(result: *const maze_result) -> f64 {
    getter!(result, 0.0, |r| r.result.stats.decode_tokens_per_second)
}

/// Prefill speed: prompt tokens computed per second.
#[no_mangle]
pub unsafe extern "C" fn maze_result_prefill_tokens_per_second(result: *const maze_result) -> f64 {
    getter!(result, 0.0, |r| r.result.stats.prefill_tokens_per_second)
}

/// True when every constraint of the request was enforced on every token and the output is
/// complete under it (true without constraints); false for NULL.
#[no_mangle]
pub unsafe extern "C" fn maze_result_constraints_satisfied(result: *const maze_result) -> bool {
    getter!(result, false, |r| r.result.constraints_satisfied())
}

/// Validation as JSON: `{"satisfied": bool, "constraints": [{"name", "kind", "priority",
/// "outcome": "satisfied"|"violated"|"relaxed", "reason"?}], "stats": {"compile_time_us",
/// "setup_time_us", "mean_mask_time_us", "masks_computed", "forced_tokens"} | null}`. Valid
/// until maze_result_free; "" for NULL.
#[no_mangle]
pub unsafe extern "C" fn maze_result_validation_json(result: *const maze_result) -> *const c_char {
    getter!(result, c"".as_ptr(), |r| r.validation_json.as_ptr())
}

/// Provenance as JSON: model, architecture, created_unix_ms, constraints (name, kind,
/// priority), sampling parameters, the seed used, max_tokens, stop. Valid until
/// maze_result_free; "" for NULL.
#[no_mangle]
pub unsafe extern "C" fn maze_result_provenance_json(result: *const maze_result) -> *const c_char {
    getter!(result, c"".as_ptr(), |r| r.provenance_json.as_ptr())
}

/// Time spent compiling the request's constraints, in microseconds (cache hits cost little).
#[no_mangle]
pub unsafe extern "C" fn maze_result_constraint_compile_time_us(result: *const maze_result) -> f64 {
    getter!(result, 0.0, |r| r.result.constraint_stats.map(|s| s.compile_time_us).unwrap_or(0.0))
}

/// Of maze_result_constraint_compile_time_us, the engine's one-time constraint setup (token trie
/// and parser factory, 0.1-1 s with the vocabulary) this request waited for: nonzero only on the
/// engine's first constrained request, and never when maze_engine_params.prepare_constraints
/// built it at load (maze_engine_constraint_setup_time_us says what it cost).
#[no_mangle]
pub unsafe extern "C" fn maze_result_constraint_setup_time_us(result: *const maze_result) -> f64 {
    getter!(result, 0.0, |r| r.result.constraint_stats.map(|s| s.setup_time_us).unwrap_or(0.0))
}

/// Mean time to compute one token's constraint mask, in microseconds (0 without constraints).
#[no_mangle]
pub unsafe extern "C" fn maze_result_mean_mask_time_us(result: *const maze_result) -> f64 {
    getter!(result, 0.0, |r| r.result.constraint_stats.map(|s| s.mean_mask_time_us).unwrap_or(0.0))
}

/// Tokens the grammar dictated and that were appended without sampling.
#[no_mangle]
pub unsafe extern "C" fn maze_result_forced_tokens(result: *const maze_result) -> u32 {
    getter!(result, 0, |r| r.result.constraint_stats.map(|s| s.forced_tokens as u32).unwrap_or(0))
}

/// Frees a result. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn maze_result_free(result: *mut maze_result) {
    ffi_boundary!({ maze_result::free(result) })
}

/// How many tool calls the reply holds (0 for a NULL result). With calls, the finish reason is
/// MAZE_FINISH_TOOL_CALLS when the model ended them, or the reason they were cut short.
#[no_mangle]
pub unsafe extern "C" fn maze_result_tool_call_count(result: *const maze_result) -> usize {
    getter!(result, 0, |r| r.tool_calls.len())
}

/// Tool call `index` (from 0) of the reply: its id, name and arguments (a JSON object as text;
/// for a call cut short, the part generated). The strings are NUL-terminated and live as long
/// as the result. Fails with MAZE_STATUS_INVALID_ARGUMENT when `index` is past the last call.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn maze_result_tool_call(
    result: *const maze_result,
    index: usize,
    out_call: *mut super::tools::maze_tool_call,
    error: *mut *mut super::maze_error,
) -> maze_status {
    ffi_boundary!(error, {
        let r = maze_result::from_ptr(result, "result")?;
        super::arg_out(out_call, "out_call")?;
        let Some([id, name, arguments]) = r.tool_calls.get(index) else {
            return Err(super::FfiError::new(
                maze_status::InvalidArgument,
                format!(
                    "tool call {index} does not exist: the reply has {} tool call(s)",
                    r.tool_calls.len()
                ),
            ));
        };
        let view = |s: &CString| super::maze_string { data: s.as_ptr(), len: s.as_bytes().len() };
        out_call.write(super::tools::maze_tool_call {
            id: view(id),
            name: view(name),
            arguments: view(arguments),
        });
        Ok(())
    })
}

/// Whether tool call `index` is complete and was generated under the tool grammar throughout,
/// so its arguments validate against the tool's schema (false past the last call and for a
/// NULL result). maze_result_validation_json says why not under "tool_calls".
#[no_mangle]
pub unsafe extern "C" fn maze_result_tool_call_satisfied(result: *const maze_result, index: usize) -> bool {
    getter!(result, false, |r| r.result.tool_call_checks.get(index).is_some_and(|c| c.satisfied))
}
