//! Chat messages → prompt text, rendered with the model's own Jinja `tokenizer.chat_template`,
//! or for a file without one, the built-in template of the chat format its vocabulary shows
//! (as llama.cpp's built-in list serves such files), or a template the caller passes.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind as JinjaKind};
use serde::Serialize;

use super::tokenizer::Tokenizer;
use crate::error::{Error, ErrorKind, Result};

/// One chat message. Roles are free-form ("system", "user", "assistant", "tool", ...): the
/// template decides which it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// A compiled chat template. Thread-safe.
pub struct ChatTemplate {
    env: Environment<'static>,
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
        // Templates use `loop_controls` ({% break %}, {% continue %}): minijinja's feature is on.
        env.add_template_owned(TEMPLATE_NAME, source.to_string()).map_err(|e| {
            Error::new(
                ErrorKind::Template,
                format!("the model's chat template does not compile: {}", describe(&e)),
            )
        })?;
        let token = |id: Option<u32>| id.and_then(|id| tokenizer.token_text(id)).unwrap_or("").to_string();
        Ok(Self { env, bos_token: token(tokenizer.bos()), eos_token: token(tokenizer.eos()) })
    }

    /// Renders messages into prompt text. With `add_generation_prompt` the text ends where the
    /// assistant's reply begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::invalid_argument("a chat needs at least one message"));
        }
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
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

fn describe(e: &JinjaError) -> String {
    match (e.detail(), e.line()) {
        (Some(d), Some(l)) => format!("{d} (line {l})"),
        (Some(d), None) => d.to_string(),
        (None, Some(l)) => format!("{} (line {l})", e.kind()),
        (None, None) => e.kind().to_string(),
    }
}
