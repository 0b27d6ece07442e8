//! Tool calling on real models: Qwen2.5-Coder through its own chat template (Hermes
//! `<tool_call>` syntax) and SmolLM2 through the generic format. Every call the model makes is
//! checked for structure and for schema validity of its arguments, over a set of tool-use
//! prompts; how often the model chose to call when it should is printed (a figure, not a
//! pass/fail).

use std::path::PathBuf;

use maze::*;
use serde_json::{json, Value};

fn model(file: &str) -> Engine {
    let dir = std::env::var_os("MAZE_MODEL_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/maze/models")
    });
    let path = dir.join(file);
    assert!(path.is_file(), "{} is missing: run scripts/fetch-model.sh (make test does)", path.display());
    let config = EngineConfig {
        model_path: path,
        threads: 2,
        seed: Some(1),
        context_length: 2048,
        ..Default::default()
    };
    Engine::load(&config, None).unwrap()
}

fn qwen() -> Engine {
    model("Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf")
}

fn weather_tools() -> Vec<Tool> {
    vec![
        Tool::new(
            "get_weather",
            "Get the current weather in a city",
            json!({"type": "object", "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["city"], "additionalProperties": false}),
        ),
        Tool::new(
            "add",
            "Add two integers",
            json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"], "additionalProperties": false}),
        ),
    ]
}

fn options(tools: ToolUse) -> GenerateOptions {
    GenerateOptions {
        max_tokens: 120,
        sampling: SamplingParams { temperature: 0.0, seed: Some(3), ..Default::default() },
        tools: Some(tools),
        ..Default::default()
    }
}

#[test]
fn a_required_call_on_qwen_parses_and_matches_its_schema() {
    let engine = qwen();
    let session = engine.new_session();
    let prompt = Prompt::Chat(vec![ChatMessage::new("user", "What's the weather in Paris?")]);
    let tools = ToolUse::new(weather_tools()).with_choice(ToolChoice::Required);
    let mut events = Vec::new();
    let r = session
        .generate_events(&prompt, &options(tools), |e| {
            events.push(e.clone());
            true
        })
        .unwrap();
    eprintln!("{:?} {:?} {:?}", r.finish_reason, r.text, r.tool_calls);
    assert_eq!(r.finish_reason, FinishReason::ToolCalls, "{:?}", r.error);
    assert!(!r.tool_calls.is_empty());
    let args: Value = serde_json::from_str(&r.tool_calls[0].arguments).unwrap();
    assert!(r.constraints_satisfied(), "{}", r.validation_json());
    eprintln!("{args}");
}

/// The tools of the prompt set.
fn assistant_tools() -> Vec<Tool> {
    let mut tools = weather_tools();
    tools.extend([
        Tool::new(
            "search_web",
            "Search the web and return the top results",
            json!({"type": "object", "properties": {"query": {"type": "string"},
                   "max_results": {"type": "integer", "minimum": 1, "maximum": 10}},
                   "required": ["query"], "additionalProperties": false}),
        ),
        Tool::new(
            "convert_currency",
            "Convert an amount between currencies",
            json!({"type": "object", "properties": {"amount": {"type": "number"},
                   "from": {"type": "string", "pattern": "^[A-Z]{3}$"}, "to": {"type": "string", "pattern": "^[A-Z]{3}$"}},
                   "required": ["amount", "from", "to"], "additionalProperties": false}),
        ),
        Tool::new(
            "send_email",
            "Send an email",
            json!({"type": "object", "properties": {"to": {"type": "string"}, "subject": {"type": "string"},
                   "body": {"type": "string"}}, "required": ["to", "subject", "body"], "additionalProperties": false}),
        ),
        Tool::new(
            "set_timer",
            "Start a countdown timer",
            json!({"type": "object", "properties": {"minutes": {"type": "integer", "minimum": 0},
                   "label": {"type": "string"}}, "required": ["minutes"], "additionalProperties": false}),
        ),
    ]);
    tools
}

/// Prompts that call for a tool.
const TOOL_PROMPTS: &[&str] = &[
    "What's the weather like in Tokyo right now?",
    "Is it raining in London? Use fahrenheit.",
    "What is 1234 plus 4321?",
    "Add 17 and 25 for me.",
    "Search the web for the latest Rust release notes.",
    "Find me 3 articles about quantum computing.",
    "Convert 100 USD to EUR.",
    "How much is 2500 JPY in GBP?",
    "Send an email to alice@example.com with subject 'Lunch' saying 'See you at noon'.",
    "Email bob@example.com: subject Report, body 'The report is attached.'",
    "Set a timer for 10 minutes.",
    "Start a 25 minute timer labelled pomodoro.",
    "Check the weather in Berlin and in Madrid.",
    "What's the temperature in New York in celsius?",
    "Please sum 99 and 1.",
    "Look up who won the 2022 World Cup.",
    "Change 50 EUR into CHF.",
    "Remind me in 5 minutes to check the oven by setting a timer.",
    "Write to carol@example.com, subject 'Hi', body 'Long time no see'.",
    "Weather forecast for Sydney please.",
];

/// Prompts no declared tool fits.
const TEXT_PROMPTS: &[&str] = &[
    "Write a haiku about autumn.",
    "What does the acronym CPU stand for?",
    "Say hello in French.",
    "Explain what a linked list is in one sentence.",
    "Tell me a short joke.",
];

/// A JSON-schema check for the keywords the prompt set's tools use, written independently of
/// the engine so that it can catch what the grammar let through.
fn schema_errors(schema: &Value, value: &Value, at: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let fail = |errors: &mut Vec<String>, why: String| errors.push(format!("{at}: {why}"));
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => value.is_object(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "array" => value.is_array(),
            _ => true,
        };
        if !ok {
            fail(&mut errors, format!("{value} is not of type {t}"));
            return errors;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            fail(&mut errors, format!("{value} is not one of {options:?}"));
        }
    }
    if let (Some(min), Some(v)) = (schema.get("minimum").and_then(Value::as_f64), value.as_f64()) {
        if v < min {
            fail(&mut errors, format!("{v} < minimum {min}"));
        }
    }
    if let (Some(max), Some(v)) = (schema.get("maximum").and_then(Value::as_f64), value.as_f64()) {
        if v > max {
            fail(&mut errors, format!("{v} > maximum {max}"));
        }
    }
    if let (Some(p), Some(s)) = (schema.get("pattern").and_then(Value::as_str), value.as_str()) {
        // The set's patterns are all ^[A-Z]{3}$.
        assert_eq!(p, "^[A-Z]{3}$");
        if !(s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase())) {
            fail(&mut errors, format!("{s:?} does not match {p}"));
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        for name in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            if !object.contains_key(name.as_str().unwrap()) {
                fail(&mut errors, format!("required {name} is missing"));
            }
        }
        for (key, v) in object {
            match properties.and_then(|p| p.get(key)) {
                Some(sub) => errors.extend(schema_errors(sub, v, &format!("{at}/{key}"))),
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    fail(&mut errors, format!("property {key:?} is not allowed"))
                }
                None => {}
            }
        }
    }
    errors
}

/// Runs the prompt set under `auto`; every call must parse and validate. Returns (calls when
/// one was due, text when none fits).
fn run_prompt_set(engine: &Engine, format: Option<ToolFormat>) -> (usize, usize) {
    let tools = assistant_tools();
    let mut use_ = ToolUse::new(tools.clone());
    use_.format = format;
    let mut called = 0;
    let mut texted = 0;
    let mut checked = 0;
    for (i, prompt) in TOOL_PROMPTS.iter().chain(TEXT_PROMPTS).enumerate() {
        let session = engine.new_session();
        let chat = Prompt::Chat(vec![ChatMessage::new("user", *prompt)]);
        let r =
            session.generate(&chat, &GenerateOptions { max_tokens: 160, ..options(use_.clone()) }).unwrap();
        assert!(r.error.is_none(), "{prompt}: {:?}", r.error);
        for (call, check) in r.tool_calls.iter().zip(&r.tool_call_checks) {
            let tool = tools
                .iter()
                .find(|t| t.name == call.name)
                .unwrap_or_else(|| panic!("{prompt}: undeclared {call:?}"));
            let args: Value = serde_json::from_str(&call.arguments)
                .unwrap_or_else(|e| panic!("{prompt}: arguments {:?} do not parse: {e}", call.arguments));
            let errors = schema_errors(&tool.parameters, &args, &call.name);
            assert!(errors.is_empty(), "{prompt}: {errors:?}");
            assert!(check.satisfied, "{prompt}: {check:?}");
            checked += 1;
        }
        if !r.tool_calls.is_empty() {
            assert_eq!(r.finish_reason, FinishReason::ToolCalls, "{prompt}");
            assert!(r.constraints_satisfied(), "{prompt}: {}", r.validation_json());
        } else {
            assert!(
                !r.text.contains("<tool_call>"),
                "{prompt}: call syntax leaked into the text: {:?}",
                r.text
            );
        }
        let is_tool_prompt = i < TOOL_PROMPTS.len();
        match (is_tool_prompt, r.tool_calls.is_empty()) {
            (true, false) => called += 1,
            (false, true) => texted += 1,
            _ => {}
        }
        eprintln!(
            "[{}] {prompt:?} -> {} call(s) {:?} text {:?}",
            if is_tool_prompt { "tool" } else { "text" },
            r.tool_calls.len(),
            r.tool_calls.iter().map(|c| format!("{}{}", c.name, c.arguments)).collect::<Vec<_>>(),
            r.text.chars().take(60).collect::<String>()
        );
    }
    eprintln!(
        "tool-use figures: called when a tool fit {called}/{}; answered in text when none fit {texted}/{}; {checked} calls, all parsed and valid",
        TOOL_PROMPTS.len(),
        TEXT_PROMPTS.len()
    );
    (called, texted)
}

#[test]
fn every_call_qwen_makes_in_auto_mode_parses_and_validates() {
    run_prompt_set(&qwen(), None);
}

#[test]
fn every_call_smollm2_makes_in_the_generic_format_parses_and_validates() {
    let engine = model("SmolLM2-135M-Instruct.Q4_1.gguf");
    let session = engine.new_session();
    let chat = Prompt::Chat(vec![ChatMessage::new("user", "What is 2 plus 3?")]);
    let refused = session.generate(&chat, &options(ToolUse::new(weather_tools()))).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Unsupported);
    assert!(refused.message().contains("generic tool format"), "{}", refused.message());
    run_prompt_set(&engine, Some(ToolFormat::Generic));
}

#[test]
fn the_callers_text_constraints_govern_a_text_reply_in_auto_mode() {
    let engine = qwen();
    let chat =
        Prompt::Chat(vec![ChatMessage::new("user", "What does CPU stand for? Answer in a few words.")]);
    let cases = [
        Constraint::regex("sentence", "[A-Z][A-Za-z ]{2,60}\\."),
        Constraint::new("gbnf", 0, ConstraintKind::Gbnf("root ::= [A-Z] [a-zA-Z ]{2,60} \".\"".into())),
        Constraint::choice("pick", ["Central Processing Unit.", "Computer Power Unit."]),
    ];
    for constraint in cases {
        let opts = GenerateOptions {
            constraints: vec![constraint.clone()],
            ..options(ToolUse::new(weather_tools()))
        };
        let r = engine.new_session().generate(&chat, &opts).unwrap();
        eprintln!("{}: {:?} {:?} {}", constraint.name, r.text, r.tool_calls, r.validation_json());
        if r.tool_calls.is_empty() {
            let t = r.text.as_str();
            let ok = match constraint.name.as_str() {
                "pick" => t == "Central Processing Unit." || t == "Computer Power Unit.",
                _ => t.ends_with('.') && t.starts_with(|c: char| c.is_ascii_uppercase()) && t.len() <= 62,
            };
            assert!(ok, "{}: {t:?}", constraint.name);
        }
        assert!(r.constraints_satisfied(), "{}: {}", constraint.name, r.validation_json());
        let names: Vec<&str> = r.validation.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, [constraint.name.as_str(), "tools"]);
    }
}

/// Each format's syntax end to end, with SmolLM2 and a template that carries the format's
/// marker: a required call is written in that syntax, parses, and satisfies the schema.
#[test]
fn every_format_writes_parses_and_validates_a_required_call() {
    let path = PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/maze/models");
    let dir = std::env::var_os("MAZE_MODEL_DIR").map(PathBuf::from).unwrap_or(path);
    let base = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if tools %}<|im_start|>system\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}<|im_end|>\n{% endif %}<|im_start|>assistant\n";
    let cases = [
        ("<tool_call>", ToolFormat::Hermes, "<tool_call>\n{\"name\": \"add\", \"arguments\": {"),
        (
            "<|start_header_id|>ipython<|end_header_id|>",
            ToolFormat::Llama3,
            "{\"name\": \"add\", \"parameters\": {",
        ),
        ("[TOOL_CALLS]", ToolFormat::Mistral, "[TOOL_CALLS][{\"name\": \"add\", \"arguments\": {"),
    ];
    for (marker, format, starts) in cases {
        let config = EngineConfig {
            model_path: dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"),
            threads: 2,
            context_length: 2048,
            chat_template: Some(format!("{{# {marker} #}}{base}")),
            ..Default::default()
        };
        let engine = Engine::load(&config, None).unwrap();
        let tools = ToolUse::new(weather_tools()).with_choice(ToolChoice::Named("add".into()));
        let chat = Prompt::Chat(vec![ChatMessage::new("user", "What is 2 plus 3?")]);
        let r = engine.new_session().generate(&chat, &options(tools)).unwrap();
        let raw = engine.detokenize(&r.tokens).unwrap();
        let raw = String::from_utf8_lossy(&raw);
        assert!(raw.starts_with(starts), "{format:?}: {raw:?}");
        assert_eq!(r.finish_reason, FinishReason::ToolCalls, "{format:?}: {raw:?}");
        assert_eq!(r.tool_calls.len(), 1, "{format:?}");
        let args: Value = serde_json::from_str(&r.tool_calls[0].arguments).unwrap();
        assert!(args["a"].is_i64() && args["b"].is_i64(), "{format:?}: {args}");
        assert!(r.constraints_satisfied() && r.text.is_empty(), "{format:?}: {}", r.validation_json());
        let id = &r.tool_calls[0].id;
        assert_eq!(id.len(), if format == ToolFormat::Mistral { 9 } else { 29 }, "{format:?}: {id}");
    }
}
