//! Backends besides the local engine (`crate::engine`): a remote inference server reached over
//! HTTP.

pub mod remote;
