//! Tool calling: the tools a request declares, how the model may call them, and the calls it
//! made. A call's syntax is the model's own ([`format`]); generation is constrained by a
//! grammar built from the declarations ([`grammar`]) so a call always parses and its arguments
//! always match the tool's schema; the output is split into text and calls as it streams
//! ([`parse`]).

pub mod format;
pub mod grammar;
pub mod parse;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::constraint::Constraint;
use crate::error::{Error, ErrorKind, Result};

pub use format::ToolFormat;
pub use parse::{text_only, ParsedCall, StreamEvent, ToolCallParser};

/// Most tools one request may declare.
pub(crate) const MAX_TOOLS: usize = 128;
/// Most calls one reply may make when parallel calls are allowed and the caller sets no maximum.
pub(crate) const DEFAULT_MAX_CALLS: usize = 8;

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    /// `^[A-Za-z0-9_-]{1,64}$`, unique in the request.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A JSON schema for the arguments object (`{"type": "object"}` when absent).
    #[serde(default = "empty_object_schema")]
    pub parameters: Value,
}

fn empty_object_schema() -> Value {
    serde_json::json!({"type": "object"})
}

impl Tool {
    pub fn new(name: impl Into<String>, description: impl Into<String>, parameters: Value) -> Self {
        Self { name: name.into(), description: description.into(), parameters }
    }
}

use crate::c_enum::rust_side as c_enum;
include!("../tables/tool_choice.rs");

/// Whether and which tools the model must call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model answers in text or calls tools, as it decides.
    #[default]
    Auto,
    /// The tools are shown to the model but it answers in text.
    None,
    /// The reply is one or more calls and nothing else.
    Required,
    /// The reply is exactly one call of this tool.
    Named(String),
}

impl ToolChoice {
    pub fn kind(&self) -> ToolChoiceKind {
        match self {
            Self::Auto => ToolChoiceKind::Auto,
            Self::None => ToolChoiceKind::None,
            Self::Required => ToolChoiceKind::Required,
            Self::Named(_) => ToolChoiceKind::Named,
        }
    }

    /// The choice of `kind`; `name` is the tool a named choice names.
    pub fn from_kind(kind: ToolChoiceKind, name: &str) -> Result<Self> {
        Ok(match kind {
            ToolChoiceKind::Auto => Self::Auto,
            ToolChoiceKind::None => Self::None,
            ToolChoiceKind::Required => Self::Required,
            ToolChoiceKind::Named if name.is_empty() => {
                return Err(Error::invalid_argument("a named tool choice needs the tool's name"))
            }
            ToolChoiceKind::Named => Self::Named(name.to_string()),
        })
    }
}

/// The tools of one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolUse {
    pub tools: Vec<Tool>,
    #[serde(default)]
    pub choice: ToolChoice,
    /// More than one call in a reply (capped by `max_calls`).
    #[serde(default = "yes")]
    pub parallel: bool,
    /// Most calls in one reply when `parallel`; 0 = [`DEFAULT_MAX_CALLS`].
    #[serde(default)]
    pub max_calls: usize,
    /// The call syntax; `None` = the chat template's own (refused when it has none; choose
    /// [`ToolFormat::Generic`] for such a model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ToolFormat>,
}

/// How a request with tools runs: in which syntax, under which constraints.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolPlan {
    pub format: ToolFormat,
    /// What generation is constrained by: the tool grammar first (unless tool_choice is
    /// none), then the caller's token masks; the caller's text constraints are folded into the
    /// grammar's text branch.
    pub constraints: Vec<Constraint>,
    /// The caller's constraints, as given.
    pub caller: Vec<Constraint>,
    /// Indices (in `caller`) of the constraints folded into the tool grammar.
    pub folded: Vec<usize>,
    /// Whether calls are read from the reply (not with tool_choice none).
    pub calls_allowed: bool,
}

fn yes() -> bool {
    true
}

impl ToolUse {
    pub fn new(tools: Vec<Tool>) -> Self {
        Self { tools, choice: ToolChoice::Auto, parallel: true, max_calls: 0, format: None }
    }

    pub fn with_format(mut self, format: ToolFormat) -> Self {
        self.format = Some(format);
        self
    }

    /// Checks the declarations and plans the request: the format (the caller's, else the
    /// template's own) and the constraints generation runs under, given the caller's.
    pub fn plan(&self, template_format: Option<ToolFormat>, caller: &[Constraint]) -> Result<ToolPlan> {
        self.check()?;
        let format = ToolFormat::choose(self.format, template_format)?;
        if self.choice == ToolChoice::None || self.tools.is_empty() {
            let mut constraints =
                vec![Constraint::lark(grammar::TOOLS_CONSTRAINT_NAME, grammar::text_only(format))
                    .with_priority(i32::MAX)];
            constraints.extend(caller.iter().cloned());
            return Ok(ToolPlan {
                format,
                constraints,
                caller: caller.to_vec(),
                folded: Vec::new(),
                calls_allowed: false,
            });
        }
        let (folded, text): (Vec<usize>, Vec<Constraint>) = caller
            .iter()
            .enumerate()
            .filter(|(_, c)| grammar::folds_into_text(c))
            .map(|(i, c)| (i, c.clone()))
            .unzip();
        let lark = grammar::build(self, format, &text)?;
        let mut constraints =
            vec![Constraint::lark(grammar::TOOLS_CONSTRAINT_NAME, lark).with_priority(i32::MAX)];
        constraints.extend(caller.iter().filter(|c| !grammar::folds_into_text(c)).cloned());
        Ok(ToolPlan { format, constraints, caller: caller.to_vec(), folded, calls_allowed: true })
    }

    pub fn with_choice(mut self, choice: ToolChoice) -> Self {
        self.choice = choice;
        self
    }

    /// Most calls the reply may hold under these settings and the format's own limit.
    pub fn call_limit(&self, format: ToolFormat) -> usize {
        let asked = match (&self.choice, self.parallel) {
            (ToolChoice::Named(_), _) | (_, false) => 1,
            _ if self.max_calls == 0 => DEFAULT_MAX_CALLS,
            _ => self.max_calls,
        };
        asked.min(format.syntax().max_calls)
    }

    /// The tools calls may name: all of them, or the one `choice` names.
    pub fn callable(&self) -> Vec<&Tool> {
        match &self.choice {
            ToolChoice::Named(name) => self.tools.iter().filter(|t| &t.name == name).collect(),
            ToolChoice::None => Vec::new(),
            _ => self.tools.iter().collect(),
        }
    }

    /// Refuses what cannot be declared: bad or duplicate names, parameters that are not an object
    /// schema, a choice naming an undeclared tool, a choice that needs tools with none declared.
    /// (Whether each schema compiles is checked where it is compiled.)
    pub fn check(&self) -> Result<()> {
        if self.tools.len() > MAX_TOOLS {
            return Err(Error::invalid_argument(format!(
                "{} tools declared; at most {MAX_TOOLS} per request",
                self.tools.len()
            )));
        }
        for (i, tool) in self.tools.iter().enumerate() {
            check_name(&tool.name).map_err(|why| Error::invalid_argument(format!("tools[{i}]: {why}")))?;
            if let Some(first) = self.tools[..i].iter().position(|t| t.name == tool.name) {
                return Err(Error::invalid_argument(format!(
                    "tools[{i}]: the name '{}' is already declared by tools[{first}]",
                    tool.name
                )));
            }
            check_parameters(&tool.parameters).map_err(|why| {
                Error::new(ErrorKind::InvalidConstraint, format!("tool '{}' parameters: {why}", tool.name))
            })?;
        }
        match &self.choice {
            ToolChoice::Named(name) if !self.tools.iter().any(|t| &t.name == name) => {
                Err(Error::invalid_argument(format!(
                    "tool_choice names '{name}', which is not among the declared tools ({})",
                    self.names()
                )))
            }
            ToolChoice::Required if self.tools.is_empty() => {
                Err(Error::invalid_argument("tool_choice is required but no tools are declared"))
            }
            _ if self.parallel && self.max_calls > 64 => Err(Error::invalid_argument(format!(
                "max parallel tool calls is {}; at most 64",
                self.max_calls
            ))),
            _ => Ok(()),
        }
    }

    fn names(&self) -> String {
        if self.tools.is_empty() {
            return "none declared".into();
        }
        self.tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// `^[A-Za-z0-9_-]{1,64}$`, as the OpenAI API requires (and so the name never needs escaping
/// inside a call).
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    let valid = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!("tool name {name:?} does not match ^[A-Za-z0-9_-]{{1,64}}$"))
    }
}

/// The arguments are one JSON object, so the schema must allow only objects.
fn check_parameters(schema: &Value) -> std::result::Result<(), String> {
    let Some(object) = schema.as_object() else {
        return Err(format!("must be a JSON schema object, got {schema}"));
    };
    match object.get("type") {
        Some(Value::String(t)) if t == "object" => Ok(()),
        None if object.contains_key("properties") => Ok(()),
        None if object.is_empty() => Ok(()),
        Some(other) => Err(format!("arguments are a JSON object: \"type\" must be \"object\", got {other}")),
        None => Err("arguments are a JSON object: give \"type\": \"object\"".into()),
    }
}

/// A call the model made (or, in a chat history, made earlier).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Unique in the conversation; a tool message answers it by this id.
    pub id: String,
    pub name: String,
    /// The arguments as JSON text, exactly as generated.
    pub arguments: String,
}

/// What validation says of one generated call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallCheck {
    pub index: usize,
    pub name: String,
    /// The call is complete and the tool grammar held on every token of it: its arguments
    /// validate against the tool's schema.
    pub satisfied: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The parameters schema a tool's arguments are generated under: an empty schema allows any
/// object.
pub(crate) fn arguments_schema(tool: &Tool) -> Value {
    match tool.parameters.as_object() {
        Some(o) if o.is_empty() => empty_object_schema(),
        _ => tool.parameters.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn weather() -> Tool {
        Tool::new(
            "get_weather",
            "Current weather",
            json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        )
    }

    #[test]
    fn names_must_match_the_openai_pattern() {
        for good in ["a", "get_weather", "A-9_z", &"x".repeat(64)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "has space", "dot.ted", "ünï", &"x".repeat(65), "a\"b"] {
            let why = check_name(bad).unwrap_err();
            assert!(why.contains("^[A-Za-z0-9_-]{1,64}$"), "{why}");
        }
    }

    #[test]
    fn bad_declarations_are_refused_naming_the_problem() {
        let refuse = |u: ToolUse| u.check().unwrap_err().message().to_string();
        let dup = ToolUse::new(vec![weather(), weather()]);
        assert!(refuse(dup).contains("tools[1]: the name 'get_weather' is already declared by tools[0]"));
        let bad_name = ToolUse::new(vec![Tool::new("no way", "", json!({}))]);
        assert!(refuse(bad_name).starts_with("tools[0]: tool name \"no way\""));
        let not_object = ToolUse::new(vec![Tool::new("f", "", json!({"type": "string"}))]);
        assert!(refuse(not_object).contains("tool 'f' parameters: arguments are a JSON object"));
        let undeclared = ToolUse::new(vec![weather()]).with_choice(ToolChoice::Named("search".into()));
        let why = refuse(undeclared);
        assert!(why.contains("names 'search'") && why.contains("get_weather"), "{why}");
        let required_without_tools = ToolUse::new(vec![]).with_choice(ToolChoice::Required);
        assert!(refuse(required_without_tools).contains("no tools are declared"));
        assert!(ToolUse::new(vec![weather(), Tool::new("f", "", json!({}))]).check().is_ok());
    }

    #[test]
    fn the_call_limit_follows_choice_parallel_and_the_format() {
        let mut u = ToolUse::new(vec![weather()]);
        assert_eq!(u.call_limit(ToolFormat::Hermes), DEFAULT_MAX_CALLS);
        assert_eq!(u.call_limit(ToolFormat::Llama3), 1, "Llama 3 calls one tool per reply");
        u.max_calls = 3;
        assert_eq!(u.call_limit(ToolFormat::Hermes), 3);
        u.parallel = false;
        assert_eq!(u.call_limit(ToolFormat::Hermes), 1);
        u.parallel = true;
        u.choice = ToolChoice::Named("get_weather".into());
        assert_eq!(u.call_limit(ToolFormat::Hermes), 1);
    }

    #[test]
    fn the_json_form_has_openai_like_defaults() {
        let u: ToolUse = serde_json::from_value(json!({"tools": [{"name": "f"}]})).unwrap();
        assert_eq!(u.choice, ToolChoice::Auto);
        assert!(u.parallel);
        assert_eq!(u.tools[0].parameters, json!({"type": "object"}));
        let named: ToolUse =
            serde_json::from_value(json!({"tools": [{"name": "f"}], "choice": {"named": "f"}})).unwrap();
        assert_eq!(named.choice, ToolChoice::Named("f".into()));
    }
}
