//! The grammar a reply with tools is generated under, in llguidance's Lark: with `auto`, free
//! text (or the caller's own constraint) until the model opens a call in its format's syntax, a
//! lazy trigger (llguidance ends a `[lazy]` lexeme as soon as it matches, so ordinary text
//! never contains the trigger); from there on, only calls of declared tools, each one's
//! arguments generated under that tool's JSON schema. With `required` or a named tool the reply
//! is the call(s) alone.
//!
//! Each tool's arguments are their own nested `%json` grammar, so a schema's `$ref`s keep
//! resolving against its own root; the name is a literal, so only declared names can appear.

use serde_json::{json, Value};

use super::format::CallSyntax;
use super::{arguments_schema, ToolChoice, ToolFormat, ToolUse};
use crate::constraint::{schema, Constraint, ConstraintKind};
use crate::error::{Error, ErrorKind, Result};

/// The name the tool grammar is reported under in validation.
pub(crate) const TOOLS_CONSTRAINT_NAME: &str = "tools";

/// Builds the tool grammar. `text` are the caller's constraints on a text reply (auto only);
/// they become the reply's text alternative. Token masks are not folded in (they hold on every
/// token, calls included) and must not be passed here.
pub fn build(tools: &ToolUse, format: ToolFormat, text: &[Constraint]) -> Result<String> {
    let syntax = format.syntax();
    let limit = tools.call_limit(format).max(1);
    let mut lark = String::new();
    let callable = tools.callable();
    if callable.is_empty() {
        return Err(Error::invalid_argument("no tool can be called (tool_choice none, or no tools)"));
    }
    let rules = call_rules(&callable, syntax)?;
    let forced = matches!(tools.choice, ToolChoice::Required | ToolChoice::Named(_));
    if forced && !text.is_empty() {
        return Err(Error::invalid_argument(format!(
            "tool_choice {}: the reply is tool calls only, so constraints on text ({}) cannot apply; remove them or use tool_choice auto",
            choice_label(&tools.choice),
            text.iter().map(|c| format!("'{}'", c.name)).collect::<Vec<_>>().join(", ")
        )));
    }
    let open = syntax.open.map(quote);
    let calls = format!("calls{limit}");
    match (forced, &open) {
        (true, Some(open)) => lark.push_str(&format!("start: {open} {calls} {}\n", quote(syntax.close))),
        (true, None) => lark.push_str(&format!("start: {calls}\n")),
        (false, _) => {
            let mut branches = vec!["text".to_string()];
            if let Some(open_text) = syntax.open {
                let head =
                    if text.is_empty() && syntax.text_before { "head" } else { &open.clone().unwrap() };
                branches.push(format!("{head} {calls} {}", quote(syntax.close)));
                if text.is_empty() && syntax.text_before {
                    lark.push_str(&format!("head[lazy]: /{}/\n", text_then(open_text, syntax.bare_call)));
                }
            }
            if syntax.bare_call && text.is_empty() {
                branches.push("call".into());
            }
            lark.push_str(&format!("start: {}\n", branches.join(" | ")));
            lark.push_str(&text_rule(text, syntax.bare_call)?);
        }
    }
    // calls{n}: one to n calls, separated.
    lark.push_str("calls1: call\n");
    for n in 2..=limit {
        lark.push_str(&format!("calls{n}: call ({} calls{})?\n", quote(syntax.between), n - 1));
    }
    lark.push_str(&rules);
    Ok(lark)
}

fn choice_label(choice: &ToolChoice) -> String {
    match choice {
        ToolChoice::Named(name) => format!("'{name}'"),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

/// `call: call_0 | call_1 ...` and for each tool its call with the literal name and its
/// arguments grammar.
fn call_rules(callable: &[&super::Tool], syntax: CallSyntax) -> Result<String> {
    let mut rules = format!(
        "call: {}\n",
        (0..callable.len()).map(|i| format!("call_{i}")).collect::<Vec<_>>().join(" | ")
    );
    for (i, tool) in callable.iter().enumerate() {
        let head = format!("{{\"name\": \"{}\", \"{}\": ", tool.name, syntax.arguments_key);
        let prepared = schema::prepare(&arguments_schema(tool), None).map_err(|why| {
            Error::new(ErrorKind::InvalidConstraint, format!("tool '{}' parameters: {why}", tool.name))
        })?;
        let mut schema = prepared.schema;
        // Python's json.dumps spacing: what the templates render earlier calls with.
        if let Some(x) = schema.get_mut("x-guidance").and_then(Value::as_object_mut) {
            x.insert("item_separator".into(), json!(", "));
            x.insert("key_separator".into(), json!(": "));
            x.insert("whitespace_flexible".into(), json!(false));
        }
        rules.push_str(&format!("call_{i}: {} args_{i} \"}}\"\n", quote(&head)));
        rules.push_str(&format!("args_{i}: %json {schema}\n"));
    }
    Ok(rules)
}

/// The text alternative: free text (not starting with `{` when a bare `{` starts a call), or
/// the caller's constraints.
fn text_rule(text: &[Constraint], bare_call: bool) -> Result<String> {
    if text.is_empty() {
        let first = if bare_call { "[^{]" } else { "(.|\\n)" };
        return Ok(format!("text: TEXT\nTEXT: /({first}(.|\\n)*)?/\n"));
    }
    let alternatives = text.iter().map(text_alternative).collect::<Result<Vec<_>>>()?;
    // Several constraints must all hold: llguidance intersects their lexemes with `&`.
    match alternatives.as_slice() {
        [one] => Ok(format!("text: {one}\n")),
        _ => Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "{} constraints on the text of a reply with tools: give at most one (besides token masks)",
                text.len()
            ),
        )),
    }
}

fn text_alternative(c: &Constraint) -> Result<String> {
    Ok(match &c.kind {
        ConstraintKind::JsonSchema(s) => {
            let prepared = schema::prepare(s, c.json_options.as_ref()).map_err(|why| {
                Error::new(ErrorKind::InvalidConstraint, format!("constraint '{}': {why}", c.name))
            })?;
            format!("%json {}", prepared.schema)
        }
        ConstraintKind::Lark(grammar) => format!("%lark {{\n{grammar}\n}}"),
        ConstraintKind::Gbnf(text) => {
            // Token references (`<[id]>`, `<text>`) need the vocabulary, which the tool
            // grammar is built without: they are refused here, naming where they are.
            let no_tokens = |_: &str| -> Option<u32> { None };
            let lark = crate::constraint::gbnf::to_lark(
                text,
                crate::constraint::ConstraintLimits::default().max_depth,
                &no_tokens,
            )
            .map_err(|e| {
                Error::new(
                    ErrorKind::InvalidConstraint,
                    format!("constraint '{}' (gbnf, with tools): {e}", c.name),
                )
            })?;
            format!("%lark {{\n{lark}\n}}")
        }
        ConstraintKind::Regex(patterns) => {
            let terms: Vec<String> =
                patterns.iter().map(|p| format!("/{}/", p.replace('/', "\\/"))).collect();
            format!("TEXT_RE\nTEXT_RE: {}", terms.join(" & "))
        }
        ConstraintKind::Choice(options) => options.iter().map(|o| quote(o)).collect::<Vec<_>>().join(" | "),
        other => {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("a {} constraint is not folded into the tool grammar", other.label()),
            ))
        }
    })
}

/// A regex for free text ending in `open` (not starting with `{` when a bare `{` starts a call).
fn text_then(open: &str, bare_call: bool) -> String {
    let first = if bare_call { "[^{]" } else { "(.|\\n)" };
    format!("({first}(.|\\n)*)?{}", regex_literal(open))
}

fn regex_literal(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '/' => out.push_str("\\/"),
            c if "\\.+*?()|[]{}^$".contains(c) => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// A Lark string literal (JSON escapes).
fn quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// The grammar of a reply under tool_choice `none`: text without the format's call syntax
/// (not its opening marker, and not a bare JSON call at the start), so no call can be mistaken
/// for text or text for a call.
pub fn text_only(format: ToolFormat) -> String {
    let syntax = format.syntax();
    let first = if syntax.bare_call { "[^{]" } else { "(.|\\n)" };
    let mut text = format!("/({first}(.|\\n)*)?/");
    if let Some(open) = syntax.open {
        let marker = regex_literal(open.trim_end_matches('\n'));
        text.push_str(&format!(" & ~/(.|\\n)*{marker}(.|\\n)*/"));
    }
    format!("start: TEXT\nTEXT: {text}\n")
}

/// Whether a caller constraint is folded into the tool grammar (text constraints) or applied
/// beside it on every token (token masks).
pub fn folds_into_text(c: &Constraint) -> bool {
    !matches!(c.kind, ConstraintKind::TokenMask { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::Tool;

    pub(crate) fn two_tools() -> ToolUse {
        ToolUse::new(vec![
            Tool::new(
                "get_weather",
                "Weather in a city",
                json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
            ),
            Tool::new("now", "The time", json!({})),
        ])
    }

    #[test]
    fn auto_mode_offers_text_a_lazily_triggered_call_or_a_bare_call() {
        let lark = build(&two_tools(), ToolFormat::Hermes, &[]).unwrap();
        assert!(lark.starts_with("head[lazy]: /([^{](.|\\n)*)?<tool_call>\\n/\n"), "{lark}");
        assert!(lark.contains("start: text | head calls8 \"\\n</tool_call>\" | call\n"), "{lark}");
        assert!(
            lark.contains("call_0: \"{\\\"name\\\": \\\"get_weather\\\", \\\"arguments\\\": \" args_0 \"}\"")
        );
        assert!(lark.contains("\"item_separator\":\", \""), "{lark}");
    }

    #[test]
    fn choice_none_is_text_without_call_syntax() {
        assert_eq!(
            text_only(ToolFormat::Hermes),
            "start: TEXT\nTEXT: /([^{](.|\\n)*)?/ & ~/(.|\\n)*<tool_call>(.|\\n)*/\n"
        );
        assert_eq!(text_only(ToolFormat::Llama3), "start: TEXT\nTEXT: /([^{](.|\\n)*)?/\n");
    }

    #[test]
    fn required_and_named_choices_leave_no_text_branch() {
        let required =
            build(&two_tools().with_choice(ToolChoice::Required), ToolFormat::Hermes, &[]).unwrap();
        assert!(required.starts_with("start: \"<tool_call>\\n\" calls8 \"\\n</tool_call>\"\n"), "{required}");
        let named = build(&two_tools().with_choice(ToolChoice::Named("now".into())), ToolFormat::Llama3, &[])
            .unwrap();
        assert!(named.starts_with("start: calls1\n"), "{named}");
        assert!(named.contains("\\\"now\\\", \\\"parameters\\\": ") && !named.contains("get_weather"));
    }

    #[test]
    fn text_constraints_cannot_go_with_a_forced_call() {
        let err = build(
            &two_tools().with_choice(ToolChoice::Required),
            ToolFormat::Hermes,
            &[Constraint::regex("digits", "[0-9]+")],
        )
        .unwrap_err();
        assert!(err.message().contains("constraints on text ('digits') cannot apply"), "{}", err.message());
    }

    #[test]
    fn a_tool_schema_maze_cannot_enforce_is_refused_naming_the_tool() {
        let bad =
            ToolUse::new(vec![Tool::new("f", "", json!({"type": "object", "not": {"required": ["a"]}}))]);
        let err = build(&bad, ToolFormat::Hermes, &[]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConstraint);
        assert!(
            err.message().starts_with("tool 'f' parameters: ") && err.message().contains("/not"),
            "{}",
            err.message()
        );
    }
}
