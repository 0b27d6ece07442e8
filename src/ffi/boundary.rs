//! The edge every extern fn goes through: one panic boundary ([`ffi_boundary!`], with [`ToC`]
//! saying what each kind of body gives the C caller, also when it panics) and the conversion
//! between handles and raw pointers ([`Handle`]).

use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::error::{maze_error, report};
use super::result::maze_finish_reason;
use super::{arg_out, arg_ref, maze_status, FfiError, FfiResult};
use crate::error::Error;

/// Runs an extern fn's body inside the panic boundary: a panic never unwinds into C.
///
/// `ffi_boundary!(error, { ... })`: a fallible body returning `FfiResult<()>`; the caller gets
/// its status, and a failure (a panic too) goes to `*error` when `error` is non-NULL.
/// `ffi_boundary!({ ... })`: a getter or free function; the caller gets the body's value, or
/// the neutral value [`ToC::on_panic`] gives for its type.
macro_rules! ffi_boundary {
    ($error:expr, $body:block) => {
        $crate::ffi::boundary::catch($error, || -> $crate::ffi::FfiResult<()> { $body })
    };
    ($body:block) => {
        $crate::ffi::boundary::catch(::std::ptr::null_mut(), || $body)
    };
}

pub(crate) use ffi_boundary;

/// Runs `body`, turning what it returns (or its panic) into what the C caller gets.
pub(crate) fn catch<R: ToC>(error: *mut *mut maze_error, body: impl FnOnce() -> R) -> R::C {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value.to_c(error),
        Err(payload) => R::on_panic(error, Error::from_panic(payload.as_ref()).into()),
    }
}

/// What an extern fn's body returns, as the C caller receives it.
pub(crate) trait ToC {
    type C;
    /// The value for the caller; a failure is reported through `error` (may be NULL).
    fn to_c(self, error: *mut *mut maze_error) -> Self::C;
    /// What the caller gets when the body panicked.
    fn on_panic(error: *mut *mut maze_error, panic: FfiError) -> Self::C;
}

impl ToC for FfiResult<()> {
    type C = maze_status;

    fn to_c(self, error: *mut *mut maze_error) -> maze_status {
        match self {
            Ok(()) => maze_status::Ok,
            Err(e) => report(error, e),
        }
    }

    fn on_panic(error: *mut *mut maze_error, panic: FfiError) -> maze_status {
        report(error, panic)
    }
}

/// A text the caller may be handed or not: NULL when there is none, and after a panic.
impl ToC for Option<&CStr> {
    type C = *const c_char;

    fn to_c(self, _: *mut *mut maze_error) -> *const c_char {
        self.map_or(std::ptr::null(), CStr::as_ptr)
    }

    fn on_panic(_: *mut *mut maze_error, _: FfiError) -> *const c_char {
        std::ptr::null()
    }
}

/// Values handed to C as they are; after a panic, the value the getters give for NULL.
macro_rules! plain_to_c {
    ($($type:ty => $on_panic:expr),* $(,)?) => {$(
        impl ToC for $type {
            type C = Self;

            fn to_c(self, _: *mut *mut maze_error) -> Self {
                self
            }

            fn on_panic(_: *mut *mut maze_error, _: FfiError) -> Self {
                $on_panic
            }
        }
    )*};
}

plain_to_c! {
    () => (),
    bool => false,
    u32 => 0,
    usize => 0,
    f64 => 0.0,
    // The only i64 getter answers a token id, -1 meaning none.
    i64 => -1,
    maze_status => maze_status::Panic,
    maze_finish_reason => maze_finish_reason::Error,
    // Strings the getters promise are never NULL.
    *const c_char => c"".as_ptr(),
    *const u32 => std::ptr::null(),
    *const f32 => std::ptr::null(),
}

/// An opaque handle the library boxes, hands to C, and takes back.
pub(crate) trait Handle: Sized {
    /// The handle behind `ptr`, or a NullArgument error naming `arg`.
    unsafe fn from_ptr<'a>(ptr: *const Self, arg: &str) -> FfiResult<&'a Self> {
        arg_ref(ptr, arg)
    }

    /// The handle behind `ptr`; `None` for NULL, which getters answer with a neutral value.
    unsafe fn from_nullable<'a>(ptr: *const Self) -> Option<&'a Self> {
        ptr.as_ref()
    }

    /// Boxes the handle into `*out`; a NULL `out` fails before anything is allocated.
    unsafe fn box_into(self, out: *mut *mut Self, arg: &str) -> FfiResult<()> {
        arg_out(out, arg)?;
        out.write(Box::into_raw(Box::new(self)));
        Ok(())
    }

    /// Frees a handle made by [`Handle::box_into`]; NULL is a no-op.
    unsafe fn free(ptr: *mut Self) {
        if !ptr.is_null() {
            drop(Box::from_raw(ptr));
        }
    }
}
