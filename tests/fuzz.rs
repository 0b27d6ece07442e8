//! Fuzz targets that run on stable Rust. Each input comes from a seeded ChaCha byte stream that
//! `arbitrary` turns into a structured input (mutations of valid model files, JSON requests,
//! strings), so every failure is reproducible from the seed it prints. `make test` runs a short
//! smoke of each target (fixed seeds 0..N); `make fuzz` runs each for `MAZE_FUZZ_SECONDS` and
//! prints its executions per second. `MAZE_FUZZ_SEED=n` reruns one input.
//!
//! Every target's property: no input panics (a panic the FFI boundary would turn into
//! MAZE_STATUS_PANIC is still a defect), and what is accepted behaves (a loaded model computes,
//! a tokenizer round-trips).

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use maze::model::gguf::GgufFile;
use maze::model::tokenizer::Tokenizer;
use maze::model::{LanguageModel, LoadOptions};
use maze::testing::{TinyLayout, TinyModel};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How long each target runs: `MAZE_FUZZ_SECONDS` (make fuzz), else `smoke` inputs.
enum Budget {
    Inputs(u64),
    Time(Duration),
    One(u64),
}

fn budget(smoke: u64) -> Budget {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    match (var("MAZE_FUZZ_SEED"), var("MAZE_FUZZ_SECONDS")) {
        (Some(seed), _) => Budget::One(seed),
        (None, Some(seconds)) => Budget::Time(Duration::from_secs(seconds)),
        (None, None) => Budget::Inputs(smoke),
    }
}

/// Runs `target` on inputs seeded 0, 1, 2, … (or the one `MAZE_FUZZ_SEED` names), failing on
/// the first that panics with the seed that reproduces it.
fn fuzz(name: &str, smoke: u64, mut target: impl FnMut(&mut Unstructured) -> arbitrary::Result<bool>) {
    let start = Instant::now();
    let budget = budget(smoke);
    let seeds: Box<dyn Iterator<Item = u64>> = match budget {
        Budget::One(seed) => Box::new(std::iter::once(seed)),
        Budget::Inputs(n) => Box::new(0..n),
        Budget::Time(_) => Box::new(0..),
    };
    let (mut executions, mut accepted) = (0u64, 0u64);
    for seed in seeds {
        if let Budget::Time(limit) = budget {
            if start.elapsed() >= limit {
                break;
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut bytes = vec![0u8; rng.random_range(16..8192)];
        rng.fill(&mut bytes[..]);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| target(&mut Unstructured::new(&bytes))));
        match outcome {
            Err(_) => {
                panic!("fuzz target {name}: the input of seed {seed} panicked (rerun: MAZE_FUZZ_SEED={seed})")
            }
            Ok(Ok(true)) => accepted += 1,
            Ok(_) => {}
        }
        executions += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {name}: {executions} executions in {seconds:.1} s ({:.0}/s), {accepted} inputs accepted, no panic",
        executions as f64 / seconds.max(1e-9)
    );
    // A target whose inputs are all refused tests only its first check.
    assert!(accepted > 0 || executions < 10, "fuzz target {name}: no input was accepted");
}

/// A scratch directory of this test process.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("maze-fuzz-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A value a length or count field is likely to break on.
#[derive(Arbitrary, Debug)]
enum Boundary {
    Zero,
    One,
    U32Max,
    U64Max,
    PowerOfTwo(u8),
    Small(u8),
    Any(u64),
}

impl Boundary {
    fn value(&self) -> u64 {
        match self {
            Boundary::Zero => 0,
            Boundary::One => 1,
            Boundary::U32Max => u32::MAX as u64,
            Boundary::U64Max => u64::MAX,
            Boundary::PowerOfTwo(p) => 1u64 << (p % 64),
            Boundary::Small(n) => *n as u64,
            Boundary::Any(n) => *n,
        }
    }
}

/// One edit of a file. Positions are taken modulo the region they aim at: mostly the header,
/// where every count, length and type id lies.
#[derive(Arbitrary, Debug)]
enum Mutation {
    FlipBit { at: u32, bit: u8 },
    SetByte { at: u32, value: u8 },
    SetWord { at: u32, value: Boundary, wide: bool },
    Truncate { at: u32 },
    Insert { at: u32, bytes: Vec<u8> },
    Remove { at: u32, len: u8 },
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation, header_len: usize) {
    if bytes.is_empty() {
        return;
    }
    let place = |at: u32, len: usize| at as usize % len.max(1);
    let region = header_len.min(bytes.len());
    match m {
        Mutation::FlipBit { at, bit } => {
            let i = place(*at, region);
            bytes[i] ^= 1 << (bit % 8);
        }
        Mutation::SetByte { at, value } => {
            let i = place(*at, region);
            bytes[i] = *value;
        }
        Mutation::SetWord { at, value, wide } => {
            let word = value.value().to_le_bytes();
            let n = if *wide { 8 } else { 4 };
            let i = place(*at, region.saturating_sub(n));
            let end = (i + n).min(bytes.len());
            bytes[i..end].copy_from_slice(&word[..end - i]);
        }
        Mutation::Truncate { at } => bytes.truncate(place(*at, bytes.len())),
        Mutation::Insert { at, bytes: extra } => {
            let i = place(*at, region);
            bytes.splice(i..i, extra.iter().copied().take(64));
        }
        Mutation::Remove { at, len } => {
            let i = place(*at, region);
            let end = (i + *len as usize).min(bytes.len());
            bytes.drain(i..end);
        }
    }
}

/// Valid tiny models of several families and layouts: the seeds the mutations start from.
fn model_corpus(dir: &Path) -> Vec<Vec<u8>> {
    let models = [
        TinyModel::default(),
        TinyModel {
            architecture: "qwen2".into(),
            layout: TinyLayout { qkv_bias: true, ..Default::default() },
            ..Default::default()
        },
        TinyModel {
            architecture: "phi3".into(),
            layout: TinyLayout { fused_qkv: true, fused_gate_up: true, ..Default::default() },
            ..Default::default()
        },
        TinyModel { architecture: "gemma3".into(), ..Default::default() },
    ];
    models
        .iter()
        .enumerate()
        .map(|(i, model)| {
            let path = dir.join(format!("seed{i}.gguf"));
            model.write(&path).unwrap();
            std::fs::read(&path).unwrap()
        })
        .collect()
}

/// Where a file's tensor data starts, roughly: the header is what the mutations aim at.
fn header_length(bytes: &[u8]) -> usize {
    // The tensor data of these files starts with the embedding matrix; the header is well
    // under half the file, and under 64 KiB.
    (bytes.len() / 2).min(64 << 10)
}

/// The metadata readers a loader uses, on every key a loader asks for.
fn read_everything(file: &GgufFile) {
    const KEYS: [&str; 10] = [
        "general.architecture",
        "general.alignment",
        "general.name",
        "llama.block_count",
        "llama.embedding_length",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.scores",
        "tokenizer.chat_template",
    ];
    for key in KEYS {
        let _ = (file.str(key), file.u64(key), file.f32(key), file.opt_bool(key));
        let _ = (file.str_refs(key), file.f32_array(key), file.i32_array(key));
    }
    for name in ["token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight"] {
        if let Some((_, dims)) = file.tensor_layout(name) {
            let range = file.tensor_range(name).unwrap();
            assert!(range.end <= file.mapped().len(), "{name} lies inside the file");
            assert_eq!(range.len() as u64, file.tensor_bytes(name));
            let _ = dims;
        }
    }
}

/// A model that loads must compute: a short forward pass, finite or not, without a panic.
fn run_model(model: &dyn LanguageModel) {
    let mut cache = model.new_cache();
    let vocab = model.info().vocab_size.max(1) as u32;
    let _ = model.forward(&[1 % vocab, 7 % vocab, 42 % vocab], cache.as_mut(), &|| false);
}

#[test]
fn fuzz_gguf_files() {
    let dir = scratch("gguf");
    let corpus = model_corpus(&dir);
    let path = dir.join("mutated.gguf");
    fuzz("gguf", 400, |u| {
        let mut bytes = corpus[u.choose_index(corpus.len())?].clone();
        let header_len = header_length(&bytes);
        for _ in 0..u.int_in_range(0..=3)? {
            mutate(&mut bytes, &Mutation::arbitrary(u)?, header_len);
        }
        std::fs::write(&path, &bytes).unwrap();
        let opened = GgufFile::open(&path).map(|file| read_everything(&file)).is_ok();
        // The whole loader on one input in four: config, tokenizer, weights, and a forward pass.
        if u.ratio(1, 4)? {
            let opts = LoadOptions {
                model_path: &path,
                tokenizer_path: None,
                context_length: 64,
                device: candle_core::Device::Cpu,
                tensor_forward: u.arbitrary()?,
            };
            if let Ok(loaded) = maze::model::load(&opts, &mut |_| true) {
                run_model(loaded.model.as_ref());
                let _ = loaded.tokenizer.encode("hello world", true, true);
            }
        }
        Ok(opened)
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Text pieces tokenizers get wrong: runs of spaces and newlines, CJK, emoji, digits, special
/// tokens' text, invalid-looking escapes.
const PIECES: [&str; 16] = [
    " ",
    "  ",
    "\n",
    "\n\n",
    "\t",
    "hello",
    " world",
    "日本語",
    "🦀",
    "👩‍👩‍👧",
    "12345",
    "<|im_end|>",
    "<|im_start|>",
    "\u{0}",
    "é",
    "\r\n",
];

#[derive(Arbitrary, Debug)]
enum Piece {
    Known(u8),
    Raw(String),
}

fn text_of(pieces: &[Piece]) -> String {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Known(i) => PIECES[*i as usize % PIECES.len()].to_string(),
            Piece::Raw(s) => s.clone(),
        })
        .collect()
}

fn tiny_tokenizer(dir: &Path) -> std::sync::Arc<Tokenizer> {
    let path = dir.join("tokenizer.gguf");
    TinyModel::default().write(&path).unwrap();
    let opts = LoadOptions {
        model_path: &path,
        tokenizer_path: None,
        context_length: 0,
        device: candle_core::Device::Cpu,
        tensor_forward: false,
    };
    maze::model::load(&opts, &mut |_| true).unwrap().tokenizer
}

#[test]
fn fuzz_tokenizer_round_trips() {
    let dir = scratch("tokenizer");
    let tokenizer = tiny_tokenizer(&dir);
    fuzz("tokenizer", 3000, |u| {
        let text = text_of(&Vec::<Piece>::arbitrary(u)?);
        // Byte-level BPE: any text, special-token text included when not parsed as special,
        // comes back exactly.
        let ids = tokenizer.encode(&text, false, false).expect("any UTF-8 text encodes");
        assert_eq!(tokenizer.decode(&ids).expect("decodes"), text, "round trip of {text:?}");
        let _ = tokenizer.encode(&text, true, true);
        // Arbitrary ids: an error or text, never a panic.
        let ids: Vec<u32> = Vec::<u16>::arbitrary(u)?.into_iter().map(u32::from).collect();
        let _ = tokenizer.decode(&ids);
        Ok(!text.is_empty())
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Field names of the Maze protocol and the OpenAI API, and some that are neither: a JSON
/// object's keys come from here more often than not.
const KEYS: [&str; 30] = [
    "prompt",
    "messages",
    "tokens",
    "max_tokens",
    "sampling",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "timeout_ms",
    "logprobs",
    "ignore_eos",
    "constraints",
    "stream",
    "kind",
    "schema",
    "regex",
    "lark",
    "role",
    "content",
    "model",
    "response_format",
    "json_schema",
    "type",
    "n",
    "tools",
    "structured_outputs",
    "unknown_field",
];

/// A JSON value of bounded depth whose keys are mostly known field names.
fn json(u: &mut Unstructured, depth: usize) -> arbitrary::Result<serde_json::Value> {
    use serde_json::Value;
    let kind = if depth == 0 { u.int_in_range(0..=4)? } else { u.int_in_range(0..=6)? };
    Ok(match kind {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => match u.int_in_range(0..=2)? {
            0 => Value::from(u.arbitrary::<i64>()?),
            1 => Value::from(u.int_in_range(0..=300)?),
            _ => serde_json::Number::from_f64(u.arbitrary()?).map_or(Value::Null, Value::Number),
        },
        3 => Value::String(match u.ratio(1, 2)? {
            true => KEYS[u.choose_index(KEYS.len())?].to_string(),
            false => u.arbitrary()?,
        }),
        4 => Value::String(PIECES[u.choose_index(PIECES.len())?].to_string()),
        5 => Value::Array((0..u.int_in_range(0..=4)?).map(|_| json(u, depth - 1)).collect::<Result<_, _>>()?),
        _ => json_object(u, depth - 1)?,
    })
}

fn json_object(u: &mut Unstructured, depth: usize) -> arbitrary::Result<serde_json::Value> {
    let mut object = serde_json::Map::new();
    for _ in 0..u.int_in_range(0..=6)? {
        let key = match u.ratio(4, 5)? {
            true => KEYS[u.choose_index(KEYS.len())?].to_string(),
            false => u.arbitrary()?,
        };
        object.insert(key, json(u, depth)?);
    }
    Ok(serde_json::Value::Object(object))
}

#[test]
fn fuzz_request_parsing() {
    use maze::protocol::maze::GenerateRequest;
    use maze::protocol::openai::{ChatRequest, CompletionRequest};
    fuzz("requests", 20_000, |u| {
        let value = json_object(u, 3)?;
        let mut body = serde_json::to_vec(&value).unwrap();
        // Now and then a broken document: cut or with a stray byte.
        if u.ratio(1, 8)? {
            let at = u.choose_index(body.len().max(1))?;
            body.truncate(at);
        }
        let mut parsed = false;
        if let Ok(request) = serde_json::from_slice::<GenerateRequest>(&body) {
            parsed |= request.into_call().is_ok();
        }
        if let Ok(request) = serde_json::from_slice::<ChatRequest>(&body) {
            let _ = (request.chat_messages(), request.common.constraints(), request.common.check_supported());
            parsed = true;
        }
        if let Ok(request) = serde_json::from_slice::<CompletionRequest>(&body) {
            let _ = (request.prompt_text(), request.common.constraints(), request.common.check_supported());
            parsed = true;
        }
        Ok(parsed)
    });
}

/// JSON-schema keywords (supported, unsupported and misspelt), regex, Lark and GBNF fragments: the
/// constraint target builds its inputs from these more often than not.
const SCHEMA_KEYWORDS: [&str; 34] = [
    "type",
    "properties",
    "required",
    "items",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
    "$defs",
    "definitions",
    "additionalProperties",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "minItems",
    "maxItems",
    "uniqueItems",
    "not",
    "if",
    "then",
    "dependencies",
    "prefixItems",
    "x-guidance",
    "propertyNames",
    "multipleOf",
    "patternProperties",
    "minProperties",
    "tpye",
];
const SCHEMA_TYPES: [&str; 8] = ["object", "string", "integer", "number", "boolean", "null", "array", "date"];
const FORMATS: [&str; 7] = ["date", "date-time", "email", "uri", "uuid", "regex", "made-up"];
const REGEX_PIECES: [&str; 24] = [
    "a", "[0-9]", "\\d", "+", "*", "?", "{2,5}", "{100000}", "(", ")", "|", ".", "^", "$", "\\", "[^a]",
    "(?:", "\\p{L}", "{", "}", "\\b", "(?i)", "x{0,}", "[a-",
];
const LARK_PIECES: [&str; 24] = [
    "start: ",
    "a",
    " b",
    "\"x\"",
    "/[0-9]+/",
    " | ",
    "\n",
    "a: ",
    "b: ",
    "start",
    "%import common.NUMBER\n",
    "NUMBER",
    "(",
    ")",
    "*",
    "+",
    "?",
    "%json {\"type\": \"integer\"}",
    "A: /a+/\n",
    "%ignore \" \"\n",
    "~",
    "[",
    "]",
    "\"\"",
];
const GBNF_PIECES: [&str; 28] = [
    "root ::= ",
    "a ::= ",
    "x-y ::= ",
    "a",
    " x-y",
    " root",
    "\"ab\"",
    "\"\\x4\"",
    "\"\\u00e9\"",
    "[a-z]",
    "[^\"\\\\]",
    "[z-a]",
    "[]",
    ".",
    " | ",
    "\n",
    "(",
    ")",
    "*",
    "+",
    "?",
    "{2,3}",
    "{3000}",
    "{2,}",
    "<[5]>",
    "!<[7]>",
    "<x>",
    "# c\n",
];

fn from_pieces(u: &mut Unstructured, pieces: &[&str], most: usize) -> arbitrary::Result<String> {
    if u.ratio(1, 6)? {
        return u.arbitrary();
    }
    (0..u.int_in_range(0..=most)?).map(|_| Ok(pieces[u.choose_index(pieces.len())?])).collect()
}

/// A JSON schema of bounded depth, mostly made of real keywords with values of the right shape.
fn schema(u: &mut Unstructured, depth: usize) -> arbitrary::Result<serde_json::Value> {
    use serde_json::{json, Value};
    if depth == 0 || u.ratio(1, 10)? {
        return match u.int_in_range(0..=3)? {
            0 => Ok(Value::Bool(u.arbitrary()?)),
            1 => json(u, 1),
            _ => Ok(json!({"type": SCHEMA_TYPES[u.choose_index(SCHEMA_TYPES.len())?]})),
        };
    }
    let mut object = serde_json::Map::new();
    for _ in 0..u.int_in_range(1..=4)? {
        let key = SCHEMA_KEYWORDS[u.choose_index(SCHEMA_KEYWORDS.len())?];
        let value = match key {
            "type" => Value::from(SCHEMA_TYPES[u.choose_index(SCHEMA_TYPES.len())?]),
            "properties" | "$defs" | "definitions" | "patternProperties" | "dependencies" => {
                let mut props = serde_json::Map::new();
                for i in 0..u.int_in_range(0..=3)? {
                    props.insert(format!("p{i}"), schema(u, depth - 1)?);
                }
                Value::Object(props)
            }
            "required" => {
                Value::from((0..u.int_in_range(0..=3)?).map(|i| format!("p{i}")).collect::<Vec<_>>())
            }
            "items" | "not" | "if" | "then" | "additionalProperties" | "propertyNames" => {
                schema(u, depth - 1)?
            }
            "anyOf" | "oneOf" | "allOf" | "prefixItems" => Value::Array(
                (0..u.int_in_range(0..=3)?).map(|_| schema(u, depth - 1)).collect::<Result<_, _>>()?,
            ),
            "$ref" => Value::from(
                ["#", "#/$defs/p0", "#/definitions/p1", "#/nowhere", "http://x/y"][u.choose_index(5)?],
            ),
            "pattern" => Value::from(from_pieces(u, &REGEX_PIECES, 8)?),
            "format" => Value::from(FORMATS[u.choose_index(FORMATS.len())?]),
            "x-guidance" => {
                json!({"lenient": u.arbitrary::<bool>()?, "whitespace_flexible": u.arbitrary::<bool>()?})
            }
            _ => match u.int_in_range(0..=2)? {
                0 => Value::from(u.int_in_range(-2..=20)?),
                1 => Value::from(u.arbitrary::<i64>()?),
                _ => json(u, 1)?,
            },
        };
        object.insert(key.to_string(), value);
    }
    Ok(Value::Object(object))
}

/// Any constraint kind, sometimes in its JSON text form (the parser is fuzzed along).
fn constraint(u: &mut Unstructured, vocab: u32) -> arbitrary::Result<Result<maze::Constraint, maze::Error>> {
    use maze::Constraint;
    let strings = |u: &mut Unstructured, pieces: &[&str]| -> arbitrary::Result<Vec<String>> {
        (0..u.int_in_range(0..=4)?).map(|_| from_pieces(u, pieces, 8)).collect()
    };
    Ok(Ok(match u.int_in_range(0..=6)? {
        0 => Constraint::json_schema("s", schema(u, 4)?),
        1 => Constraint::new("r", 0, maze::ConstraintKind::Regex(strings(u, &REGEX_PIECES)?)),
        2 => Constraint::lark("l", from_pieces(u, &LARK_PIECES, 16)?),
        3 => Constraint::choice("c", strings(u, &REGEX_PIECES)?),
        6 => Constraint::gbnf("g", from_pieces(u, &GBNF_PIECES, 16)?),
        4 => {
            let ids = |u: &mut Unstructured| -> arbitrary::Result<Vec<u32>> {
                (0..u.int_in_range(0..=4)?).map(|_| u.int_in_range(0..=vocab + 2)).collect()
            };
            Constraint::token_mask("m", ids(u)?, ids(u)?)
        }
        _ => {
            let kind = ["json_schema", "regex", "lark", "choice", "token_mask", "gbnf", "name", "priority"];
            let mut object = serde_json::Map::new();
            for _ in 0..u.int_in_range(1..=3)? {
                let key = kind[u.choose_index(kind.len())?];
                let value = match key {
                    "json_schema" => schema(u, 3)?,
                    "lark" => serde_json::Value::from(from_pieces(u, &LARK_PIECES, 12)?),
                    "gbnf" => serde_json::Value::from(from_pieces(u, &GBNF_PIECES, 12)?),
                    "regex" | "choice" => serde_json::Value::from(strings(u, &REGEX_PIECES)?),
                    _ => json(u, 2)?,
                };
                object.insert(key.to_string(), value);
            }
            return Ok(Constraint::list_from_json(&serde_json::Value::Object(object).to_string())
                .map(|mut list| list.remove(0)));
        }
    }))
}

#[test]
fn fuzz_constraint_compile() {
    use maze::constraint::{Compiler, ConstraintLimits, Enforcer};
    let dir = scratch("constraint");
    let tokenizer = tiny_tokenizer(&dir);
    let vocab = tokenizer.vocab_size() as u32;
    // Tight bounds keep each input short; they are what a hostile input meets in production too.
    let limits = ConstraintLimits { compile_timeout: Duration::from_secs(2), ..Default::default() };
    let compiler = Compiler::with_limits(tokenizer.clone(), vocab as usize, 64, limits);
    let end = tokenizer.eos().into_iter().collect::<Vec<_>>();
    fuzz("constraints", 3000, |u| {
        let Ok(c) = constraint(u, vocab)? else { return Ok(false) };
        let compiled = match compiler.compile(&c) {
            Ok(compiled) => compiled,
            Err(e) => {
                // Bad input is the caller's error, named as such: anything else is a defect.
                assert!(
                    matches!(e.kind(), maze::ErrorKind::InvalidConstraint | maze::ErrorKind::InvalidArgument),
                    "{c:?}: {e:?}"
                );
                assert!(!e.message().is_empty());
                return Ok(false);
            }
        };
        // What compiles can be enforced: a few steps of masks and commits, then the report.
        let mut enforcer = Enforcer::new(vec![std::sync::Arc::new(compiled)], vocab as usize, end.clone());
        for _ in 0..u.int_in_range(1..=12)? {
            let Ok(mask) = enforcer.compute_mask() else { break };
            let allowed: Vec<u32> = (0..vocab).filter(|&t| mask.is_allowed(t)).collect();
            let Some(&token) = allowed.get(u.choose_index(allowed.len().max(1))?) else { break };
            if enforcer.commit(token).is_err() || enforcer.grammar_finished() {
                break;
            }
            let _ = enforcer.take_forced();
        }
        let _ = enforcer.reports("length", false);
        Ok(true)
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// A C string argument: bytes (any, UTF-8 or not) or, now and then, NULL with a length.
fn c_text(
    u: &mut Unstructured,
    keep: &mut Vec<Vec<u8>>,
    pieces: &[&str],
) -> arbitrary::Result<maze::ffi::maze_string> {
    if u.ratio(1, 16)? {
        return Ok(maze::ffi::maze_string { data: std::ptr::null(), len: u.int_in_range(0..=3)? });
    }
    let bytes = match u.ratio(1, 5)? {
        true => u.arbitrary::<Vec<u8>>()?,
        false => from_pieces(u, pieces, 10)?.into_bytes(),
    };
    keep.push(bytes);
    let bytes = keep.last().expect("just pushed");
    Ok(maze::ffi::maze_string { data: bytes.as_ptr().cast(), len: bytes.len() })
}

#[test]
fn fuzz_constraint_descriptors() {
    use maze::ffi::constraint::{
        maze_constraint_desc, maze_constraint_desc_default, maze_constraint_free, maze_constraint_new,
    };
    use maze::ffi::engine::{maze_engine_free, maze_engine_new, maze_engine_params_default};
    use maze::ffi::error::maze_error_free;
    use maze::ffi::maze_status;
    let dir = scratch("descriptors");
    let path = dir.join("tiny.gguf");
    TinyModel::default().write(&path).unwrap();
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let mut params = maze_engine_params_default();
    params.n_threads = 1;
    params.constraint_compile_timeout_ms = 2000;
    let mut engine = std::ptr::null_mut();
    let status = unsafe { maze_engine_new(c_path.as_ptr(), &params, &mut engine, std::ptr::null_mut()) };
    assert_eq!(status, maze_status::Ok);
    let full = std::mem::size_of::<maze_constraint_desc>() as u32;
    fuzz("descriptors", 2000, |u| {
        let mut keep = Vec::new();
        let mut d = maze_constraint_desc_default();
        d.struct_size = match u.int_in_range(0..=7)? {
            0 => 0,
            1 => u.int_in_range(1..=full)?,
            2 => full + u.int_in_range(1..=64)?,
            _ => full,
        };
        d.kind = match u.ratio(1, 8)? {
            true => u.arbitrary()?,
            false => u.int_in_range(0..=4)?,
        };
        d.priority = u.arbitrary()?;
        d.name = c_text(u, &mut keep, &["name", "\u{0}", "é"])?;
        d.text = match d.kind {
            0 => {
                let text = schema(u, 4)?.to_string().into_bytes();
                keep.push(text);
                let text = keep.last().expect("just pushed");
                maze::ffi::maze_string { data: text.as_ptr().cast(), len: text.len() }
            }
            _ => c_text(u, &mut keep, &LARK_PIECES)?,
        };
        let items = (0..u.int_in_range(0..=4)?)
            .map(|_| c_text(u, &mut keep, &REGEX_PIECES))
            .collect::<arbitrary::Result<Vec<_>>>()?;
        let ids: Vec<u32> =
            (0..u.int_in_range(0..=4)?).map(|_| u.int_in_range(0..=600)).collect::<Result<_, _>>()?;
        // NULL arrays with a count must be refused, not read.
        let null_items = u.ratio(1, 10)?;
        d.items = if null_items { std::ptr::null() } else { items.as_ptr() };
        d.n_items = if null_items { u.int_in_range(1..=3)? } else { items.len() };
        d.allowed_tokens = ids.as_ptr();
        d.n_allowed_tokens = ids.len();
        d.forbidden_tokens = if u.ratio(1, 10)? { std::ptr::null() } else { ids.as_ptr() };
        d.n_forbidden_tokens = u.int_in_range(0..=ids.len())?;
        let (mut handle, mut error) = (std::ptr::null_mut(), std::ptr::null_mut());
        let status = unsafe { maze_constraint_new(engine, &d, &mut handle, &mut error) };
        unsafe {
            maze_error_free(error);
            maze_constraint_free(handle);
        }
        assert_ne!(status, maze_status::Panic, "a panic reached the boundary");
        assert!(
            !matches!(status, maze_status::Internal | maze_status::Backend),
            "bad input reported as the library's fault: {status:?}"
        );
        Ok(status == maze_status::Ok)
    });
    unsafe { maze_engine_free(engine) };
    let _ = std::fs::remove_dir_all(&dir);
}

/// The committed corpus of constraints that once crashed or hung the host (tests/corpus/):
/// each must come back, within the bounds, as it does now.
#[test]
fn past_constraint_crashers_stay_fixed() {
    use maze::constraint::{Compiler, ConstraintLimits};
    let dir = scratch("crashers");
    let tokenizer = tiny_tokenizer(&dir);
    let limits = ConstraintLimits { compile_timeout: Duration::from_secs(1), ..Default::default() };
    let compiler = Compiler::with_limits(tokenizer.clone(), tokenizer.vocab_size(), 64, limits);
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/constraints");
    // What each file must give: compiled, or refused with a message containing the text.
    let expected: [(&str, Option<&str>); 7] = [
        ("deep-lark-chain.json", Some("rules refer to rules 5001 deep")),
        ("ambiguous-lexemes.json", Some("compiling took longer than the limit")),
        ("choice-25000.json", Some("bytes")),
        ("deep-regex.json", Some("deep")),
        ("deep-json-schema.json", Some("recursion limit")),
        ("lenient-unsupported-keywords.json", None),
        ("unknown-formats.json", None),
    ];
    let mut files: Vec<_> = std::fs::read_dir(&corpus).unwrap().map(|e| e.unwrap().file_name()).collect();
    files.sort();
    assert_eq!(files.len(), expected.len(), "every corpus file has its expectation here: {files:?}");
    for (file, refusal) in expected {
        let text = std::fs::read_to_string(corpus.join(file)).unwrap();
        let start = Instant::now();
        let outcome = maze::Constraint::list_from_json(&text)
            .and_then(|list| list.iter().try_for_each(|c| compiler.compile(c).map(drop)));
        assert!(start.elapsed() < Duration::from_secs(20), "{file}: {:?}", start.elapsed());
        match (refusal, outcome) {
            (None, Ok(())) => {}
            (Some(needle), Err(e)) => assert!(
                matches!(e.kind(), maze::ErrorKind::InvalidConstraint | maze::ErrorKind::InvalidArgument)
                    && e.message().contains(needle),
                "{file}: {e:?}"
            ),
            (refusal, outcome) => panic!("{file}: expected {refusal:?}, got {outcome:?}"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
