//! Bounds on constraint work whose cost depends on the input: nesting depth (checked here,
//! before llguidance sees the constraint, with loops rather than recursion so that the check
//! itself cannot overflow a stack) and, passed on to llguidance, its parser limits.

use std::time::Duration;

use serde_json::Value;

use super::ir::ConstraintKind;

/// How deep a constraint may nest, how big it may be and how much work llguidance may spend on
/// it. Set per engine ([`crate::EngineConfig::constraint_limits`], C: the `constraint_*` fields
/// of `maze_engine_params`); every error that enforces one names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConstraintLimits {
    /// Deepest nesting accepted: JSON-schema values (objects and arrays inside each other),
    /// regex groups, Lark rules referring to rules (the longest chain) and brackets in a Lark
    /// expression. Default [`DEFAULT_MAX_DEPTH`].
    pub max_depth: usize,
    /// Largest constraint accepted, in bytes of its text (the schema as JSON, the grammar, the
    /// patterns or options together). Default [`DEFAULT_MAX_SIZE_BYTES`].
    pub max_size_bytes: usize,
    /// Longest a compilation may take (wall clock, the first mask included, the engine's
    /// one-time setup not); past it the constraint is refused. Default [`DEFAULT_COMPILE_TIMEOUT`].
    pub compile_timeout: Duration,
    /// llguidance: lexer fuel for building the lexer (regex AST nodes). Default 1,000,000.
    pub initial_lexer_fuel: u64,
    /// llguidance: lexer fuel for one token mask. Default 200,000.
    pub step_lexer_fuel: u64,
    /// llguidance: Earley items in one row (the grammar's branching). Default 2000.
    pub max_items_in_row: usize,
    /// llguidance: Earley items created for one token mask. Default 50,000.
    pub step_max_items: usize,
    /// llguidance: lexer states (memory, ~1-2 kB each). Default 250,000.
    pub max_lexer_states: usize,
    /// llguidance: grammar symbols after compilation. Default 500,000.
    pub max_grammar_size: usize,
    /// llguidance: match very large regexes against the whole token trie while building the
    /// lexer (faster masks, slower compilation). Default true.
    pub precompute_large_lexemes: bool,
}

/// Default [`ConstraintLimits::max_size_bytes`]: 256 KiB. A choice among 30,000 short options
/// (~330 kB) already takes over a second to compile on a tiny vocabulary.
pub const DEFAULT_MAX_SIZE_BYTES: usize = 256 << 10;

/// Default [`ConstraintLimits::compile_timeout`].
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default [`ConstraintLimits::max_depth`]: serde_json refuses JSON text nested deeper than 128
/// anyway, and no practical grammar chains rules that deep.
pub const DEFAULT_MAX_DEPTH: usize = 128;

impl Default for ConstraintLimits {
    fn default() -> Self {
        let l = llguidance::api::ParserLimits::default();
        Self {
            max_depth: DEFAULT_MAX_DEPTH,
            max_size_bytes: DEFAULT_MAX_SIZE_BYTES,
            compile_timeout: DEFAULT_COMPILE_TIMEOUT,
            initial_lexer_fuel: l.initial_lexer_fuel,
            step_lexer_fuel: l.step_lexer_fuel,
            max_items_in_row: l.max_items_in_row,
            step_max_items: l.step_max_items,
            max_lexer_states: l.max_lexer_states,
            max_grammar_size: l.max_grammar_size,
            precompute_large_lexemes: l.precompute_large_lexemes,
        }
    }
}

impl ConstraintLimits {
    /// The llguidance parser limits these set.
    pub(crate) fn parser_limits(&self) -> llguidance::api::ParserLimits {
        llguidance::api::ParserLimits {
            max_items_in_row: self.max_items_in_row,
            initial_lexer_fuel: self.initial_lexer_fuel,
            step_lexer_fuel: self.step_lexer_fuel,
            step_max_items: self.step_max_items,
            max_lexer_states: self.max_lexer_states,
            max_grammar_size: self.max_grammar_size,
            precompute_large_lexemes: self.precompute_large_lexemes,
            verbose_errors: false,
        }
    }
}

/// The constraint's size in bytes of text (see [`ConstraintLimits::max_size_bytes`]).
pub(crate) fn text_size(kind: &ConstraintKind) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    match kind {
        ConstraintKind::JsonSchema(v) => {
            let mut count = Count(0);
            let _ = serde_json::to_writer(&mut count, v);
            count.0
        }
        ConstraintKind::Lark(g) | ConstraintKind::Gbnf(g) => g.len(),
        ConstraintKind::Regex(items) | ConstraintKind::Choice(items) => {
            items.iter().map(|i| i.len() + 1).sum()
        }
        ConstraintKind::TokenMask { .. } => 0,
    }
}

/// Where each limit is set, for error messages.
pub(crate) const MAX_DEPTH_SETTING: &str =
    "EngineConfig::constraint_limits.max_depth, C: maze_engine_params.constraint_max_depth";
pub(crate) const MAX_SIZE_SETTING: &str =
    "EngineConfig::constraint_limits.max_size_bytes, C: maze_engine_params.constraint_max_bytes";
pub(crate) const COMPILE_TIMEOUT_SETTING: &str =
    "EngineConfig::constraint_limits.compile_timeout, C: maze_engine_params.constraint_compile_timeout_ms";

/// How deep the constraint nests, and in what (for the error message).
pub(crate) fn nesting_depth(kind: &ConstraintKind) -> (usize, &'static str) {
    match kind {
        ConstraintKind::JsonSchema(v) => (json_depth(v), "the schema nests"),
        ConstraintKind::Lark(g) => lark_depth(g),
        ConstraintKind::Gbnf(g) => gbnf_depth(g),
        ConstraintKind::Regex(patterns) => {
            (patterns.iter().map(|p| regex_depth(p)).max().unwrap_or(0), "regex groups nest")
        }
        ConstraintKind::Choice(_) | ConstraintKind::TokenMask { .. } => (0, ""),
    }
}

/// Objects and arrays inside each other; a scalar is depth 0.
pub(crate) fn json_depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(m) => Box::new(m.values()),
            _ => continue,
        };
        deepest = deepest.max(depth + 1);
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    deepest
}

/// Groups inside groups (`(`, outside character classes and escapes).
pub(crate) fn regex_depth(pattern: &str) -> usize {
    regex_bytes_depth(pattern.as_bytes())
}

fn regex_bytes_depth(pattern: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_class) = (0usize, 0usize, false);
    let mut bytes = pattern.iter();
    while let Some(c) = bytes.next() {
        match c {
            b'\\' => {
                bytes.next();
            }
            b'[' if !in_class => in_class = true,
            b']' if in_class => in_class = false,
            b'(' if !in_class => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' if !in_class => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The deeper of: brackets nested in one expression (regexes inside `/.../` count their
/// groups), and the longest chain of rules (or tokens) each referring to the next (a rule
/// referring back to one already on the chain ends it: recursion is fine, only depth costs).
pub(crate) fn lark_depth(grammar: &str) -> (usize, &'static str) {
    let (definitions, brackets) = lark_definitions(grammar);
    let chain = longest_chain(&definitions);
    if chain >= brackets {
        (chain, "rules refer to rules")
    } else {
        (brackets, "brackets nest")
    }
}

/// Like [`lark_depth`], for GBNF: parentheses in one rule, and the longest chain of rules.
pub(crate) fn gbnf_depth(grammar: &str) -> (usize, &'static str) {
    let (definitions, parens) = super::gbnf::nesting(grammar);
    let chain = longest_chain(&definitions);
    if chain >= parens {
        (chain, "rules refer to rules")
    } else {
        (parens, "parentheses nest")
    }
}

/// Each definition's name and the identifiers its body uses, plus the deepest bracket nesting.
/// A light scan (strings, regexes and comments skipped), not a parser: it only has to find
/// what nests.
fn lark_definitions(grammar: &str) -> (Vec<(String, Vec<String>)>, usize) {
    let mut defs: Vec<(String, Vec<String>)> = Vec::new();
    let (mut depth, mut deepest) = (0usize, 0usize);
    for line in grammar.lines() {
        let body = match definition_head(line) {
            Some((name, rest)) => {
                defs.push((name.to_string(), Vec::new()));
                rest
            }
            None => line,
        };
        let bytes = body.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'"' | b'\'' => i = skip_quoted(bytes, i),
                b'/' if bytes.get(i + 1) == Some(&b'/') => break,
                b'/' => {
                    let end = skip_quoted(bytes, i);
                    let inner = &bytes[i + 1..end.max(i + 1)];
                    let inner = inner.strip_suffix(b"/").unwrap_or(inner);
                    deepest = deepest.max(depth + regex_bytes_depth(inner));
                    i = end;
                }
                b'#' => break,
                b'(' | b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                    i += 1;
                }
                b')' | b']' | b'}' => {
                    depth = depth.saturating_sub(1);
                    i += 1;
                }
                c if c.is_ascii_alphabetic() || c == b'_' => {
                    let start = i;
                    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                        i += 1;
                    }
                    if let Some((_, uses)) = defs.last_mut() {
                        uses.push(body[start..i].to_string());
                    }
                }
                _ => i += 1,
            }
        }
    }
    (defs, deepest)
}

/// `name: body`, `?name: body`, `NAME.2: body` at the start of a line: the name and the body.
fn definition_head(line: &str) -> Option<(&str, &str)> {
    let s = line.trim_start_matches(['?', '!']);
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
    let (name, rest) = s.split_at(end);
    if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        return None;
    }
    let rest = match rest.strip_prefix('.') {
        Some(r) => r.trim_start_matches(|c: char| c.is_ascii_digit() || c == '-'),
        None => rest,
    };
    rest.trim_start().strip_prefix(':').map(|body| (name, body))
}

/// The index just past a string or regex starting at `start` (its closing delimiter, escapes
/// honoured; regex flags are left to the scan, which takes them for an identifier).
fn skip_quoted(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The longest chain of definitions each using the next, with an explicit stack (a chain of
/// 100,000 rules is measured, not recursed into).
fn longest_chain(defs: &[(String, Vec<String>)]) -> usize {
    use std::collections::HashMap;
    let index: HashMap<&str, usize> = defs.iter().enumerate().map(|(i, (n, _))| (n.as_str(), i)).collect();
    let edges: Vec<Vec<usize>> = defs
        .iter()
        .map(|(_, uses)| uses.iter().filter_map(|u| index.get(u.as_str()).copied()).collect())
        .collect();
    // 0 = unvisited, 1 = on the current path, 2 = done (depth known).
    let mut state = vec![0u8; defs.len()];
    let mut depth = vec![0usize; defs.len()];
    let mut deepest = 0;
    for root in 0..defs.len() {
        if state[root] != 0 {
            continue;
        }
        let mut stack = vec![(root, 0usize)];
        state[root] = 1;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&child) = edges[node].get(*next) {
                *next += 1;
                if state[child] == 0 {
                    state[child] = 1;
                    stack.push((child, 0));
                }
                continue;
            }
            let below = edges[node].iter().filter(|&&c| state[c] == 2).map(|&c| depth[c]).max().unwrap_or(0);
            depth[node] = below + 1;
            state[node] = 2;
            deepest = deepest.max(depth[node]);
            stack.pop();
        }
    }
    deepest
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// `r0: "t0" r1 | "e"`, ..., `r{n-1}: "t{n-1}" | "e"`, with `start: r0`.
    pub(crate) fn lark_chain(n: usize) -> String {
        let mut g = String::from("start: r0\n");
        for i in 0..n {
            let next = if i + 1 < n { format!(" r{}", i + 1) } else { String::new() };
            g.push_str(&format!("r{i}: \"t{i}\"{next} | \"e\"\n"));
        }
        g
    }

    #[test]
    fn json_depth_counts_objects_and_arrays() {
        assert_eq!(json_depth(&json!(1)), 0);
        assert_eq!(json_depth(&json!({"type": "string"})), 1);
        assert_eq!(json_depth(&json!({"properties": {"a": {"items": [{"type": "x"}]}}})), 5);
        let mut deep = json!({"type": "string"});
        for _ in 0..1000 {
            deep = json!({"items": deep});
        }
        assert_eq!(json_depth(&deep), 1001);
    }

    #[test]
    fn regex_depth_counts_groups_outside_classes_and_escapes() {
        assert_eq!(regex_depth("abc"), 0);
        assert_eq!(regex_depth("(a(b)c)(d)"), 2);
        assert_eq!(regex_depth(r"[(((]\(\(x"), 0);
        assert_eq!(regex_depth(&format!("{}a{}", "(".repeat(300), ")".repeat(300))), 300);
    }

    #[test]
    fn lark_depth_finds_rule_chains_and_bracket_nesting() {
        assert_eq!(lark_depth(&lark_chain(5000)), (5001, "rules refer to rules"));
        assert_eq!(lark_depth("start: a | b\na: \"x\" start\nb: \"y\"\n").0, 2, "recursion ends a chain");
        let nested = format!("start: {}\"x\"{}\n", "(".repeat(50), ")".repeat(50));
        assert_eq!(lark_depth(&nested), (50, "brackets nest"));
        // Strings, regexes and comments are not looked into for names or brackets.
        let g = "start: \"r1 ((\" /[(]r1/ A  // r1 ((((\nA: /(a(b))/i\nr1: \"z\"\n";
        assert_eq!(lark_depth(g), (2, "rules refer to rules"));
        assert_eq!(lark_depth("?start.2: x\nx: \"a\"").0, 2);
    }
}
