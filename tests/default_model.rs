//! Integration tests on the real default model (SmolLM2-135M-Instruct Q4_1). `make test`
//! fetches it; MAZE_MODEL points at it (default: the fetch script's cache path).

use std::path::PathBuf;
use std::sync::OnceLock;

use maze::*;

fn model_path() -> PathBuf {
    let path = std::env::var_os("MAZE_MODEL").map(PathBuf::from).unwrap_or_else(|| {
        let dir = std::env::var_os("MAZE_MODEL_DIR").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/maze/models")
        });
        dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    assert!(
        path.is_file(),
        "the default model is missing at {}: run scripts/fetch-model.sh (make test does)",
        path.display()
    );
    path
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        Engine::load(
            &EngineConfig {
                model_path: model_path(),
                threads: 2,
                seed: Some(9),
                context_length: 2048,
                ..Default::default()
            },
            None,
        )
        .expect("default model loads")
    })
}

#[test]
fn model_facts_match_the_file() {
    let info = engine().info();
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.vocab_size, 49152);
    assert_eq!(info.n_layers, 30);
    assert_eq!(info.embedding_length, 576);
    assert_eq!(info.trained_context_length, 8192);
    assert_eq!(info.context_length, 2048);
    let tok = engine().local().unwrap().tokenizer();
    assert_eq!(tok.eos(), Some(2));
    assert_eq!(tok.token_text(2), Some("<|im_end|>"));
    // As llama.cpp's set: <|endoftext|>, <|im_end|> and the fill-in-the-middle <reponame>.
    assert_eq!(tok.token_text(4), Some("<reponame>"));
    assert_eq!(tok.end_of_generation(), &[0, 2, 4], "<|endoftext|>, <|im_end|>, <reponame>");
}

#[test]
fn tokenizer_round_trips_exactly() {
    let tok = engine().local().unwrap().tokenizer();
    let texts = [
        "Hello, world!",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
        "Emoji: 🦀🚀👩‍👩‍👧 and flags 🇫🇷",
        "日本語のテキスト、中文文本，한국어 텍스트",
        "Ünïcödé façade — naïve café «quotes»",
        "code:\n\tfn main() {\n        println!(\"{}\", 1 + 2);\n    }\n",
        "   leading, trailing   \r\n",
        "numbers 3.14159 and 1,000,000",
    ];
    for text in texts {
        for parse_special in [true, false] {
            let ids = tok.encode(text, false, parse_special).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), text, "parse_special={parse_special}");
        }
    }
    // Special tokens are single ids when parsed; plain text otherwise.
    assert_eq!(tok.encode("<|im_start|>", false, true).unwrap(), vec![1]);
    assert_eq!(tok.encode("<|im_end|>", false, true).unwrap(), vec![2]);
    assert!(tok.encode("<|im_start|>", false, false).unwrap().len() > 1);
    // SmolLM's pre-tokenizer splits digits one by one.
    let digits = tok.encode("2024", false, false).unwrap();
    assert_eq!(digits.len(), 4, "{digits:?}");
    // No BOS for this model (add_bos_token = false).
    assert_eq!(tok.encode("Hi", true, true).unwrap(), tok.encode("Hi", false, true).unwrap());
}

#[test]
fn chat_template_is_the_models_own() {
    let text = engine().render_chat(&[ChatMessage::new("user", "Hi")], true).unwrap();
    // SmolLM2's template inserts its default system prompt.
    assert!(text.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"), "{text}");
    assert!(text.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"), "{text}");
    let with_system = engine()
        .render_chat(&[ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hi")], false)
        .unwrap();
    assert_eq!(with_system, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
}

#[test]
fn chat_generation_streams_valid_text_and_stops_by_itself() {
    let session = engine().new_session();
    // Greedy decoding loops on this small model; a low temperature with a mild repetition
    // penalty ends by itself (for every seed tried, 1 to 8), as chat apps run it.
    let sampling =
        SamplingParams { temperature: 0.3, repetition_penalty: 1.1, seed: Some(3), ..Default::default() };
    let opts = GenerateOptions { max_tokens: 200, sampling, ..Default::default() };
    let mut streamed = String::new();
    let mut chunks = 0;
    let r = session
        .generate_streaming(
            &Prompt::Chat(vec![ChatMessage::new("user", "Write a haiku about the sea.")]),
            &opts,
            |t| {
                streamed.push_str(t);
                chunks += 1;
                true
            },
        )
        .unwrap();
    assert_eq!(r.finish_reason, FinishReason::Stop, "{:?}: {}", r.finish_reason, r.text);
    assert_eq!(r.text, streamed);
    assert!(chunks > 5 && r.text.split_whitespace().count() >= 8, "{}", r.text);
    assert_eq!(engine().local().unwrap().tokenizer().decode(&r.tokens).unwrap(), r.text);
    assert!(
        r.stats.decode_tokens_per_second > 1.0 && r.stats.prefill_tokens_per_second > 1.0,
        "{:?}",
        r.stats
    );
}

#[test]
fn same_seed_same_output_on_the_real_model() {
    let opts = GenerateOptions {
        max_tokens: 24,
        sampling: SamplingParams { temperature: 0.9, seed: Some(77), ..Default::default() },
        ..Default::default()
    };
    let prompt = Prompt::Chat(vec![ChatMessage::new("user", "Tell me a fun fact.")]);
    let a = engine().new_session().generate(&prompt, &opts).unwrap();
    let b = engine().new_session().generate(&prompt, &opts).unwrap();
    assert_eq!(a.tokens, b.tokens);
    let other = GenerateOptions {
        sampling: SamplingParams { seed: Some(78), ..opts.sampling.clone() },
        ..opts.clone()
    };
    let c = engine().new_session().generate(&prompt, &other).unwrap();
    assert_ne!(a.tokens, c.tokens);
}

#[test]
fn logprobs_are_the_models_and_greedy_picks_the_most_likely() {
    let opts = GenerateOptions {
        max_tokens: 8,
        sampling: SamplingParams::greedy(),
        logprobs: true,
        ..Default::default()
    };
    let r =
        engine().new_session().generate(&Prompt::Text("The capital of Germany is".into()), &opts).unwrap();
    let lps = r.logprobs.unwrap();
    assert_eq!(lps.len(), r.tokens.len());
    // A greedy pick has the highest probability, so at least 1/vocab; in practice far more.
    assert!(lps.iter().all(|&lp| lp <= 0.0 && lp > (1.0f32 / 49152.0).ln()), "{lps:?}");
}

#[test]
fn the_native_forward_pass_agrees_with_candles_on_the_real_model() {
    let load = |tensor_forward| {
        let path = model_path();
        let opts = maze::model::LoadOptions {
            model_path: &path,
            tokenizer_path: None,
            context_length: 512,
            device: candle_core::Device::Cpu,
            tensor_forward,
        };
        maze::model::load(&opts, &mut |_| true).unwrap().model
    };
    let (native, tensors) = (load(false), load(true));
    assert!(native.info().compute.starts_with("cpu native"), "{}", native.info().compute);
    let prompt = engine()
        .local()
        .unwrap()
        .tokenizer()
        .encode("The capital of France is Paris. The capital of Italy is", false, false)
        .unwrap();
    let c =
        maze::testing::compare_forward(native.as_ref(), tensors.as_ref(), &prompt, &[12, 345, 6789]).unwrap();
    // Same weights and kernels; attention, norms and RoPE differ only in float rounding, which
    // 8-bit activations amplify over 30 layers: computing only the RMS norm's sum in f64
    // instead of f32 moves this model's logits by up to 4% of the largest one. The tiny-model
    // test holds both paths to 1e-4.
    // Where the top two are nearly tied, that noise can swap them, not more.
    assert!(
        c.worst_relative_gap < 0.08 && c.argmax_in_top3 == c.steps && c.same_argmax + 1 >= c.steps,
        "{c:?}"
    );
}

#[test]
fn ignore_eos_generates_past_the_end_token() {
    let prompt = Prompt::Chat(vec![ChatMessage::new("user", "Say hi.")]);
    let greedy = |ignore_eos| GenerateOptions {
        max_tokens: 60,
        sampling: SamplingParams::greedy(),
        ignore_eos,
        ..Default::default()
    };
    let stopped = engine().new_session().generate(&prompt, &greedy(false)).unwrap();
    assert_eq!(stopped.finish_reason, FinishReason::Stop, "{stopped:?}");
    assert!(stopped.tokens.len() < 60);
    let kept_going = engine().new_session().generate(&prompt, &greedy(true)).unwrap();
    assert_eq!(kept_going.finish_reason, FinishReason::Length);
    assert_eq!(kept_going.tokens.len(), 60);
    // The same text up to the end token, which stays in the output, and more after it.
    let n = stopped.tokens.len();
    assert_eq!(kept_going.tokens[..n], stopped.tokens[..]);
    assert!(
        engine().local().unwrap().tokenizer().is_end_of_generation(kept_going.tokens[n]),
        "{:?}",
        kept_going.tokens
    );
}
