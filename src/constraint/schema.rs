//! A JSON schema as llguidance gets it: Maze reads the schema first, so that every keyword
//! llguidance cannot enforce is refused naming its JSON pointer, or (lenient) left out and
//! reported, and so that an unknown `format` is an annotation rather than a compile error.
//! llguidance itself only says "Unimplemented keys" without a place, and under its own
//! `lenient` drops keywords silently.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::ir::JsonSchemaOptions;

/// Keywords of JSON Schema (draft 2020-12 and earlier) that llguidance 1.9 does not implement:
/// it refuses them, or under its `lenient` ignores them. Everything else it either enforces or
/// treats as an annotation (`title`, `default`, `$comment`, ...; unknown keys too).
pub const UNSUPPORTED_KEYWORDS: &[&str] = &[
    "$dynamicAnchor",
    "$dynamicRef",
    "$recursiveAnchor",
    "$recursiveRef",
    "contains",
    "dependencies",
    "dependentRequired",
    "dependentSchemas",
    "else",
    "if",
    "maxContains",
    "minContains",
    "not",
    "propertyNames",
    "then",
    "unevaluatedItems",
    "unevaluatedProperties",
    "uniqueItems",
];

/// The `format` values llguidance enforces (as regexes on the string). `unknown` is
/// llguidance's name for "any string".
pub const KNOWN_FORMATS: &[&str] =
    &["date", "date-time", "duration", "email", "hostname", "ipv4", "ipv6", "time", "unknown", "uri", "uuid"];

/// The options llguidance reads from a schema's root `x-guidance`, which Maze sets from
/// [`JsonSchemaOptions`]; a caller's own `x-guidance` is read as `json_options`.
const X_GUIDANCE: &str = "x-guidance";

/// A keyword that was not enforced: left out (lenient) or approximated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelaxedKeyword {
    pub keyword: String,
    /// JSON pointer of the keyword in the schema, e.g. `/properties/a/not`.
    pub pointer: String,
    /// What happened to it.
    pub note: String,
}

/// A `format` value Maze does not enforce, ignored as an annotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IgnoredFormat {
    pub format: String,
    /// JSON pointer of the `format` keyword, e.g. `/properties/r/format`.
    pub pointer: String,
}

/// What a compiled JSON schema does not enforce, for the validation report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaNotes {
    pub relaxed: Vec<RelaxedKeyword>,
    pub ignored_formats: Vec<IgnoredFormat>,
}

/// A schema ready for llguidance, with what was taken out of it.
pub(crate) struct Prepared {
    pub schema: Value,
    pub notes: SchemaNotes,
    /// Pointers of every `oneOf` and of every `minProperties`/`maxProperties` (llguidance's
    /// errors and warnings about them do not say where they are).
    one_of: Vec<String>,
    property_counts: Vec<String>,
}

const ONE_OF_WARNING: &str = "oneOf not fully supported";
const ONE_OF_ERROR: &str = "oneOf constraints are not supported";
const PROPERTY_COUNT_MESSAGE: &str = "min/maxProperties only supported";

/// Checks and rewrites `schema` under `options` (None: the defaults, or the schema's own
/// `x-guidance`). Fails with a message naming the keyword or format and its JSON pointer.
///
/// Recursive over the schema's nesting, which the compiler has bounded
/// ([`super::ConstraintLimits::max_depth`]) before this runs on its compile thread.
pub(crate) fn prepare(schema: &Value, options: Option<&JsonSchemaOptions>) -> Result<Prepared, String> {
    // `true` as `{}`: only an object carries the options to llguidance (whitespace included).
    let mut schema = if schema == &Value::Bool(true) { json!({}) } else { schema.clone() };
    let own = match schema.as_object_mut() {
        Some(root) => root.remove(X_GUIDANCE),
        None => None,
    };
    let options = match (own, options) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "the schema's own \"{X_GUIDANCE}\" and json_options both set compile options: give them in json_options only"
            ))
        }
        (Some(own), None) => serde_json::from_value::<JsonSchemaOptions>(own)
            .map_err(|e| format!("\"{X_GUIDANCE}\" (read as json_options): {e}"))?,
        (None, given) => given.cloned().unwrap_or_default(),
    };
    let mut walk = Walk {
        options: &options,
        relaxed: Vec::new(),
        formats: Vec::new(),
        one_of: Vec::new(),
        counts: Vec::new(),
        refused_keywords: Vec::new(),
        refused_formats: Vec::new(),
    };
    walk.schema(&mut schema, "");
    if let Some(refusal) = walk.refusal() {
        return Err(refusal);
    }
    let Walk { mut relaxed, formats: mut ignored_formats, one_of, counts, .. } = walk;
    relaxed.sort_by(|a, b| a.pointer.cmp(&b.pointer));
    ignored_formats.sort_by(|a, b| a.pointer.cmp(&b.pointer));
    if let Some(root) = schema.as_object_mut() {
        // Unknown formats and unsupported keywords are gone already: llguidance's `lenient` is
        // left with what it reports as warnings (oneOf, min/maxProperties), turned into notes.
        let x = json!({
            "lenient": options.lenient,
            "coerce_one_of": options.coerce_one_of || options.lenient,
            "whitespace_flexible": options.whitespace_flexible,
            "whitespace_pattern": options.whitespace_pattern,
        });
        root.insert(X_GUIDANCE.into(), x);
    }
    Ok(Prepared { schema, notes: SchemaNotes { relaxed, ignored_formats }, one_of, property_counts: counts })
}

impl Prepared {
    /// Turns llguidance's warnings (what its `lenient` and `coerce_one_of` relaxed) into
    /// relaxed keywords. llguidance does not say where; every candidate place is listed.
    pub fn absorb_warnings(&mut self, warnings: &[String]) {
        for w in warnings {
            let (places, keyword, note) = if w.contains(ONE_OF_WARNING) {
                (&self.one_of, "oneOf", "approximated by anyOf: its branches could not be proven disjoint")
            } else if w.contains(PROPERTY_COUNT_MESSAGE) {
                (
                    &self.property_counts,
                    "minProperties/maxProperties",
                    "not enforced: some listed properties are optional",
                )
            } else {
                self.notes.relaxed.push(RelaxedKeyword {
                    keyword: String::new(),
                    pointer: String::new(),
                    note: format!("llguidance: {w}"),
                });
                continue;
            };
            let note = if places.len() > 1 {
                format!("{note} (in at least one of the {} places listed)", places.len())
            } else {
                note.to_string()
            };
            for pointer in places {
                self.notes.relaxed.push(RelaxedKeyword {
                    keyword: keyword.into(),
                    pointer: pointer.clone(),
                    note: note.clone(),
                });
            }
        }
        self.notes.relaxed.sort_by(|a, b| a.pointer.cmp(&b.pointer));
        self.notes.relaxed.dedup();
    }

    /// llguidance's compile error, with the places of the keyword it names (it gives none).
    pub fn explain(&self, message: &str) -> String {
        let (places, keyword, hint) = if message.contains(ONE_OF_ERROR) {
            (&self.one_of, "oneOf", "its branches could not be proven disjoint; json_options.coerce_one_of approximates it with anyOf")
        } else if message.contains(PROPERTY_COUNT_MESSAGE) {
            (&self.property_counts, "minProperties/maxProperties", "llguidance enforces them only when every listed property is required; json_options.lenient leaves them out")
        } else {
            return message.to_string();
        };
        format!("unsupported keyword \"{keyword}\" at {}: {hint}", places.join(", "))
    }
}

struct Walk<'o> {
    options: &'o JsonSchemaOptions,
    relaxed: Vec<RelaxedKeyword>,
    formats: Vec<IgnoredFormat>,
    one_of: Vec<String>,
    counts: Vec<String>,
    /// (pointer, keyword) and (pointer, format) found where they are refused.
    refused_keywords: Vec<(String, String)>,
    refused_formats: Vec<(String, String)>,
}

/// `name` as one JSON-pointer token (RFC 6901).
fn token(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

impl Walk<'_> {
    /// Every refusal at once, each with its place, sorted by pointer.
    fn refusal(&mut self) -> Option<String> {
        let list = |found: &mut Vec<(String, String)>| {
            found.sort();
            found.iter().map(|(at, name)| format!("\"{name}\" at {at}")).collect::<Vec<_>>().join(", ")
        };
        let mut parts = Vec::new();
        if !self.refused_keywords.is_empty() {
            let s = if self.refused_keywords.len() > 1 { "s" } else { "" };
            parts.push(format!(
                "unsupported keyword{s} {} (json_options.lenient compiles the schema without them, and the validation report says so)",
                list(&mut self.refused_keywords)
            ));
        }
        if !self.refused_formats.is_empty() {
            let s = if self.refused_formats.len() > 1 { "s" } else { "" };
            parts.push(format!(
                "unknown format{s} {} (json_options.strict_formats refuses formats Maze does not enforce; it enforces {})",
                list(&mut self.refused_formats),
                KNOWN_FORMATS.join(", ")
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    fn schema(&mut self, schema: &mut Value, at: &str) {
        let Value::Object(map) = schema else { return };
        let mut drop = Vec::new();
        for (key, value) in map.iter_mut() {
            let here = format!("{at}/{}", token(key));
            if UNSUPPORTED_KEYWORDS.contains(&key.as_str()) {
                if !self.options.lenient {
                    self.refused_keywords.push((here, key.clone()));
                    continue;
                }
                // Its subschemas go with it: nothing under it is enforced.
                self.relaxed.push(RelaxedKeyword {
                    keyword: key.clone(),
                    pointer: here,
                    note: "not enforced".into(),
                });
                drop.push(key.clone());
                continue;
            }
            match key.as_str() {
                "format" => {
                    let Some(format) = value.as_str() else { continue };
                    if KNOWN_FORMATS.contains(&format) {
                        continue;
                    }
                    if self.options.strict_formats {
                        self.refused_formats.push((here, format.into()));
                        continue;
                    }
                    self.formats.push(IgnoredFormat { format: format.into(), pointer: here });
                    drop.push(key.clone());
                }
                "properties" | "patternProperties" | "$defs" | "definitions" => {
                    if let Value::Object(subs) = value {
                        for (name, sub) in subs.iter_mut() {
                            self.schema(sub, &format!("{here}/{}", token(name)));
                        }
                    }
                }
                "items" | "prefixItems" | "allOf" | "anyOf" | "oneOf" => {
                    if key == "oneOf" {
                        self.one_of.push(here.clone());
                    }
                    match value {
                        Value::Array(subs) => {
                            for (i, sub) in subs.iter_mut().enumerate() {
                                self.schema(sub, &format!("{here}/{i}"));
                            }
                        }
                        sub => self.schema(sub, &here),
                    }
                }
                "additionalProperties" | "additionalItems" => self.schema(value, &here),
                "minProperties" | "maxProperties" => self.counts.push(here),
                _ => {}
            }
        }
        if !drop.is_empty() {
            // `retain` keeps the order of the others (it matters to llguidance's intersections).
            map.retain(|k, _| !drop.contains(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lenient() -> JsonSchemaOptions {
        JsonSchemaOptions { lenient: true, ..Default::default() }
    }

    #[test]
    fn every_unsupported_keyword_is_refused_naming_its_pointer() {
        let cases = [
            (json!({"not": {"type": "null"}}), "\"not\" at /not"),
            (json!({"properties": {"a": {"if": {}, "then": {}}}}), "\"if\" at /properties/a/if"),
            (json!({"items": {"dependencies": {"x": ["y"]}}}), "\"dependencies\" at /items/dependencies"),
            (json!({"anyOf": [{}, {"uniqueItems": true}]}), "\"uniqueItems\" at /anyOf/1/uniqueItems"),
            (json!({"$defs": {"a/b~c": {"contains": {}}}}), "\"contains\" at /$defs/a~1b~0c/contains"),
            (
                json!({"prefixItems": [{"propertyNames": {}}]}),
                "\"propertyNames\" at /prefixItems/0/propertyNames",
            ),
        ];
        for (schema, expected) in cases {
            let e = prepare(&schema, None).err().unwrap_or_else(|| panic!("{schema} was accepted"));
            assert!(e.starts_with("unsupported keyword") && e.contains(expected), "{e}");
            assert!(e.contains("json_options.lenient"), "{e}");
        }
        // All at once, by pointer, formats too when strict.
        let strict = JsonSchemaOptions { strict_formats: true, ..Default::default() };
        let schema = json!({"properties": {"a": {"if": {}, "format": "regex"}}, "not": {}});
        let e = prepare(&schema, Some(&strict)).err().unwrap();
        assert!(
            e.starts_with(
                "unsupported keywords \"not\" at /not, \"if\" at /properties/a/if (json_options.lenient"
            ),
            "{e}"
        );
        assert!(
            e.contains("; unknown format \"regex\" at /properties/a/format (json_options.strict_formats"),
            "{e}"
        );
        for keyword in UNSUPPORTED_KEYWORDS {
            let e = prepare(&json!({"type": "object", (*keyword): {}}), None).err().unwrap();
            assert!(e.contains(&format!("\"{keyword}\" at /{keyword}")), "{e}");
        }
    }

    #[test]
    fn values_that_are_not_schemas_are_not_read_as_keywords() {
        // A property named "not", a const object with "if", an annotation holding "not".
        let schema = json!({
            "properties": {"not": {"type": "string"}},
            "const": {"if": 1},
            "default": {"not": 2},
            "x-custom": {"not": {}},
        });
        let prepared = prepare(&schema, None).unwrap();
        assert_eq!(prepared.notes, SchemaNotes::default());
        assert_eq!(prepared.schema["properties"]["not"], json!({"type": "string"}));
    }

    #[test]
    fn lenient_leaves_each_unsupported_keyword_out_and_lists_it() {
        let schema = json!({
            "type": "object",
            "properties": {"a": {"type": "integer", "not": {"const": 3}}},
            "if": {"required": ["a"]},
            "then": {"required": ["b"]},
            "dependencies": {"a": ["b"]},
        });
        let prepared = prepare(&schema, Some(&lenient())).unwrap();
        let listed: Vec<(&str, &str)> =
            prepared.notes.relaxed.iter().map(|r| (r.keyword.as_str(), r.pointer.as_str())).collect();
        assert_eq!(
            listed,
            [
                ("dependencies", "/dependencies"),
                ("if", "/if"),
                ("not", "/properties/a/not"),
                ("then", "/then")
            ]
        );
        for gone in ["if", "then", "dependencies"] {
            assert!(prepared.schema.get(gone).is_none(), "{gone} left in");
        }
        assert_eq!(prepared.schema["properties"]["a"], json!({"type": "integer"}));
        assert_eq!(prepared.schema["x-guidance"]["lenient"], json!(true));
    }

    #[test]
    fn unknown_formats_are_ignored_and_listed_or_refused_when_strict() {
        let schema = json!({
            "type": "object",
            "properties": {
                "r": {"type": "string", "format": "regex"},
                "u": {"type": "string", "format": "uri-reference"},
                "m": {"type": "string", "format": "made-up"},
                "d": {"type": "string", "format": "date"},
            },
        });
        let prepared = prepare(&schema, None).unwrap();
        let listed: Vec<(&str, &str)> =
            prepared.notes.ignored_formats.iter().map(|f| (f.format.as_str(), f.pointer.as_str())).collect();
        assert_eq!(
            listed,
            [
                ("made-up", "/properties/m/format"),
                ("regex", "/properties/r/format"),
                ("uri-reference", "/properties/u/format")
            ]
        );
        assert!(prepared.notes.relaxed.is_empty());
        assert!(prepared.schema["properties"]["r"].get("format").is_none());
        assert_eq!(prepared.schema["properties"]["d"]["format"], json!("date"), "a known format stays");

        let strict = JsonSchemaOptions { strict_formats: true, ..Default::default() };
        let e = prepare(&schema, Some(&strict)).err().unwrap();
        assert!(e.starts_with("unknown formats \"made-up\" at /properties/m/format, \"regex\" at /properties/r/format, \"uri-reference\" at /properties/u/format ("), "{e}");
        assert!(e.contains("strict_formats") && e.contains("date-time"), "{e}");
        prepare(&json!({"type": "string", "format": "email"}), Some(&strict)).unwrap();
    }

    #[test]
    fn the_schemas_own_x_guidance_is_read_as_json_options() {
        let own = json!({"x-guidance": {"lenient": true}, "not": {}});
        let prepared = prepare(&own, None).unwrap();
        assert_eq!(prepared.notes.relaxed[0].keyword, "not");
        assert_eq!(prepared.schema["x-guidance"]["whitespace_flexible"], json!(false), "Maze's default");
        let e = prepare(&own, Some(&lenient())).err().unwrap();
        assert!(e.contains("x-guidance") && e.contains("json_options"), "{e}");
        let e = prepare(&json!({"x-guidance": {"item_separator": ", "}}), None).err().unwrap();
        assert!(e.contains("unknown field `item_separator`"), "{e}");
    }

    #[test]
    fn llguidance_messages_about_oneof_get_the_places() {
        let schema = json!({"properties": {"a": {"oneOf": [{}, {}]}}, "minProperties": 1});
        let mut prepared = prepare(&schema, None).unwrap();
        let e = prepared.explain("oneOf constraints are not supported. Enable 'coerce_one_of' option");
        assert!(e.starts_with("unsupported keyword \"oneOf\" at /properties/a/oneOf:"), "{e}");
        assert!(e.contains("coerce_one_of"), "{e}");
        assert_eq!(prepared.explain("something else"), "something else");
        prepared.absorb_warnings(&["oneOf not fully supported, falling back to anyOf.".into()]);
        prepared.absorb_warnings(&["min/maxProperties only supported when all keys listed".into()]);
        let listed: Vec<(&str, &str)> =
            prepared.notes.relaxed.iter().map(|r| (r.keyword.as_str(), r.pointer.as_str())).collect();
        assert_eq!(
            listed,
            [("minProperties/maxProperties", "/minProperties"), ("oneOf", "/properties/a/oneOf")]
        );
    }
}
