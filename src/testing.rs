//! Test support: tiny random-weight Llama models written as real GGUF files, so loading,
//! tokenizing and generation can be tested without a downloaded model. Not part of the API.

use std::path::Path;

use candle_core::quantized::{gguf_file::Value, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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
        let mut random_as =
            |name: &str, rows: usize, cols: usize, scale: f32| -> candle_core::Result<QTensor> {
                let data: Vec<f32> =
                    (0..rows * cols).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale).collect();
                QTensor::quantize(&Tensor::from_vec(data, (rows, cols), &dev)?, dtype_of(name))
            };
        let ones = |n: usize| -> candle_core::Result<QTensor> {
            QTensor::quantize(&Tensor::ones(n, candle_core::DType::F32, &dev)?, GgmlDType::F32)
        };
        let head_dim = self.dim / self.n_heads;
        let kv_dim = self.n_kv_heads * head_dim;
        let mut tensors: Vec<(String, QTensor)> = vec![
            // Small enough that logits stay flat: different seeds must give different samples.
            ("token_embd.weight".into(), random_as("token_embd", n_vocab, self.dim, 0.2)?),
            ("output_norm.weight".into(), ones(self.dim)?),
        ];
        for i in 0..self.n_layers {
            let s = 1.0 / (self.dim as f32).sqrt();
            tensors.push((format!("blk.{i}.attn_norm.weight"), ones(self.dim)?));
            tensors.push((format!("blk.{i}.attn_q.weight"), random_as("attn_q", self.dim, self.dim, s)?));
            tensors.push((format!("blk.{i}.attn_k.weight"), random_as("attn_k", kv_dim, self.dim, s)?));
            tensors.push((format!("blk.{i}.attn_v.weight"), random_as("attn_v", kv_dim, self.dim, s)?));
            tensors.push((
                format!("blk.{i}.attn_output.weight"),
                random_as("attn_output", self.dim, self.dim, s)?,
            ));
            tensors.push((format!("blk.{i}.ffn_norm.weight"), ones(self.dim)?));
            tensors.push((
                format!("blk.{i}.ffn_gate.weight"),
                random_as("ffn_gate", self.ffn_dim, self.dim, s)?,
            ));
            tensors.push((format!("blk.{i}.ffn_up.weight"), random_as("ffn_up", self.ffn_dim, self.dim, s)?));
            tensors.push((
                format!("blk.{i}.ffn_down.weight"),
                random_as("ffn_down", self.dim, self.ffn_dim, 1.0 / (self.ffn_dim as f32).sqrt())?,
            ));
        }
        let types: Vec<Value> = (0..n_vocab)
            .map(|i| Value::I32(if i >= n_vocab - SPECIAL_TOKENS.len() { 3 } else { 1 }))
            .collect();
        let mut metadata: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String(self.architecture.clone())),
            ("general.name".into(), Value::String("tiny-random-llama".into())),
            ("llama.context_length".into(), Value::U32(self.context_length as u32)),
            ("llama.embedding_length".into(), Value::U32(self.dim as u32)),
            ("llama.block_count".into(), Value::U32(self.n_layers as u32)),
            ("llama.feed_forward_length".into(), Value::U32(self.ffn_dim as u32)),
            ("llama.attention.head_count".into(), Value::U32(self.n_heads as u32)),
            ("llama.attention.head_count_kv".into(), Value::U32(self.n_kv_heads as u32)),
            ("llama.rope.freq_base".into(), Value::F32(10_000.0)),
            ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(1e-5)),
        ];
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
        let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
        candle_core::quantized::gguf_file::write(&mut file, &md, &ts)?;
        use std::io::Write;
        file.flush()?;
        Ok(())
    }
}

/// Writes a GGUF holding only metadata (no tensors): enough to test tokenizer construction.
pub fn write_metadata_only(path: &Path, metadata: &[(&str, Value)]) -> candle_core::Result<()> {
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    candle_core::quantized::gguf_file::write(&mut file, &md, &[])?;
    use std::io::Write;
    file.flush()?;
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

/// Runs `prompt` (in two chunks) then `steps` one token at a time through both models.
pub fn compare_forward(
    a: &dyn crate::model::LanguageModel,
    b: &dyn crate::model::LanguageModel,
    prompt: &[u32],
    steps: &[u32],
) -> crate::Result<ForwardComparison> {
    let (mut ca, mut cb) = (a.new_cache(), b.new_cache());
    let never = || false;
    let split = prompt.len() / 2;
    let mut chunks: Vec<&[u32]> = vec![&prompt[..split], &prompt[split..]];
    chunks.extend(steps.chunks(1));
    let ranked = |l: &[f32]| {
        let mut ids: Vec<usize> = (0..l.len()).collect();
        ids.sort_by(|&x, &y| l[y].total_cmp(&l[x]));
        ids.truncate(3);
        ids
    };
    let mut out = ForwardComparison { worst_relative_gap: 0.0, same_argmax: 0, argmax_in_top3: 0, steps: 0 };
    for chunk in chunks.into_iter().filter(|c| !c.is_empty()) {
        let (la, lb) = (a.forward(chunk, ca.as_mut(), &never)?, b.forward(chunk, cb.as_mut(), &never)?);
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
