//! Chat messages → prompt text, rendered with the model's own Jinja `tokenizer.chat_template`.

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
