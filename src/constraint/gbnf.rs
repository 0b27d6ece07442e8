//! GBNF, llama.cpp's grammar format, converted to llguidance's Lark syntax.
//!
//! The syntax is llama.cpp's (`src/llama-grammar.cpp`, its grammar parser): rules
//! `name ::= alternatives`, names of letters, digits and `-`; `|`, `( )`, `* + ?`, `{m}`, `{m,}`,
//! `{m,n}`; string literals and character classes (`[a-z]`, `[^...]`) with the escapes
//! `\x \u \U \t \r \n \\ \" \[ \] \-`; `.` (any character); tokens `<[id]>`, `<text>` and their
//! negations `!<...>`; `#` comments. A newline ends a rule, except inside parentheses and after
//! `|`. `root` is the start rule. A name defined twice keeps its last definition, as in llama.cpp.
//!
//! The conversion keeps the language exactly: every GBNF rule becomes a Lark parser rule and
//! every character a lexeme of its own (a one-character string or a one-character class regex).
//! llguidance's lexer is greedy, so longer lexemes (a literal, a class repeated inside a regex)
//! would change what an ambiguous grammar accepts, e.g. `("a" | "ab") "bc"` must accept both
//! `abc` and `abbc`; lexemes that each match exactly one character cannot be cut or extended
//! differently, and the Earley parser above them handles the ambiguity.
//!
//! What cannot be converted is refused with its line and column (1-based, columns in
//! characters): unknown escapes, code points that are not Unicode scalar values, empty or
//! reversed character classes, repetition counts over llama.cpp's limit
//! ([`MAX_REPETITION`]), references to undefined rules, tokens the vocabulary does not have.

use std::collections::HashMap;
use std::fmt::Write as _;

/// The largest repetition count accepted (llama.cpp's `MAX_REPETITION_THRESHOLD`; over it
/// llama.cpp refuses a minimum and silently drops a maximum, Maze refuses both).
pub(crate) const MAX_REPETITION: u32 = 2000;

/// Where something is in the grammar text: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Why a grammar was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GbnfError {
    pub pos: Pos,
    pub message: String,
}

impl std::fmt::Display for GbnfError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GBNF {}: {}", self.pos, self.message)
    }
}

type Parsed<T> = std::result::Result<T, GbnfError>;

/// A token element: by id (`<[12]>`) or by its text (`<think>`), matched or excluded (`!`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum TokenRef {
    Id(u32),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    /// A string literal, one element per character (empty: matches the empty string).
    Literal(Vec<char>),
    /// A character class: inclusive ranges, or everything but them.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `.`: any one character.
    Any,
    Ref {
        name: String,
        pos: Pos,
    },
    Token {
        negated: bool,
        token: TokenRef,
        pos: Pos,
    },
    Group(Vec<Vec<Node>>),
    Repeat {
        node: Box<Node>,
        min: u32,
        max: Option<u32>,
    },
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    alternatives: Vec<Vec<Node>>,
}

/// A parsed GBNF grammar: its rules in the order they were first defined.
#[derive(Debug, Clone)]
pub(crate) struct Grammar {
    rules: Vec<Rule>,
}

struct Parser {
    chars: Vec<char>,
    i: usize,
    line_starts: Vec<usize>,
    max_depth: usize,
    depth: usize,
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-'
}

impl Parser {
    fn new(text: &str, max_depth: usize) -> Self {
        let chars: Vec<char> = text.chars().collect();
        let mut line_starts = vec![0];
        for (i, &c) in chars.iter().enumerate() {
            if c == '\n' {
                line_starts.push(i + 1);
            }
        }
        Self { chars, i: 0, line_starts, max_depth, depth: 0 }
    }

    fn pos_at(&self, i: usize) -> Pos {
        let line = self.line_starts.partition_point(|&s| s <= i);
        Pos { line, column: i - self.line_starts[line - 1] + 1 }
    }

    fn error<T>(&self, i: usize, message: impl Into<String>) -> Parsed<T> {
        Err(GbnfError { pos: self.pos_at(i), message: message.into() })
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.i + offset).copied()
    }

    /// Skips blanks and comments, and newlines where `newline_ok`.
    fn space(&mut self, newline_ok: bool) {
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' => self.i += 1,
                '\r' | '\n' if newline_ok => self.i += 1,
                '#' => {
                    while self.peek().is_some_and(|c| c != '\r' && c != '\n') {
                        self.i += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn name(&mut self) -> Parsed<String> {
        let start = self.i;
        while self.peek().is_some_and(is_word_char) {
            self.i += 1;
        }
        if start == self.i {
            let what = self.peek().map_or("the end".to_string(), |c| format!("{c:?}"));
            return self.error(start, format!("expected a rule name, found {what}"));
        }
        Ok(self.chars[start..self.i].iter().collect())
    }

    fn int(&mut self) -> Parsed<u32> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        if start == self.i {
            return self.error(start, "expected a number");
        }
        let digits: String = self.chars[start..self.i].iter().collect();
        match digits.parse::<u32>() {
            Ok(n) if n <= MAX_REPETITION => Ok(n),
            _ => self.error(
                start,
                format!("repetition count {digits} is over the limit of {MAX_REPETITION} (llama.cpp's)"),
            ),
        }
    }

    fn grammar(mut self) -> Parsed<Grammar> {
        let mut rules: Vec<Rule> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        self.space(true);
        while self.i < self.chars.len() {
            let rule = self.rule()?;
            match index.get(&rule.name) {
                Some(&at) => rules[at] = rule,
                None => {
                    index.insert(rule.name.clone(), rules.len());
                    rules.push(rule);
                }
            }
        }
        Ok(Grammar { rules })
    }

    fn rule(&mut self) -> Parsed<Rule> {
        let name = self.name()?;
        self.space(false);
        if !(self.peek() == Some(':') && self.peek_at(1) == Some(':') && self.peek_at(2) == Some('=')) {
            return self.error(self.i, format!("expected ::= after the rule name {name}"));
        }
        self.i += 3;
        self.space(true);
        let alternatives = self.alternatives(false)?;
        match self.peek() {
            None => {}
            Some('\r') => self.i += if self.peek_at(1) == Some('\n') { 2 } else { 1 },
            Some('\n') => self.i += 1,
            Some(c) => {
                return self.error(self.i, format!("unexpected {c:?} (expected a newline or the end)"))
            }
        }
        self.space(true);
        Ok(Rule { name, alternatives })
    }

    fn alternatives(&mut self, nested: bool) -> Parsed<Vec<Vec<Node>>> {
        let mut alternatives = vec![self.sequence(nested)?];
        while self.peek() == Some('|') {
            self.i += 1;
            self.space(true);
            alternatives.push(self.sequence(nested)?);
        }
        Ok(alternatives)
    }

    fn sequence(&mut self, nested: bool) -> Parsed<Vec<Node>> {
        let mut seq: Vec<Node> = Vec::new();
        while let Some(c) = self.peek() {
            let start = self.i;
            match c {
                '"' => {
                    self.i += 1;
                    let mut chars = Vec::new();
                    loop {
                        match self.peek() {
                            None => return self.error(start, "unterminated string literal"),
                            Some('"') => break,
                            Some(_) => chars.push(self.char()?),
                        }
                    }
                    self.i += 1;
                    seq.push(Node::Literal(chars));
                }
                '[' => {
                    self.i += 1;
                    let negated = self.peek() == Some('^');
                    if negated {
                        self.i += 1;
                    }
                    let mut ranges = Vec::new();
                    loop {
                        match self.peek() {
                            None => return self.error(start, "unterminated character class"),
                            Some(']') => break,
                            Some(_) => {}
                        }
                        let lo_at = self.i;
                        let lo = self.char()?;
                        let mut hi = lo;
                        if self.peek() == Some('-') && self.peek_at(1).is_some_and(|c| c != ']') {
                            self.i += 1;
                            hi = self.char()?;
                            if hi < lo {
                                return self.error(
                                    lo_at,
                                    format!("the range {lo:?}-{hi:?} is reversed (it matches nothing)"),
                                );
                            }
                        }
                        ranges.push((lo, hi));
                    }
                    self.i += 1;
                    if ranges.is_empty() {
                        return self.error(
                            start,
                            "an empty character class (llama.cpp matches no character for it)",
                        );
                    }
                    seq.push(Node::Class { negated, ranges });
                }
                '<' | '!' => {
                    let negated = c == '!';
                    if negated {
                        self.i += 1;
                    }
                    let token = self.token()?;
                    seq.push(Node::Token { negated, token, pos: self.pos_at(start) });
                }
                c if is_word_char(c) => {
                    let name = self.name()?;
                    seq.push(Node::Ref { name, pos: self.pos_at(start) });
                }
                '(' => {
                    self.depth += 1;
                    if self.depth > self.max_depth {
                        return self.error(
                            start,
                            format!("parentheses nest deeper than the limit of {}", self.max_depth),
                        );
                    }
                    self.i += 1;
                    self.space(true);
                    let alternatives = self.alternatives(true)?;
                    if self.peek() != Some(')') {
                        return self.error(self.i, "expected ')'");
                    }
                    self.i += 1;
                    self.depth -= 1;
                    seq.push(Node::Group(alternatives));
                }
                '.' => {
                    self.i += 1;
                    seq.push(Node::Any);
                }
                '*' | '+' | '?' | '{' => {
                    let (min, max) = match c {
                        '*' => (0, None),
                        '+' => (1, None),
                        '?' => (0, Some(1)),
                        _ => self.braces(nested)?,
                    };
                    if c != '{' {
                        self.i += 1;
                    }
                    let Some(last) = seq.pop() else {
                        return self.error(start, format!("nothing before {c:?} to repeat"));
                    };
                    if max.is_some_and(|max| max < min) {
                        return self.error(
                            start,
                            format!("{{{min},{}}}: the maximum is below the minimum", max.unwrap_or(0)),
                        );
                    }
                    seq.push(Node::Repeat { node: Box::new(last), min, max });
                }
                _ => break,
            }
            self.space(nested);
        }
        Ok(seq)
    }

    /// `{m}`, `{m,}`, `{m,n}` (blanks allowed inside), from the `{`.
    fn braces(&mut self, nested: bool) -> Parsed<(u32, Option<u32>)> {
        self.i += 1;
        self.space(nested);
        let min = self.int()?;
        self.space(nested);
        let max = match self.peek() {
            Some('}') => Some(min),
            Some(',') => {
                self.i += 1;
                self.space(nested);
                let max =
                    if self.peek().is_some_and(|c| c.is_ascii_digit()) { Some(self.int()?) } else { None };
                self.space(nested);
                if self.peek() != Some('}') {
                    return self.error(self.i, "expected '}'");
                }
                max
            }
            _ => return self.error(self.i, "expected ',' or '}'"),
        };
        self.i += 1;
        Ok((min, max))
    }

    /// `<[id]>` or `<text>`, from the `<`.
    fn token(&mut self) -> Parsed<TokenRef> {
        let start = self.i;
        if self.peek() != Some('<') {
            return self.error(start, "expected '<' (a token) after '!'");
        }
        self.i += 1;
        if self.peek() == Some('[') {
            self.i += 1;
            let digits_at = self.i;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
            let digits: String = self.chars[digits_at..self.i].iter().collect();
            let Ok(id) = digits.parse::<u32>() else {
                return self.error(digits_at, "expected a token id (a number below 2^32)");
            };
            if self.peek() != Some(']') || self.peek_at(1) != Some('>') {
                return self.error(self.i, "expected ']>' to end the token id");
            }
            self.i += 2;
            return Ok(TokenRef::Id(id));
        }
        while self.peek().is_some_and(|c| c != '>') {
            self.i += 1;
        }
        if self.peek().is_none() {
            return self.error(start, "unterminated token (expected '>')");
        }
        self.i += 1;
        Ok(TokenRef::Text(self.chars[start..self.i].iter().collect()))
    }

    /// One character of a literal or class, escapes decoded.
    fn char(&mut self) -> Parsed<char> {
        let start = self.i;
        let c = self.peek().expect("called before the end");
        self.i += 1;
        if c != '\\' {
            return Ok(c);
        }
        let Some(e) = self.peek() else { return self.error(start, "unterminated escape") };
        self.i += 1;
        let digits = match e {
            't' => return Ok('\t'),
            'r' => return Ok('\r'),
            'n' => return Ok('\n'),
            '\\' | '"' | '[' | ']' | '-' => return Ok(e),
            'x' => 2,
            'u' => 4,
            'U' => 8,
            _ => return self.error(start, format!("unknown escape \\{e}")),
        };
        let mut value: u32 = 0;
        for _ in 0..digits {
            match self.peek().and_then(|c| c.to_digit(16)) {
                Some(d) => value = value.wrapping_mul(16) + d,
                None => return self.error(start, format!("expected {digits} hex digits after \\{e}")),
            }
            self.i += 1;
        }
        match char::from_u32(value) {
            Some(c) => Ok(c),
            None => self.error(start, format!("U+{value:X} is not a Unicode scalar value")),
        }
    }
}

impl Grammar {
    /// Parses GBNF text; parentheses may nest at most `max_depth` deep.
    pub fn parse(text: &str, max_depth: usize) -> Parsed<Self> {
        let grammar = Parser::new(text, max_depth).grammar()?;
        let defined: HashMap<&str, ()> = grammar.rules.iter().map(|r| (r.name.as_str(), ())).collect();
        if !defined.contains_key("root") {
            return Err(GbnfError {
                pos: Pos { line: 1, column: 1 },
                message: "the grammar has no root rule (the start rule is named root)".into(),
            });
        }
        let mut first_undefined: Option<(Pos, String)> = None;
        for rule in &grammar.rules {
            visit(&rule.alternatives, &mut |node| {
                if let Node::Ref { name, pos } = node {
                    if !defined.contains_key(name.as_str())
                        && first_undefined
                            .as_ref()
                            .is_none_or(|(p, _)| (pos.line, pos.column) < (p.line, p.column))
                    {
                        first_undefined = Some((*pos, name.clone()));
                    }
                }
            });
        }
        if let Some((pos, name)) = first_undefined {
            return Err(GbnfError { pos, message: format!("undefined rule {name}") });
        }
        Ok(grammar)
    }

    /// The Lark text. `token` resolves a `<text>` token element to its id (None: the
    /// vocabulary has no such single token, and the grammar is refused).
    pub fn to_lark(&self, token: &dyn Fn(&str) -> Option<u32>) -> Parsed<String> {
        let mut out = format!("start: {}\n", lark_name("root"));
        for rule in &self.rules {
            write!(out, "{}: ", lark_name(&rule.name)).expect("to a string");
            alternatives(&rule.alternatives, token, &mut out)?;
            out.push('\n');
        }
        Ok(out)
    }
}

/// Parses and converts in one go.
pub(crate) fn to_lark(text: &str, max_depth: usize, token: &dyn Fn(&str) -> Option<u32>) -> Parsed<String> {
    Grammar::parse(text, max_depth)?.to_lark(token)
}

fn visit(alternatives: &[Vec<Node>], f: &mut dyn FnMut(&Node)) {
    for node in alternatives.iter().flatten() {
        visit_node(node, f);
    }
}

fn visit_node(node: &Node, f: &mut dyn FnMut(&Node)) {
    f(node);
    match node {
        Node::Group(alts) => visit(alts, f),
        Node::Repeat { node, .. } => visit_node(node, f),
        _ => {}
    }
}

/// A GBNF name as a Lark rule name, injectively: Lark rule names are lowercase letters, digits
/// and `_`, and GBNF names never contain `_`. A name without capitals becomes `g_` followed by
/// the name with each `-` as `_`; a name with capitals becomes `gu_` followed by the name with
/// each capital as `_u` and its lowercase, each `-` as `_h`. Both start with a letter (a GBNF
/// name may start with a digit), differ in their prefix, and decode back to the name.
pub(crate) fn lark_name(name: &str) -> String {
    if !name.chars().any(|c| c.is_ascii_uppercase()) {
        return format!("g_{}", name.replace('-', "_"));
    }
    let mut out = String::from("gu_");
    for c in name.chars() {
        match c {
            '-' => out.push_str("_h"),
            c if c.is_ascii_uppercase() => {
                out.push_str("_u");
                out.push(c.to_ascii_lowercase());
            }
            c => out.push(c),
        }
    }
    out
}

fn alternatives(alts: &[Vec<Node>], token: &dyn Fn(&str) -> Option<u32>, out: &mut String) -> Parsed<()> {
    for (i, seq) in alts.iter().enumerate() {
        if i > 0 {
            out.push_str(" | ");
        }
        let before = out.len();
        for node in seq {
            if out.len() > before && !out.ends_with(' ') {
                out.push(' ');
            }
            self::node(node, token, out)?;
        }
        if out[before..].trim().is_empty() {
            out.truncate(before);
            // The empty string: an empty group.
            out.push_str("\"\"");
        }
    }
    Ok(())
}

fn node(node: &Node, token: &dyn Fn(&str) -> Option<u32>, out: &mut String) -> Parsed<()> {
    match node {
        Node::Literal(chars) => {
            let parts: Vec<String> = chars.iter().map(|&c| char_lexeme(c)).collect();
            out.push_str(&parts.join(" "));
        }
        Node::Class { negated, ranges } => {
            out.push_str(if *negated { "/[^" } else { "/[" });
            for &(lo, hi) in ranges {
                class_char(lo, out);
                if hi != lo {
                    out.push('-');
                    class_char(hi, out);
                }
            }
            out.push_str("]/");
        }
        Node::Any => out.push_str("/(?s:.)/"),
        Node::Ref { name, .. } => out.push_str(&lark_name(name)),
        Node::Token { negated, token: t, pos } => {
            let id = match t {
                TokenRef::Id(id) => *id,
                TokenRef::Text(text) => token(text).ok_or_else(|| GbnfError {
                    pos: *pos,
                    message: format!("the token {text} is not a single token of this model's vocabulary"),
                })?,
            };
            write!(out, "<[{}{id}]>", if *negated { "^" } else { "" }).expect("to a string");
        }
        Node::Group(alts) => {
            out.push('(');
            alternatives(alts, token, out)?;
            out.push(')');
        }
        Node::Repeat { node: inner, min, max } => {
            if *max == Some(0) {
                out.push_str("\"\"");
                return Ok(());
            }
            let atomic = match &**inner {
                Node::Literal(chars) => chars.len() == 1,
                Node::Repeat { .. } => false,
                _ => true,
            };
            if !atomic {
                out.push('(');
            }
            self::node(inner, token, out)?;
            if !atomic {
                out.push(')');
            }
            match (min, max) {
                (0, None) => out.push('*'),
                (1, None) => out.push('+'),
                (0, Some(1)) => out.push('?'),
                (m, None) => write!(out, "{{{m},}}").expect("to a string"),
                (m, Some(n)) if m == n => write!(out, "{{{m}}}").expect("to a string"),
                (m, Some(n)) => write!(out, "{{{m},{n}}}").expect("to a string"),
            }
        }
    }
    Ok(())
}

/// One character as a one-character lexeme: a Lark string when printable ASCII, else a regex.
fn char_lexeme(c: char) -> String {
    if (' '..='~').contains(&c) && c != '"' && c != '\\' {
        format!("\"{c}\"")
    } else {
        format!("/\\x{{{:x}}}/", c as u32)
    }
}

fn class_char(c: char, out: &mut String) {
    if c.is_ascii_alphanumeric() {
        out.push(c);
    } else {
        write!(out, "\\x{{{:x}}}", c as u32).expect("to a string");
    }
}

/// How deep the grammar nests, measured without parsing (for the limit checked before the
/// compilation): the deeper of parentheses in one rule and the longest chain of rules each
/// referring to the next. A light scan that skips literals, classes, tokens and comments.
pub(crate) fn nesting(text: &str) -> (Vec<(String, Vec<String>)>, usize) {
    let chars: Vec<char> = text.chars().collect();
    let mut defs: Vec<(String, Vec<String>)> = Vec::new();
    let (mut depth, mut deepest, mut i) = (0usize, 0usize, 0usize);
    let skip_to = |i: usize, end: char| {
        let mut j = i + 1;
        while j < chars.len() && chars[j] != end {
            j += if chars[j] == '\\' { 2 } else { 1 };
        }
        j + 1
    };
    while i < chars.len() {
        match chars[i] {
            '"' => i = skip_to(i, '"'),
            '[' => i = skip_to(i, ']'),
            '<' => i = skip_to(i, '>'),
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '(' => {
                depth += 1;
                deepest = deepest.max(depth);
                i += 1;
            }
            ')' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            c if is_word_char(c) => {
                let start = i;
                while i < chars.len() && is_word_char(chars[i]) {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && (chars[j] == ' ' || chars[j] == '\t') {
                    j += 1;
                }
                if chars[j..].starts_with(&[':', ':', '=']) {
                    defs.push((name, Vec::new()));
                    depth = 0;
                    i = j + 3;
                } else if let Some((_, uses)) = defs.last_mut() {
                    uses.push(name);
                }
            }
            _ => i += 1,
        }
    }
    (defs, deepest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lark(text: &str) -> String {
        to_lark(text, 128, &|_| None).unwrap_or_else(|e| panic!("{e}"))
    }

    fn refused(text: &str) -> GbnfError {
        to_lark(text, 128, &|t| (t == "<known>").then_some(7)).expect_err("refused")
    }

    #[test]
    fn rules_literals_classes_and_repetitions_convert() {
        let g =
            lark("root ::= \"ab\" [a-z0-9_]* item+ (x | \"y\")? .\nitem ::= [^\"\\\\] x{2,3}\nx ::= \"\"\n");
        assert_eq!(
            g,
            "start: g_root\n\
             g_root: \"a\" \"b\" /[a-z0-9\\x{5f}]/* g_item+ (g_x | \"y\")? /(?s:.)/\n\
             g_item: /[^\\x{22}\\x{5c}]/ g_x{2,3}\n\
             g_x: \"\"\n"
        );
        assert_eq!(
            lark("root ::= \"ab\"* \"c\"{3} \"d\"{2,} \"e\"{0}\n"),
            "start: g_root\ng_root: (\"a\" \"b\")* \"c\"{3} \"d\"{2,} \"\"\n"
        );
    }

    #[test]
    fn escapes_decode_to_characters() {
        let g = lark(r#"root ::= "\x41\u00e9\U0001F600\t\n\r\\\"\[\]\-" [\x00-\x1F\]]"#);
        assert!(
            g.contains(r#""A" /\x{e9}/ /\x{1f600}/ /\x{9}/ /\x{a}/ /\x{d}/ /\x{5c}/ /\x{22}/ "[" "]" "-""#),
            "{g}"
        );
        assert!(g.contains(r"/[\x{0}-\x{1f}\x{5d}]/"), "{g}");
        // Raw non-ASCII characters are characters, not bytes.
        assert!(lark("root ::= \"é\" [ぁ-ゟ]").contains(r"/\x{e9}/ /[\x{3041}-\x{309f}]/"));
    }

    #[test]
    fn newlines_end_rules_except_in_parentheses_and_after_bars() {
        let g = lark("root ::= a |\n  b\na ::= (\"x\"\n  \"y\") # comment\n\n# more\nb ::= \"z\" # end");
        assert_eq!(g, "start: g_root\ng_root: g_a | g_b\ng_a: (\"x\" \"y\")\ng_b: \"z\"\n");
        let e = refused("root ::= \"a\" ::= \"b\"");
        assert_eq!(e.pos, Pos { line: 1, column: 14 });
        // A rule on the next line is a new rule, not a continuation.
        let e = refused("root ::= \"a\"\n  \"b\"\n");
        assert_eq!(e.pos, Pos { line: 2, column: 3 }, "{e}");
    }

    #[test]
    fn names_map_injectively_to_lark_rule_names() {
        let names =
            ["json-value", "jsonValue", "json-value-", "9lives", "a-b", "aB", "a--b", "ab", "json-Value"];
        let mapped: Vec<String> = names.iter().map(|n| lark_name(n)).collect();
        let mut distinct = mapped.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), mapped.len(), "{mapped:?}");
        for m in &mapped {
            assert!(m.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{m}");
            assert!(m.starts_with(|c: char| c.is_ascii_lowercase()), "{m}");
        }
        assert_eq!(lark_name("json-value"), "g_json_value");
    }

    #[test]
    fn tokens_map_to_llguidance_token_ids() {
        let g = to_lark("root ::= <[12]> !<[13]> <known> !<known>", 128, &|t| (t == "<known>").then_some(7))
            .unwrap();
        assert!(g.contains("g_root: <[12]> <[^13]> <[7]> <[^7]>"), "{g}");
        let e = refused("root ::= \"a\" <unknown>");
        assert_eq!(e.pos, Pos { line: 1, column: 14 });
        assert!(e.message.contains("<unknown> is not a single token"), "{e}");
    }

    #[test]
    fn a_later_definition_replaces_an_earlier_one() {
        assert_eq!(
            lark("root ::= a\na ::= \"x\"\na ::= \"y\"\n"),
            "start: g_root\ng_root: g_a\ng_a: \"y\"\n"
        );
    }

    #[test]
    fn what_cannot_be_converted_is_refused_with_line_and_column() {
        let cases: &[(&str, (usize, usize), &str)] = &[
            ("root ::= x\n", (1, 10), "undefined rule x"),
            ("root ::= \"a\"\nitem ::= \"b\" other-rule\n", (2, 14), "undefined rule other-rule"),
            ("item ::= \"a\"\n", (1, 1), "no root rule"),
            ("root ::= \"a\\q\"", (1, 12), "unknown escape \\q"),
            ("root ::= \"\\uD800\"", (1, 11), "U+D800 is not a Unicode scalar value"),
            ("root ::= \"\\U00110000\"", (1, 11), "not a Unicode scalar value"),
            ("root ::= \"\\x4\"", (1, 11), "expected 2 hex digits"),
            ("root ::= \"abc", (1, 10), "unterminated string"),
            ("root ::= [a-z", (1, 10), "unterminated character class"),
            ("root ::= []", (1, 10), "empty character class"),
            ("root ::= [z-a]", (1, 11), "reversed"),
            ("root ::= * \"a\"", (1, 10), "nothing before '*'"),
            ("root ::= \"a\" | +", (1, 16), "nothing before '+'"),
            ("root ::= \"a\"{3000}", (1, 14), "over the limit of 2000"),
            ("root ::= \"a\"{5,2}", (1, 13), "maximum is below the minimum"),
            ("root ::= \"a\"{x}", (1, 14), "expected a number"),
            ("root ::= \"a\"{2 x}", (1, 16), "expected ',' or '}'"),
            ("root ::= (\"a\" \"b\"", (1, 18), "expected ')'"),
            ("root ::= \"a\" )", (1, 14), "unexpected ')'"),
            ("root = \"a\"", (1, 6), "expected ::="),
            ("root ::= \"a\"\n::= \"b\"", (2, 1), "expected a rule name"),
            ("root ::= !\"a\"", (1, 11), "expected '<'"),
            ("root ::= <[12", (1, 14), "expected ']>'"),
            ("root ::= \"a\" _x", (1, 14), "unexpected '_'"),
        ];
        for (text, (line, column), what) in cases {
            let e = refused(text);
            assert_eq!(e.pos, Pos { line: *line, column: *column }, "{text:?}: {e}");
            assert!(e.message.contains(what), "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("GBNF line {line}, column {column}: ")), "{e}");
        }
    }

    #[test]
    fn parentheses_past_the_depth_limit_are_refused_without_recursing_further() {
        let deep = format!("root ::= {}\"a\"{}", "(".repeat(200), ")".repeat(200));
        let e = to_lark(&deep, 128, &|_| None).unwrap_err();
        assert!(e.message.contains("limit of 128"), "{e}");
        assert_eq!(e.pos, Pos { line: 1, column: 10 + 128 });
        assert_eq!(nesting(&deep).1, 200);
        let (defs, _) = nesting("root ::= a \"(\" [(] <(> # (\na ::= b\nb ::= \"x\"");
        assert_eq!(
            defs,
            vec![("root".into(), vec!["a".into()]), ("a".into(), vec!["b".into()]), ("b".into(), vec![])]
        );
    }

    /// Whether the compiled grammar accepts `text` whole (fed as byte tokens of the test
    /// vocabulary, as generation would feed them), and whether it accepts it as a prefix.
    fn verdict(compiler: &crate::constraint::Compiler, grammar: &str, text: &str) -> (bool, bool) {
        use crate::constraint::compile::Program;
        let compiled = compiler.compile(&crate::constraint::Constraint::gbnf("g", grammar)).unwrap();
        let Program::Grammars(parsers, _) = &*compiled.program else { panic!("a grammar") };
        let mut m = llguidance::Matcher::new(Ok(parsers[0].deep_clone()));
        let tok = crate::model::tokenizer::tests::smollm();
        for b in text.bytes() {
            let piece = if b.is_ascii_graphic() { (b as char).to_string() } else { String::new() };
            let id = tok.token_id(&piece).filter(|_| !piece.is_empty()).unwrap_or_else(|| {
                (0..tok.vocab_size() as u32).find(|&i| tok.piece(i) == Some(&[b][..])).unwrap()
            });
            if m.consume_token(id).is_err() {
                return (false, false);
            }
        }
        (m.is_accepting().unwrap_or(false), !m.is_error())
    }

    fn test_compiler() -> crate::constraint::Compiler {
        let tok = std::sync::Arc::new(crate::model::tokenizer::tests::smollm());
        let vocab = tok.vocab_size();
        crate::constraint::Compiler::new(tok, vocab, 16)
    }

    /// llguidance's lexer is greedy; one lexeme per character keeps ambiguous grammars' meaning.
    #[test]
    fn ambiguous_grammars_keep_their_meaning_under_llguidance() {
        let c = test_compiler();
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("root ::= (\"a\" | \"ab\") \"bc\"", &["abc", "abbc"], &["ab", "abcc"]),
            ("root ::= \"a\"* \"ab\"", &["ab", "aab", "aaab"], &["a", "abb"]),
            ("root ::= [a-z]+ \"x\" [a-z]*", &["ax", "xx", "xxx", "abxcd"], &["x", "ab"]),
            ("root ::= [0-9]* \"1\" [0-9]{2}", &["100", "1100", "5123"], &["10", "1000a"]),
            ("root ::= word (\" \" word)*\nword ::= [a-z]+ | \"the\"", &["the cat", "a b c"], &["the  cat"]),
            ("root ::= (\"ab\" | \"a\") (\"b\" | \"bb\")", &["ab", "abb", "abbb"], &["abbbb"]),
            ("root ::= .* \"!\"", &["!", "hi!", "a!b!", "\n!"], &["hi"]),
            ("root ::= [^a]{2} \"a\"?", &["bc", "bca", "\n\n"], &["ab", "bcaa"]),
            ("root ::= \"\" | \"x\"", &["", "x"], &["xx"]),
            (
                "root ::= expr\nexpr ::= expr \"+\" term | term\nterm ::= [0-9]",
                &["1", "1+2+3"],
                &["1+", "+1"],
            ),
        ];
        for (grammar, good, bad) in cases {
            for text in *good {
                assert!(verdict(&c, grammar, text).0, "{grammar:?} must accept {text:?}");
            }
            for text in *bad {
                assert!(!verdict(&c, grammar, text).0, "{grammar:?} must refuse {text:?}");
            }
        }
        // A valid prefix stays open; an invalid one is refused at once.
        assert_eq!(verdict(&c, "root ::= \"abc\"", "ab"), (false, true));
        assert_eq!(verdict(&c, "root ::= \"abc\"", "ac"), (false, false));
    }

    #[test]
    fn refusals_name_the_constraint_and_the_place() {
        let c = test_compiler();
        let err = c
            .compile(&crate::constraint::Constraint::gbnf("mine", "root ::= \"x\"\n  b = \"y\""))
            .err()
            .unwrap();
        assert_eq!(err.kind(), crate::error::ErrorKind::InvalidConstraint);
        assert!(
            err.message().starts_with("constraint 'mine' (gbnf): GBNF line 2, column 5: expected ::="),
            "{err}"
        );
        let err = c.compile(&crate::constraint::Constraint::gbnf("mine", "root ::= <nope>")).err().unwrap();
        assert!(err.message().contains("GBNF line 1, column 10: the token <nope>"), "{err}");
        // Special tokens resolve through the vocabulary.
        c.compile(&crate::constraint::Constraint::gbnf("t", "root ::= \"x\" <|im_end|>")).unwrap();
    }
}
