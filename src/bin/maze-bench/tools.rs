//! What declaring tools costs free text: a chat reply generated with 10 tools declared
//! (tool_choice auto, so the tool grammar's text branch and lazy trigger are live on every
//! token) beside the same prompt tokens generated with no tools, and the grammar's mask per
//! token replayed alone. Issue 21's goal: free text in auto mode at most 5% slower.

use std::time::Instant;

use maze::tools::format::generic_messages;
use maze::{ChatMessage, Engine, GenerateOptions, Prompt, SamplingParams, Tool, ToolFormat, ToolUse};
use serde_json::json;

/// The figures of [`bench_tools`].
#[derive(Debug, Clone)]
pub struct ToolNumbers {
    pub tools: usize,
    /// Decode tokens/s with the tools declared / with none (same prompt tokens), medians.
    pub with_tools: f64,
    pub without: f64,
    pub generated: f64,
    /// Runs whose reply with tools was (or began) a call instead of text: their speed is not
    /// free text's (a call's syntax is forced).
    pub calling_runs: usize,
    pub runs: usize,
    /// Compile of the tool grammar (cache cleared), ms.
    pub compile_ms: f64,
    /// The grammar's mask per sampled token of the text, replayed back to back: mean / p99 µs.
    pub replay_mean_us: f64,
    pub replay_p99_us: f64,
}

impl ToolNumbers {
    /// Free text with tools over free text without, as a slowdown in percent.
    pub fn slowdown_percent(&self) -> f64 {
        (1.0 - self.with_tools / self.without) * 100.0
    }
}

fn object(properties: serde_json::Value, required: &[&str]) -> serde_json::Value {
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

/// Ten tools of the shapes agents declare.
pub fn ten_tools() -> Vec<Tool> {
    let s = json!({"type": "string"});
    let n = json!({"type": "number"});
    vec![
        Tool::new(
            "get_weather",
            "Current weather in a city",
            object(json!({"city": s, "unit": {"enum": ["celsius", "fahrenheit"]}}), &["city"]),
        ),
        Tool::new("add", "Add two numbers", object(json!({"a": n, "b": n}), &["a", "b"])),
        Tool::new(
            "search_web",
            "Search the web",
            object(
                json!({"query": s, "max_results": {"type": "integer", "minimum": 1, "maximum": 10}}),
                &["query"],
            ),
        ),
        Tool::new(
            "convert_currency",
            "Convert money",
            object(
                json!({"amount": n, "from": {"type": "string", "pattern": "^[A-Z]{3}$"}, "to": {"type": "string", "pattern": "^[A-Z]{3}$"}}),
                &["amount", "from", "to"],
            ),
        ),
        Tool::new(
            "send_email",
            "Send an email",
            object(json!({"to": s, "subject": s, "body": s}), &["to", "subject", "body"]),
        ),
        Tool::new(
            "set_timer",
            "Start a timer",
            object(json!({"minutes": {"type": "integer", "minimum": 0}, "label": s}), &["minutes"]),
        ),
        Tool::new("get_time", "The time in a time zone", object(json!({"zone": s}), &[])),
        Tool::new(
            "translate",
            "Translate text",
            object(json!({"text": s, "target_language": s}), &["text", "target_language"]),
        ),
        Tool::new(
            "create_event",
            "Add a calendar event",
            object(
                json!({"title": s, "start": {"type": "string", "format": "date-time"}, "minutes": {"type": "integer"}}),
                &["title", "start"],
            ),
        ),
        Tool::new(
            "stock_price",
            "Latest price of a stock",
            object(json!({"ticker": {"type": "string", "maxLength": 5}}), &["ticker"]),
        ),
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Measures `runs` pairs (after one warm-up pair) of `gen_tokens`-token replies.
pub fn bench_tools(engine: &Engine, runs: usize, gen_tokens: usize) -> ToolNumbers {
    let tools = ToolUse::new(ten_tools()).with_format(ToolFormat::Generic);
    let ask = vec![ChatMessage::new("user", "Write a long story about a lighthouse keeper and the sea.")];
    // The generic format renders the tools into the messages: without tools, the same messages
    // give the same prompt tokens, so the two runs differ only by the grammar.
    let same_prompt = Prompt::Chat(generic_messages(&ask, &tools));
    let opts = |tools: Option<ToolUse>| GenerateOptions {
        max_tokens: gen_tokens,
        sampling: SamplingParams { temperature: 0.7, seed: Some(1), ..Default::default() },
        ignore_eos: true,
        logprobs: true,
        tools,
        ..Default::default()
    };
    let (mut with_tools, mut without, mut generated, mut replay) = (vec![], vec![], vec![], vec![]);
    let mut calling_runs = 0;
    let local = engine.local().expect("maze-bench loads a local model");
    let plan = tools.plan(None, &[]).expect("the tools plan");
    let t = Instant::now();
    local.clear_constraint_cache();
    let compiled =
        std::sync::Arc::new(local.compile_constraint(&plan.constraints[0]).expect("tool grammar compiles"));
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    for run in 0..=runs {
        let r = engine
            .new_session()
            .generate(&Prompt::Chat(ask.clone()), &opts(Some(tools.clone())))
            .expect("generate");
        let free = engine.new_session().generate(&same_prompt, &opts(None)).expect("generate");
        assert_eq!(r.stats.prompt_tokens, free.stats.prompt_tokens, "the same prompt tokens");
        if run == 0 {
            continue;
        }
        with_tools.push(r.stats.decode_tokens_per_second);
        without.push(free.stats.decode_tokens_per_second);
        generated.push(r.stats.generated_tokens as f64);
        calling_runs += usize::from(!r.tool_calls.is_empty());
        let mut enforcer = maze::constraint::Enforcer::new(
            vec![compiled.clone()],
            engine.info().vocab_size,
            local.tokenizer().end_of_generation().to_vec(),
        );
        for (&token, lp) in r.tokens.iter().zip(r.logprobs.clone().unwrap_or_default()) {
            if !lp.is_nan() {
                let start = Instant::now();
                enforcer.compute_mask().expect("mask");
                replay.push(start.elapsed().as_secs_f64() * 1e6);
            }
            if enforcer.commit(token).is_err() {
                break; // a call began and ended: the rest is past the grammar
            }
        }
    }
    replay.sort_by(|a, b| a.total_cmp(b));
    ToolNumbers {
        tools: tools.tools.len(),
        with_tools: median(with_tools),
        without: median(without),
        generated: median(generated),
        calling_runs,
        runs,
        compile_ms,
        replay_mean_us: replay.iter().sum::<f64>() / replay.len().max(1) as f64,
        replay_p99_us: replay.get(replay.len() * 99 / 100).copied().unwrap_or(0.0),
    }
}
