//! Tool calling at the C edge: tool declarations and calls in, a reply's calls out.

use std::ffi::c_void;

use super::{arg_slice, c_enum, maze_status, maze_string, FfiError, FfiResult};
use crate::tools::ToolChoiceKind;
use crate::tools::{StreamEvent, Tool, ToolCall, ToolChoice, ToolFormat, ToolUse};

include!("../tables/tool_format.rs");
include!("../tables/tool_choice.rs");

/// A tool the model may call: its name (^[A-Za-z0-9_-]{1,64}$, unique), what it does, and a
/// JSON schema for its arguments object as JSON text (empty = any object).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct maze_tool {
    pub name: maze_string,
    pub description: maze_string,
    pub parameters_json: maze_string,
}

/// A tool call: in an assistant message of a chat history (the calls it made), and as a result
/// gives it back (maze_result_tool_call; the strings then live as long as the result).
/// `arguments` is a JSON object as text.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct maze_tool_call {
    pub id: maze_string,
    pub name: maze_string,
    pub arguments: maze_string,
}

/// A piece of a streamed tool call: the first for a call has its `id` and `name` (and empty
/// `arguments`); each later one a fragment of its arguments JSON, in order (`id` and `name`
/// empty). Strings are valid only during the callback.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct maze_tool_call_delta {
    /// The call's place in the reply, from 0.
    pub index: usize,
    pub id: maze_string,
    pub name: maze_string,
    pub arguments: maze_string,
}

/// Receives tool-call pieces while a reply streams (maze_generate_params.tool_callback). Runs
/// on the thread that called the generate function, like maze_stream_callback, under the same
/// rules; return false to stop generating.
pub type maze_tool_call_callback =
    Option<unsafe extern "C" fn(delta: *const maze_tool_call_delta, userdata: *mut c_void) -> bool>;

/// The tools fields of maze_generate_params, read into the core's declaration (`None` when no
/// tools are declared and the choice asks for none).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn read_tool_use(
    tools: *const maze_tool,
    n_tools: usize,
    choice: u32,
    choice_name: maze_string,
    parallel: bool,
    max_calls: u32,
    format: u32,
) -> FfiResult<Option<ToolUse>> {
    let kind =
        maze_tool_choice::from_raw(choice.into()).and_then(maze_tool_choice::to_core).ok_or_else(|| {
            FfiError::new(
                maze_status::InvalidArgument,
                format!("params.tool_choice {choice} is not a maze_tool_choice"),
            )
        })?;
    let format = match maze_tool_format::from_raw(format.into()) {
        Some(f) => f.to_core(),
        None => {
            return Err(FfiError::new(
                maze_status::InvalidArgument,
                format!("params.tool_format {format} is not a maze_tool_format"),
            ))
        }
    };
    let declared = arg_slice(tools, n_tools, "params.tools")?
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let parameters = t.parameters_json.to_str(&format!("params.tools[{i}].parameters_json"))?;
            let parameters = match parameters.trim() {
                "" => serde_json::json!({"type": "object"}),
                text => serde_json::from_str(text).map_err(|e| {
                    FfiError::new(
                        maze_status::InvalidConstraint,
                        format!("params.tools[{i}].parameters_json is not JSON: {e}"),
                    )
                })?,
            };
            Ok(Tool::new(
                t.name.to_str(&format!("params.tools[{i}].name"))?,
                t.description.to_str(&format!("params.tools[{i}].description"))?,
                parameters,
            ))
        })
        .collect::<FfiResult<Vec<_>>>()?;
    let name = choice_name.to_str("params.tool_choice_name")?;
    let choice = ToolChoice::from_kind(kind, name)?;
    if declared.is_empty() && choice == ToolChoice::Auto {
        return Ok(None);
    }
    Ok(Some(ToolUse { tools: declared, choice, parallel, max_calls: max_calls as usize, format }))
}

/// An assistant message's calls.
pub(crate) unsafe fn read_tool_calls(
    calls: *const maze_tool_call,
    n: usize,
    at: &str,
) -> FfiResult<Vec<ToolCall>> {
    arg_slice(calls, n, &format!("{at}.tool_calls"))?
        .iter()
        .enumerate()
        .map(|(j, c)| {
            let field = |s: maze_string, name: &str| {
                s.to_str(&format!("{at}.tool_calls[{j}].{name}")).map(str::to_string)
            };
            Ok(ToolCall {
                id: field(c.id, "id")?,
                name: field(c.name, "name")?,
                arguments: field(c.arguments, "arguments")?,
            })
        })
        .collect()
}

/// Hands one streamed tool-call piece to the caller's callback; true when there is none.
pub(crate) unsafe fn deliver_tool_event(
    event: &StreamEvent,
    callback: maze_tool_call_callback,
    userdata: *mut c_void,
) -> bool {
    let Some(cb) = callback else { return true };
    let view = |s: &str| maze_string { data: s.as_ptr() as *const _, len: s.len() };
    let delta = match event {
        StreamEvent::CallStart { index, id, name } => {
            maze_tool_call_delta { index: *index, id: view(id), name: view(name), arguments: view("") }
        }
        StreamEvent::CallArguments { index, fragment } => {
            maze_tool_call_delta { index: *index, id: view(""), name: view(""), arguments: view(fragment) }
        }
        StreamEvent::Text(_) => return true,
    };
    cb(&delta, userdata)
}
