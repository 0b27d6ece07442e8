//! `maze_error`: an owned error object, so a failure can be read from any thread later (Go's
//! goroutines migrate between OS threads, so a thread-local "last error" would be unsafe).

use std::ffi::{c_char, CString};

use super::{ffi_boundary, maze_status, FfiError, Handle};

/// An error: a status and a message naming the problem. Created by the library on failure,
/// owned by the caller, freed with maze_error_free. Immutable: safe to read from any thread.
pub struct maze_error {
    status: maze_status,
    message: CString,
}

impl Handle for maze_error {}

/// Stores `e` in `*out` (when `out` is non-NULL) and returns its status.
pub(crate) fn report(out: *mut *mut maze_error, e: FfiError) -> maze_status {
    if !out.is_null() {
        let message = CString::new(e.message.replace('\0', "\\0")).unwrap_or_default();
        let boxed = Box::new(maze_error { status: e.status, message });
        // SAFETY: `out` is non-NULL and, per the API contract, points to writable storage.
        unsafe { out.write(Box::into_raw(boxed)) };
    }
    e.status
}

/// Status of an error; MAZE_STATUS_NULL_ARGUMENT for NULL.
#[no_mangle]
pub unsafe extern "C" fn maze_error_status(error: *const maze_error) -> maze_status {
    ffi_boundary!({ maze_error::from_nullable(error).map(|e| e.status).unwrap_or(maze_status::NullArgument) })
}

/// Message of an error (UTF-8, NUL-terminated), valid until maze_error_free. "" for NULL.
#[no_mangle]
pub unsafe extern "C" fn maze_error_message(error: *const maze_error) -> *const c_char {
    ffi_boundary!({ maze_error::from_nullable(error).map(|e| e.message.as_ptr()).unwrap_or(c"".as_ptr()) })
}

/// Frees an error. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn maze_error_free(error: *mut maze_error) {
    ffi_boundary!({ maze_error::free(error) })
}
