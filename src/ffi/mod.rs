//! The C ABI. The only module with `extern "C"` and raw pointers; everything here converts at
//! the edge and calls the safe Rust API.
//!
//! Conventions (see DESIGN.md): every fallible function returns `maze_status` and takes a
//! trailing `maze_error **error` (may be NULL) that receives an owned error object on failure;
//! outputs are written only on success; every function runs inside a panic boundary; free
//! functions accept NULL.

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)]

// The header groups these modules' items into sections (see SECTIONS in build.rs).
mod boundary;
pub mod cancel;
pub mod constraint;
pub mod engine;
pub mod error;
pub mod result;
pub mod session;
pub mod tools;

use std::ffi::{c_char, CStr};

use crate::c_enum::c_side as c_enum;
use crate::error::{Error, ErrorKind};
pub(crate) use boundary::{ffi_boundary, Handle};
pub use error::maze_error;

/// ABI version of this header and library. Bumped on any incompatible change. Parameter structs
/// carry `struct_size`, so adding fields at their end is compatible and does not bump it.
///
/// 2: maze_chat_message starts with `struct_size` and carries tool calls (0 there is read as
/// this header's size, so `{.role = ..., .content = ...}` initialisers keep working).
pub const MAZE_ABI_VERSION: u32 = 2;

/// Seed value meaning "draw a fresh seed" (from the engine's seed sequence).
pub const MAZE_SEED_RANDOM: u64 = u64::MAX;

include!("../tables/status.rs");

/// A failure at the ABI edge: a status and a message naming the problem.
#[derive(Debug, Clone)]
pub(crate) struct FfiError {
    pub status: maze_status,
    pub message: String,
}

impl FfiError {
    pub fn new(status: maze_status, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    pub fn null(arg: &str) -> Self {
        Self::new(maze_status::NullArgument, format!("argument '{arg}' must not be NULL"))
    }
}

impl From<Error> for FfiError {
    fn from(e: Error) -> Self {
        Self::new(e.kind().into(), e.message())
    }
}

pub(crate) type FfiResult<T> = Result<T, FfiError>;

/// A non-NULL reference or a NullArgument error naming `arg`.
pub(crate) unsafe fn arg_ref<'a, T>(p: *const T, arg: &str) -> FfiResult<&'a T> {
    p.as_ref().ok_or_else(|| FfiError::null(arg))
}

/// `(ptr, len)` text. NULL is allowed only with `len == 0`.
pub(crate) unsafe fn arg_str<'a>(p: *const c_char, len: usize, arg: &str) -> FfiResult<&'a str> {
    let bytes = arg_slice(p as *const u8, len, arg)?;
    std::str::from_utf8(bytes).map_err(|e| {
        FfiError::new(
            maze_status::InvalidUtf8,
            format!("argument '{arg}' is not valid UTF-8 (invalid byte at offset {})", e.valid_up_to()),
        )
    })
}

/// NUL-terminated text.
pub(crate) unsafe fn arg_cstr<'a>(p: *const c_char, arg: &str) -> FfiResult<&'a str> {
    if p.is_null() {
        return Err(FfiError::null(arg));
    }
    CStr::from_ptr(p).to_str().map_err(|e| {
        FfiError::new(
            maze_status::InvalidUtf8,
            format!("argument '{arg}' is not valid UTF-8 (invalid byte at offset {})", e.valid_up_to()),
        )
    })
}

/// `(ptr, count)` array. NULL is allowed only with `count == 0`. A count no array can have
/// (more than `isize::MAX` bytes, e.g. `SIZE_MAX` passed for "unknown") is refused before the
/// memory is touched: a slice that long is undefined behaviour even unread.
pub(crate) unsafe fn arg_slice<'a, T>(p: *const T, count: usize, arg: &str) -> FfiResult<&'a [T]> {
    if count == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(FfiError::null(arg));
    }
    let most = isize::MAX as usize / std::mem::size_of::<T>().max(1);
    if count > most {
        return Err(FfiError::new(
            maze_status::InvalidArgument,
            format!("argument '{arg}' has length {count}, more than any array can hold (at most {most})"),
        ));
    }
    Ok(std::slice::from_raw_parts(p, count))
}

/// Reads an extensible parameter struct: NULL = defaults; an older (smaller) struct keeps the
/// defaults for the fields it lacks; a newer (larger) one is refused.
pub(crate) unsafe fn read_params<T: Copy>(p: *const T, defaults: T, arg: &str) -> FfiResult<T> {
    if p.is_null() {
        return Ok(defaults);
    }
    let size = std::ptr::read_unaligned(p as *const u32) as usize;
    let known = std::mem::size_of::<T>();
    if size > known {
        return Err(FfiError::new(
            maze_status::AbiMismatch,
            format!("'{arg}' has struct_size {size} but this library knows {known} bytes: the caller was built against a newer maze.h"),
        ));
    }
    if size < std::mem::size_of::<u64>() {
        return Err(FfiError::new(
            maze_status::InvalidArgument,
            format!("'{arg}' has struct_size {size}; initialise it with its *_default() function"),
        ));
    }
    let mut out = defaults;
    std::ptr::copy_nonoverlapping(p as *const u8, &mut out as *mut T as *mut u8, size);
    Ok(out)
}

/// Fails if an out-pointer is NULL: checked before any work, so bad arguments cost nothing.
pub(crate) fn arg_out<T>(p: *mut T, arg: &str) -> FfiResult<()> {
    if p.is_null() {
        return Err(FfiError::null(arg));
    }
    Ok(())
}

/// Writes an output, or fails if the out-pointer is NULL.
pub(crate) unsafe fn write_out<T>(p: *mut T, value: T, arg: &str) -> FfiResult<()> {
    arg_out(p, arg)?;
    p.write(value);
    Ok(())
}

/// Text as passed across the ABI: a pointer and a length in bytes (UTF-8, no NUL needed).
/// `data` may be NULL when `len` is 0.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct maze_string {
    pub data: *const c_char,
    pub len: usize,
}

impl maze_string {
    pub(crate) unsafe fn to_str<'a>(self, arg: &str) -> FfiResult<&'a str> {
        arg_str(self.data, self.len, arg)
    }
}

static VERSION_CSTR: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

/// Library version as "MAJOR.MINOR.PATCH". Static string; never NULL.
#[no_mangle]
pub extern "C" fn maze_version() -> *const c_char {
    VERSION_CSTR.as_ptr() as *const c_char
}

/// ABI version of the loaded library; compare with MAZE_ABI_VERSION from the header you built with.
#[no_mangle]
pub extern "C" fn maze_abi_version() -> u32 {
    MAZE_ABI_VERSION
}

/// Name of a status code, e.g. "MAZE_STATUS_BUSY". Static string; "MAZE_STATUS_UNKNOWN" for
/// values this library does not define.
#[no_mangle]
pub extern "C" fn maze_status_name(status: i32) -> *const c_char {
    maze_status::from_raw(status.into()).map_or(c"MAZE_STATUS_UNKNOWN", maze_status::enumerator).as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr;

    extern "C" fn always_panics(error: *mut *mut maze_error) -> maze_status {
        ffi_boundary!(error, {
            let v: Vec<u32> = Vec::new();
            let _ = v[3]; // index out of bounds
            Ok(())
        })
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_readable_error() {
        let mut err: *mut maze_error = ptr::null_mut();
        let status = always_panics(&mut err);
        assert_eq!(status, maze_status::Panic);
        assert!(!err.is_null());
        unsafe {
            assert_eq!(error::maze_error_status(err), maze_status::Panic);
            let msg = CStr::from_ptr(error::maze_error_message(err)).to_str().unwrap();
            assert!(msg.contains("index out of bounds"), "{msg}");
            error::maze_error_free(err);
        }
        // No error pointer: still no unwind across the boundary.
        assert_eq!(always_panics(ptr::null_mut()), maze_status::Panic);
    }

    #[test]
    fn status_names_match_the_enum() {
        let name = |s: maze_status| unsafe { CStr::from_ptr(maze_status_name(s as i32)).to_str().unwrap() };
        assert_eq!(name(maze_status::Ok), "MAZE_STATUS_OK");
        assert_eq!(name(maze_status::Panic), "MAZE_STATUS_PANIC");
        assert_eq!(unsafe { CStr::from_ptr(maze_status_name(999)) }.to_str().unwrap(), "MAZE_STATUS_UNKNOWN");
    }

    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct P {
        struct_size: u32,
        a: u32,
        b: u64,
    }

    #[test]
    fn params_from_older_newer_and_garbage_callers() {
        let d = P { struct_size: 16, a: 1, b: 2 };
        let old = P { struct_size: 8, a: 9, b: 99 };
        assert_eq!(unsafe { read_params(&old, d, "p") }.unwrap(), P { struct_size: 8, a: 9, b: 2 });
        let newer = P { struct_size: 24, a: 9, b: 99 };
        assert_eq!(unsafe { read_params(&newer, d, "p") }.unwrap_err().status, maze_status::AbiMismatch);
        let zero = P { struct_size: 0, a: 9, b: 99 };
        assert_eq!(unsafe { read_params(&zero, d, "p") }.unwrap_err().status, maze_status::InvalidArgument);
        assert_eq!(unsafe { read_params(ptr::null(), d, "p") }.unwrap(), d);
    }

    #[test]
    fn invalid_utf8_is_an_error_naming_the_argument() {
        let bad = [b'o', b'k', 0xff];
        let e = unsafe { arg_str(bad.as_ptr() as *const c_char, 3, "prompt") }.unwrap_err();
        assert_eq!(e.status, maze_status::InvalidUtf8);
        assert!(e.message.contains("'prompt'") && e.message.contains("offset 2"), "{}", e.message);
        assert_eq!(unsafe { arg_str(ptr::null(), 0, "x") }.unwrap(), "");
        assert_eq!(unsafe { arg_str(ptr::null(), 2, "x") }.unwrap_err().status, maze_status::NullArgument);
    }

    #[test]
    fn a_length_past_the_address_space_is_refused_unread() {
        let one = [7u32];
        let e = unsafe { arg_slice(one.as_ptr(), usize::MAX, "tokens") }.unwrap_err();
        assert_eq!(e.status, maze_status::InvalidArgument);
        assert!(e.message.contains("'tokens'") && e.message.contains("more than any array"), "{}", e.message);
        let most = isize::MAX as usize / 4;
        assert_eq!(
            unsafe { arg_slice(one.as_ptr(), most + 1, "t") }.unwrap_err().status,
            maze_status::InvalidArgument
        );
        let e = unsafe { arg_str(c"a".as_ptr(), usize::MAX, "prompt") }.unwrap_err();
        assert_eq!(e.status, maze_status::InvalidArgument);
        assert_eq!(unsafe { arg_slice(one.as_ptr(), 1, "t") }.unwrap(), &[7]);
    }
}
