//! Benchmarks the engine on a model: load time, memory, prefill and decode speed, aggregate
//! speed of concurrent sessions, constraint costs (medians of several runs); with
//! `--llama-bench` also llama.cpp's llama-bench on the same file in the same run. Optionally
//! writes docs/BENCHMARKS.md. `maze-bench --help` lists the flags.
//!
//!   maze-bench --model MODEL.gguf --sessions-only 1,8   (only the concurrent measure, for profiling)
//!   maze-bench --model MODEL.gguf --load-only           (only the load times, for profiling)

use std::num::ParseIntError;
use std::time::Instant;

use clap::Parser;
use maze::{Constraint, Engine, EngineConfig, GenerateOptions, Prompt, SamplingParams};
use serde_json::json;

/// Benchmarks Maze on a GGUF model (load, memory, prefill, decode, concurrent sessions,
/// constraints), optionally beside llama.cpp's llama-bench, and can write docs/BENCHMARKS.md.
#[derive(Parser)]
#[command(name = "maze-bench", version)]
struct Args {
    /// The GGUF model file.
    #[arg(long, env = "MAZE_MODEL", value_name = "MODEL.gguf")]
    model: String,
    /// Measured runs of each measure, after one warm-up run; medians are reported.
    #[arg(long, value_name = "N", default_value_t = 5)]
    runs: usize,
    /// Compute threads (llama-bench gets as many).
    #[arg(long, value_name = "T", default_value_t = 2)]
    threads: usize,
    /// Prompt length of the prefill measure.
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
    /// Load once, print the milliseconds and exit (how the fresh-process measure runs itself).
    #[arg(long, hide = true)]
    one_load: bool,
}

/// One entry of `--sessions-only`, spaces around it allowed.
fn session_count(s: &str) -> Result<usize, ParseIntError> {
    s.trim().parse()
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

/// llama.cpp's llama-bench on the same model, threads and sizes: (prefill, decode) tokens/s,
/// medians of its samples.
fn llama_cpp(path: &str, args: &Args) -> Result<(f64, f64), String> {
    let out = std::process::Command::new(path)
        .args([
            "-m",
            &args.model,
            "-t",
            &args.threads.to_string(),
            "-p",
            &args.prompt_tokens.to_string(),
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
    let rate = |prefill: bool| -> Result<f64, String> {
        tests
            .iter()
            .find(|t| {
                (t["n_prompt"].as_u64().unwrap_or(0) > 0) == prefill
                    && (t["n_gen"].as_u64().unwrap_or(0) > 0) != prefill
            })
            .and_then(|t| t["samples_ts"].as_array())
            .map(|v| median(v.iter().filter_map(|x| x.as_f64()).collect()))
            .ok_or_else(|| "llama-bench output lacks a result".to_string())
    };
    Ok((rate(true)?, rate(false)?))
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

/// The load time of a fresh process (what an application pays): this program run `runs` times
/// with `--one-load`, median.
fn fresh_process_load(args: &Args) -> f64 {
    let exe = std::env::current_exe().expect("own path");
    let times = (0..args.runs)
        .map(|_| {
            let out = std::process::Command::new(&exe)
                .args(["--model", &args.model, "--threads", &args.threads.to_string(), "--one-load"])
                .output()
                .expect("run maze-bench --one-load");
            String::from_utf8_lossy(&out.stdout).trim().parse::<f64>().unwrap_or_else(|_| {
                eprintln!("error: maze-bench --one-load printed {:?}", String::from_utf8_lossy(&out.stderr));
                std::process::exit(1);
            })
        })
        .collect();
    median(times)
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
    let report = measure(&engine, load, &args);
    print_report(&report, &args);
    if let Some(path) = &args.write {
        write_report(&report, &args, path);
    }
}

/// No retired prefixes: every measured session computes its whole prompt.
fn engine_config(args: &Args) -> EngineConfig {
    EngineConfig {
        model_path: args.model.clone().into(),
        threads: args.threads,
        seed: Some(1),
        prefix_cache_bytes: Some(0),
        ..Default::default()
    }
}

fn print_one_load(config: &EngineConfig) {
    let t = Instant::now();
    let engine = load_or_exit(config);
    println!("{}", t.elapsed().as_secs_f64() * 1e3);
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

/// Load times (ms, medians) and resident memory (MiB) around the first load.
struct LoadNumbers {
    fresh_ms: f64,
    again_ms: f64,
    rss_before: f64,
    rss_loaded: f64,
}

/// The first load warms the page cache; the median of the rest is reported, and the median of
/// as many fresh processes. Returns the last engine loaded.
fn measure_load(config: &EngineConfig, args: &Args) -> (Engine, LoadNumbers) {
    let rss_before = rss_mib();
    let mut rss_loaded = 0.0;
    let mut loads = Vec::new();
    let mut engine = None;
    for _ in 0..=args.runs {
        let t = Instant::now();
        let e = load_or_exit(config);
        loads.push(t.elapsed().as_secs_f64() * 1e3);
        if engine.is_none() {
            rss_loaded = rss_mib();
        }
        engine = Some(e);
    }
    loads.remove(0);
    let fresh_ms = fresh_process_load(args);
    let load = LoadNumbers { fresh_ms, again_ms: median(loads), rss_before, rss_loaded };
    (engine.expect("loaded"), load)
}

/// Single-stream medians: prefill and decode tokens/s, generated tokens.
struct SingleStream {
    prefill: f64,
    decode: f64,
    generated: f64,
}

/// A prompt of exactly `prompt_tokens` tokens and exactly `gen_tokens` generated tokens, like
/// llama-bench's pp and tg tests.
fn bench_single_stream(engine: &Engine, prompt: &[u32], args: &Args) -> SingleStream {
    let sampling = SamplingParams { temperature: 0.7, seed: Some(1), ..Default::default() };
    let opts =
        GenerateOptions { max_tokens: args.gen_tokens, sampling, ignore_eos: true, ..Default::default() };
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    let mut generated = Vec::new();
    for run in 0..=args.runs {
        let session = engine.new_session(); // fresh KV cache: nothing reused
        let r = session.generate(&Prompt::Tokens(prompt.to_vec()), &opts).expect("generate");
        if run == 0 {
            continue; // warm-up
        }
        prefill.push(r.stats.prefill_tokens_per_second);
        decode.push(r.stats.decode_tokens_per_second);
        generated.push(r.stats.generated_tokens as f64);
    }
    SingleStream { prefill: median(prefill), decode: median(decode), generated: median(generated) }
}

/// Everything a full run measures.
struct Report {
    model_name: String,
    cpu: String,
    compute: String,
    load: LoadNumbers,
    single: SingleStream,
    rss_after_runs: f64,
    /// (sessions, aggregate decode tokens/s, end-to-end tokens/s).
    concurrent: Vec<(usize, f64, f64)>,
    /// Tokens of the shared-prefix measure's opening.
    opening_len: usize,
    ttft_cold: f64,
    ttft_shared: f64,
    constrained: ConstraintNumbers,
    /// The same schema without string length bounds or pattern.
    unbounded: ConstraintNumbers,
    /// llama.cpp's (prefill, decode) tokens/s, when asked for.
    llama: Option<Result<(f64, f64), String>>,
}

fn measure(engine: &Engine, load: LoadNumbers, args: &Args) -> Report {
    let base = base_prompt(engine);
    let prompt: Vec<u32> = base.iter().cycle().take(args.prompt_tokens).copied().collect();
    let single = bench_single_stream(engine, &prompt, args);
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
    let llama = args.llama_bench.as_ref().map(|p| llama_cpp(p, args));
    Report {
        model_name: file_name(&args.model),
        cpu: cpu_name(),
        compute: engine.info().compute.clone(),
        load,
        single,
        rss_after_runs,
        concurrent,
        opening_len: opening.len(),
        ttft_cold,
        ttft_shared,
        constrained,
        unbounded,
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

fn print_report(r: &Report, args: &Args) {
    let (pp, tg, gen) = (r.single.prefill, r.single.decode, r.single.generated);
    let (cn, unbounded) = (&r.constrained, &r.unbounded);
    println!("model        {}", r.model_name);
    print_load(r.load.fresh_ms, r.load.again_ms, args.runs);
    println!("prefill      {pp:.1} tokens/s ({} prompt tokens, median of {})", args.prompt_tokens, args.runs);
    println!("decode       {tg:.1} tokens/s ({gen:.0} generated tokens, median of {})", args.runs);
    println!(
        "memory       RSS {:.0} MiB before load, {:.0} MiB after the first load, {:.0} MiB after the runs",
        r.load.rss_before, r.load.rss_loaded, r.rss_after_runs
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
    match &r.llama {
        Some(Ok((lpp, ltg))) => println!(
            "llama.cpp    prefill {lpp:.1} tokens/s, decode {ltg:.1} tokens/s -> Maze {:.2}x / {:.2}x",
            pp / lpp,
            tg / ltg
        ),
        Some(Err(e)) => println!("llama.cpp    not measured: {e}"),
        None => println!("llama.cpp    not measured (pass --llama-bench PATH; make bench builds it)"),
    }
}

fn write_report(r: &Report, args: &Args, path: &str) {
    std::fs::write(path, benchmarks_doc(r, args, path)).unwrap_or_else(|e| {
        eprintln!("error: cannot write {path}: {e}");
        std::process::exit(1);
    });
    println!("wrote {path}");
}

/// docs/BENCHMARKS.md: the command, the machine, then one section per measure.
fn benchmarks_doc(r: &Report, args: &Args, path: &str) -> String {
    [
        doc_intro(r, args, path),
        doc_single_stream(r, args),
        doc_load(r, args),
        doc_concurrency(r, args),
        doc_shared_prefix(r),
        doc_constraints(r),
    ]
    .concat()
}

fn doc_intro(r: &Report, args: &Args, path: &str) -> String {
    let cmd = format!(
        "maze-bench --model {} --runs {} --threads {} --prompt-tokens {} --gen-tokens {} --llama-bench llama-bench --write {path}",
        r.model_name, args.runs, args.threads, args.prompt_tokens, args.gen_tokens
    );
    let (cpu, threads, compute, runs) = (&r.cpu, args.threads, &r.compute, args.runs);
    format!(
        "# Benchmarks\n\n\
         Produced by `make bench`, which fetches the model, builds llama.cpp's `llama-bench` from the \
         llama-cpp-python sdist (scripts/build-llama-bench.sh) and runs\n\n```\n{cmd}\n```\n\n\
         Machine: {cpu}, {threads} threads. Compute path: {compute}. Medians of {runs} runs after one \
         warm-up run; each run uses a fresh session (no KV reuse).\n\n"
    )
}

fn doc_single_stream(r: &Report, args: &Args) -> String {
    let (pp, tg, gen) = (r.single.prefill, r.single.decode, r.single.generated);
    let (pt, gt) = (args.prompt_tokens, args.gen_tokens);
    let llama_rows = match &r.llama {
        Some(Ok((lpp, ltg))) => format!(
            "| llama.cpp (llama-bench, same run) | {lpp:.1} | {ltg:.1} |\n| **Maze / llama.cpp** | **{:.2}×** | **{:.2}×** |\n",
            pp / lpp,
            tg / ltg
        ),
        Some(Err(e)) => format!("| llama.cpp | not measured: {e} | |\n"),
        None => "| llama.cpp | not measured in this run | |\n".to_string(),
    };
    format!(
        "## Single stream\n\n\
         | | prefill tokens/s (pp{pt}) | decode tokens/s (tg{gt}) |\n|---|---|---|\n\
         | Maze | {pp:.1} | {tg:.1} ({gen:.0} tokens generated) |\n{llama_rows}\n\
         Targets (issue 8): ≥ 1.2× llama.cpp for both. Prefill = prompt tokens / time from the start of the \
         prompt computation to the first sampled token. Decode = (generated tokens − 1) / time after the first \
         token, sampling included. llama-bench measures its own pp{pt} and tg{gt} tests.\n\n"
    )
}

fn doc_load(r: &Report, args: &Args) -> String {
    let LoadNumbers { fresh_ms: fresh_load_ms, again_ms: load_ms, rss_before, rss_loaded } = r.load;
    let rss_after_runs = r.rss_after_runs;
    format!(
        "## Load and memory\n\n\
         | measure | value |\n|---|---|\n\
         | load (`Engine::load`, file in the page cache), first in a fresh process | {fresh_load_ms:.0} ms |\n\
         | load again in the same process | {load_ms:.0} ms |\n\
         | resident memory before loading | {rss_before:.0} MiB |\n\
         | resident memory after loading | {rss_loaded:.0} MiB |\n\
         | resident memory after the single-stream runs (the engine was loaded {loads} times for the load timing and {runs1} sessions came and went; the allocator keeps some freed memory) | {rss_after_runs:.0} MiB |\n\n",
        loads = args.runs + 1,
        runs1 = args.runs + 1,
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

fn doc_constraints(r: &Report) -> String {
    let (cn, unbounded) = (&r.constrained, &r.unbounded);
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
         | constrained / unconstrained decode | {ratio:.2}× | ≥ 0.98× |\n\n\
         The mask for the next token is computed while the forward pass runs (rayon::join), so it costs \
         decode time only where it outlasts the forward pass. Its own cost depends on the schema: inside a \
         string with a length bound (maxLength, or a pattern) llguidance 1.9.1 cannot use its precomputed \
         token-set slices and walks the whole 49k-token trie (≈100 µs a token here); elsewhere a mask takes a \
         few µs. In the loop each mask also starts with CPU caches the forward pass has just evicted \
         (flushing 64 MB before each replayed mask adds ≈25–30 µs). The mean therefore moves with what the \
         model writes. Forced tokens (keys, punctuation the schema dictates) are appended without sampling and \
         computed in one forward call.\n",
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
        ratio = cn.decode / r.single.decode,
    )
}
