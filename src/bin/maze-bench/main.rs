//! Benchmarks the engine on a model: load time, memory, prefill and decode speed, aggregate
//! speed of concurrent sessions, constraint costs (medians of several runs); with
//! `--llama-bench` also llama.cpp's llama-bench on the same file in the same run. Optionally
//! writes the report as Markdown; with `--suite` it measures several models in turn and writes
//! one report per model beside a summary of all (what `make bench` does for docs/BENCHMARKS.md).
//! `maze-bench --help` lists the flags.
//!
//!   maze-bench --model MODEL.gguf --sessions-only 1,8   (only the concurrent measure, for profiling)
//!   maze-bench --model MODEL.gguf --load-only           (only the load times, for profiling)
//!   maze-bench --suite smollm2=A.gguf,gemma3=B.gguf --write docs/BENCHMARKS.md

mod tools;

use std::num::ParseIntError;
use std::time::Instant;

use clap::Parser;
use maze::{Constraint, Engine, EngineConfig, GenerateOptions, Prompt, SamplingParams};
use serde_json::json;

/// Benchmarks Maze on GGUF models (load, memory, prefill, decode, concurrent sessions,
/// constraints), optionally beside llama.cpp's llama-bench, and can write docs/BENCHMARKS.md.
#[derive(Parser, Clone)]
#[command(name = "maze-bench", version)]
struct Args {
    /// The GGUF model file.
    #[arg(long, env = "MAZE_MODEL", value_name = "MODEL.gguf", required_unless_present = "suite")]
    model: Option<String>,
    /// Several models, measured one after the other: NAME=MODEL.gguf each. With --write FILE,
    /// each model's full report goes to benchmarks/NAME.md beside FILE, and FILE summarises all.
    #[arg(long, value_name = "NAME=MODEL.gguf,...", value_delimiter = ',', value_parser = suite_entry, conflicts_with = "model")]
    suite: Vec<SuiteEntry>,
    /// Measured runs of each measure, after one warm-up run; medians are reported.
    #[arg(long, value_name = "N", default_value_t = 5)]
    runs: usize,
    /// Compute threads (llama-bench gets as many).
    #[arg(long, value_name = "T", default_value_t = 2)]
    threads: usize,
    /// Prompt lengths of the prefill measures (llama-bench's -p).
    #[arg(long, value_name = "P,Q,...", value_delimiter = ',', default_value = "128,512")]
    prefill_tokens: Vec<usize>,
    /// Prompt length of the decode, constraint and shared-prefix measures.
    #[arg(long, value_name = "P", default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens each decode measure generates.
    #[arg(long, value_name = "G", default_value_t = 128)]
    gen_tokens: usize,
    /// llama.cpp's llama-bench, run on the same model, threads and sizes.
    #[arg(long, value_name = "PATH")]
    llama_bench: Option<String>,
    /// Also write the results as Markdown (what docs/BENCHMARKS.md holds).
    #[arg(long, value_name = "FILE")]
    write: Option<String>,
    /// Only the concurrent-sessions measure, with these session counts (for profiling).
    #[arg(long, value_name = "N,M,...", value_delimiter = ',', value_parser = session_count)]
    sessions_only: Option<Vec<usize>>,
    /// Only the load times (for profiling).
    #[arg(long)]
    load_only: bool,
    /// Measure only what 10 declared tools cost free text (tool_choice auto vs no tools).
    #[arg(long)]
    tools_only: bool,
    /// Load once, print the milliseconds and exit (how the fresh-process measure runs itself).
    #[arg(long, hide = true)]
    one_load: bool,
}

/// One entry of `--sessions-only`, spaces around it allowed.
fn session_count(s: &str) -> Result<usize, ParseIntError> {
    s.trim().parse()
}

/// One model of `--suite`: the name its report is filed under, and its file.
#[derive(Clone)]
struct SuiteEntry {
    name: String,
    path: String,
}

fn suite_entry(s: &str) -> Result<SuiteEntry, String> {
    match s.trim().split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() && !name.contains('/') => {
            Ok(SuiteEntry { name: name.to_string(), path: path.to_string() })
        }
        _ => Err(format!("{s:?} is not NAME=MODEL.gguf")),
    }
}

impl Args {
    /// The model of a single-model run (clap requires --model unless --suite is given, and a
    /// suite runs each model with its own copy of the arguments).
    fn model_path(&self) -> &str {
        self.model.as_deref().expect("--model or --suite")
    }
}

fn median(v: Vec<f64>) -> f64 {
    percentile(v, 0.5)
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let pos = (v.len() - 1) as f64 * p;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

struct ConstraintNumbers {
    replay_mean_us: f64,
    replay_p50_us: f64,
    replay_p99_us: f64,
    first_compile_ms: f64,
    cold_us: f64,
    hit_p50_us: f64,
    hit_p99_us: f64,
    mask_mean_us: f64,
    mask_p50_us: f64,
    mask_p99_us: f64,
    forced: f64,
    generated: f64,
    decode: f64,
}

/// llama.cpp's tokens/s, medians of llama-bench's samples.
struct LlamaNumbers {
    /// (prompt tokens, prefill tokens/s), one per --prefill-tokens entry.
    prefill: Vec<(usize, f64)>,
    decode: f64,
}

/// llama.cpp's llama-bench on the same model, threads and sizes: one pp test per prefill
/// length and one tg test.
fn llama_cpp(path: &str, args: &Args) -> Result<LlamaNumbers, String> {
    let prefill_sizes: Vec<String> = args.prefill_tokens.iter().map(|p| p.to_string()).collect();
    let out = std::process::Command::new(path)
        .args([
            "-m",
            args.model_path(),
            "-t",
            &args.threads.to_string(),
            "-p",
            &prefill_sizes.join(","),
            "-n",
            &args.gen_tokens.to_string(),
        ])
        .args(["-r", &args.runs.max(1).to_string(), "-o", "json"])
        .output()
        .map_err(|e| format!("cannot run {path}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{path} failed: {}",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
        ));
    }
    let tests: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("llama-bench output: {e}"))?;
    // Each test is a pp test (n_gen 0) or a tg test (n_prompt 0).
    let rate = |n_prompt: usize, n_gen: usize| -> Result<f64, String> {
        tests
            .iter()
            .find(|t| {
                t["n_prompt"].as_u64() == Some(n_prompt as u64) && t["n_gen"].as_u64() == Some(n_gen as u64)
            })
            .and_then(|t| t["samples_ts"].as_array())
            .map(|v| median(v.iter().filter_map(|x| x.as_f64()).collect()))
            .ok_or_else(|| {
                format!("llama-bench output lacks the test of {n_prompt} prompt and {n_gen} generated tokens")
            })
    };
    let prefill =
        args.prefill_tokens.iter().map(|&p| Ok((p, rate(p, 0)?))).collect::<Result<Vec<_>, String>>()?;
    Ok(LlamaNumbers { prefill, decode: rate(0, args.gen_tokens)? })
}

/// A catalog of 40 products; `bounded` adds string length bounds and a pattern.
fn catalog_schema(bounded: bool) -> serde_json::Value {
    let (sku, name) = if bounded {
        (
            json!({"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}),
            json!({"type": "string", "maxLength": 24}),
        )
    } else {
        (json!({"type": "string"}), json!({"type": "string"}))
    };
    json!({"type": "array", "minItems": 40, "maxItems": 40, "items": {
        "type": "object",
        "properties": {
            "sku": sku,
            "name": name,
            "price": {"type": "number", "minimum": 0, "maximum": 1000},
            "tags": {"type": "array", "items": {"enum": ["new", "sale", "eco", "limited"]}, "maxItems": 2}
        },
        "required": ["sku", "name", "price", "tags"], "additionalProperties": false}})
}

/// Constraint costs on a structured schema long enough that generation runs to max_tokens.
fn bench_constraints(
    engine: &Engine,
    prompt: &[u32],
    args: &Args,
    schema: serde_json::Value,
) -> ConstraintNumbers {
    let constraint = Constraint::json_schema("catalog", schema);
    // Compiled constraints and the tokenizer are the local engine's.
    let local = engine.local().expect("maze-bench loads a local model");
    // The first compilation also builds the token trie and parser factory (once per engine).
    let t = Instant::now();
    local.compile_constraint(&constraint).expect("schema compiles");
    let first_compile_ms = t.elapsed().as_secs_f64() * 1e3;
    let cold: Vec<f64> = (0..20)
        .map(|_| {
            local.clear_constraint_cache();
            let t = Instant::now();
            local.compile_constraint(&constraint).expect("compiles");
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    let hits: Vec<f64> = (0..2000)
        .map(|_| {
            let t = Instant::now();
            let c = local.compile_constraint(&constraint).expect("compiles");
            let us = t.elapsed().as_secs_f64() * 1e6;
            assert!(c.cache_hit);
            us
        })
        .collect();
    let opts = GenerateOptions {
        max_tokens: args.gen_tokens,
        sampling: SamplingParams { temperature: 0.7, seed: Some(1), ..Default::default() },
        constraints: vec![constraint],
        // Forced tokens report a NaN logprob: that tells the replay which positions were sampled.
        logprobs: true,
        ..Default::default()
    };
    let (mut mean, mut p50, mut p99, mut forced, mut generated, mut decode) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut replay = Vec::new();
    for run in 0..=args.runs {
        let r = engine.new_session().generate(&Prompt::Tokens(prompt.to_vec()), &opts).expect("generate");
        if run == 0 {
            continue;
        }
        // Replay the output through a fresh enforcer, one mask per token, nothing else running:
        // the mask's own cost, free of contention with the overlapped forward pass.
        let compiled = std::sync::Arc::new(local.compile_constraint(&opts.constraints[0]).expect("compiles"));
        let mut enforcer = maze::constraint::Enforcer::new(
            vec![compiled],
            engine.info().vocab_size,
            local.tokenizer().end_of_generation().to_vec(),
        );
        let logprobs = r.logprobs.clone().expect("requested");
        for (&t, lp) in r.tokens.iter().zip(logprobs) {
            // Only where the decode loop computes a mask: before each sampled token.
            if !lp.is_nan() {
                let start = Instant::now();
                enforcer.compute_mask().expect("mask");
                replay.push(start.elapsed().as_secs_f64() * 1e6);
            }
            enforcer.commit(t).expect("the output obeys the schema");
        }
        let s = r.constraint_stats.expect("constrained");
        mean.push(s.mean_mask_time_us);
        p50.push(s.p50_mask_time_us);
        p99.push(s.p99_mask_time_us);
        forced.push(s.forced_tokens as f64);
        generated.push(r.stats.generated_tokens as f64);
        decode.push(r.stats.decode_tokens_per_second);
    }
    ConstraintNumbers {
        replay_mean_us: replay.iter().sum::<f64>() / replay.len().max(1) as f64,
        replay_p50_us: percentile(replay.clone(), 0.5),
        replay_p99_us: percentile(replay, 0.99),
        first_compile_ms,
        cold_us: median(cold),
        hit_p50_us: median(hits.clone()),
        hit_p99_us: percentile(hits, 0.99),
        mask_mean_us: median(mean),
        mask_p50_us: median(p50),
        mask_p99_us: median(p99),
        forced: median(forced),
        generated: median(generated),
        decode: median(decode),
    }
}

/// Time to the first token (ms, medians) of a request constrained by a schema, its compilation
/// included, beside the same request without one.
struct SchemaFirstToken {
    /// The first request on a freshly loaded engine (which also builds the token trie and
    /// parser factory).
    fresh_ms: f64,
    /// The first request with this schema on a warm engine (compile cache cleared).
    warm_ms: f64,
    /// No schema.
    free_ms: f64,
}

/// One token from `prompt` under `schema` on a newly loaded engine, then on `engine`, then
/// without the schema, per run.
fn bench_schema_first_token(
    engine: &Engine,
    config: &EngineConfig,
    prompt: &[u32],
    args: &Args,
    schema: serde_json::Value,
) -> SchemaFirstToken {
    let constraint = Constraint::json_schema("catalog", schema);
    let ttft = |engine: &Engine, constraints: Vec<Constraint>| {
        let opts = GenerateOptions {
            max_tokens: 1,
            sampling: SamplingParams::greedy(),
            constraints,
            ..Default::default()
        };
        let r = engine.new_session().generate(&Prompt::Tokens(prompt.to_vec()), &opts).expect("generate");
        r.stats.time_to_first_token.as_secs_f64() * 1e3
    };
    let local = engine.local().expect("maze-bench loads a local model");
    let (mut fresh, mut warm, mut free) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..=args.runs {
        let loaded = load_or_exit(config);
        let f = ttft(&loaded, vec![constraint.clone()]);
        drop(loaded);
        local.clear_constraint_cache();
        let w = ttft(engine, vec![constraint.clone()]);
        let u = ttft(engine, vec![]);
        if run > 0 {
            fresh.push(f);
            warm.push(w);
            free.push(u);
        }
    }
    SchemaFirstToken { fresh_ms: median(fresh), warm_ms: median(warm), free_ms: median(free) }
}

/// Resident memory of this process, from /proc (0 where there is none).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

/// Aggregate speed of `sessions` sessions generating at once on one engine, each exactly
/// `gen_tokens` tokens (end tokens ignored) from its own 32-token prompt, as medians:
/// (decode tokens/s from the moment every session has its first token to the last token,
/// end-to-end tokens/s from the first request to the last result, prefill included).
fn bench_concurrent(engine: &Engine, base: &[u32], args: &Args, sessions: usize) -> (f64, f64) {
    let (mut decode, mut end_to_end) = (Vec::new(), Vec::new());
    for run in 0..=args.runs {
        let start = Instant::now();
        // Per session: (generated tokens, its first token, its last token).
        let spans: Vec<(usize, Instant, Instant)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..sessions)
                .map(|k| {
                    // A different prompt per session: no session copies another's.
                    let prompt: Vec<u32> = base.iter().cycle().skip(k).take(32).copied().collect();
                    scope.spawn(move || {
                        let sampling = SamplingParams {
                            temperature: 0.7,
                            seed: Some(k as u64 + 1),
                            ..Default::default()
                        };
                        let opts = GenerateOptions {
                            max_tokens: args.gen_tokens,
                            sampling,
                            ignore_eos: true,
                            ..Default::default()
                        };
                        let asked = Instant::now();
                        let r =
                            engine.new_session().generate(&Prompt::Tokens(prompt), &opts).expect("generate");
                        (
                            r.stats.generated_tokens,
                            asked + r.stats.time_to_first_token,
                            asked + r.stats.total_time,
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("session thread")).collect()
        });
        if run > 0 {
            let all_started = spans.iter().map(|s| s.1).max().expect("sessions");
            let last = spans.iter().map(|s| s.2).max().expect("sessions");
            let after_first: usize = spans.iter().map(|s| s.0.saturating_sub(1)).sum();
            let generated: usize = spans.iter().map(|s| s.0).sum();
            decode.push(after_first as f64 / (last - all_started).as_secs_f64());
            end_to_end.push(generated as f64 / (last - start).as_secs_f64());
        }
    }
    (median(decode), median(end_to_end))
}

/// Time to first token (ms) of a session with a long prompt computed from scratch, and of a
/// second session whose prompt opens the same way while the first is alive (copied prefix).
fn bench_shared_prefix(engine: &Engine, opening: &[u32], args: &Args) -> (f64, f64) {
    let opts = GenerateOptions { max_tokens: 1, sampling: SamplingParams::greedy(), ..Default::default() };
    let ttft = |session: &maze::Session, tail: u32| {
        let prompt: Vec<u32> = opening.iter().copied().chain([tail]).collect();
        let r = session.generate(&Prompt::Tokens(prompt), &opts).expect("generate");
        r.stats.time_to_first_token.as_secs_f64() * 1e3
    };
    let (mut cold, mut shared) = (Vec::new(), Vec::new());
    for run in 0..=args.runs {
        let (first, second) = (engine.new_session(), engine.new_session());
        let (c, s) = (ttft(&first, opening[0]), ttft(&second, opening[1]));
        if run > 0 {
            cold.push(c);
            shared.push(s);
        }
    }
    (median(cold), median(shared))
}

/// The sentence every measured prompt repeats or rotates.
fn base_prompt(engine: &Engine) -> Vec<u32> {
    engine
        .tokenize("The history of computing is long and full of remarkable people. ", false, false)
        .expect("tokenize")
}

fn print_load(fresh: f64, again: f64, runs: usize) {
    println!("load         {fresh:.0} ms in a fresh process, {again:.0} ms again in the same process (medians of {runs}, page cache warm)");
}

/// What a fresh process pays to load (what an application pays), medians of this program run
/// `runs` times with `--one-load`: the load time, and resident memory before and after it (a
/// fresh process, so no earlier model of a `--suite` run is counted).
fn fresh_process_load(args: &Args) -> [f64; 3] {
    let exe = std::env::current_exe().expect("own path");
    let measures: Vec<[f64; 3]> = (0..args.runs.max(1))
        .map(|_| {
            let out = std::process::Command::new(&exe)
                .args(["--model", args.model_path(), "--threads", &args.threads.to_string(), "--one-load"])
                .output()
                .expect("run maze-bench --one-load");
            let printed = String::from_utf8_lossy(&out.stdout);
            let numbers: Vec<f64> = printed.split_whitespace().filter_map(|w| w.parse().ok()).collect();
            <[f64; 3]>::try_from(numbers).unwrap_or_else(|_| {
                eprintln!(
                    "error: maze-bench --one-load printed {printed:?} {:?}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::process::exit(1);
            })
        })
        .collect();
    std::array::from_fn(|i| median(measures.iter().map(|m| m[i]).collect()))
}

fn print_concurrent(sessions: usize, decode: f64, end_to_end: f64, runs: usize) {
    println!("concurrent   {sessions} sessions: decode {decode:.1} tokens/s aggregate, end to end {end_to_end:.1} (median of {runs})");
}

fn load_or_exit(config: &EngineConfig) -> Engine {
    Engine::load(config, None).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1);
    })
}

fn main() {
    let args = Args::parse();
    if !args.suite.is_empty() {
        run_suite(&args);
        return;
    }
    let config = engine_config(&args);
    if args.one_load {
        print_one_load(&config);
        return;
    }
    if let Some(counts) = &args.sessions_only {
        print_sessions_only(&config, &args, counts);
        return;
    }
    let (engine, load) = measure_load(&config, &args);
    if args.load_only {
        print_load(load.fresh_ms, load.again_ms, args.runs);
        return;
    }
    if args.tools_only {
        print_tools(&tools::bench_tools(&engine, args.runs, args.gen_tokens));
        return;
    }
    let report = measure(&engine, &config, load, &args);
    print_report(&report, &args);
    if let Some(path) = &args.write {
        write_doc(path, &model_doc(&report, &args, None));
    }
}

/// Each model of --suite in turn (one engine at a time), each report written as it is done,
/// then the summary of all.
fn run_suite(args: &Args) {
    let mut reports = Vec::new();
    for entry in &args.suite {
        let model_args = Args { model: Some(entry.path.clone()), suite: Vec::new(), ..args.clone() };
        let config = engine_config(&model_args);
        let (engine, load) = measure_load(&config, &model_args);
        let report = measure(&engine, &config, load, &model_args);
        drop(engine);
        print_report(&report, &model_args);
        if let Some(index) = &args.write {
            let path = suite_report_path(index, &entry.name);
            write_doc(&path, &model_doc(&report, args, Some(index)));
        }
        reports.push((entry.name.clone(), report));
    }
    if let Some(index) = &args.write {
        write_doc(index, &index_doc(&reports, args));
    }
}

/// Where a suite writes model NAME's full report: benchmarks/NAME.md beside the summary (the
/// documents' links between each other assume this layout).
fn suite_report_path(index: &str, name: &str) -> String {
    let dir = std::path::Path::new(index).parent().unwrap_or(std::path::Path::new(""));
    dir.join("benchmarks").join(format!("{name}.md")).to_string_lossy().into_owned()
}

/// No retired prefixes: every measured session computes its whole prompt.
fn engine_config(args: &Args) -> EngineConfig {
    EngineConfig {
        model_path: args.model_path().into(),
        threads: args.threads,
        seed: Some(1),
        prefix_cache_bytes: Some(0),
        ..Default::default()
    }
}

/// Prints the load's milliseconds and the resident MiB before and after it.
fn print_one_load(config: &EngineConfig) {
    let rss_before = rss_mib();
    let t = Instant::now();
    let engine = load_or_exit(config);
    println!("{} {rss_before} {}", t.elapsed().as_secs_f64() * 1e3, rss_mib());
    drop(engine);
}

fn print_sessions_only(config: &EngineConfig, args: &Args, counts: &[usize]) {
    let engine = load_or_exit(config);
    let base = base_prompt(&engine);
    for &n in counts {
        let (decode, end_to_end) = bench_concurrent(&engine, &base, args, n);
        print_concurrent(n, decode, end_to_end, args.runs);
    }
}

/// Load times (ms, medians) and resident memory (MiB) around a load in a fresh process.
struct LoadNumbers {
    fresh_ms: f64,
    again_ms: f64,
    rss_before: f64,
    rss_loaded: f64,
}

/// The first load warms the page cache; the median of the rest is reported, and the median of
/// as many fresh processes. Returns the last engine loaded.
fn measure_load(config: &EngineConfig, args: &Args) -> (Engine, LoadNumbers) {
    let mut loads = Vec::new();
    let mut engine = None;
    for _ in 0..=args.runs {
        let t = Instant::now();
        let e = load_or_exit(config);
        loads.push(t.elapsed().as_secs_f64() * 1e3);
        engine = Some(e);
    }
    loads.remove(0);
    let [fresh_ms, rss_before, rss_loaded] = fresh_process_load(args);
    let load = LoadNumbers { fresh_ms, again_ms: median(loads), rss_before, rss_loaded };
    (engine.expect("loaded"), load)
}

/// Single-stream medians: prefill tokens/s per prompt length, decode tokens/s, generated tokens.
struct SingleStream {
    prefill: Vec<(usize, f64)>,
    decode: f64,
    generated: f64,
}

/// Prefill tokens/s (median) of a fresh session computing `prompt`, like llama-bench's pp test.
fn bench_prefill(engine: &Engine, prompt: &[u32], args: &Args) -> f64 {
    let opts = GenerateOptions { max_tokens: 1, sampling: SamplingParams::greedy(), ..Default::default() };
    let rates = (0..=args.runs)
        .map(|_| {
            let r = engine.new_session().generate(&Prompt::Tokens(prompt.to_vec()), &opts).expect("generate");
            r.stats.prefill_tokens_per_second
        })
        .skip(1) // warm-up
        .collect();
    median(rates)
}

/// Exactly `gen_tokens` generated tokens after a `prompt_tokens` prompt, like llama-bench's tg
/// test: (decode tokens/s, generated tokens), medians.
fn bench_decode(engine: &Engine, prompt: &[u32], args: &Args) -> (f64, f64) {
    let sampling = SamplingParams { temperature: 0.7, seed: Some(1), ..Default::default() };
    let opts =
        GenerateOptions { max_tokens: args.gen_tokens, sampling, ignore_eos: true, ..Default::default() };
    let mut decode = Vec::new();
    let mut generated = Vec::new();
    for run in 0..=args.runs {
        let session = engine.new_session(); // fresh KV cache: nothing reused
        let r = session.generate(&Prompt::Tokens(prompt.to_vec()), &opts).expect("generate");
        if run == 0 {
            continue; // warm-up
        }
        decode.push(r.stats.decode_tokens_per_second);
        generated.push(r.stats.generated_tokens as f64);
    }
    (median(decode), median(generated))
}

/// The prefill measure at every --prefill-tokens length, then the decode measure.
fn bench_single_stream(engine: &Engine, base: &[u32], args: &Args) -> SingleStream {
    let prompt_of = |n: usize| -> Vec<u32> { base.iter().cycle().take(n).copied().collect() };
    let prefill =
        args.prefill_tokens.iter().map(|&n| (n, bench_prefill(engine, &prompt_of(n), args))).collect();
    let (decode, generated) = bench_decode(engine, &prompt_of(args.prompt_tokens), args);
    SingleStream { prefill, decode, generated }
}

/// Everything a full run measures.
struct Report {
    model_name: String,
    architecture: String,
    vocab_size: usize,
    /// The model file's size in MiB.
    file_mib: f64,
    cpu: String,
    compute: String,
    load: LoadNumbers,
    single: SingleStream,
    rss_after_runs: f64,
    /// (sessions, aggregate decode tokens/s, end-to-end tokens/s).
    concurrent: Vec<(usize, f64, f64)>,
    /// Tokens of the shared-prefix measure's opening.
    opening_len: usize,
    /// Prompt tokens of the decode, constraint and schema first-token measures.
    prompt_tokens: usize,
    ttft_cold: f64,
    ttft_shared: f64,
    constrained: ConstraintNumbers,
    /// The same schema without string length bounds or pattern.
    unbounded: ConstraintNumbers,
    schema_first_token: SchemaFirstToken,
    tools: tools::ToolNumbers,
    /// llama.cpp's numbers, when asked for.
    llama: Option<Result<LlamaNumbers, String>>,
}

fn measure(engine: &Engine, config: &EngineConfig, load: LoadNumbers, args: &Args) -> Report {
    let base = base_prompt(engine);
    let prompt: Vec<u32> = base.iter().cycle().take(args.prompt_tokens).copied().collect();
    let single = bench_single_stream(engine, &base, args);
    let rss_after_runs = rss_mib();
    let concurrent = [1, 4, 8]
        .into_iter()
        .map(|n| {
            let (decode, end_to_end) = bench_concurrent(engine, &base, args, n);
            (n, decode, end_to_end)
        })
        .collect();
    let opening: Vec<u32> = base.iter().cycle().take(4 * args.prompt_tokens).copied().collect();
    let (ttft_cold, ttft_shared) = bench_shared_prefix(engine, &opening, args);
    let constrained = bench_constraints(engine, &prompt, args, catalog_schema(true));
    let unbounded = bench_constraints(engine, &prompt, args, catalog_schema(false));
    let schema_first_token = bench_schema_first_token(engine, config, &prompt, args, catalog_schema(true));
    let tools = tools::bench_tools(engine, args.runs, args.gen_tokens);
    let llama = args.llama_bench.as_ref().map(|p| llama_cpp(p, args));
    let file_bytes = std::fs::metadata(args.model_path()).map(|m| m.len()).unwrap_or(0);
    Report {
        model_name: file_name(args.model_path()),
        architecture: engine.info().architecture.clone(),
        vocab_size: engine.info().vocab_size,
        file_mib: file_bytes as f64 / (1024.0 * 1024.0),
        cpu: cpu_name(),
        compute: engine.info().compute.clone(),
        load,
        single,
        rss_after_runs,
        concurrent,
        opening_len: opening.len(),
        prompt_tokens: args.prompt_tokens,
        ttft_cold,
        ttft_shared,
        constrained,
        unbounded,
        schema_first_token,
        tools,
        llama,
    }
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn file_name(path: &str) -> String {
    std::path::Path::new(path).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Maze / llama.cpp, rendered as "1.23×" (two decimals), or "" without a llama.cpp figure.
fn ratio(ours: f64, theirs: Option<f64>) -> String {
    theirs.map(|t| format!("{:.2}×", ours / t)).unwrap_or_default()
}

/// llama.cpp's figures of a run, where it was measured: (prefill per length, decode).
fn llama_figures(r: &Report) -> Option<&LlamaNumbers> {
    r.llama.as_ref().and_then(|l| l.as_ref().ok())
}

fn llama_prefill(r: &Report, prompt_tokens: usize) -> Option<f64> {
    llama_figures(r)?.prefill.iter().find(|(n, _)| *n == prompt_tokens).map(|(_, rate)| *rate)
}

fn print_report(r: &Report, args: &Args) {
    let (tg, gen) = (r.single.decode, r.single.generated);
    let (cn, unbounded, ttft) = (&r.constrained, &r.unbounded, &r.schema_first_token);
    println!("model        {}", r.model_name);
    print_load(r.load.fresh_ms, r.load.again_ms, args.runs);
    for &(n, pp) in &r.single.prefill {
        println!("prefill      {pp:.1} tokens/s ({n} prompt tokens, median of {})", args.runs);
    }
    println!("decode       {tg:.1} tokens/s ({gen:.0} generated tokens, median of {})", args.runs);
    println!(
        "memory       RSS {:.0} MiB before load, {:.0} MiB after it (a fresh process; {:.0} MiB file), {:.0} MiB in this process after the runs",
        r.load.rss_before, r.load.rss_loaded, r.file_mib, r.rss_after_runs
    );
    for (n, decode, end_to_end) in &r.concurrent {
        print_concurrent(*n, *decode, *end_to_end, args.runs);
    }
    println!("shared       {}-token opening: first token after {:.1} ms computed, {:.1} ms copied from a live session", r.opening_len, r.ttft_cold, r.ttft_shared);
    println!("compute      {}", r.compute);
    println!("constraint   first compile {:.0} ms (builds the token trie), cold compile {:.0} µs, cache hit p50 {:.2} µs / p99 {:.2} µs", cn.first_compile_ms, cn.cold_us, cn.hit_p50_us, cn.hit_p99_us);
    println!(
        "mask         mean {:.1} µs, p50 {:.1} µs, p99 {:.1} µs per sampled token (replayed, warm caches)",
        cn.replay_mean_us, cn.replay_p50_us, cn.replay_p99_us
    );
    println!(
        "mask in loop mean {:.1} µs, p50 {:.1} µs, p99 {:.1} µs wall (overlapping the forward pass)",
        cn.mask_mean_us, cn.mask_p50_us, cn.mask_p99_us
    );
    println!(
        "constrained  {:.1} tokens/s ({:.0} generated, {:.0} forced) = {:.2}x unconstrained",
        cn.decode,
        cn.generated,
        cn.forced,
        cn.decode / tg
    );
    println!("unbounded    mask mean {:.1} µs replayed, {:.1} µs in loop (same schema without string length bounds)", unbounded.replay_mean_us, unbounded.mask_mean_us);
    println!(
        "schema ttft  {:.1} ms on a fresh engine, {:.1} ms on a warm one (compile included), {:.1} ms without a schema",
        ttft.fresh_ms, ttft.warm_ms, ttft.free_ms
    );
    print_tools(&r.tools);
    match &r.llama {
        Some(Ok(l)) => {
            let prefill: Vec<String> = l
                .prefill
                .iter()
                .map(|&(n, lpp)| format!("pp{n} {lpp:.1} ({})", ratio(r.prefill_at(n), Some(lpp))))
                .collect();
            println!(
                "llama.cpp    {}, tg{} {:.1} ({}) tokens/s (Maze / llama.cpp in brackets)",
                prefill.join(", "),
                args.gen_tokens,
                l.decode,
                ratio(tg, Some(l.decode))
            );
        }
        Some(Err(e)) => println!("llama.cpp    not measured: {e}"),
        None => println!("llama.cpp    not measured (pass --llama-bench PATH; make bench builds it)"),
    }
}

fn print_tools(t: &tools::ToolNumbers) {
    println!(
        "tools        {} declared, auto: free text {:.1} tokens/s vs {:.1} without tools ({:+.1}% slower; {:.0} generated; {} of {} replies called a tool), grammar compile {:.0} ms, mask mean {:.1} µs / p99 {:.1} µs replayed",
        t.tools, t.with_tools, t.without, t.slowdown_percent(), t.generated, t.calling_runs, t.runs, t.compile_ms, t.replay_mean_us, t.replay_p99_us
    );
}

/// The tools row of a report: free text with 10 tools declared against none.
fn doc_tools(r: &Report) -> String {
    let t = &r.tools;
    format!(
        "## Tools

         {n} tools declared (tool_choice auto, the generic format's grammar: a lazily triggered call beside free          text), a {g:.0}-token story, against the same prompt tokens with no tools.

         | measure | value | target |
|---|---|---|
         | free text decode with tools / without | {w:.1} / {o:.1} tokens/s ({s:+.1}% slower; {k} of {r} replies called a tool instead, which makes the pair no free-text measure) | ≤ 5% slower (issue 21) |
         | tool grammar compile (cache cleared) | {c:.0} ms | |
         | tool grammar mask per sampled token, replayed: mean / p99 | {m:.1} / {p:.1} µs | |
",
        n = t.tools,
        g = t.generated,
        w = t.with_tools,
        o = t.without,
        s = t.slowdown_percent(),
        k = t.calling_runs,
        r = t.runs,
        c = t.compile_ms,
        m = t.replay_mean_us,
        p = t.replay_p99_us,
    )
}

impl Report {
    /// Maze's prefill tokens/s at a measured prompt length.
    fn prefill_at(&self, prompt_tokens: usize) -> f64 {
        self.single.prefill.iter().find(|(n, _)| *n == prompt_tokens).map(|(_, rate)| *rate).unwrap_or(0.0)
    }

    /// Constrained decode tokens/s over unconstrained.
    fn constrained_ratio(&self) -> f64 {
        self.constrained.decode / self.single.decode
    }

    /// The 8-session aggregate decode tokens/s and its multiple of one session's.
    fn eight_sessions(&self) -> Option<(f64, f64)> {
        let one = self.concurrent.iter().find(|c| c.0 == 1)?.1;
        let eight = self.concurrent.iter().find(|c| c.0 == 8)?.1;
        Some((eight, eight / one))
    }
}

/// The line that marks the hand-written end of a generated document; make bench keeps what
/// follows it when it writes the document again.
const KEPT_MARKER: &str = "<!-- Written by hand: make bench keeps everything below this line. -->";

/// What follows KEPT_MARKER in the file at `path` (marker included), or "" without one.
fn kept_tail(path: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.find(KEPT_MARKER).map(|at| format!("\n{}", &text[at..])).unwrap_or_default()
}

/// Writes `generated` to `path`, followed by the hand-written part the file already had.
fn write_doc(path: &str, generated: &str) {
    let text = format!("{generated}{}", kept_tail(path));
    let dir = std::path::Path::new(path).parent().filter(|d| !d.as_os_str().is_empty());
    dir.map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(path, text)).unwrap_or_else(
        |e| {
            eprintln!("error: cannot write {path}: {e}");
            std::process::exit(1);
        },
    );
    println!("wrote {path}");
}

/// The maze-bench command that made a document, with file names rather than local paths.
fn command_line(args: &Args) -> String {
    let models = match &args.model {
        Some(model) => format!("--model {}", file_name(model)),
        None => {
            let entries: Vec<String> =
                args.suite.iter().map(|e| format!("{}={}", e.name, file_name(&e.path))).collect();
            format!("--suite {}", entries.join(","))
        }
    };
    let prefill: Vec<String> = args.prefill_tokens.iter().map(|p| p.to_string()).collect();
    let mut cmd = format!(
        "maze-bench {models} --runs {} --threads {} --prefill-tokens {} --prompt-tokens {} --gen-tokens {}",
        args.runs,
        args.threads,
        prefill.join(","),
        args.prompt_tokens,
        args.gen_tokens
    );
    if args.llama_bench.is_some() {
        cmd.push_str(" --llama-bench llama-bench");
    }
    if let Some(path) = &args.write {
        cmd.push_str(&format!(" --write {path}"));
    }
    cmd
}

/// How `make bench` makes the documents, above the command it ran.
const MADE_BY: &str =
    "Produced by `make bench` (`BENCH_RUNS=N` sets the runs, `BENCH_MODELS=\"smollm2 gemma3\"` \
    restricts the models), which fetches the default model, builds llama.cpp's `llama-bench` from the \
    llama-cpp-python sdist (scripts/build-llama-bench.sh) and runs, over every model in the cache,";

/// One model's full report: the command, the machine, then one section per measure. `index`:
/// the suite's summary, which this report's intro links back to.
fn model_doc(r: &Report, args: &Args, index: Option<&str>) -> String {
    [
        doc_intro(r, args, index),
        doc_single_stream(r, args),
        doc_load(r, args),
        doc_concurrency(r, args),
        doc_shared_prefix(r),
        doc_constraints(r),
        doc_tools(r),
    ]
    .concat()
}

fn doc_intro(r: &Report, args: &Args, index: Option<&str>) -> String {
    let cmd = command_line(args);
    let (name, cpu, threads, compute, runs) = (&r.model_name, &r.cpu, args.threads, &r.compute, args.runs);
    // A suite's report says how make bench made it and links to the summary of every model.
    let (made_by, summary) = match index {
        Some(index) => (MADE_BY, format!(" [{0}](../{0}) summarises every model.", file_name(index))),
        None => ("Produced by", String::new()),
    };
    format!(
        "# Benchmarks: {name}\n\n{made_by}\n\n```\n{cmd}\n```\n\n\
         This is {name}'s full report ({arch}, {vocab}-token vocabulary).{summary}\n\n\
         Machine: {cpu}, {threads} threads. Compute path: {compute}. Medians of {runs} runs after one \
         warm-up run; each run uses a fresh session (no KV reuse).\n\n",
        arch = r.architecture,
        vocab = r.vocab_size,
    )
}

/// The speed rows of a model's tables: prefill at each length and decode, Maze beside llama.cpp.
fn speed_rows(r: &Report, args: &Args) -> String {
    let llama_cell = |v: Option<f64>| match (&r.llama, v) {
        (_, Some(v)) => format!("{v:.1}"),
        (Some(Err(e)), None) => format!("not measured: {e}"),
        (None, None) => "not measured in this run".to_string(),
        (Some(Ok(_)), None) => String::new(),
    };
    let mut rows: String = r
        .single
        .prefill
        .iter()
        .map(|&(n, pp)| {
            let theirs = llama_prefill(r, n);
            format!(
                "| prefill pp{n}, tokens/s | {pp:.1} | {} | {} | ≥ 1.2× |\n",
                llama_cell(theirs),
                ratio(pp, theirs)
            )
        })
        .collect();
    let (tg, theirs) = (r.single.decode, llama_figures(r).map(|l| l.decode));
    rows.push_str(&format!(
        "| decode tg{}, tokens/s | {tg:.1} | {} | {} | ≥ 1.2× |\n",
        args.gen_tokens,
        llama_cell(theirs),
        ratio(tg, theirs)
    ));
    rows
}

const SPEED_HEADER: &str =
    "| measure | Maze | llama.cpp (llama-bench, same run) | Maze / llama.cpp | goal |\n|---|---|---|---|---|\n";

fn doc_single_stream(r: &Report, args: &Args) -> String {
    let (gen, pt, gt) = (r.single.generated, args.prompt_tokens, args.gen_tokens);
    format!(
        "## Single stream\n\n{SPEED_HEADER}{rows}\n\
         Goal (issues 8 and 19): ≥ 1.2× llama.cpp for both, on every model. Prefill = prompt tokens / time from \
         the start of the prompt computation to the first sampled token, one fresh session per run. Decode = \
         (generated tokens − 1) / time after the first token, sampling included, {gen:.0} tokens generated after \
         a {pt}-token prompt. llama-bench measures its own pp and tg{gt} tests.\n\n",
        rows = speed_rows(r, args),
    )
}

/// The memory bound of issue 19: the GGUF file plus 64 MiB.
fn rss_bound_mib(r: &Report) -> f64 {
    r.file_mib + 64.0
}

fn doc_load(r: &Report, args: &Args) -> String {
    let LoadNumbers { fresh_ms: fresh_load_ms, again_ms: load_ms, rss_before, rss_loaded } = r.load;
    let rss_after_runs = r.rss_after_runs;
    format!(
        "## Load and memory\n\n\
         | measure | value |\n|---|---|\n\
         | load (`Engine::load`, file in the page cache), first in a fresh process | {fresh_load_ms:.0} ms |\n\
         | load again in the same process | {load_ms:.0} ms |\n\
         | resident memory of a fresh process before loading | {rss_before:.0} MiB |\n\
         | resident memory of that process after loading (goal, issue 19: ≤ the GGUF file, {file:.0} MiB, + 64 MiB = {bound:.0} MiB) | {rss_loaded:.0} MiB |\n\
         | resident memory of the benchmark process after the single-stream runs (earlier models of the run included; the engine was loaded {loads} times for the load timing and {sessions} sessions came and went; the allocator keeps some freed memory) | {rss_after_runs:.0} MiB |\n\n",
        file = r.file_mib,
        bound = rss_bound_mib(r),
        loads = args.runs + 1,
        sessions = (args.runs + 1) * (args.prefill_tokens.len() + 1),
    )
}

fn doc_concurrency(r: &Report, args: &Args) -> String {
    let gt = args.gen_tokens;
    let single = r.concurrent.first().map(|c| c.1).unwrap_or(0.0);
    let concurrency_rows: String = r
        .concurrent
        .iter()
        .map(|(n, decode, end_to_end)| {
            format!("| {n} | {decode:.1} | {:.2}× | {end_to_end:.1} |\n", decode / single.max(1e-9))
        })
        .collect();
    format!(
        "## Concurrent sessions\n\n\
         Several sessions on one engine, each generating exactly {gt} tokens (`ignore_eos`) from its own \
         32-token prompt (none copies another's prefix); the model worker batches every active session into \
         one forward pass per step. Aggregate decode = tokens after each session's first / time from the \
         moment every session has its first token (all prompts computed) to the last token. End to end = \
         all generated tokens / time from the first request to the last result (prefill included).\n\n\
         | sessions | aggregate decode tokens/s | vs 1 session | end to end tokens/s |\n|---|---|---|---|\n{concurrency_rows}\n\
         Target (issue 8): 8 sessions ≥ 3× the single-session aggregate.\n\n"
    )
}

fn doc_shared_prefix(r: &Report) -> String {
    let (ttft_cold, ttft_shared) = (r.ttft_cold, r.ttft_shared);
    format!(
        "## Shared prompt prefix\n\n\
         A second session whose {ol}-token prompt opens like a live session's copies those keys and values \
         instead of computing them (prefix cache).\n\n\
         | | time to first token |\n|---|---|\n\
         | prompt computed | {ttft_cold:.1} ms |\n\
         | same opening, copied | {ttft_shared:.1} ms |\n\n",
        ol = r.opening_len + 1,
    )
}

/// The schema first-token times, fresh engine / warm engine / no schema.
fn first_token_cell(t: &SchemaFirstToken) -> String {
    format!("{:.1} / {:.1} / {:.1} ms", t.fresh_ms, t.warm_ms, t.free_ms)
}

/// The constrained/free decode goal: issue 19's for the 152k and 262k vocabularies, issue 8's
/// for the default model's 49k one.
fn constrained_goal(r: &Report) -> &'static str {
    if r.vocab_size > 100_000 {
        "≥ 0.95× (issue 19)"
    } else {
        "≥ 0.98× (issue 8)"
    }
}

fn doc_constraints(r: &Report) -> String {
    let (cn, unbounded, ttft) = (&r.constrained, &r.unbounded, &r.schema_first_token);
    format!(
        "## Constraints\n\n\
         Schema: an array of exactly 40 product objects (pattern, maxLength, number bounds, enum array), long \
         enough that every run reaches max_tokens like the unconstrained one.\n\n\
         | measure | value | target |\n|---|---|---|\n\
         | first compile on an engine (builds token trie + parser factory) | {fc:.0} ms | |\n\
         | compile, cold (cache cleared; median of 20) | {cold:.0} µs | |\n\
         | compile, cache hit (p50 / p99 of 2000) | {hp50:.2} / {hp99:.2} µs | ≤ 5 µs |\n\
         | mask per sampled token, replayed back to back (warm CPU caches): mean / p50 / p99 | {rm:.1} / {rp50:.1} / {rp99:.1} µs | mean ≤ 50 µs |\n\
         | mask per token in the decode loop (wall time while overlapping the forward pass): mean / p50 / p99 | {mm:.1} / {mp50:.1} / {mp99:.1} µs | |\n\
         | the same schema without string length bounds or pattern: mask mean, replayed / in the loop | {um:.1} / {uml:.1} µs | |\n\
         | decode, constrained | {cd:.1} tokens/s ({cg:.0} tokens, {cf:.0} of them forced) | |\n\
         | constrained / unconstrained decode | {ratio:.2}× | {goal} |\n\
         | time to the first token with the schema ({pt}-token prompt, compile included): first request on a fresh engine / first with this schema on a warm engine / without a schema | {ttft} | |\n\n\
         The mask for the next token is computed while the forward pass runs (rayon::join), so it costs \
         decode time only where it outlasts the forward pass. Its own cost depends on the schema: inside a \
         string with a length bound (maxLength, or a pattern) llguidance 1.9.1 cannot use its precomputed \
         token-set slices and walks the whole {vocab}-token trie; elsewhere a mask takes a few µs (compare the \
         unbounded schema's row). In the loop each mask also starts with CPU caches the forward pass has just \
         evicted. The mean therefore moves with what the model writes. Forced tokens (keys, punctuation the \
         schema dictates) are appended without sampling and computed in one forward call. On a fresh engine \
         the first constrained request also builds the token trie and parser factory.\n",
        fc = cn.first_compile_ms,
        cold = cn.cold_us,
        hp50 = cn.hit_p50_us,
        hp99 = cn.hit_p99_us,
        rm = cn.replay_mean_us,
        rp50 = cn.replay_p50_us,
        rp99 = cn.replay_p99_us,
        mm = cn.mask_mean_us,
        mp50 = cn.mask_p50_us,
        mp99 = cn.mask_p99_us,
        um = unbounded.replay_mean_us,
        uml = unbounded.mask_mean_us,
        cd = cn.decode,
        cg = cn.generated,
        cf = cn.forced,
        ratio = r.constrained_ratio(),
        goal = constrained_goal(r),
        pt = r.prompt_tokens,
        ttft = first_token_cell(ttft),
        vocab = r.vocab_size,
    )
}

/// docs/BENCHMARKS.md: the command, the machine, then one summary table per model linking to
/// its full report.
fn index_doc(reports: &[(String, Report)], args: &Args) -> String {
    let machine = reports.first().map(|(_, r)| r.cpu.as_str()).unwrap_or("unknown CPU");
    let tables: String =
        reports.iter().map(|(name, r)| index_table(r, args, &format!("benchmarks/{name}.md"))).collect();
    format!(
        "# Benchmarks\n\n{MADE_BY}\n\n```\n{cmd}\n```\n\n\
         Machine: {machine}, {threads} threads. Medians of {runs} runs after one warm-up run. Goals (issue 19): \
         on every model prefill and decode ≥ 1.2× llama.cpp and resident memory after loading ≤ the GGUF file \
         + 64 MiB; for the 152k and 262k vocabularies constrained/free decode ≥ 0.95×. Each model's full report \
         (load, concurrency, shared prefix, constraint details, how each figure is measured) is linked from its \
         table.\n\n{tables}",
        cmd = command_line(args),
        threads = args.threads,
        runs = args.runs,
    )
}

fn index_table(r: &Report, args: &Args, link: &str) -> String {
    let (cn, ttft) = (&r.constrained, &r.schema_first_token);
    let eight = r
        .eight_sessions()
        .map(|(agg, x)| format!("{agg:.1} ({x:.2}× one session)"))
        .unwrap_or_else(|| "not measured".into());
    format!(
        "## {name}\n\n{arch}, {vocab}-token vocabulary; compute path {compute}. [Full report]({link}).\n\n\
         {SPEED_HEADER}{speed}\
         | 8 sessions, aggregate decode tokens/s | {eight} | | | |\n\
         | resident memory after loading | {rss:.0} MiB | | | ≤ {file:.0} + 64 = {bound:.0} MiB |\n\
         | constraint mask, mean in the decode loop / replayed | {mm:.1} / {rm:.1} µs | | | |\n\
         | constrained / free decode | {cr:.2}× | | | {goal} |\n\
         | free text with 10 tools declared (auto) / without | {tr:.2}× | | | ≥ 0.95× (issue 21) |\n\
         | first token with a schema: fresh engine / warm engine / no schema | {ttft} | | | |\n\n",
        name = r.model_name,
        arch = r.architecture,
        vocab = r.vocab_size,
        compute = r.compute,
        speed = speed_rows(r, args),
        rss = r.load.rss_loaded,
        file = r.file_mib,
        bound = rss_bound_mib(r),
        mm = cn.mask_mean_us,
        rm = cn.replay_mean_us,
        cr = r.constrained_ratio(),
        goal = constrained_goal(r),
        tr = r.tools.with_tools / r.tools.without,
        ttft = first_token_cell(ttft),
    )
}
