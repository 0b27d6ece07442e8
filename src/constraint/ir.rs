//! The constraint IR: what a caller may ask generated text to obey. Built in Rust, from JSON
//! (`Constraint::from_json`) or from the C struct; all three give the same value.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::c_enum::rust_side as c_enum;
use crate::error::{Error, Result};

include!("../tables/constraint_kind.rs");
include!("../tables/json_flag.rs");

/// One constraint with its name (reported in validation) and priority (when constraints
/// conflict, the lowest priority is relaxed first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Constraint {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub priority: i32,
    #[serde(flatten)]
    pub kind: ConstraintKind,
    /// How a `json_schema` constraint is compiled (None: the defaults). Refused on other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_options: Option<JsonSchemaOptions>,
}

/// How a JSON schema is compiled. The defaults give compact JSON and refuse every keyword
/// Maze cannot enforce; see docs/CONSTRAINTS.md for what each option relaxes and how the
/// validation report says so. JSON form: the constraint's `json_options` object (unknown keys
/// are refused, by name); C: `maze_constraint_desc.json_flags` and `json_whitespace_pattern`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JsonSchemaOptions {
    /// Compile keywords Maze cannot enforce (`not`, `if`/`then`/`else`, `dependencies`, ...)
    /// by leaving them out; the report lists each one and the outcome is not `satisfied`.
    pub lenient: bool,
    /// Approximate a `oneOf` whose branches are not provably disjoint with `anyOf` (reported as
    /// relaxed); without it such a schema is refused.
    pub coerce_one_of: bool,
    /// Allow JSON whitespace (space, tab, newline) between tokens; the default is compact JSON.
    pub whitespace_flexible: bool,
    /// A regex for the whitespace allowed between tokens; when set it replaces
    /// `whitespace_flexible`.
    pub whitespace_pattern: Option<String>,
    /// Refuse a `format` Maze does not enforce instead of ignoring it as an annotation.
    pub strict_formats: bool,
}

/// What the text must match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintKind {
    /// A JSON schema (the draft 2020-12 subset llguidance supports). The output is one JSON value.
    JsonSchema(Value),
    /// A grammar in llguidance's Lark syntax.
    Lark(String),
    /// Regular expressions; the whole output must match every one of them.
    Regex(Vec<String>),
    /// Token ids that may (if non-empty) and may not be generated.
    TokenMask {
        #[serde(default)]
        allowed: Vec<u32>,
        #[serde(default)]
        forbidden: Vec<u32>,
    },
    /// The output is exactly one of these strings.
    Choice(Vec<String>),
    /// A grammar in llama.cpp's GBNF syntax, converted to Lark when compiled.
    Gbnf(String),
}

impl JsonSchemaOptions {
    /// The boolean option a flag stands for (its name is the option's JSON key).
    pub fn flag_mut(&mut self, flag: JsonFlag) -> &mut bool {
        match flag {
            JsonFlag::Lenient => &mut self.lenient,
            JsonFlag::CoerceOneOf => &mut self.coerce_one_of,
            JsonFlag::WhitespaceFlexible => &mut self.whitespace_flexible,
            JsonFlag::StrictFormats => &mut self.strict_formats,
        }
    }
}

impl ConstraintKind {
    pub fn tag(&self) -> ConstraintTag {
        match self {
            Self::JsonSchema(_) => ConstraintTag::JsonSchema,
            Self::Lark(_) => ConstraintTag::Lark,
            Self::Regex(_) => ConstraintTag::Regex,
            Self::TokenMask { .. } => ConstraintTag::TokenMask,
            Self::Choice(_) => ConstraintTag::Choice,
            Self::Gbnf(_) => ConstraintTag::Gbnf,
        }
    }

    /// The kind's name, e.g. "token_mask" (its key in the JSON form).
    pub fn label(&self) -> &'static str {
        self.tag().as_str()
    }
}

impl Constraint {
    pub fn new(name: impl Into<String>, priority: i32, kind: ConstraintKind) -> Self {
        Self { name: name.into(), priority, kind, json_options: None }
    }

    pub fn json_schema(name: impl Into<String>, schema: Value) -> Self {
        Self::new(name, 0, ConstraintKind::JsonSchema(schema))
    }

    pub fn lark(name: impl Into<String>, grammar: impl Into<String>) -> Self {
        Self::new(name, 0, ConstraintKind::Lark(grammar.into()))
    }

    pub fn gbnf(name: impl Into<String>, grammar: impl Into<String>) -> Self {
        Self::new(name, 0, ConstraintKind::Gbnf(grammar.into()))
    }

    pub fn regex(name: impl Into<String>, pattern: impl Into<String>) -> Self {
        Self::new(name, 0, ConstraintKind::Regex(vec![pattern.into()]))
    }

    pub fn choice(name: impl Into<String>, options: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self::new(name, 0, ConstraintKind::Choice(options.into_iter().map(Into::into).collect()))
    }

    pub fn token_mask(name: impl Into<String>, allowed: Vec<u32>, forbidden: Vec<u32>) -> Self {
        Self::new(name, 0, ConstraintKind::TokenMask { allowed, forbidden })
    }

    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Sets how a `json_schema` constraint is compiled (other kinds refuse options).
    pub fn with_json_options(mut self, options: JsonSchemaOptions) -> Self {
        self.json_options = Some(options);
        self
    }

    /// Parses the JSON form, e.g. `{"name": "answer", "priority": 1, "json_schema": {...}}`,
    /// `{"regex": ["[0-9]+"]}`, `{"token_mask": {"forbidden": [13]}}`, `{"choice": ["yes", "no"]}`,
    /// `{"gbnf": "root ::= ..."}`.
    /// A JSON array gives several constraints.
    pub fn list_from_json(text: &str) -> Result<Vec<Self>> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::invalid_argument(format!("constraint JSON does not parse: {e}")))?;
        let items = match value {
            Value::Array(items) => items,
            single => vec![single],
        };
        items
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                serde_json::from_value::<Self>(v).map_err(|e| {
                    Error::invalid_argument(format!(
                        "constraint {i}: {e} (expected one of json_schema, lark, regex, token_mask, choice, gbnf, plus optional name, priority and json_options)"
                    ))
                })
            })
            .collect()
    }

    /// Feeds the canonical form of the constraint (object keys sorted; name and priority left
    /// out, as they do not change the compiled grammar) to a hasher without building it: this is
    /// the compile-cache key, and a cache hit must cost microseconds, not a copy of the schema.
    pub fn hash_canonical(&self, h: &mut xxhash_rust::xxh3::Xxh3) {
        fn value(v: &Value, h: &mut xxhash_rust::xxh3::Xxh3) {
            match v {
                Value::Null => h.update(b"n"),
                Value::Bool(b) => h.update(if *b { b"t" } else { b"f" }),
                Value::Number(n) => {
                    h.update(b"#");
                    h.update(n.to_string().as_bytes());
                }
                Value::String(s) => string(s, h),
                Value::Array(a) => {
                    h.update(b"[");
                    h.update(&(a.len() as u64).to_le_bytes());
                    a.iter().for_each(|x| value(x, h));
                }
                Value::Object(m) => {
                    h.update(b"{");
                    h.update(&(m.len() as u64).to_le_bytes());
                    let mut keys: Vec<&String> = m.keys().collect();
                    keys.sort_unstable();
                    for k in keys {
                        string(k, h);
                        value(&m[k], h);
                    }
                }
            }
        }
        fn string(s: &str, h: &mut xxhash_rust::xxh3::Xxh3) {
            h.update(b"\"");
            h.update(&(s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        h.update(self.kind.label().as_bytes());
        match &self.kind {
            ConstraintKind::JsonSchema(v) => {
                value(v, h);
                // Absent options are the defaults: both compile the same.
                let o = self.json_options.clone().unwrap_or_default();
                h.update(&[
                    o.lenient as u8,
                    o.coerce_one_of as u8,
                    o.whitespace_flexible as u8,
                    o.strict_formats as u8,
                ]);
                match &o.whitespace_pattern {
                    Some(p) => string(p, h),
                    None => h.update(b"-"),
                }
            }
            ConstraintKind::Lark(g) | ConstraintKind::Gbnf(g) => string(g, h),
            ConstraintKind::Regex(list) | ConstraintKind::Choice(list) => {
                h.update(&(list.len() as u64).to_le_bytes());
                list.iter().for_each(|x| string(x, h));
            }
            ConstraintKind::TokenMask { allowed, forbidden } => {
                for ids in [allowed, forbidden] {
                    h.update(&(ids.len() as u64).to_le_bytes());
                    ids.iter().for_each(|t| h.update(&t.to_le_bytes()));
                }
            }
        }
    }

    /// The canonical form as JSON text (object keys sorted, name and priority left out): equal
    /// constraints written differently give the same string. For display and debugging; the
    /// cache hashes the same form with [`Constraint::hash_canonical`].
    pub fn canonical_kind(&self) -> String {
        fn sorted(v: &Value) -> Value {
            match v {
                Value::Object(m) => {
                    let mut keys: Vec<_> = m.keys().collect();
                    keys.sort();
                    Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&m[k]))).collect())
                }
                Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
                other => other.clone(),
            }
        }
        let mut v = serde_json::to_value(&self.kind).unwrap_or(Value::Null);
        if let (Some(o), Value::Object(m)) = (&self.json_options, &mut v) {
            m.insert("json_options".into(), serde_json::to_value(o).unwrap_or(Value::Null));
        }
        sorted(&v).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_forms_parse_to_the_ir() {
        let list = Constraint::list_from_json(
            r#"[{"name":"a","priority":2,"json_schema":{"type":"object"}},
                {"lark":"start: \"x\""},
                {"regex":["[0-9]+","1.*"]},
                {"token_mask":{"forbidden":[7]}},
                {"choice":["yes","no"]},
                {"gbnf":"root ::= \"x\""}]"#,
        )
        .unwrap();
        assert_eq!(list[0], Constraint::json_schema("a", json!({"type": "object"})).with_priority(2));
        assert_eq!(list[1].kind, ConstraintKind::Lark("start: \"x\"".into()));
        assert_eq!(list[2].kind, ConstraintKind::Regex(vec!["[0-9]+".into(), "1.*".into()]));
        assert_eq!(list[3].kind, ConstraintKind::TokenMask { allowed: vec![], forbidden: vec![7] });
        assert_eq!(list[4], Constraint::choice("", ["yes", "no"]));
        assert_eq!(list[5], Constraint::gbnf("", "root ::= \"x\""));
    }

    #[test]
    fn each_tag_names_its_key_in_the_json_form() {
        let kinds = Constraint::list_from_json(
            r#"[{"json_schema":{}}, {"lark":""}, {"regex":[]}, {"token_mask":{}}, {"choice":[]}, {"gbnf":""}]"#,
        )
        .unwrap();
        let tags: Vec<ConstraintTag> = kinds.iter().map(|c| c.kind.tag()).collect();
        assert_eq!(tags, ConstraintTag::ALL);
        for c in &kinds {
            let json = serde_json::to_value(&c.kind).unwrap();
            assert_eq!(json.as_object().unwrap().keys().next().unwrap(), c.kind.tag().as_str());
        }
    }

    #[test]
    fn bad_json_forms_say_what_is_wrong() {
        let e = Constraint::list_from_json("{").unwrap_err();
        assert!(e.message().contains("does not parse"), "{e}");
        let e = Constraint::list_from_json(r#"{"grammar": "x"}"#).unwrap_err();
        assert!(e.message().contains("constraint 0") && e.message().contains("json_schema, lark"), "{e}");
    }

    #[test]
    fn canonical_form_ignores_key_order_and_name() {
        let a = Constraint::json_schema("a", json!({"type": "object", "required": ["x"]}));
        let b = Constraint::json_schema("b", json!({"required": ["x"], "type": "object"}));
        assert_eq!(a.canonical_kind(), b.canonical_kind());
        assert_ne!(
            a.canonical_kind(),
            Constraint::json_schema("a", json!({"type": "array"})).canonical_kind()
        );
        let hash = |c: &Constraint| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            c.hash_canonical(&mut h);
            h.digest()
        };
        assert_eq!(hash(&a), hash(&b));
        assert_ne!(
            hash(&a),
            hash(&Constraint::json_schema("a", json!({"type": "object", "required": ["y"]})))
        );
        assert_ne!(hash(&Constraint::regex("r", "ab")), hash(&Constraint::choice("r", ["ab"])));
        assert_ne!(hash(&Constraint::lark("g", "start: a")), hash(&Constraint::gbnf("g", "start: a")));
        assert_ne!(
            hash(&Constraint::new("r", 0, ConstraintKind::Regex(vec!["a".into(), "b".into()]))),
            hash(&Constraint::regex("r", "ab"))
        );
    }

    #[test]
    fn json_options_parse_refuse_unknown_keys_and_change_the_hash() {
        let list = Constraint::list_from_json(
            r#"{"json_schema": {"type": "object"}, "json_options": {"lenient": true, "whitespace_pattern": " ?"}}"#,
        )
        .unwrap();
        let options = list[0].json_options.clone().unwrap();
        assert!(options.lenient && !options.coerce_one_of && !options.strict_formats);
        assert_eq!(options.whitespace_pattern.as_deref(), Some(" ?"));
        let e = Constraint::list_from_json(r#"{"json_schema": {}, "json_options": {"lenent": true}}"#)
            .unwrap_err();
        assert!(e.message().contains("unknown field `lenent`"), "{e}");
        // Every flag has its option, named as in the JSON form.
        for flag in JsonFlag::ALL {
            let mut o = JsonSchemaOptions::default();
            *o.flag_mut(*flag) = true;
            assert_eq!(serde_json::to_value(&o).unwrap()[flag.as_str()], Value::Bool(true), "{flag:?}");
        }

        let hash = |c: &Constraint| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            c.hash_canonical(&mut h);
            h.digest()
        };
        let plain = Constraint::json_schema("a", json!({"type": "object"}));
        let defaults = plain.clone().with_json_options(JsonSchemaOptions::default());
        assert_eq!(hash(&plain), hash(&defaults));
        let mut seen = vec![hash(&plain)];
        for flag in JsonFlag::ALL {
            let mut o = JsonSchemaOptions::default();
            *o.flag_mut(*flag) = true;
            seen.push(hash(&plain.clone().with_json_options(o)));
        }
        let pattern = JsonSchemaOptions { whitespace_pattern: Some(" ".into()), ..Default::default() };
        seen.push(hash(&plain.clone().with_json_options(pattern)));
        let mut distinct = seen.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), seen.len(), "each option changes the compiled form's key");
        assert!(plain
            .with_json_options(JsonSchemaOptions { lenient: true, ..Default::default() })
            .canonical_kind()
            .contains("\"json_options\""));
    }
}
