//! Call syntaxes: how each model family writes a tool call, found from its chat template (as
//! llama.cpp's common/chat.cpp tells them apart), and the generic format for templates that
//! cannot render tools: the tools described in a system message, calls written Hermes-style.

use serde_json::{json, Value};

use super::{Tool, ToolUse};
use crate::error::{Error, ErrorKind, Result};
use crate::model::chat::ChatMessage;

use crate::c_enum::rust_side as c_enum;
include!("../tables/tool_format.rs");

/// How calls are written, per format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallSyntax {
    /// Text that starts the first call; `None` when a call is a bare JSON object.
    pub open: Option<&'static str>,
    /// Between two calls.
    pub between: &'static str,
    /// After the last call.
    pub close: &'static str,
    /// The JSON key of the arguments object ("name" is always the first key).
    pub arguments_key: &'static str,
    /// Text may come before the first call.
    pub text_before: bool,
    /// A reply that starts with `{` is a call even without `open` (small Qwen models often
    /// write their calls bare).
    pub bare_call: bool,
    /// Calls one reply may hold.
    pub max_calls: usize,
    /// Length of a generated call id's random part (Mistral's templates require 9).
    pub id_chars: usize,
    /// Prefix of a generated call id.
    pub id_prefix: &'static str,
}

const HERMES_SYNTAX: CallSyntax = CallSyntax {
    open: Some("<tool_call>\n"),
    between: "\n</tool_call>\n<tool_call>\n",
    close: "\n</tool_call>",
    arguments_key: "arguments",
    text_before: true,
    bare_call: true,
    max_calls: usize::MAX,
    id_chars: 24,
    id_prefix: "call_",
};

/// Formats by a text only their templates contain, tried in order (llama.cpp's order).
const TEMPLATE_MARKERS: &[(&str, ToolFormat)] = &[
    ("<tool_call>", ToolFormat::Hermes),
    ("<|start_header_id|>ipython<|end_header_id|>", ToolFormat::Llama3),
    ("[TOOL_CALLS]", ToolFormat::Mistral),
];

impl ToolFormat {
    pub fn syntax(self) -> CallSyntax {
        match self {
            Self::Hermes | Self::Generic => HERMES_SYNTAX,
            Self::Llama3 => CallSyntax {
                open: None,
                between: "",
                close: "",
                arguments_key: "parameters",
                text_before: false,
                bare_call: true,
                max_calls: 1,
                ..HERMES_SYNTAX
            },
            Self::Mistral => CallSyntax {
                open: Some("[TOOL_CALLS]["),
                between: ", ",
                close: "]",
                bare_call: false,
                id_chars: 9,
                id_prefix: "",
                ..HERMES_SYNTAX
            },
        }
    }

    /// The format named `name`, refused naming the known ones.
    pub fn parse(name: &str) -> Result<Self> {
        Self::from_name(name).ok_or_else(|| {
            Error::invalid_argument(format!(
                "unknown tool format '{name}' (one of {})",
                Self::ALL.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// The format a chat template renders tools in; `None` when it cannot render them.
    pub fn of_template(source: &str) -> Option<Self> {
        TEMPLATE_MARKERS.iter().find(|(marker, _)| source.contains(marker)).map(|(_, f)| *f)
    }

    /// The format to use: the caller's, else the template's own; refused when the template
    /// cannot render tools and the caller did not choose the generic format.
    pub fn choose(asked: Option<Self>, template: Option<Self>) -> Result<Self> {
        asked.or(template).ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                "the model's chat template cannot render tools (it has no tool-call syntax Maze knows: \
                 Hermes/Qwen <tool_call>, Llama 3 ipython, Mistral [TOOL_CALLS]); choose the generic tool \
                 format to describe the tools in a system message",
            )
        })
    }

    /// A call id: `seed` and the call's place make it reproducible.
    pub fn call_id(self, seed: u64, index: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let syntax = self.syntax();
        let mut state =
            xxhash_rust::xxh3::xxh3_64(&[seed.to_le_bytes(), (index as u64).to_le_bytes()].concat());
        let mut id = String::from(syntax.id_prefix);
        for _ in 0..syntax.id_chars {
            id.push(ALPHABET[(state % ALPHABET.len() as u64) as usize] as char);
            state = state.rotate_right(11) ^ (state >> 7).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
        id
    }
}

/// The `tools` value a template gets: OpenAI's shape, which HF templates are written for.
pub fn template_tools(tools: &[Tool]) -> Value {
    Value::Array(
        tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters}})
            })
            .collect(),
    )
}

/// The messages a template renders for the generic format: the tool list joins (or becomes)
/// the system message, earlier calls are written into their assistant turns, tool results go
/// back as user turns (every template knows "user").
pub fn generic_messages(messages: &[ChatMessage], tools: &ToolUse) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    let listing = generic_system_text(&tools.tools);
    match messages.first() {
        Some(first) if first.role == "system" => {
            out.push(ChatMessage::new("system", format!("{}\n\n{listing}", first.content)))
        }
        _ => out.push(ChatMessage::new("system", listing)),
    }
    let skip = usize::from(messages.first().is_some_and(|m| m.role == "system"));
    for message in &messages[skip..] {
        match message.role.as_str() {
            "tool" => {
                let response = format!("<tool_response>\n{}\n</tool_response>", message.content);
                match out.last_mut() {
                    // Consecutive results share one user turn, as Qwen's template does.
                    Some(last) if last.role == "user" && last.content.ends_with("</tool_response>") => {
                        last.content.push('\n');
                        last.content.push_str(&response);
                    }
                    _ => out.push(ChatMessage::new("user", response)),
                }
            }
            "assistant" if !message.tool_calls.is_empty() => {
                let mut content = message.content.clone();
                for call in &message.tool_calls {
                    if !content.is_empty() {
                        content.push('\n');
                    }
                    content.push_str(&format!(
                        "<tool_call>\n{{\"name\": \"{}\", \"arguments\": {}}}\n</tool_call>",
                        call.name, call.arguments
                    ));
                }
                out.push(ChatMessage::new("assistant", content));
            }
            _ => out.push(ChatMessage::new(message.role.clone(), message.content.clone())),
        }
    }
    out
}

fn generic_system_text(tools: &[Tool]) -> String {
    let listing: Vec<String> =
        template_tools(tools).as_array().into_iter().flatten().map(crate::model::chat::python_json).collect();
    format!(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{}\n</tools>\n\n\
         For each function call, return a json object with function name and arguments within \
         <tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": \
         <args-json-object>}}\n</tool_call>",
        listing.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::ToolCall;

    #[test]
    fn templates_are_told_apart_by_their_call_syntax() {
        assert_eq!(ToolFormat::of_template("{{ '<tool_call>\\n' }}"), Some(ToolFormat::Hermes));
        assert_eq!(
            ToolFormat::of_template("'<|start_header_id|>ipython<|end_header_id|>\\n\\n'"),
            Some(ToolFormat::Llama3)
        );
        assert_eq!(ToolFormat::of_template("[TOOL_CALLS] {{ calls }}"), Some(ToolFormat::Mistral));
        assert_eq!(ToolFormat::of_template("<|im_start|>{{ message.content }}"), None);
        let refused = ToolFormat::choose(None, ToolFormat::of_template("<|im_start|>")).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Unsupported);
        assert!(refused.message().contains("generic tool format"), "{}", refused.message());
        assert_eq!(ToolFormat::choose(Some(ToolFormat::Generic), None).unwrap(), ToolFormat::Generic);
        for &f in ToolFormat::ALL {
            assert_eq!(ToolFormat::parse(f.as_str()).unwrap(), f);
        }
        assert!(ToolFormat::parse("xml").unwrap_err().message().contains("hermes, llama3, mistral, generic"));
    }

    #[test]
    fn call_ids_are_reproducible_distinct_and_shaped_per_format() {
        let a = ToolFormat::Hermes.call_id(7, 0);
        assert_eq!(a, ToolFormat::Hermes.call_id(7, 0));
        assert_ne!(a, ToolFormat::Hermes.call_id(7, 1));
        assert_ne!(a, ToolFormat::Hermes.call_id(8, 0));
        assert!(a.starts_with("call_") && a.len() == 29, "{a}");
        let m = ToolFormat::Mistral.call_id(7, 0);
        assert!(m.len() == 9 && m.bytes().all(|b| b.is_ascii_alphanumeric()), "{m}");
    }

    #[test]
    fn the_generic_format_lists_tools_and_writes_history_as_plain_turns() {
        let tools = ToolUse::new(vec![Tool::new("f", "does f", json!({"type": "object"}))]);
        let history = vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "do f twice"),
            ChatMessage {
                tool_calls: vec![
                    ToolCall { id: "a".into(), name: "f".into(), arguments: "{}".into() },
                    ToolCall { id: "b".into(), name: "f".into(), arguments: "{\"x\": 1}".into() },
                ],
                ..ChatMessage::new("assistant", "")
            },
            ChatMessage { tool_call_id: Some("a".into()), ..ChatMessage::new("tool", "1") },
            ChatMessage { tool_call_id: Some("b".into()), ..ChatMessage::new("tool", "2") },
        ];
        let out = generic_messages(&history, &tools);
        let roles: Vec<&str> = out.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert!(out[0].content.starts_with("Be brief.\n\n# Tools"));
        assert!(out[0].content.contains(
            "<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"f\", \"description\": \"does f\", \"parameters\": {\"type\": \"object\"}}}\n</tools>"
        ));
        assert_eq!(
            out[2].content,
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>"
        );
        assert_eq!(
            out[3].content,
            "<tool_response>\n1\n</tool_response>\n<tool_response>\n2\n</tool_response>"
        );
    }
}
