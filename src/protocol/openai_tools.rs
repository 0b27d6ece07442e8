//! Tool calling in the OpenAI-compatible API: `tools`, `tool_choice` and `parallel_tool_calls`
//! in requests, `tool_calls` in assistant messages and replies (`function.arguments` a JSON
//! string), streamed as `delta.tool_calls` pieces. Read by maze-server, written by the remote
//! backend.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::tools::{StreamEvent, Tool, ToolCall, ToolChoice, ToolFormat, ToolUse};

/// `{"type": "function", "function": {...}}`, the only tool type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionTool {
    #[serde(rename = "type")]
    pub kind: FunctionType,
    pub function: FunctionSpec,
}

/// The tool type: `"function"` (anything else is refused by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FunctionType {
    Function,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    /// OpenAI's strict mode: what Maze always does (arguments are enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// A call in an assistant message or a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_type")]
    pub kind: FunctionType,
    pub function: WireFunctionCall,
}

fn function_type() -> FunctionType {
    FunctionType::Function
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireFunctionCall {
    pub name: String,
    /// JSON text, as OpenAI sends it.
    pub arguments: String,
}

impl From<&ToolCall> for WireToolCall {
    fn from(c: &ToolCall) -> Self {
        Self {
            id: c.id.clone(),
            kind: FunctionType::Function,
            function: WireFunctionCall { name: c.name.clone(), arguments: c.arguments.clone() },
        }
    }
}

impl From<WireToolCall> for ToolCall {
    fn from(c: WireToolCall) -> Self {
        Self { id: c.id, name: c.function.name, arguments: c.function.arguments }
    }
}

/// The tools a request declares, with its choice; `None` when it declares none and asks for
/// nothing. `format`: the server's tool format (`None`: the template's own).
pub fn tool_use(
    tools: Option<&[FunctionTool]>,
    choice: Option<&Value>,
    parallel: Option<bool>,
    format: Option<ToolFormat>,
) -> Result<Option<ToolUse>> {
    let declared: Vec<Tool> = tools
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let f = &t.function;
            Tool::new(
                f.name.clone(),
                f.description.clone().unwrap_or_default(),
                f.parameters.clone().unwrap_or_else(|| json!({"type": "object"})),
            )
        })
        .collect();
    let choice = match choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(Error::invalid_argument(format!(
                    "tool_choice \"{other}\" is not one of \"auto\", \"none\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"
                )))
            }
        },
        Some(object @ Value::Object(_)) => match object.pointer("/function/name").and_then(Value::as_str) {
            Some(name) if object.get("type").and_then(Value::as_str) == Some("function") => {
                ToolChoice::Named(name.to_string())
            }
            _ => {
                return Err(Error::invalid_argument(format!(
                    "tool_choice {object} is not {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"
                )))
            }
        },
        Some(other) => {
            return Err(Error::invalid_argument(format!(
                "tool_choice must be a string or an object, got {}",
                super::openai::json_kind(other)
            )))
        }
    };
    if declared.is_empty() && matches!(choice, ToolChoice::Auto | ToolChoice::None) {
        return Ok(None);
    }
    let mut tools = ToolUse::new(declared).with_choice(choice);
    tools.parallel = parallel.unwrap_or(true);
    tools.format = format;
    Ok(Some(tools))
}

/// The request fields that carry `tools` to a server: (tools, tool_choice, parallel_tool_calls).
pub fn request_fields(tools: &ToolUse) -> (Vec<FunctionTool>, Value, bool) {
    let declared = tools
        .tools
        .iter()
        .map(|t| FunctionTool {
            kind: FunctionType::Function,
            function: FunctionSpec {
                name: t.name.clone(),
                description: (!t.description.is_empty()).then(|| t.description.clone()),
                parameters: Some(t.parameters.clone()),
                strict: None,
            },
        })
        .collect();
    let choice = match &tools.choice {
        ToolChoice::Auto => json!("auto"),
        ToolChoice::None => json!("none"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Named(name) => json!({"type": "function", "function": {"name": name}}),
    };
    (declared, choice, tools.parallel)
}

/// A reply's calls as `message.tool_calls`.
pub fn calls_value(calls: &[ToolCall]) -> Value {
    Value::Array(
        calls.iter().map(|c| serde_json::to_value(WireToolCall::from(c)).unwrap_or_default()).collect(),
    )
}

/// One streamed piece of a call as the `delta` of a chat chunk: the first for a call carries
/// its index, id, type and name with empty arguments; the others the index and a fragment.
pub fn delta_value(event: &StreamEvent) -> Option<Value> {
    match event {
        StreamEvent::CallStart { index, id, name } => Some(json!({"tool_calls": [{
            "index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]})),
        StreamEvent::CallArguments { index, fragment } => {
            Some(json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}))
        }
        StreamEvent::Text(_) => None,
    }
}

/// Reads a streamed `delta.tool_calls` back into call pieces (what a server sends).
pub fn delta_events(delta: &Value) -> Vec<StreamEvent> {
    let mut out = Vec::new();
    for piece in delta.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        let index = piece.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        let function = piece.get("function");
        if let Some(name) = function.and_then(|f| f.get("name")).and_then(Value::as_str) {
            let id = piece.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
            out.push(StreamEvent::CallStart { index, id, name: name.to_string() });
        }
        if let Some(fragment) = function.and_then(|f| f.get("arguments")).and_then(Value::as_str) {
            if !fragment.is_empty() {
                out.push(StreamEvent::CallArguments { index, fragment: fragment.to_string() });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(v: Value) -> Vec<FunctionTool> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn openai_tool_fields_map_to_a_tool_use_and_back() {
        let declared = tools(json!([{"type": "function", "function": {"name": "f", "description": "d",
            "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}, "strict": true}}]));
        let named = json!({"type": "function", "function": {"name": "f"}});
        let u = tool_use(Some(&declared), Some(&named), Some(false), None).unwrap().unwrap();
        assert_eq!((u.choice.clone(), u.parallel), (ToolChoice::Named("f".into()), false));
        assert_eq!(u.tools[0].description, "d");
        let (again, choice, parallel) = request_fields(&u);
        assert_eq!((again[0].function.name.as_str(), choice, parallel), ("f", named, false));
        assert_eq!(tool_use(None, Some(&json!("none")), None, None).unwrap(), None);
        let required = tool_use(Some(&declared), Some(&json!("required")), None, None).unwrap().unwrap();
        assert_eq!((required.choice, required.parallel), (ToolChoice::Required, true));
    }

    #[test]
    fn bad_tool_fields_are_refused_naming_them() {
        let err =
            |choice: Value| tool_use(None, Some(&choice), None, None).unwrap_err().message().to_string();
        assert!(err(json!("sometimes")).contains("tool_choice \"sometimes\""));
        assert!(err(json!({"type": "function"})).contains("is not {\"type\": \"function\""));
        assert!(err(json!(3)).contains("a number"));
        let bad: std::result::Result<Vec<FunctionTool>, _> =
            serde_json::from_value(json!([{"type": "retrieval", "function": {"name": "f"}}]));
        assert!(bad.unwrap_err().to_string().contains("unknown variant `retrieval`"));
    }

    #[test]
    fn stream_pieces_round_trip_through_openai_deltas() {
        let events = [
            StreamEvent::CallStart { index: 1, id: "call_x".into(), name: "f".into() },
            StreamEvent::CallArguments { index: 1, fragment: "{\"a\": ".into() },
        ];
        let back: Vec<StreamEvent> =
            events.iter().flat_map(|e| delta_events(&delta_value(e).unwrap())).collect();
        assert_eq!(back, events);
        assert_eq!(
            delta_value(&events[0]).unwrap()["tool_calls"][0],
            json!({"index": 1, "id": "call_x", "type": "function", "function": {"name": "f", "arguments": ""}})
        );
    }
}
