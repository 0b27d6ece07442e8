//! Chat messages → prompt text, rendered with the model's own Jinja `tokenizer.chat_template`,
//! or for a file without one, the built-in template of the chat format its vocabulary shows
//! (as llama.cpp's built-in list serves such files), or a template the caller passes.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind as JinjaKind};
use serde::Serialize;

use super::tokenizer::Tokenizer;
use crate::error::{Error, ErrorKind, Result};
use crate::tools::{format as tool_format, Tool, ToolCall, ToolFormat};

/// One chat message. Roles are free-form ("system", "user", "assistant", "tool", ...): the
/// template decides which it accepts. An assistant message may carry the tool calls it made; a
/// tool message answers one of them by `tool_call_id`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into(), ..Default::default() }
    }

    /// An assistant turn that called tools.
    pub fn assistant_calls(content: impl Into<String>, calls: Vec<ToolCall>) -> Self {
        Self { tool_calls: calls, ..Self::new("assistant", content) }
    }

    /// A tool's result, answering the call `id`.
    pub fn tool_result(id: impl Into<String>, content: impl Into<String>) -> Self {
        Self { tool_call_id: Some(id.into()), ..Self::new("tool", content) }
    }
}

/// Refuses a history whose tool messages answer no earlier call, or whose calls are malformed
/// (arguments that are not a JSON object), naming the message.
pub fn check_tool_history(messages: &[ChatMessage]) -> Result<()> {
    let mut ids: Vec<&str> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        for (j, call) in m.tool_calls.iter().enumerate() {
            if m.role != "assistant" {
                return Err(Error::invalid_argument(format!(
                    "messages[{i}] has tool calls but its role is '{}' (only assistant messages call tools)",
                    m.role
                )));
            }
            crate::tools::check_name(&call.name)
                .map_err(|why| Error::invalid_argument(format!("messages[{i}].tool_calls[{j}]: {why}")))?;
            match serde_json::from_str::<serde_json::Value>(&call.arguments) {
                Ok(serde_json::Value::Object(_)) => {}
                _ => {
                    return Err(Error::invalid_argument(format!(
                        "messages[{i}].tool_calls[{j}] ('{}'): arguments must be a JSON object, got {:?}",
                        call.name,
                        crate::tools::parse::excerpt(&call.arguments)
                    )))
                }
            }
            ids.push(&call.id);
        }
        match (m.role.as_str(), &m.tool_call_id) {
            ("tool", None) => {
                return Err(Error::invalid_argument(format!(
                    "messages[{i}] is a tool message without tool_call_id"
                )))
            }
            ("tool", Some(id)) if !ids.contains(&id.as_str()) => {
                return Err(Error::invalid_argument(format!(
                    "messages[{i}]: tool_call_id '{id}' matches no earlier tool call{}",
                    if ids.is_empty() { String::new() } else { format!(" (calls: {})", ids.join(", ")) }
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// A compiled chat template. Thread-safe.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// The format the template writes tool calls in, if it renders tools.
    tool_format: Option<ToolFormat>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

const TEMPLATE_NAME: &str = "chat";

/// Gemma's turns: a system message joins the first user turn; the assistant is "model".
const GEMMA_TEMPLATE: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] | trim ~ '\n\n' %}{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}{% for message in turns %}{% if (message['role'] == 'user') != loop.index0 is even %}{{ raise_exception('Gemma conversations alternate user and assistant turns, starting with the user') }}{% endif %}<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n{{ prefix if loop.first else '' }}{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}";

/// ChatML (Qwen, SmolLM).
const CHATML_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Llama 3's headers.
const LLAMA3_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";

/// Phi-3's role tags.
const PHI3_TEMPLATE: &str = "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

/// Built-in templates by a token only their format has, tried in order.
const BUILTIN_TEMPLATES: &[(&str, &str)] = &[
    ("<start_of_turn>", GEMMA_TEMPLATE),
    ("<|start_header_id|>", LLAMA3_TEMPLATE),
    ("<|im_start|>", CHATML_TEMPLATE),
    ("<|assistant|>", PHI3_TEMPLATE),
];

/// The built-in template for a vocabulary, if it has the tokens of a known chat format.
pub fn builtin_template(tokenizer: &Tokenizer) -> Option<&'static str> {
    BUILTIN_TEMPLATES.iter().find(|(marker, _)| tokenizer.token_id(marker).is_some()).map(|(_, t)| *t)
}

impl ChatTemplate {
    /// Compiles a template; a syntax error names the line.
    pub fn new(source: &str, tokenizer: &Tokenizer) -> Result<Self> {
        let mut env = Environment::new();
        // HF templates are written for Python's Jinja: string methods such as .strip() and
        // .startswith(), and `raise_exception` for refusing bad input.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, JinjaError> {
            Err(JinjaError::new(JinjaKind::InvalidOperation, msg))
        });
        // Llama 3.x and Qwen3 templates date their system prompts.
        env.add_function("strftime_now", |format: String| -> std::result::Result<String, JinjaError> {
            use std::fmt::Write;
            let mut out = String::new();
            // chrono reports a bad format through fmt::Error (to_string() would panic on it).
            write!(out, "{}", chrono::Local::now().format(&format)).map_err(|_| {
                JinjaError::new(JinjaKind::InvalidOperation, format!("strftime_now: bad format '{format}'"))
            })?;
            Ok(out)
        });
        // Python's json.dumps, which HF templates are written for (key order kept, ", " and
        // ": " spacing, no HTML escaping): minijinja's own tojson sorts keys and escapes `<`.
        env.add_filter("tojson", |value: minijinja::Value, kwargs: minijinja::value::Kwargs| {
            let indent: Option<usize> = kwargs.get("indent")?;
            // ensure_ascii, separators, sort_keys: accepted; Maze's output is the default.
            for unused in ["ensure_ascii", "separators", "sort_keys"] {
                let _: Option<minijinja::Value> = kwargs.get(unused)?;
            }
            kwargs.assert_all_used()?;
            let json = serde_json::to_value(&value)
                .map_err(|e| JinjaError::new(JinjaKind::InvalidOperation, format!("tojson: {e}")))?;
            Ok::<_, JinjaError>(match indent {
                Some(n) => pretty_json(&json, n),
                None => python_json(&json),
            })
        });
        // Templates use `loop_controls` ({% break %}, {% continue %}): minijinja's feature is on.
        env.add_template_owned(TEMPLATE_NAME, source.to_string()).map_err(|e| {
            Error::new(
                ErrorKind::Template,
                format!("the model's chat template does not compile: {}", describe(&e)),
            )
        })?;
        let token = |id: Option<u32>| id.and_then(|id| tokenizer.token_text(id)).unwrap_or("").to_string();
        Ok(Self {
            env,
            tool_format: ToolFormat::of_template(source),
            bos_token: token(tokenizer.bos()),
            eos_token: token(tokenizer.eos()),
        })
    }

    /// The tool-call format the template renders, if any (see [`ToolFormat::of_template`]).
    pub fn tool_format(&self) -> Option<ToolFormat> {
        self.tool_format
    }

    /// Renders messages into prompt text. With `add_generation_prompt` the text ends where the
    /// assistant's reply begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, &[], add_generation_prompt)
    }

    /// Renders messages with `tools` given to the template (as `tools`, OpenAI's shape); the
    /// template must render them itself (see [`tool_format::generic_messages`] for one that
    /// cannot).
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: &[Tool],
        add_generation_prompt: bool,
    ) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::invalid_argument("a chat needs at least one message"));
        }
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
        let tools = (!tools.is_empty()).then(|| tool_format::template_tools(tools));
        tmpl.render(context! {
            messages => template_messages(messages)?,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| {
            Error::new(
                ErrorKind::Template,
                format!("the chat template refused the messages: {}", describe(&e)),
            )
        })
    }
}

/// Messages as templates read them: tool calls in OpenAI's shape with their arguments as an
/// object (templates apply `tojson` to them); no `tool_calls` key on a message without calls.
fn template_messages(messages: &[ChatMessage]) -> Result<Vec<serde_json::Value>> {
    messages
        .iter()
        .map(|m| {
            let mut out = serde_json::json!({"role": m.role, "content": m.content});
            if !m.tool_calls.is_empty() {
                let calls = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        let arguments: serde_json::Value =
                            serde_json::from_str(&c.arguments).map_err(|e| {
                                Error::invalid_argument(format!(
                                    "tool call '{}' arguments are not JSON: {e}",
                                    c.name
                                ))
                            })?;
                        Ok(serde_json::json!({"id": c.id, "type": "function",
                            "function": {"name": c.name, "arguments": arguments}}))
                    })
                    .collect::<Result<Vec<_>>>()?;
                out["tool_calls"] = serde_json::Value::Array(calls);
            }
            if let Some(id) = &m.tool_call_id {
                out["tool_call_id"] = id.clone().into();
            }
            Ok(out)
        })
        .collect()
}

/// JSON as Python's `json.dumps(v, ensure_ascii=False)` writes it: `", "` and `": "`.
pub fn python_json(value: &serde_json::Value) -> String {
    struct PythonSpacing;
    fn separator<W: ?Sized + std::io::Write>(w: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    impl serde_json::ser::Formatter for PythonSpacing {
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            separator(w, first)
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            w: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            separator(w, first)
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
            w.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonSpacing);
    // Writing a Value into memory cannot fail.
    let _ = serde::Serialize::serialize(value, &mut ser);
    String::from_utf8(out).unwrap_or_default()
}

/// `json.dumps(v, indent=n)`.
fn pretty_json(value: &serde_json::Value, indent: usize) -> String {
    let spaces = " ".repeat(indent);
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut out,
        serde_json::ser::PrettyFormatter::with_indent(spaces.as_bytes()),
    );
    let _ = serde::Serialize::serialize(value, &mut ser);
    String::from_utf8(out).unwrap_or_default()
}

fn describe(e: &JinjaError) -> String {
    match (e.detail(), e.line()) {
        (Some(d), Some(l)) => format!("{d} (line {l})"),
        (Some(d), None) => d.to_string(),
        (None, Some(l)) => format!("{} (line {l})", e.kind()),
        (None, None) => e.kind().to_string(),
    }
}
