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
//! differently, and the Earley parser above them handles the ambiguity. The one exception is
//! a repetition of one character that nothing following or competing with it can confuse
//! (`Grammar::safe_repetitions`): it becomes one lexeme, which costs far less per mask.
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
        let e = Emit { token, merged: self.safe_repetitions() };
        let mut out = format!("start: {}\n", lark_name("root"));
        for rule in &self.rules {
            write!(out, "{}: ", lark_name(&rule.name)).expect("to a string");
            e.alternatives(&rule.alternatives, &mut out)?;
            out.push('\n');
        }
        Ok(out)
    }
}

/// Most character units the repetition analysis takes on (its sets are units × units bits);
/// a larger grammar keeps one lexeme per character throughout.
const MAX_ANALYSED_UNITS: usize = 4096;

/// A set of units, as bits.
#[derive(Clone, PartialEq, Eq)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Self(vec![0; n.div_ceil(64)])
    }
    fn one(n: usize, i: usize) -> Self {
        let mut b = Self::new(n);
        b.0[i / 64] |= 1 << (i % 64);
        b
    }
    fn has(&self, i: usize) -> bool {
        self.0[i / 64] >> (i % 64) & 1 == 1
    }
    /// Adds `other`; true when that changed something.
    fn add(&mut self, other: &Bits) -> bool {
        let mut changed = false;
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            changed |= *b & !*a != 0;
            *a |= b;
        }
        changed
    }
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.0.len() * 64).filter(|&i| self.has(i))
    }
}

/// One character position of the grammar (a literal's character, a class, `.`), or a
/// repetition of one character that may become a single lexeme: what it can match.
struct Unit {
    /// Code points, as sorted inclusive ranges.
    chars: Vec<(u32, u32)>,
    /// The first bytes of their UTF-8 encodings (the lexer decides byte by byte).
    lead: [u64; 4],
}

/// The characters a literal character, class or `.` matches, as sorted ranges.
fn node_chars(node: &Node) -> Vec<(u32, u32)> {
    {
        match node {
            Node::Literal(c) => vec![(c[0] as u32, c[0] as u32)],
            Node::Class { negated: false, ranges } => {
                normalize(ranges.iter().map(|&(a, b)| (a as u32, b as u32)))
            }
            Node::Class { negated: true, ranges } => {
                let inside = normalize(ranges.iter().map(|&(a, b)| (a as u32, b as u32)));
                let mut outside = Vec::new();
                let mut next = 0u32;
                for (lo, hi) in inside {
                    if lo > next {
                        outside.push((next, lo - 1));
                    }
                    next = hi + 1;
                }
                if next <= 0x10FFFF {
                    outside.push((next, 0x10FFFF));
                }
                outside
            }
            _ => vec![(0, 0x10FFFF)],
        }
    }
}

/// The characters `node` matches when it matches exactly one character: a literal character,
/// a class, `.`, or a group or rule whose every alternative is one such node.
fn single_char<'g>(g: &'g Grammar, node: &'g Node, seen: &mut Vec<&'g str>) -> Option<Vec<(u32, u32)>> {
    let of_alts = |alts: &'g [Vec<Node>], seen: &mut Vec<&'g str>| -> Option<Vec<(u32, u32)>> {
        let mut all = Vec::new();
        for seq in alts {
            let [only] = seq.as_slice() else { return None };
            all.extend(single_char(g, only, seen)?);
        }
        Some(normalize(all.into_iter()))
    };
    match node {
        Node::Literal(c) if c.len() == 1 => Some(node_chars(node)),
        Node::Class { .. } | Node::Any => Some(node_chars(node)),
        Node::Group(alts) => of_alts(alts, seen),
        Node::Ref { name, .. } if !seen.contains(&name.as_str()) && seen.len() < 64 => {
            let rule = g.rules.iter().find(|r| &r.name == name)?;
            seen.push(name);
            let chars = of_alts(&rule.alternatives, seen);
            seen.pop();
            chars
        }
        _ => None,
    }
}

impl Unit {
    fn from_chars(chars: Vec<(u32, u32)>) -> Self {
        let mut lead = [0u64; 4];
        for &(lo, hi) in &chars {
            // Per UTF-8 length, the lead byte grows with the code point.
            for (start, end, shift, tag) in [
                (0, 0x7F, 0, 0u32),
                (0x80, 0x7FF, 6, 0xC0),
                (0x800, 0xFFFF, 12, 0xE0),
                (0x10000, 0x10FFFF, 18, 0xF0),
            ] {
                let (a, b) = (lo.max(start), hi.min(end));
                if a <= b {
                    for byte in (tag | a >> shift)..=(tag | b >> shift) {
                        lead[byte as usize / 64] |= 1 << (byte % 64);
                    }
                }
            }
        }
        Self { chars, lead }
    }

    fn shares_lead_byte(&self, other: &Unit) -> bool {
        self.lead.iter().zip(&other.lead).any(|(a, b)| a & b != 0)
    }

    fn shares_char(&self, other: &Unit) -> bool {
        self.chars.iter().any(|&(a, b)| other.chars.iter().any(|&(c, d)| a <= d && c <= b))
    }
}

fn normalize(ranges: impl Iterator<Item = (u32, u32)>) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = ranges.collect();
    v.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::new();
    for (lo, hi) in v {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// FIRST / nullable / FOLLOW over units, for [`Grammar::safe_repetitions`].
struct Analysis<'g> {
    g: &'g Grammar,
    units: Vec<Unit>,
    /// Unit id of each unit node (by address); a literal's characters take consecutive ids.
    ids: HashMap<usize, usize>,
    /// Repetitions that may become one lexeme (by address), with their unit id and characters.
    candidates: Vec<(usize, usize)>,
    candidate_chars: HashMap<usize, Vec<(u32, u32)>>,
    rule_of: HashMap<&'g str, usize>,
    rule_first: Vec<Bits>,
    rule_nullable: Vec<bool>,
    rule_follow: Vec<Bits>,
    follow: Vec<Bits>,
}

fn key(node: &Node) -> usize {
    node as *const Node as usize
}

impl<'g> Analysis<'g> {
    /// None when the grammar has tokens (whose bytes the analysis cannot see) or too many units.
    fn new(g: &'g Grammar) -> Option<Self> {
        let mut a = Analysis {
            g,
            units: Vec::new(),
            ids: HashMap::new(),
            candidates: Vec::new(),
            candidate_chars: HashMap::new(),
            rule_of: g.rules.iter().enumerate().map(|(i, r)| (r.name.as_str(), i)).collect(),
            rule_first: Vec::new(),
            rule_nullable: vec![false; g.rules.len()],
            rule_follow: Vec::new(),
            follow: Vec::new(),
        };
        let mut tokens = false;
        for rule in &g.rules {
            for node in rule.alternatives.iter().flatten() {
                a.number(node, &mut tokens);
            }
        }
        if tokens || a.units.len() > MAX_ANALYSED_UNITS {
            return None;
        }
        let n = a.units.len();
        a.rule_first = vec![Bits::new(n); g.rules.len()];
        a.rule_follow = vec![Bits::new(n); g.rules.len()];
        a.follow = vec![Bits::new(n); n];
        loop {
            let mut changed = false;
            for (i, rule) in g.rules.iter().enumerate() {
                let (first, nullable) = a.first_alts(&rule.alternatives);
                changed |= a.rule_first[i].add(&first);
                if nullable && !a.rule_nullable[i] {
                    a.rule_nullable[i] = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        // The start: whatever follows root is the end of the text (no unit).
        loop {
            let mut changed = false;
            for (i, rule) in g.rules.iter().enumerate() {
                let ctx = a.rule_follow[i].clone();
                changed |= a.follow_alts(&rule.alternatives, &ctx);
            }
            if !changed {
                break;
            }
        }
        Some(a)
    }

    /// A repetition of one character without a maximum (`[a-z]+`, `[^"]*`, `"x"{2,}`, `.*`,
    /// `letter+` with `letter ::= [a-z] | "_"`): it may become one lexeme.
    fn is_candidate(&self, node: &Node) -> bool {
        self.candidate_chars.contains_key(&key(node))
    }

    fn number(&mut self, node: &'g Node, tokens: &mut bool) {
        match node {
            Node::Literal(chars) if !chars.is_empty() => {
                self.ids.insert(key(node), self.units.len());
                for &c in chars {
                    self.units.push(Unit::from_chars(vec![(c as u32, c as u32)]));
                }
            }
            Node::Class { .. } | Node::Any => {
                self.ids.insert(key(node), self.units.len());
                self.units.push(Unit::from_chars(node_chars(node)));
            }
            Node::Repeat { node: inner, max: None, .. }
                if single_char(self.g, inner, &mut Vec::new()).is_some() =>
            {
                let chars = single_char(self.g, inner, &mut Vec::new()).expect("just seen");
                self.ids.insert(key(node), self.units.len());
                self.candidates.push((key(node), self.units.len()));
                self.candidate_chars.insert(key(node), chars.clone());
                self.units.push(Unit::from_chars(chars));
                // A group's own units stand for it where it is not made one lexeme.
                if let Node::Group(_) = &**inner {
                    self.number(inner, tokens);
                }
            }
            Node::Repeat { node: inner, .. } => self.number(inner, tokens),
            Node::Group(alts) => alts.iter().flatten().for_each(|n| self.number(n, tokens)),
            Node::Token { .. } => *tokens = true,
            Node::Literal(_) | Node::Ref { .. } => {}
        }
    }

    fn empty(&self) -> Bits {
        Bits::new(self.units.len())
    }

    fn first_alts(&self, alts: &[Vec<Node>]) -> (Bits, bool) {
        let (mut first, mut nullable) = (self.empty(), false);
        for seq in alts {
            let (f, n) = self.first_seq(seq);
            first.add(&f);
            nullable |= n;
        }
        (first, nullable)
    }

    fn first_seq(&self, seq: &[Node]) -> (Bits, bool) {
        let mut first = self.empty();
        for node in seq {
            let (f, n) = self.first(node);
            first.add(&f);
            if !n {
                return (first, false);
            }
        }
        (first, true)
    }

    fn first(&self, node: &Node) -> (Bits, bool) {
        let n = self.units.len();
        match node {
            Node::Literal(chars) if chars.is_empty() => (self.empty(), true),
            Node::Repeat { max: Some(0), .. } => (self.empty(), true),
            Node::Literal(_) | Node::Class { .. } | Node::Any => (Bits::one(n, self.ids[&key(node)]), false),
            Node::Repeat { min, .. } if self.is_candidate(node) => {
                (Bits::one(n, self.ids[&key(node)]), *min == 0)
            }
            Node::Repeat { node: inner, min, .. } => {
                let (f, nullable) = self.first(inner);
                (f, nullable || *min == 0)
            }
            Node::Group(alts) => self.first_alts(alts),
            Node::Ref { name, .. } => {
                let r = self.rule_of[name.as_str()];
                (self.rule_first[r].clone(), self.rule_nullable[r])
            }
            Node::Token { .. } => unreachable!("grammars with tokens are not analysed"),
        }
    }

    /// Spreads `ctx` (what may follow) into the alternatives; true when a set grew.
    fn follow_alts(&mut self, alts: &[Vec<Node>], ctx: &Bits) -> bool {
        let mut changed = false;
        for seq in alts {
            let mut after = ctx.clone();
            for node in seq.iter().rev() {
                changed |= self.follow_node(node, &after);
                let (f, nullable) = self.first(node);
                if nullable {
                    after.add(&f);
                } else {
                    after = f;
                }
            }
        }
        changed
    }

    fn follow_node(&mut self, node: &Node, ctx: &Bits) -> bool {
        match node {
            Node::Repeat { max: Some(0), .. } => false,
            Node::Literal(chars) if chars.is_empty() => false,
            Node::Literal(chars) => {
                let base = self.ids[&key(node)];
                let mut changed = false;
                for i in 0..chars.len() {
                    let next = if i + 1 < chars.len() {
                        Bits::one(self.units.len(), base + i + 1)
                    } else {
                        ctx.clone()
                    };
                    changed |= self.follow[base + i].add(&next);
                }
                changed
            }
            Node::Class { .. } | Node::Any => {
                let id = self.ids[&key(node)];
                self.follow[id].add(ctx)
            }
            Node::Repeat { node: inner, .. } if self.is_candidate(node) => {
                let id = self.ids[&key(node)];
                let mut changed = self.follow[id].add(ctx);
                // Where it is not made one lexeme, a group or rule repeats character by character.
                if let Node::Group(_) | Node::Ref { .. } = &**inner {
                    let mut inner_ctx = ctx.clone();
                    inner_ctx.add(&self.first(inner).0);
                    changed |= self.follow_node(inner, &inner_ctx);
                }
                changed
            }
            Node::Repeat { node: inner, max, .. } => {
                let mut inner_ctx = ctx.clone();
                if max.is_none_or(|m| m >= 2) {
                    inner_ctx.add(&self.first(inner).0);
                }
                self.follow_node(inner, &inner_ctx)
            }
            Node::Group(alts) => self.follow_alts(alts, ctx),
            Node::Ref { name, .. } => {
                let r = self.rule_of[name.as_str()];
                self.rule_follow[r].add(ctx)
            }
            Node::Token { .. } => false,
        }
    }
}

impl Grammar {
    /// The repetitions of one character (`[a-z]+`, `[^"]*`) that can be one greedy lexeme
    /// without changing the language, by address. One lexeme per character is always right but
    /// costs a parser step per character; a repetition `C+` read greedily is right when the
    /// lexer can never have to stop it early or prefer another lexeme at its start:
    /// 1. nothing that can follow it starts with a byte that could continue it (no character of
    ///    whatever follows shares its first UTF-8 byte with a character of `C`), and
    /// 2. nothing that can start where it starts does: the lexemes that compete with it are
    ///    among those following any unit that can match the character before it (the units
    ///    able to precede it, and any unit matching one of their characters, since an
    ///    ambiguous text may end its prefix in either; a repetition follows itself), or the
    ///    grammar's first units.
    ///
    /// FIRST and FOLLOW are over-approximations (context-free), so both checks are safe.
    fn safe_repetitions(&self) -> HashMap<usize, Vec<(u32, u32)>> {
        let Some(a) = Analysis::new(self) else { return HashMap::new() };
        let root_first = a.rule_first[a.rule_of["root"]].clone();
        let mut safe = HashMap::new();
        for &(node, x) in &a.candidates {
            let unit = &a.units[x];
            if a.follow[x].iter().any(|y| a.units[y].shares_lead_byte(unit)) {
                continue;
            }
            let preceding: Vec<usize> = (0..a.units.len()).filter(|&t| a.follow[t].has(x)).collect();
            let mut competitors = if root_first.has(x) { root_first.clone() } else { a.empty() };
            for t2 in 0..a.units.len() {
                if preceding.iter().any(|&t| a.units[t].shares_char(&a.units[t2])) {
                    competitors.add(&a.follow[t2]);
                    // Another repetition (one lexeme or not) can go on after its own character.
                    if a.candidates.iter().any(|&(_, c)| c == t2) {
                        competitors.add(&Bits::one(a.units.len(), t2));
                    }
                }
            }
            if competitors.iter().all(|y| y == x || !a.units[y].shares_lead_byte(unit)) {
                safe.insert(node, a.candidate_chars[&node].clone());
            }
        }
        safe
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

/// Writes the Lark text: `merged` holds the repetitions that become one lexeme.
struct Emit<'a> {
    token: &'a dyn Fn(&str) -> Option<u32>,
    merged: HashMap<usize, Vec<(u32, u32)>>,
}

impl Emit<'_> {
    fn alternatives(&self, alts: &[Vec<Node>], out: &mut String) -> Parsed<()> {
        for (i, seq) in alts.iter().enumerate() {
            if i > 0 {
                out.push_str(" | ");
            }
            let before = out.len();
            for node in seq {
                if out.len() > before && !out.ends_with(' ') {
                    out.push(' ');
                }
                self.node(node, out)?;
            }
            if out[before..].trim().is_empty() {
                out.truncate(before);
                // The empty string: an empty group.
                out.push_str("\"\"");
            }
        }
        Ok(())
    }

    fn node(&self, node: &Node, out: &mut String) -> Parsed<()> {
        match node {
            Node::Literal(chars) => {
                let parts: Vec<String> = chars.iter().map(|&c| char_lexeme(c)).collect();
                out.push_str(&parts.join(" "));
            }
            Node::Class { .. } | Node::Any => write!(out, "/{}/", one_char_regex(node)).expect("to a string"),
            Node::Ref { name, .. } => out.push_str(&lark_name(name)),
            Node::Token { negated, token: t, pos } => {
                let id = match t {
                    TokenRef::Id(id) => *id,
                    TokenRef::Text(text) => (self.token)(text).ok_or_else(|| GbnfError {
                        pos: *pos,
                        message: format!("the token {text} is not a single token of this model's vocabulary"),
                    })?,
                };
                write!(out, "<[{}{id}]>", if *negated { "^" } else { "" }).expect("to a string");
            }
            Node::Group(alts) => {
                out.push('(');
                self.alternatives(alts, out)?;
                out.push(')');
            }
            Node::Repeat { node: inner, min, max } => {
                if *max == Some(0) {
                    out.push_str("\"\"");
                    return Ok(());
                }
                if let Some(chars) = self.merged.get(&key(node)) {
                    // One lexeme for the whole repetition (see `Grammar::safe_repetitions`).
                    let one = match &**inner {
                        Node::Group(_) | Node::Ref { .. } => ranges_regex(chars),
                        one_char => one_char_regex(one_char),
                    };
                    match min {
                        0 => write!(out, "(/{one}+/)?"),
                        1 => write!(out, "/{one}+/"),
                        m => write!(out, "/{one}{{{m},}}/"),
                    }
                    .expect("to a string");
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
                self.node(inner, out)?;
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
}

/// A class matching the characters of `ranges` (sorted; surrogates left out).
fn ranges_regex(ranges: &[(u32, u32)]) -> String {
    let mut out = String::from("[");
    for &(lo, hi) in ranges {
        for (a, b) in [(lo, hi.min(0xD7FF)), (lo.max(0xE000), hi)] {
            if a <= b {
                write!(out, "\\x{{{a:x}}}").expect("to a string");
                if b != a {
                    write!(out, "-\\x{{{b:x}}}").expect("to a string");
                }
            }
        }
    }
    out.push(']');
    out
}

/// A class, `.` or one-character literal as a regex matching that one character (no slashes).
fn one_char_regex(node: &Node) -> String {
    let mut out = String::new();
    match node {
        Node::Class { negated, ranges } => {
            out.push_str(if *negated { "[^" } else { "[" });
            for &(lo, hi) in ranges {
                class_char(lo, &mut out);
                if hi != lo {
                    out.push('-');
                    class_char(hi, &mut out);
                }
            }
            out.push(']');
        }
        Node::Literal(chars) if chars.len() == 1 => {
            out.push('[');
            class_char(chars[0], &mut out);
            out.push(']');
        }
        _ => out.push_str("(?s:.)"),
    }
    out
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
            "start: g_root\ng_root: (\"a\" \"b\")* \"c\"{3} /[d]{2,}/ \"\"\n"
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
            // Where a repetition competes with another lexeme, it stays one lexeme per character.
            ("root ::= \"a\" [a-z]+ \"!\" | \"ab\" \"c\" \"?\"", &["abc?", "abc!", "ab!"], &["abc", "a!"]),
            ("root ::= x | y\nx ::= [a-z]+ \"1\"\ny ::= \"q\" \"r\" \"2\"", &["qr2", "qr1", "a1"], &["qr"]),
            ("root ::= [a-z]+ [a-z]+", &["ab", "abc"], &["a"]),
            ("root ::= ([a-z]* \",\")* [a-z]*", &["a,b", ",,", "", "abc"], &["A"]),
            ("root ::= \"- \" [^\\n]+ \"\\n\" [0-9]*", &["- a b\n", "- x\n12"], &["- \n", "- a"]),
            ("root ::= [é]+ [è]", &["éè", "ééè"], &["é"]),
            ("root ::= w+ \"x\" w*\nw ::= [a-z] | \"_\"", &["_x", "axa", "xx", "xx_"], &["x", "_"]),
            ("root ::= (w | \" \")+ \"!\"\nw ::= [a-z] | [0-9]", &["a b!", " !", "1!"], &["!", "a"]),
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

    /// Which repetitions became one lexeme: only where no following or competing lexeme shares
    /// a first byte with it (the languages are checked above and against llama.cpp).
    #[test]
    fn repetitions_become_one_lexeme_only_where_that_is_safe() {
        let merged = |g: &str| lark(g).contains("]+/");
        assert!(merged("root ::= \"- \" [^\\n]+ \"\\n\""), "followed by what it cannot match");
        assert!(merged("root ::= [a-z]+"), "followed by the end");
        assert!(merged("root ::= \"(\" [0-9]* \")\""));
        assert!(!merged("root ::= [a-z]+ \"x\""), "followed by a character of its class");
        assert!(!merged("root ::= [a-z]+ [a-z]+"), "followed by itself");
        assert!(!merged("root ::= [a-z]+ | \"q\" \"1\""), "competing with q at the start");
        assert!(!merged("root ::= \"a\" [a-z]+ \"!\" | \"ab\" \"?\""), "competing with b after a");
        assert!(!merged("root ::= [é]+ [è]"), "é and è share their first byte");
        // Repetitions of a rule or group that matches one character of a set.
        let english = lark("root ::= w+ (\" \" w+)*\nw ::= letter | [0-9]\nletter ::= [a-z] | \"_\"");
        assert!(
            english.contains("g_root: /[\\x{30}-\\x{39}\\x{5f}\\x{61}-\\x{7a}]+/ (\" \" /["),
            "{english}"
        );
        assert!(merged("root ::= (\"a\" | [0-9])* \".\""));
        assert!(
            !merged("root ::= w+ \"x\" w*\nw ::= [a-z] | \"_\"".replace(" w*", "").as_str()),
            "x follows w+"
        );
        assert!(!merged("root ::= (\"ab\" | [0-9])*"), "not one character");
        let tokens = to_lark("root ::= [a-z]+ <[5]>", 128, &|_| None).unwrap();
        assert!(!tokens.contains("]+/"), "tokens: not analysed: {tokens}");
        let ws = lark("root ::= term \"\\n\"\nterm ::= [0-9]+ ws\nws ::= [ \\t\\n]*");
        assert!(
            ws.contains("g_term: /[0-9]+/ g_ws") && ws.contains("g_ws: /[\\x{20}\\x{9}\\x{a}]/*"),
            "{ws}"
        );
    }
}
