//! Benchmarks the engine on a model: load time, prefill and decode speed (medians of several
//! runs), and optionally writes docs/BENCHMARKS.md.
//!
//!   maze-bench --model MODEL.gguf [--runs N] [--threads T] [--prompt-tokens P] [--gen-tokens G] [--write FILE]

use std::time::Instant;

use maze::{Engine, EngineConfig, GenerateOptions, Prompt, SamplingParams};

struct Args {
    model: String,
    runs: usize,
    threads: usize,
    prompt_tokens: usize,
    gen_tokens: usize,
    write: Option<String>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args { model: String::new(), runs: 5, threads: 2, prompt_tokens: 128, gen_tokens: 128, write: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => a.model = value()?,
            "--runs" => a.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--threads" => a.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--prompt-tokens" => a.prompt_tokens = value()?.parse().map_err(|e| format!("--prompt-tokens: {e}"))?,
            "--gen-tokens" => a.gen_tokens = value()?.parse().map_err(|e| format!("--gen-tokens: {e}"))?,
            "--write" => a.write = Some(value()?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.model.is_empty() {
        return Err("--model is required".into());
    }
    Ok(a)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn main() {
    let args = parse().unwrap_or_else(|e| {
        eprintln!("error: {e}\nusage: maze-bench --model MODEL.gguf [--runs N] [--threads T] [--prompt-tokens P] [--gen-tokens G] [--write FILE]");
        std::process::exit(2);
    });
    let config = EngineConfig { model_path: args.model.clone().into(), threads: args.threads, seed: Some(1), ..Default::default() };

    // Load time: first load warms the page cache; the median of the rest is reported.
    let mut loads = Vec::new();
    let mut engine = None;
    for _ in 0..=args.runs {
        let t = Instant::now();
        let e = Engine::load(&config, None).unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(1);
        });
        loads.push(t.elapsed().as_secs_f64() * 1e3);
        engine = Some(e);
    }
    loads.remove(0);
    let engine = engine.expect("loaded");

    // A prompt of exactly `prompt_tokens` tokens and up to `gen_tokens` generated tokens (an end
    // token can stop a run early: the median generated count is reported beside the speed).
    let base = engine.tokenizer().encode("The history of computing is long and full of remarkable people. ", false, false).expect("tokenize");
    let prompt: Vec<u32> = base.iter().cycle().take(args.prompt_tokens).copied().collect();
    let opts = GenerateOptions { max_tokens: args.gen_tokens, sampling: SamplingParams { temperature: 0.7, seed: Some(1), ..Default::default() }, ..Default::default() };
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    let mut generated = Vec::new();
    for run in 0..=args.runs {
        let session = engine.new_session(); // fresh KV cache: nothing reused
        let r = session.generate(&Prompt::Tokens(prompt.clone()), &opts).expect("generate");
        if run == 0 {
            continue; // warm-up
        }
        prefill.push(r.stats.prefill_tokens_per_second);
        decode.push(r.stats.decode_tokens_per_second);
        generated.push(r.stats.generated_tokens as f64);
    }
    let (load_ms, pp, tg, gen) = (median(loads), median(prefill), median(decode), median(generated));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let model_name = std::path::Path::new(&args.model).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    println!("model        {model_name}");
    println!("load         {load_ms:.0} ms (median of {}, page cache warm)", args.runs);
    println!("prefill      {pp:.1} tokens/s ({} prompt tokens, median of {})", args.prompt_tokens, args.runs);
    println!("decode       {tg:.1} tokens/s ({gen:.0} generated tokens, median of {})", args.runs);

    if let Some(path) = args.write {
        let cmd = format!(
            "cargo run --release --bin maze-bench -- --model {model_name} --runs {} --threads {} --prompt-tokens {} --gen-tokens {} --write {path}",
            args.runs, args.threads, args.prompt_tokens, args.gen_tokens
        );
        let doc = format!(
            "# Benchmarks\n\n\
             Produced by `make bench`, i.e.\n\n```\n{cmd}\n```\n\n\
             Machine: {cpu}, {threads} threads, CPU backend. Medians of {runs} runs after one warm-up run; \
             each run uses a fresh session (no KV reuse).\n\n\
             | model | load (ms) | prefill tokens/s (pp{pt}) | decode tokens/s (tg{gt}) |\n\
             |---|---|---|---|\n\
             | {model_name} | {load_ms:.0} | {pp:.1} | {tg:.1} |\n\n\
             Definitions: load = `Engine::load` with the file in the page cache (tokenizer, chat template and \
             weights). Prefill = prompt tokens / time from the start of the prompt computation to the first \
             sampled token. Decode = (generated tokens − 1) / time after the first token; sampling included.\n\n\
             For scale (from issue 8, llama.cpp `llama-bench -t 2` on the same kind of machine and file; not \
             measured by this command): llama.cpp decodes ≈126 tokens/s and prefills ≈318 tokens/s. This engine \
             still runs candle 0.11's quantized CPU kernels, whose Q4_1 path is scalar; own SIMD kernels are \
             issue 8.\n",
            threads = args.threads,
            runs = args.runs,
            pt = args.prompt_tokens,
            gt = args.gen_tokens,
        );
        std::fs::write(&path, doc).unwrap_or_else(|e| {
            eprintln!("error: cannot write {path}: {e}");
            std::process::exit(1);
        });
        println!("wrote {path}");
    }
}
