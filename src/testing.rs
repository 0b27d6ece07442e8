//! Test support: tiny random-weight Llama models written as real GGUF files, so loading,
//! tokenizing and generation can be tested without a downloaded model. Not part of the API.

use std::path::Path;

use candle_core::quantized::{gguf_file::Value, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::model::gguf::GgmlType;
use crate::model::tokenizer::byte_level_chars;

/// ChatML, as SmolLM2 uses.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] | trim }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Shape and options of a tiny model.
#[derive(Debug, Clone)]
pub struct TinyModel {
    pub dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub ffn_dim: usize,
    pub n_layers: usize,
    pub context_length: usize,
    pub seed: u64,
    pub chat_template: Option<String>,
    /// Byte-level BPE merges (pairs of vocabulary strings), appended after the 256 byte tokens.
    pub merges: Vec<(String, String)>,
    /// `general.architecture`.
    pub architecture: String,
    /// Write the `tokenizer.ggml.*` metadata (off: the model needs a tokenizer.json).
    pub tokenizer_metadata: bool,
    /// Format of the weight matrices (k-quants need `dim` and `ffn_dim` multiples of 256).
    pub weight_dtype: GgmlDType,
    /// Per-matrix formats instead of `weight_dtype`, by name within a layer ("attn_v", as
    /// Q4_K_M files keep V in Q6_K).
    pub dtype_overrides: Vec<(String, GgmlDType)>,
    /// Every matrix as random blocks of this type instead of `weight_dtype` (for the types
    /// candle cannot quantize to: IQ4_NL, IQ4_XS), written as they are or, with
    /// `dequantized_matrices`, as the F32 values they decode to.
    pub raw_matrix_type: Option<GgmlType>,
    pub dequantized_matrices: bool,
    /// The layout of the file, beyond what its architecture's family implies (Q/K norms and
    /// sandwich norms are written wherever the family has them).
    pub layout: TinyLayout,
    /// More metadata, keys relative to the architecture ("attention.sliding_window").
    pub extra_metadata: Vec<(String, Value)>,
    /// More tensors (F32), by full name and values: rope frequency factors.
    pub extra_tensors: Vec<(String, Vec<f32>)>,
    /// Tensors left out, by full name (for broken-file tests).
    pub omit_tensors: Vec<String>,
    /// Matrices written as zeros, by name within a layer ("ffn_down": a layer without FFN).
    pub zeroed: Vec<String>,
}

/// How a tiny model's tensors are laid out.
#[derive(Debug, Clone, Copy, Default)]
pub struct TinyLayout {
    /// One `attn_qkv` matrix instead of Q, K and V (Phi-3).
    pub fused_qkv: bool,
    /// `ffn_up` holds gate and up, with no `ffn_gate` (Phi-3).
    pub fused_gate_up: bool,
    /// Biases on Q, K and V (Qwen2).
    pub qkv_bias: bool,
    /// An `output.weight` of its own instead of the tied embeddings.
    pub untied_output: bool,
    /// Norm weights drawn around 1 instead of ones, so a misapplied norm shows.
    pub random_norms: bool,
    /// `attention.key_length` declared, and heads this wide (else dim / heads).
    pub head_dim: Option<usize>,
}

impl Default for TinyModel {
    fn default() -> Self {
        let merges = [
            ("h", "e"),
            ("l", "l"),
            ("he", "ll"),
            ("hell", "o"),
            ("Ġ", "w"),
            ("o", "r"),
            ("Ġw", "or"),
            ("Ġwor", "l"),
            ("Ġworl", "d"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        Self {
            dim: 64,
            n_heads: 4,
            n_kv_heads: 2,
            ffn_dim: 128,
            n_layers: 2,
            context_length: 256,
            seed: 7,
            chat_template: Some(CHATML_TEMPLATE.into()),
            merges,
            architecture: "llama".into(),
            tokenizer_metadata: true,
            weight_dtype: GgmlDType::Q8_0,
            dtype_overrides: Vec::new(),
            raw_matrix_type: None,
            dequantized_matrices: false,
            layout: TinyLayout::default(),
            extra_metadata: Vec::new(),
            extra_tensors: Vec::new(),
            omit_tensors: Vec::new(),
            zeroed: Vec::new(),
        }
    }
}

/// Special tokens of the tiny vocabulary, in order after bytes and merges.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

impl TinyModel {
    /// Vocabulary strings: 256 byte-level chars, then merge results, then special tokens.
    pub fn vocab(&self) -> Vec<String> {
        let mut v: Vec<String> = byte_level_chars().iter().map(|c| c.to_string()).collect();
        v.extend(self.merges.iter().map(|(a, b)| format!("{a}{b}")));
        v.extend(SPECIAL_TOKENS.iter().map(|s| s.to_string()));
        v
    }

    pub fn special_id(&self, text: &str) -> u32 {
        (self.vocab().iter().position(|t| t == text).expect("special token in vocab")) as u32
    }

    /// Writes the model as a GGUF file (`weight_dtype` matrices, F32 norms).
    pub fn write(&self, path: &Path) -> candle_core::Result<()> {
        let vocab = self.vocab();
        let n_vocab = vocab.len();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let dev = Device::Cpu;
        let dtype_of = |name: &str| {
            self.dtype_overrides.iter().find(|(n, _)| n == name).map_or(self.weight_dtype, |o| o.1)
        };
        let mut random_as = |name: &str,
                             rows: usize,
                             cols: usize,
                             scale: f32|
         -> candle_core::Result<RawTensor> {
            let scale = if self.zeroed.iter().any(|z| z == name) { 0.0 } else { scale };
            if let Some(ggml_type) = self.raw_matrix_type {
                let raw = random_blocks(&mut rng, ggml_type, rows, cols, scale);
                return Ok(if self.dequantized_matrices { raw.dequantized() } else { raw });
            }
            let data: Vec<f32> =
                (0..rows * cols).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale).collect();
            RawTensor::of(&QTensor::quantize(&Tensor::from_vec(data, (rows, cols), &dev)?, dtype_of(name))?)
        };
        let layout = self.layout;
        let family = crate::model::transformer::Family::of(&self.architecture);
        let (qk_norm, sandwich) = family.map_or((false, false), |f| (f.qk_norm, f.sandwich_norms));
        let mut norm_rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0x5eed);
        let mut vector = |n: usize, around: f32, spread: f32| -> candle_core::Result<RawTensor> {
            let data: Vec<f32> =
                (0..n).map(|_| around + (norm_rng.random::<f32>() * 2.0 - 1.0) * spread).collect();
            Ok(RawTensor::f32(&data))
        };
        let norm_spread = if layout.random_norms { 0.3 } else { 0.0 };
        let head_dim = layout.head_dim.unwrap_or(self.dim / self.n_heads);
        let (q_dim, kv_dim) = (self.n_heads * head_dim, self.n_kv_heads * head_dim);
        let mut tensors: Vec<(String, RawTensor)> = vec![
            // Small enough that logits stay flat: different seeds must give different samples.
            ("token_embd.weight".into(), random_as("token_embd", n_vocab, self.dim, 0.2)?),
            ("output_norm.weight".into(), vector(self.dim, 1.0, norm_spread)?),
        ];
        if layout.untied_output {
            tensors.push(("output.weight".into(), random_as("output", n_vocab, self.dim, 0.2)?));
        }
        for i in 0..self.n_layers {
            let s = 1.0 / (self.dim as f32).sqrt();
            let name = |t: &str| format!("blk.{i}.{t}");
            tensors.push((name("attn_norm.weight"), vector(self.dim, 1.0, norm_spread)?));
            if layout.fused_qkv {
                tensors
                    .push((name("attn_qkv.weight"), random_as("attn_qkv", q_dim + 2 * kv_dim, self.dim, s)?));
            } else {
                tensors.push((name("attn_q.weight"), random_as("attn_q", q_dim, self.dim, s)?));
                tensors.push((name("attn_k.weight"), random_as("attn_k", kv_dim, self.dim, s)?));
                tensors.push((name("attn_v.weight"), random_as("attn_v", kv_dim, self.dim, s)?));
            }
            if layout.qkv_bias {
                tensors.push((name("attn_q.bias"), vector(q_dim, 0.0, 0.5)?));
                tensors.push((name("attn_k.bias"), vector(kv_dim, 0.0, 0.5)?));
                tensors.push((name("attn_v.bias"), vector(kv_dim, 0.0, 0.5)?));
            }
            if qk_norm {
                tensors.push((name("attn_q_norm.weight"), vector(head_dim, 1.0, norm_spread)?));
                tensors.push((name("attn_k_norm.weight"), vector(head_dim, 1.0, norm_spread)?));
            }
            tensors.push((name("attn_output.weight"), random_as("attn_output", self.dim, q_dim, s)?));
            if sandwich {
                tensors.push((name("post_attention_norm.weight"), vector(self.dim, 1.0, norm_spread)?));
                tensors.push((name("post_ffw_norm.weight"), vector(self.dim, 1.0, norm_spread)?));
            }
            tensors.push((name("ffn_norm.weight"), vector(self.dim, 1.0, norm_spread)?));
            if layout.fused_gate_up {
                tensors.push((name("ffn_up.weight"), random_as("ffn_up", 2 * self.ffn_dim, self.dim, s)?));
            } else {
                tensors.push((name("ffn_gate.weight"), random_as("ffn_gate", self.ffn_dim, self.dim, s)?));
                tensors.push((name("ffn_up.weight"), random_as("ffn_up", self.ffn_dim, self.dim, s)?));
            }
            tensors.push((
                name("ffn_down.weight"),
                random_as("ffn_down", self.dim, self.ffn_dim, 1.0 / (self.ffn_dim as f32).sqrt())?,
            ));
        }
        for (name, values) in &self.extra_tensors {
            tensors.push((name.clone(), RawTensor::f32(values)));
        }
        tensors.retain(|(name, _)| !self.omit_tensors.contains(name));
        let types: Vec<Value> = (0..n_vocab)
            .map(|i| Value::I32(if i >= n_vocab - SPECIAL_TOKENS.len() { 3 } else { 1 }))
            .collect();
        let arch = |key: &str| format!("{}.{key}", self.architecture);
        let mut metadata: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String(self.architecture.clone())),
            ("general.name".into(), Value::String(format!("tiny-random-{}", self.architecture))),
            (arch("context_length"), Value::U32(self.context_length as u32)),
            (arch("embedding_length"), Value::U32(self.dim as u32)),
            (arch("block_count"), Value::U32(self.n_layers as u32)),
            (arch("feed_forward_length"), Value::U32(self.ffn_dim as u32)),
            (arch("attention.head_count"), Value::U32(self.n_heads as u32)),
            (arch("attention.head_count_kv"), Value::U32(self.n_kv_heads as u32)),
            (arch("rope.freq_base"), Value::F32(10_000.0)),
            (arch("rope.dimension_count"), Value::U32(head_dim as u32)),
            (arch("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        ];
        if layout.head_dim.is_some() {
            metadata.push((arch("attention.key_length"), Value::U32(head_dim as u32)));
            metadata.push((arch("attention.value_length"), Value::U32(head_dim as u32)));
        }
        for (key, value) in &self.extra_metadata {
            match metadata.iter_mut().find(|(k, _)| *k == arch(key)) {
                Some(entry) => entry.1 = value.clone(),
                None => metadata.push((arch(key), value.clone())),
            }
        }
        let tokenizer: Vec<(String, Value)> = vec![
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(vocab.iter().map(|t| Value::String(t.clone())).collect()),
            ),
            ("tokenizer.ggml.token_type".into(), Value::Array(types)),
            (
                "tokenizer.ggml.merges".into(),
                Value::Array(self.merges.iter().map(|(a, b)| Value::String(format!("{a} {b}"))).collect()),
            ),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(self.special_id("<|im_start|>"))),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(self.special_id("<|im_end|>"))),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ];
        if self.tokenizer_metadata {
            metadata.extend(tokenizer);
        }
        if let Some(t) = &self.chat_template {
            metadata.push(("tokenizer.chat_template".into(), Value::String(t.clone())));
        }
        let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let ts: Vec<(&str, &RawTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        write_gguf(path, &md, &ts)?;
        Ok(())
    }
}

/// A tensor as a GGUF file stores it, of any ggml type (candle's `QTensor` has no IQ types).
#[derive(Debug, Clone)]
pub struct RawTensor {
    pub ggml_type: GgmlType,
    /// Outermost first.
    pub dims: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl RawTensor {
    pub fn of(tensor: &QTensor) -> candle_core::Result<Self> {
        let ggml_type = GgmlType::of_candle(tensor.dtype());
        Ok(Self { ggml_type, dims: tensor.shape().dims().to_vec(), bytes: tensor.data()?.to_vec() })
    }

    pub fn f32(values: &[f32]) -> Self {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self { ggml_type: GgmlType::F32, dims: vec![values.len()], bytes }
    }

    /// The same values as F32, decoded by the kernels' dequantization (tested against GGML's).
    pub fn dequantized(&self) -> Self {
        let format = crate::model::transformer::weight_format(self.ggml_type).expect("a kernel format");
        let bytes = format.dequantize(&self.bytes).iter().flat_map(|v| v.to_le_bytes()).collect();
        Self { ggml_type: GgmlType::F32, dims: self.dims.clone(), bytes }
    }
}

/// Random blocks of `ggml_type` whose values stay within about `scale`: random codes and
/// sub-block scales, the block scale set from `scale`. Types without a case here get random
/// bytes with zero block scales (for files that must only be refused).
pub fn random_blocks(
    rng: &mut ChaCha8Rng,
    ggml_type: GgmlType,
    rows: usize,
    cols: usize,
    scale: f32,
) -> RawTensor {
    let blocks = rows * cols / ggml_type.block_values();
    let size = ggml_type.block_bytes();
    let mut bytes: Vec<u8> = (0..blocks * size).map(|_| rng.random()).collect();
    // IQ4's largest code is 127 in magnitude; IQ4_XS's sub-block scales reach 32.
    let d = match ggml_type {
        GgmlType::IQ4NL => scale / 127.0,
        GgmlType::IQ4XS => scale / (127.0 * 32.0),
        _ => 0.0,
    };
    for block in bytes.chunks_exact_mut(size) {
        block[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
    }
    RawTensor { ggml_type, dims: vec![rows, cols], bytes }
}

/// GGUF's number for a metadata value's type.
fn value_type_id(value: &Value) -> u32 {
    match value {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.push(*v as u8),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(*v as u8),
        Value::String(v) => put_string(out, v),
        Value::Array(items) => {
            let element = items.first().map_or(0, value_type_id);
            out.extend_from_slice(&element.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            items.iter().for_each(|item| put_value(out, item));
        }
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}

/// Writes a GGUF (version 3, alignment 32) of any tensor types.
pub fn write_gguf(
    path: &Path,
    metadata: &[(&str, &Value)],
    tensors: &[(&str, &RawTensor)],
) -> std::io::Result<()> {
    const ALIGNMENT: usize = 32;
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_string(&mut out, key);
        out.extend_from_slice(&value_type_id(value).to_le_bytes());
        put_value(&mut out, value);
    }
    let mut offset = 0usize;
    for (name, tensor) in tensors {
        put_string(&mut out, name);
        out.extend_from_slice(&(tensor.dims.len() as u32).to_le_bytes());
        tensor.dims.iter().rev().for_each(|&d| out.extend_from_slice(&(d as u64).to_le_bytes()));
        out.extend_from_slice(&tensor.ggml_type.id().to_le_bytes());
        out.extend_from_slice(&(offset as u64).to_le_bytes());
        offset += tensor.bytes.len().next_multiple_of(ALIGNMENT);
    }
    for (_, tensor) in tensors {
        out.resize(out.len().next_multiple_of(ALIGNMENT), 0);
        out.extend_from_slice(&tensor.bytes);
    }
    std::fs::write(path, out)
}

/// Writes a GGUF holding only metadata (no tensors): enough to test tokenizer construction.
pub fn write_metadata_only(path: &Path, metadata: &[(&str, Value)]) -> candle_core::Result<()> {
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    write_gguf(path, &md, &[])?;
    Ok(())
}

/// How two forward-pass implementations of the same weights compare over one sequence.
#[derive(Debug, Clone, Copy)]
pub struct ForwardComparison {
    /// Largest logit difference at any step, relative to that step's largest logit.
    pub worst_relative_gap: f32,
    /// Steps whose most likely token is the same in both.
    pub same_argmax: usize,
    /// Steps where each one's most likely token is among the other's three most likely.
    pub argmax_in_top3: usize,
    pub steps: usize,
}

/// A forward pass over one sequence: the logits of the last token of each chunk appended.
pub type Steps<'a> = Box<dyn FnMut(&[u32]) -> crate::Result<Vec<f32>> + 'a>;

/// `model`'s forward pass over a fresh sequence.
pub fn model_steps(model: &dyn crate::model::LanguageModel) -> Steps<'_> {
    let mut cache = model.new_cache();
    Box::new(move |chunk| model.forward(chunk, cache.as_mut(), &|| false))
}

/// candle-transformers' reference implementation of the GGUF's architecture (its
/// `quantized_*` models, written independently of ours), over a fresh sequence.
pub fn reference_steps(path: &Path) -> crate::Result<Steps<'static>> {
    use candle_core::quantized::gguf_file::Content;
    use candle_transformers::models::{
        quantized_gemma3, quantized_llama, quantized_phi3, quantized_qwen2, quantized_qwen3,
    };
    let backend = crate::Error::backend;
    let mut file = std::fs::File::open(path)
        .map_err(|e| crate::Error::new(crate::ErrorKind::Io, format!("{}: {e}", path.display())))?;
    let content = Content::read(&mut file).map_err(backend)?;
    let architecture = match content.metadata.get("general.architecture") {
        Some(v) => v.to_string().map_err(backend)?.clone(),
        None => return Err(crate::Error::model_format("no general.architecture")),
    };
    let dev = Device::Cpu;
    macro_rules! steps {
        ($model:expr) => {{
            let mut model = $model.map_err(backend)?;
            let mut position = 0;
            let steps: Steps<'static> = Box::new(move |chunk: &[u32]| {
                let mut run = || -> candle_core::Result<Vec<f32>> {
                    let x = Tensor::new(chunk, &Device::Cpu)?.unsqueeze(0)?;
                    let logits = model.forward(&x, position)?.flatten_all()?.to_vec1::<f32>()?;
                    Ok(logits)
                };
                let logits = run().map_err(backend)?;
                position += chunk.len();
                Ok(logits)
            });
            steps
        }};
    }
    Ok(match architecture.as_str() {
        "llama" => steps!(quantized_llama::ModelWeights::from_gguf(content, &mut file, &dev)),
        "qwen2" => steps!(quantized_qwen2::ModelWeights::from_gguf(content, &mut file, &dev)),
        "qwen3" => steps!(quantized_qwen3::ModelWeights::from_gguf(content, &mut file, &dev)),
        "gemma3" => steps!(quantized_gemma3::ModelWeights::from_gguf(content, &mut file, &dev)),
        "phi3" => steps!(quantized_phi3::ModelWeights::from_gguf(false, content, &mut file, &dev)),
        other => return Err(crate::Error::invalid_argument(format!("no reference model for '{other}'"))),
    })
}

/// Runs `prompt` (in two chunks) then `steps` one token at a time through both models.
pub fn compare_forward(
    a: &dyn crate::model::LanguageModel,
    b: &dyn crate::model::LanguageModel,
    prompt: &[u32],
    steps: &[u32],
) -> crate::Result<ForwardComparison> {
    compare_steps(model_steps(a), model_steps(b), prompt, steps)
}

/// As [`compare_forward`], for any two forward passes.
pub fn compare_steps(
    a: Steps<'_>,
    b: Steps<'_>,
    prompt: &[u32],
    steps: &[u32],
) -> crate::Result<ForwardComparison> {
    let split = prompt.len() / 2;
    let mut chunks: Vec<&[u32]> = vec![&prompt[..split], &prompt[split..]];
    chunks.extend(steps.chunks(1));
    compare_chunks(a, b, &chunks)
}

/// As [`compare_steps`], appending `chunks` one after another (candle's Gemma 3 reference
/// cannot take a second multi-token chunk: its mask concatenation mixes dtypes).
pub fn compare_chunks(
    mut a: Steps<'_>,
    mut b: Steps<'_>,
    chunks: &[&[u32]],
) -> crate::Result<ForwardComparison> {
    let ranked = |l: &[f32]| {
        let mut ids: Vec<usize> = (0..l.len()).collect();
        ids.sort_by(|&x, &y| l[y].total_cmp(&l[x]));
        ids.truncate(3);
        ids
    };
    let mut out = ForwardComparison { worst_relative_gap: 0.0, same_argmax: 0, argmax_in_top3: 0, steps: 0 };
    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
        let (la, lb) = (a(chunk)?, b(chunk)?);
        let scale = la.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let gap = la.iter().zip(&lb).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        out.worst_relative_gap = out.worst_relative_gap.max(gap / scale);
        let (ta, tb) = (ranked(&la), ranked(&lb));
        out.same_argmax += (ta[0] == tb[0]) as usize;
        out.argmax_in_top3 += (tb.contains(&ta[0]) && ta.contains(&tb[0])) as usize;
        out.steps += 1;
    }
    Ok(out)
}
