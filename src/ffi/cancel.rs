//! Cancel tokens: a caller-owned switch given to generate calls through
//! maze_generate_params.cancel.

use super::{ffi_boundary, maze_error, maze_status, Handle};
use crate::engine::CancelToken;

/// A cancel switch the caller owns, for generate calls (maze_generate_params.cancel). Unlike
/// maze_session_cancel, it has no window to miss: once cancelled it stays cancelled, and every
/// call given it ends with MAZE_FINISH_CANCELLED, at once if it starts after the cancel.
/// Thread-safe: cancel it from any thread at any time; one token may serve many calls, on any
/// sessions, at once. Free it with maze_cancel_token_free; calls already given it keep what they
/// need.
pub struct maze_cancel_token {
    pub(super) token: CancelToken,
}

impl Handle for maze_cancel_token {}

/// Creates a token that is not cancelled. Fails only with MAZE_STATUS_NULL_ARGUMENT.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn maze_cancel_token_new(
    out_token: *mut *mut maze_cancel_token,
    error: *mut *mut maze_error,
) -> maze_status {
    ffi_boundary!(error, { maze_cancel_token { token: CancelToken::new() }.box_into(out_token, "out_token") })
}

/// Cancels the token: every call running with it stops wherever it is (compiling, tokenizing,
/// queued, prefilling, decoding) and every later call given it ends as cancelled before it
/// starts. Idempotent; there is no un-cancel (make a new token). Fails only with
/// MAZE_STATUS_NULL_ARGUMENT.
#[no_mangle]
pub unsafe extern "C" fn maze_cancel_token_cancel(token: *const maze_cancel_token) -> maze_status {
    ffi_boundary!({
        match maze_cancel_token::from_nullable(token) {
            Some(t) => {
                t.token.cancel();
                maze_status::Ok
            }
            None => maze_status::NullArgument,
        }
    })
}

/// Whether the token has been cancelled; false for NULL.
#[no_mangle]
pub unsafe extern "C" fn maze_cancel_token_is_cancelled(token: *const maze_cancel_token) -> bool {
    ffi_boundary!({ maze_cancel_token::from_nullable(token).is_some_and(|t| t.token.is_cancelled()) })
}

/// Frees a token. NULL is a no-op. Calls already given it are unaffected (nothing can cancel them
/// through it any more).
#[no_mangle]
pub unsafe extern "C" fn maze_cancel_token_free(token: *mut maze_cancel_token) {
    ffi_boundary!({ maze_cancel_token::free(token) })
}
