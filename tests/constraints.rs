//! Constrained generation on the real default model: outputs parse and validate (against an
//! independent JSON-schema validator), regexes match, grammars and token masks are obeyed,
//! conflicts are relaxed by priority and reported, bad constraints fail with the right kind.

use std::path::PathBuf;
use std::sync::OnceLock;

use maze::constraint::ConstraintOutcome;
use maze::*;
use serde_json::{json, Value};

/// GBNF grammars (the ones llama.cpp ships) checked with a reference recogniser.
mod gbnf;

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let path = std::env::var_os("MAZE_MODEL").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/maze/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
        Engine::load(
            &EngineConfig {
                model_path: path,
                threads: 2,
                seed: Some(3),
                context_length: 2048,
                ..Default::default()
            },
            None,
        )
        .expect("default model loads")
    })
}

fn constrained(prompt: &str, constraints: Vec<Constraint>, max_tokens: usize) -> GenerationResult {
    let opts =
        GenerateOptions { max_tokens, sampling: SamplingParams::greedy(), constraints, ..Default::default() };
    engine()
        .new_session()
        .generate(&Prompt::Chat(vec![ChatMessage::new("user", prompt)]), &opts)
        .expect("generation starts")
}

fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "person",
            json!({"type":"object","properties":{"name":{"type":"string","maxLength":30},"age":{"type":"integer","minimum":0,"maximum":120}},"required":["name","age"],"additionalProperties":false}),
        ),
        (
            "todo_list",
            json!({"type":"object","properties":{"items":{"type":"array","minItems":2,"maxItems":4,"items":{"type":"object","properties":{"task":{"type":"string","maxLength":25},"done":{"type":"boolean"}},"required":["task","done"],"additionalProperties":false}}},"required":["items"],"additionalProperties":false}),
        ),
        (
            "enum_status",
            json!({"type":"object","properties":{"status":{"enum":["active","inactive","pending"]},"code":{"type":"integer","minimum":100,"maximum":599}},"required":["status","code"],"additionalProperties":false}),
        ),
        (
            "ref_address",
            json!({"$defs":{"address":{"type":"object","properties":{"street":{"type":"string","maxLength":30},"city":{"type":"string","maxLength":20},"zip":{"type":"string","pattern":"^[0-9]{5}$"}},"required":["street","city","zip"],"additionalProperties":false}},"type":"object","properties":{"home":{"$ref":"#/$defs/address"},"work":{"$ref":"#/$defs/address"}},"required":["home","work"],"additionalProperties":false}),
        ),
        (
            "any_of_shape",
            json!({"type":"object","properties":{"shape":{"anyOf":[{"type":"object","properties":{"kind":{"const":"circle"},"radius":{"type":"integer","minimum":0,"maximum":100}},"required":["kind","radius"],"additionalProperties":false},{"type":"object","properties":{"kind":{"const":"square"},"side":{"type":"integer","minimum":0,"maximum":100}},"required":["kind","side"],"additionalProperties":false}]}},"required":["shape"],"additionalProperties":false}),
        ),
        (
            "date_format",
            json!({"type":"object","properties":{"event":{"type":"string","maxLength":30},"date":{"type":"string","format":"date"}},"required":["event","date"],"additionalProperties":false}),
        ),
        (
            "email_format",
            json!({"type":"object","properties":{"user":{"type":"string","maxLength":20},"email":{"type":"string","format":"email","maxLength":40}},"required":["user","email"],"additionalProperties":false}),
        ),
        (
            "number_bounds",
            json!({"type":"object","properties":{"temperature":{"type":"number","minimum":-50,"maximum":60},"humidity":{"type":"integer","minimum":0,"maximum":100}},"required":["temperature","humidity"],"additionalProperties":false}),
        ),
        (
            "nested_config",
            json!({"type":"object","properties":{"server":{"type":"object","properties":{"host":{"type":"string","maxLength":30},"port":{"type":"integer","minimum":1,"maximum":65535},"tls":{"type":"object","properties":{"enabled":{"type":"boolean"},"version":{"enum":["1.2","1.3"]}},"required":["enabled","version"],"additionalProperties":false}},"required":["host","port","tls"],"additionalProperties":false}},"required":["server"],"additionalProperties":false}),
        ),
        (
            "string_array",
            json!({"type":"object","properties":{"tags":{"type":"array","items":{"type":"string","maxLength":12},"minItems":1,"maxItems":5}},"required":["tags"],"additionalProperties":false}),
        ),
        (
            "product",
            json!({"type":"object","properties":{"sku":{"type":"string","pattern":"^[A-Z]{3}-[0-9]{4}$"},"price":{"type":"number","minimum":0,"maximum":10000},"currency":{"enum":["USD","EUR","GBP"]},"in_stock":{"type":"boolean"}},"required":["sku","price","currency","in_stock"],"additionalProperties":false}),
        ),
        (
            "optional_fields",
            json!({"type":"object","properties":{"title":{"type":"string","maxLength":40},"subtitle":{"type":"string","maxLength":40}},"required":["title"],"additionalProperties":false}),
        ),
        (
            "nullable",
            json!({"type":"object","properties":{"middle_name":{"type":["string","null"],"maxLength":20},"nickname":{"anyOf":[{"type":"string","maxLength":15},{"type":"null"}]}},"required":["middle_name","nickname"],"additionalProperties":false}),
        ),
        (
            "matrix",
            json!({"type":"object","properties":{"rows":{"type":"array","minItems":2,"maxItems":2,"items":{"type":"array","minItems":2,"maxItems":2,"items":{"type":"integer","minimum":0,"maximum":9}}}},"required":["rows"],"additionalProperties":false}),
        ),
        (
            "tool_call",
            json!({"type":"object","properties":{"tool":{"enum":["search","calculator","weather"]},"arguments":{"type":"object","properties":{"query":{"type":"string","maxLength":40}},"required":["query"],"additionalProperties":false}},"required":["tool","arguments"],"additionalProperties":false}),
        ),
        (
            "sentiment",
            json!({"type":"object","properties":{"label":{"enum":["positive","negative","neutral"]},"confidence":{"type":"number","minimum":0,"maximum":1}},"required":["label","confidence"],"additionalProperties":false}),
        ),
        // Recursion through $ref, bounded by the data: each level may only hold a smaller value.
        (
            "ref_recursive_tree",
            json!({"$defs":{"leaf":{"type":"object","properties":{"value":{"const":0}},"required":["value"],"additionalProperties":false},"node":{"type":"object","properties":{"value":{"const":1},"child":{"$ref":"#/$defs/leaf"}},"required":["value","child"],"additionalProperties":false}},"type":"object","properties":{"root":{"$ref":"#/$defs/node"}},"required":["root"],"additionalProperties":false}),
        ),
        (
            "uuid_and_time",
            json!({"type":"object","properties":{"id":{"type":"string","format":"uuid"},"at":{"type":"string","format":"time"}},"required":["id","at"],"additionalProperties":false}),
        ),
        (
            "top_level_array",
            json!({"type":"array","items":{"type":"integer","minimum":1,"maximum":10},"minItems":3,"maxItems":3}),
        ),
        (
            "const_and_int_enum",
            json!({"type":"object","properties":{"version":{"const":2},"level":{"enum":[1,2,3]}},"required":["version","level"],"additionalProperties":false}),
        ),
        (
            "book_catalog",
            json!({"type":"object","properties":{"books":{"type":"array","minItems":1,"maxItems":2,"items":{"type":"object","properties":{"title":{"type":"string","maxLength":30},"year":{"type":"integer","minimum":1450,"maximum":2030},"authors":{"type":"array","minItems":1,"maxItems":2,"items":{"type":"string","maxLength":25}}},"required":["title","year","authors"],"additionalProperties":false}}},"required":["books"],"additionalProperties":false}),
        ),
        (
            "all_of",
            json!({"allOf":[{"type":"object","properties":{"a":{"type":"integer","minimum":0,"maximum":9}},"required":["a"]},{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"boolean"}},"required":["b"],"additionalProperties":false}]}),
        ),
    ]
}

#[test]
fn json_schemas_of_real_world_shape_are_obeyed() {
    let list = schemas();
    assert!(list.len() >= 20);
    let mut failures = Vec::new();
    for (name, schema) in list {
        let r = constrained(
            &format!("Produce a {} record as JSON.", name.replace('_', " ")),
            vec![Constraint::json_schema(name, schema.clone())],
            300,
        );
        let parsed: Result<Value, _> = serde_json::from_str(&r.text);
        let ok = match &parsed {
            Ok(v) => {
                jsonschema::validator_for(&schema).expect("schema compiles in the validator").is_valid(v)
            }
            Err(_) => false,
        };
        if !ok || r.finish_reason != FinishReason::Stop || !r.constraints_satisfied() {
            failures.push(format!(
                "{name}: finish {:?}, valid {ok}, validation {}, text {}",
                r.finish_reason,
                r.validation_json(),
                r.text
            ));
        }
        let stats = r.constraint_stats.expect("stats under constraints");
        assert!(stats.masks_computed > 0 && stats.mean_mask_time_us > 0.0);
    }
    assert!(failures.is_empty(), "{} schema(s) failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn regex_lark_choice_and_token_masks_are_obeyed() {
    let r = constrained("What is 6 times 7?", vec![Constraint::regex("number", "[0-9]{1,4}")], 20);
    assert!(
        r.text.len() <= 4 && r.text.chars().all(|c| c.is_ascii_digit()) && !r.text.is_empty(),
        "{}",
        r.text
    );
    assert!(r.constraints_satisfied(), "{}", r.validation_json());

    // Every pattern must hold: digits only, and starting with 4.
    let both = Constraint::new("two", 0, ConstraintKind::Regex(vec!["[0-9]+".into(), "4.*".into()]));
    let r = constrained("Give me a number.", vec![both], 6);
    assert!(r.text.starts_with('4') && r.text.chars().all(|c| c.is_ascii_digit()), "{}", r.text);

    let grammar = r#"start: "The answer is " ANSWER "."
ANSWER: "yes" | "no""#;
    let r = constrained("Is the sky blue?", vec![Constraint::lark("yesno", grammar)], 20);
    assert!(r.text == "The answer is yes." || r.text == "The answer is no.", "{}", r.text);
    assert!(
        r.stats.generated_tokens > 0 && r.constraint_stats.unwrap().forced_tokens > 0,
        "the fixed prefix is forced, not sampled"
    );

    let r = constrained("Pick a color.", vec![Constraint::choice("color", ["red", "green", "blue"])], 10);
    assert!(["red", "green", "blue"].contains(&r.text.as_str()), "{}", r.text);

    // A token mask forbidding the most likely first token changes the output and is obeyed.
    let free = constrained("Say hello.", vec![], 5);
    let first = free.tokens[0];
    let r = constrained("Say hello.", vec![Constraint::token_mask("no_first", vec![], vec![first])], 5);
    assert!(!r.tokens.contains(&first), "{:?}", r.tokens);
    let allowed: Vec<u32> = engine().local().unwrap().tokenizer().encode(" a b c", false, false).unwrap();
    let r = constrained("Say hello.", vec![Constraint::token_mask("abc", allowed.clone(), vec![])], 6);
    assert!(r.tokens.iter().all(|t| allowed.contains(t)), "{:?} not within {allowed:?}", r.tokens);
}

#[test]
fn conflicts_relax_the_lowest_priority_and_say_so() {
    let digits = Constraint::regex("digits", "[0-9]+").with_priority(10);
    let letters = Constraint::regex("letters", "[a-z]+").with_priority(1);
    let r = constrained("Write something.", vec![letters, digits], 8);
    assert!(r.text.chars().all(|c| c.is_ascii_digit()), "the higher priority wins: {}", r.text);
    let by_name = |n: &str| r.validation.iter().find(|v| v.name == n).unwrap().clone();
    assert_eq!(by_name("letters").outcome, ConstraintOutcome::Relaxed);
    assert!(by_name("letters").reason.unwrap().contains("'digits'"));
    assert_ne!(by_name("digits").outcome, ConstraintOutcome::Relaxed);
    assert!(!r.constraints_satisfied());
    let provenance = r.provenance_json();
    assert!(
        provenance.contains("\"letters\"")
            && provenance.contains("\"digits\"")
            && provenance.contains("\"seed\""),
        "{provenance}"
    );
}

#[test]
fn cut_short_output_is_reported_as_violated() {
    let schema = json!({"type":"object","properties":{"story":{"type":"string","minLength":200}},"required":["story"]});
    let r = constrained("Tell a story.", vec![Constraint::json_schema("story", schema)], 10);
    assert_eq!(r.finish_reason, FinishReason::Length);
    assert_eq!(r.validation[0].outcome, ConstraintOutcome::Violated);
    assert!(r.validation[0].reason.as_deref().unwrap().contains("length"), "{:?}", r.validation);
}

#[test]
fn bad_constraints_fail_at_compile_time_naming_the_part() {
    let compile = |c: Constraint| engine().check_constraint(&c).expect_err("must fail");
    let e = compile(Constraint::regex("r", "[0-9"));
    assert_eq!(e.kind(), ErrorKind::InvalidConstraint);
    assert!(e.message().contains("'r'") && e.message().contains("[0-9"), "{e}");
    let e = compile(Constraint::lark("g", "start: foo bar baz"));
    assert_eq!(e.kind(), ErrorKind::InvalidConstraint);
    assert!(e.message().contains("'g'"), "{e}");
    let e = compile(Constraint::json_schema(
        "s",
        json!({"type": "object", "properties": {"a": {"type": "strin"}}}),
    ));
    assert_eq!(e.kind(), ErrorKind::InvalidConstraint);
    assert!(e.message().contains("strin"), "{e}");
    let e = compile(Constraint::json_schema("u", json!({"type": "array", "uniqueItems": true})));
    assert!(
        e.message().contains("uniqueItems") && e.message().contains("'u'"),
        "unsupported keyword is named: {e}"
    );
    let e = compile(Constraint::json_schema("s", json!(42)));
    assert!(e.message().contains("object or a boolean"), "{e}");
    let e = compile(Constraint::token_mask("m", vec![1, 999_999], vec![]));
    assert!(e.message().contains("999999"), "{e}");
    let e = compile(Constraint::choice("c", Vec::<String>::new()));
    assert!(e.message().contains("no options"), "{e}");
    // Through a request: refused before generating.
    let opts = GenerateOptions { constraints: vec![Constraint::regex("bad", "(")], ..Default::default() };
    let err = engine().new_session().generate(&Prompt::Text("x".into()), &opts).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidConstraint);
}

#[test]
fn the_compile_cache_hits_counts_and_evicts() {
    let e = maze::engine::LocalEngine::load(
        &EngineConfig {
            model_path: std::env::var_os("MAZE_MODEL").map(PathBuf::from).unwrap_or_default(),
            constraint_cache_limit: 2,
            ..Default::default()
        },
        None,
    );
    let Ok(e) = e else { return }; // MAZE_MODEL unset: covered by the shared engine tests
    let c1 = Constraint::regex("a", "[a-z]+");
    let first = e.compile_constraint(&c1).unwrap();
    assert!(!first.cache_hit);
    let again = e.compile_constraint(&Constraint::regex("renamed", "[a-z]+")).unwrap();
    assert!(again.cache_hit, "name does not change the compiled form");
    e.compile_constraint(&Constraint::regex("b", "[0-9]+")).unwrap();
    e.compile_constraint(&Constraint::regex("c", "[A-Z]+")).unwrap();
    let s = e.constraint_cache_stats();
    assert_eq!((s.size, s.limit, s.hits, s.misses, s.evictions), (2, 2, 1, 3, 1));
    e.set_constraint_cache_limit(1).unwrap();
    assert_eq!(e.constraint_cache_stats().evictions, 2);
    e.clear_constraint_cache();
    assert_eq!(e.constraint_cache_stats().size, 0);
    assert!(!e.compile_constraint(&c1).unwrap().cache_hit);
}

/// `json_options` through the JSON form, on the real model: without `lenient` unsupported
/// keywords are refused by JSON pointer; with it the output is generated, the keywords left out
/// are listed, and the result is not reported satisfied.
#[test]
fn lenient_json_schemas_name_every_relaxed_keyword_and_are_not_satisfied() {
    let schema = json!({
        "type": "object",
        "properties": {
            "kind": {"enum": ["a", "b"]},
            "n": {"type": "integer", "minimum": 0, "maximum": 9, "not": {"const": 5}},
        },
        "required": ["kind", "n"],
        "additionalProperties": false,
        "if": {"properties": {"kind": {"const": "a"}}},
        "then": {"properties": {"n": {"maximum": 3}}},
        "dependencies": {"kind": ["n"]},
    });
    let e = engine().check_constraint(&Constraint::json_schema("strict", schema.clone())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConstraint);
    assert!(
        e.message().contains(
            "unsupported keywords \"dependencies\" at /dependencies, \"if\" at /if, \"not\" at /properties/n/not, \"then\" at /then"
        ),
        "every one is named: {e}"
    );

    let text = json!({"name": "loose", "json_schema": schema, "json_options": {"lenient": true}}).to_string();
    let constraints = Constraint::list_from_json(&text).unwrap();
    let r = constrained("Give a kind and a number as JSON.", constraints, 60);
    assert_eq!(r.finish_reason, FinishReason::Stop, "{}", r.text);
    let value: Value = serde_json::from_str(&r.text).expect("JSON output");
    assert!(value["n"].as_i64().is_some_and(|n| (0..=9).contains(&n)), "enforced parts hold: {value}");
    let report = &r.validation[0];
    assert_eq!(report.outcome, ConstraintOutcome::PartiallyEnforced, "{}", r.validation_json());
    let pointers: Vec<&str> = report.relaxed_keywords.iter().map(|k| k.pointer.as_str()).collect();
    assert_eq!(pointers, ["/dependencies", "/if", "/properties/n/not", "/then"]);
    assert!(!r.constraints_satisfied());
    let validation: Value = serde_json::from_str(&r.validation_json()).unwrap();
    assert_eq!(validation["satisfied"], false);
    assert_eq!(validation["constraints"][0]["relaxed_keywords"][2]["keyword"], "not");
    let provenance: Value = serde_json::from_str(&r.provenance_json()).unwrap();
    assert_eq!(provenance["constraints"][0]["json_options"]["lenient"], true, "{provenance}");
}

#[test]
fn unknown_formats_are_ignored_annotations_unless_strict() {
    let schema = json!({
        "type": "object",
        "properties": {
            "pattern": {"type": "string", "format": "regex", "maxLength": 10},
            "link": {"type": "string", "format": "uri-reference", "maxLength": 20},
            "code": {"type": "string", "format": "made-up", "maxLength": 6},
            "day": {"type": "string", "format": "date"},
        },
        "required": ["pattern", "link", "code", "day"],
        "additionalProperties": false,
    });
    let r = constrained(
        "Fill in the record as JSON.",
        vec![Constraint::json_schema("formats", schema.clone())],
        120,
    );
    let value: Value = serde_json::from_str(&r.text).expect("JSON output");
    let day = value["day"].as_str().unwrap();
    assert!(day.len() == 10 && day.as_bytes()[4] == b'-', "the known format is enforced: {day}");
    assert!(r.constraints_satisfied(), "formats are annotations: {}", r.validation_json());
    let ignored: Vec<(&str, &str)> =
        r.validation[0].ignored_formats.iter().map(|f| (f.format.as_str(), f.pointer.as_str())).collect();
    assert_eq!(
        ignored,
        [
            ("made-up", "/properties/code/format"),
            ("uri-reference", "/properties/link/format"),
            ("regex", "/properties/pattern/format")
        ]
    );

    let strict = Constraint::json_schema("strict", schema)
        .with_json_options(JsonSchemaOptions { strict_formats: true, ..Default::default() });
    let e = engine().check_constraint(&strict).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConstraint);
    assert!(
        e.message().contains("unknown formats \"made-up\" at /properties/code/format, \"uri-reference\" at /properties/link/format, \"regex\" at /properties/pattern/format"),
        "{e}"
    );
}

#[test]
fn coerce_one_of_approximates_and_says_so() {
    let schema = json!({
        "type": "object",
        "properties": {"n": {"oneOf": [{"type": "integer", "maximum": 50}, {"type": "integer", "minimum": 10}]}},
        "required": ["n"],
        "additionalProperties": false,
    });
    let e = engine().check_constraint(&Constraint::json_schema("exact", schema.clone())).unwrap_err();
    assert!(e.message().contains("unsupported keyword \"oneOf\" at /properties/n/oneOf"), "{e}");
    assert!(e.message().contains("coerce_one_of"), "{e}");
    let coerced = Constraint::json_schema("coerced", schema)
        .with_json_options(JsonSchemaOptions { coerce_one_of: true, ..Default::default() });
    let r = constrained("Give a number as JSON.", vec![coerced], 30);
    let value: Value = serde_json::from_str(&r.text).expect("JSON output");
    assert!(value["n"].is_i64(), "{value}");
    assert_eq!(r.validation[0].outcome, ConstraintOutcome::PartiallyEnforced, "{}", r.validation_json());
    assert_eq!(r.validation[0].relaxed_keywords[0].pointer, "/properties/n/oneOf");
    assert!(!r.constraints_satisfied());
}
