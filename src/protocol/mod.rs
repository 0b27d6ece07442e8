//! Wire formats over HTTP, shared by maze-server and the remote backend so both sides agree.

pub mod maze;
pub mod openai;
pub mod openai_tools;
