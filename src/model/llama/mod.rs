//! The Llama family (Llama 2/3, Mistral, SmolLM, ...), quantized weights straight from GGUF.
//! Each sequence has its own cache, so one set of weights serves every session of an engine.
//!
//! Two implementations of one forward pass: [`native`] (CPU, our kernels, batched) wherever
//! every matrix is in a format our kernels take, and candle tensors otherwise (GPU, K-quants).

mod native;

pub use native::NativeCache;

use std::any::Any;

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::gguf::GgufFile;
use super::{BatchStep, LanguageModel, LoadOptions, ModelInfo, Progress, SequenceCache, DEFAULT_MAX_CONTEXT};
use crate::error::{Error, ErrorKind, Result};
use crate::kernels::dot::GROUP;
use crate::kernels::{MatrixShape, QuantMatrix, WeightFormat, WeightSpace};

/// A weight matrix: our own kernels for Q4_0, Q4_1, Q8_0, Q4_K and Q6_K on the CPU, candle elsewhere.
enum Linear {
    Candle(QMatMul),
    Own(Arc<QuantMatrix>),
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Candle(m) => m.forward(x),
            Self::Own(m) => {
                let mut dims = x.dims().to_vec();
                let cols = dims.pop().unwrap_or(0);
                if cols != m.cols {
                    candle_core::bail!("matmul input has {cols} columns, the weights {}", m.cols)
                }
                let tokens: usize = dims.iter().product();
                let input = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let out = m.matmul(&input, tokens);
                dims.push(m.rows);
                Tensor::from_vec(out, dims, x.device())
            }
        }
    }
}

/// Matrices applied to the same input (Q/K/V; gate/up): stacked into one when our kernels
/// hold them all, so a step pays one matmul's thread wake-ups instead of several.
enum Projections {
    Stacked(Arc<QuantMatrix>, Vec<usize>),
    Separate(Vec<Linear>),
}

impl Projections {
    fn new(parts: Vec<Linear>) -> Self {
        let own: Vec<&QuantMatrix> = parts
            .iter()
            .filter_map(|p| if let Linear::Own(m) = p { Some(m.as_ref()) } else { None })
            .collect();
        if own.len() == parts.len() {
            if let Some(stacked) = QuantMatrix::stack(&own) {
                return Self::Stacked(Arc::new(stacked), own.iter().map(|m| m.rows).collect());
            }
        }
        Self::Separate(parts)
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        match self {
            Self::Separate(parts) => parts.iter().map(|p| p.forward(x)).collect(),
            Self::Stacked(m, sizes) => {
                let all = Linear::Own(m.clone()).forward(x)?;
                let last = all.rank() - 1;
                let mut start = 0;
                sizes
                    .iter()
                    .map(|&n| {
                        let part = all.narrow(last, start, n);
                        start += n;
                        part
                    })
                    .collect()
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Hyper {
    n_layers: usize,
    dim: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    ffn_dim: usize,
    rope_base: f32,
    rms_eps: f64,
}

struct Layer {
    attn_norm: Tensor,
    /// Q, K, V.
    qkv: Projections,
    wo: Linear,
    ffn_norm: Tensor,
    /// Gate, up.
    gate_up: Projections,
    down: Linear,
}

pub struct Llama {
    info: ModelInfo,
    imp: Implementation,
}

enum Implementation {
    Native(native::NativeLlama),
    Tensors(TensorLlama),
}

/// The forward pass over candle tensors.
struct TensorLlama {
    hp: Hyper,
    device: Device,
    embeddings: QTensor,
    layers: Vec<Layer>,
    output_norm: Tensor,
    output: Linear,
    /// RoPE tables, (context_length, rope_dim / 2).
    cos: Tensor,
    sin: Tensor,
}

/// Keys and values of every layer for one sequence, (1, n_kv_heads, len, head_dim) each.
pub struct LlamaCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl SequenceCache for LlamaCache {
    fn len(&self) -> usize {
        self.len
    }

    fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.cut_layers(len);
        }
    }

    /// Tensors are immutable and appending makes new ones, so the fork shares storage.
    fn fork(&self, len: usize) -> Option<Box<dyn SequenceCache>> {
        let mut copy = LlamaCache { layers: self.layers.clone(), len: self.len };
        copy.cut_layers(len.min(self.len));
        Some(Box::new(copy))
    }

    fn memory_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl LlamaCache {
    /// Cuts every layer longer than `len` back to `len`. Also repairs a step that failed
    /// halfway, where earlier layers are longer than later ones.
    fn cut_layers(&mut self, len: usize) {
        for entry in &mut self.layers {
            *entry = match entry.take() {
                Some((k, v)) if len > 0 && k.dim(2).map(|n| n > len).unwrap_or(false) => {
                    k.narrow(2, 0, len).ok().zip(v.narrow(2, 0, len).ok())
                }
                Some(kv) if len > 0 => Some(kv),
                _ => None,
            };
        }
        let consistent = self.layers.iter().all(|l| match l {
            Some((k, _)) => k.dim(2).map(|n| n == len).unwrap_or(false),
            None => len == 0,
        });
        if consistent {
            self.len = len;
        } else {
            self.layers.iter_mut().for_each(|l| *l = None);
            self.len = 0;
        }
    }
}

/// The GGUF metadata prefix of this family.
const ARCH: &str = "llama";

/// One of this family's metadata keys, e.g. "llama.block_count".
fn key(name: &str) -> String {
    format!("{ARCH}.{name}")
}

/// The tensors of one layer, by their name within it.
const LAYER_TENSORS: [&str; 9] =
    ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"];

impl Llama {
    pub fn load(file: &GgufFile, opts: &LoadOptions<'_>, progress: Progress<'_>) -> Result<Self> {
        let hp = Hyper::from_file(file)?;
        let mut info = model_info(file, &hp, opts.context_length);
        let names = tensor_names(file, hp.n_layers);
        let total: u64 = names.iter().map(|n| file.tensor_bytes(n)).sum::<u64>().max(1);
        let inverse_frequencies = rope_frequencies(file, &hp, &opts.device)?;
        if !opts.tensor_forward && opts.device.is_cpu() {
            if let Some(native) = native_from_file(file, &hp, &names, &inverse_frequencies, total, progress)?
            {
                info.vocab_size = native.output.rows;
                info.compute = format!("cpu native, {}", crate::kernels::Isa::detect().name());
                return Ok(Self { info, imp: Implementation::Native(native) });
            }
        }
        let reader = TensorReader { file, device: opts.device.clone(), done: 0, total, progress };
        let tensors = TensorLlama::read(reader, hp, info.context_length, &inverse_frequencies)?;
        info.vocab_size = tensors.vocab_size();
        info.compute = format!("candle tensors, {}", if tensors.device.is_cpu() { "cpu" } else { "gpu" });
        Ok(Self { info, imp: Implementation::Tensors(tensors) })
    }
}

impl Hyper {
    /// The shape from the file's metadata, refused where the heads do not divide the width or
    /// RoPE turns only part of each head.
    fn from_file(file: &GgufFile) -> Result<Self> {
        let dim = file.u64(&key("embedding_length"))? as usize;
        let n_heads = file.u64(&key("attention.head_count"))? as usize;
        let n_kv_heads = file.opt_u64(&key("attention.head_count_kv")).unwrap_or(n_heads as u64) as usize;
        if n_heads == 0
            || n_kv_heads == 0
            || !n_heads.is_multiple_of(n_kv_heads)
            || !dim.is_multiple_of(n_heads)
        {
            return Err(Error::model_format(format!(
                "'{}': inconsistent attention shape: width {dim}, {n_heads} heads, {n_kv_heads} KV heads",
                file.path().display()
            )));
        }
        let head_dim =
            file.opt_u64(&key("attention.key_length")).map(|v| v as usize).unwrap_or(dim / n_heads);
        let rope_dim = file.opt_u64(&key("rope.dimension_count")).map(|v| v as usize).unwrap_or(head_dim);
        if rope_dim != head_dim || !head_dim.is_multiple_of(2) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "'{}': partial rotary embeddings (rope dim {rope_dim}, head dim {head_dim}) are not supported",
                    file.path().display()
                ),
            ));
        }
        Ok(Self {
            n_layers: file.u64(&key("block_count"))? as usize,
            dim,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim: file.u64(&key("feed_forward_length"))? as usize,
            rope_base: file.opt_f32(&key("rope.freq_base")).unwrap_or(10_000.0),
            rms_eps: file.opt_f32(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f64,
        })
    }
}

/// What the metadata says about the model and the context it serves; the vocabulary size and
/// the compute path are known once the weights are read.
fn model_info(file: &GgufFile, hp: &Hyper, requested_context: usize) -> ModelInfo {
    let trained_context_length = file.opt_u64(&key("context_length")).unwrap_or(2048) as usize;
    let context_length = match requested_context {
        0 => trained_context_length.min(DEFAULT_MAX_CONTEXT),
        n => n,
    };
    let name = file.opt_str("general.name").map(str::to_string).unwrap_or_else(|| {
        file.path().file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
    });
    ModelInfo {
        architecture: ARCH.to_string(),
        name,
        vocab_size: 0,
        trained_context_length,
        context_length,
        n_layers: hp.n_layers,
        embedding_length: hp.dim,
        compute: String::new(),
    }
}

/// Every tensor the model reads (`output.weight` only where the output layer is not tied to
/// the embeddings): loading progress counts their bytes.
fn tensor_names(file: &GgufFile, n_layers: usize) -> Vec<String> {
    let mut names: Vec<String> = vec!["token_embd.weight".into(), "output_norm.weight".into()];
    if file.has_tensor("output.weight") {
        names.push("output.weight".into());
    }
    for i in 0..n_layers {
        names.extend(LAYER_TENSORS.iter().map(|t| format!("blk.{i}.{t}.weight")));
    }
    names
}

/// RoPE's inverse frequencies, with Llama 3.1-style frequency factors when the file carries them.
fn rope_frequencies(file: &GgufFile, hp: &Hyper, device: &Device) -> Result<Vec<f32>> {
    let factors = if file.has_tensor("rope_freqs.weight") {
        Some(
            dequant(file.tensor("rope_freqs.weight", device)?, device)?
                .to_vec1::<f32>()
                .map_err(Error::backend)?,
        )
    } else {
        None
    };
    rope_inverse_frequencies(hp.head_dim, hp.rope_base, factors.as_deref())
}

/// Reads tensors for the candle path: checks their shapes and reports progress as the fraction
/// of `total` bytes read.
struct TensorReader<'f, 'p> {
    file: &'f GgufFile,
    device: Device,
    done: u64,
    total: u64,
    progress: Progress<'p>,
}

impl TensorReader<'_, '_> {
    fn read(&mut self, name: &str, expect: Option<&[usize]>) -> Result<QTensor> {
        let t = self.file.tensor(name, &self.device)?;
        if let Some(expect) = expect.filter(|e| t.shape().dims() != *e) {
            return Err(Error::model_format(format!(
                "'{}': tensor '{name}' has shape {:?}, expected {expect:?}",
                self.file.path().display(),
                t.shape().dims()
            )));
        }
        self.done += self.file.tensor_bytes(name);
        if !(self.progress)(self.done as f32 / self.total as f32) {
            return Err(Error::load_cancelled());
        }
        Ok(t)
    }

    fn norm(&mut self, name: &str, dim: usize) -> Result<Tensor> {
        dequant(self.read(name, Some(&[dim]))?, &self.device)
    }

    fn linear(&mut self, name: &str, rows: usize, cols: usize) -> Result<Linear> {
        linear(self.read(name, Some(&[rows, cols]))?)
    }

    /// The embedding table; its rows are the vocabulary.
    fn embeddings(&mut self, dim: usize) -> Result<QTensor> {
        let t = self.read("token_embd.weight", None)?;
        match t.shape().dims() {
            [_, d] if *d == dim => Ok(t),
            other => Err(Error::model_format(format!(
                "'{}': tensor 'token_embd.weight' has shape {other:?}, expected [vocab, {dim}]",
                self.file.path().display()
            ))),
        }
    }

    fn layer(&mut self, i: usize, hp: &Hyper) -> Result<Layer> {
        let n = |t: &str| format!("blk.{i}.{t}.weight");
        let (dim, ffn_dim) = (hp.dim, hp.ffn_dim);
        let (q_dim, kv_dim) = (hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim);
        Ok(Layer {
            attn_norm: self.norm(&n("attn_norm"), dim)?,
            qkv: Projections::new(vec![
                self.linear(&n("attn_q"), q_dim, dim)?,
                self.linear(&n("attn_k"), kv_dim, dim)?,
                self.linear(&n("attn_v"), kv_dim, dim)?,
            ]),
            wo: self.linear(&n("attn_output"), dim, q_dim)?,
            ffn_norm: self.norm(&n("ffn_norm"), dim)?,
            gate_up: Projections::new(vec![
                self.linear(&n("ffn_gate"), ffn_dim, dim)?,
                self.linear(&n("ffn_up"), ffn_dim, dim)?,
            ]),
            down: self.linear(&n("ffn_down"), dim, ffn_dim)?,
        })
    }
}

impl TensorLlama {
    /// Every weight read through candle (the GPU path, and formats our kernels lack).
    fn read(
        mut reader: TensorReader<'_, '_>,
        hp: Hyper,
        context_length: usize,
        inverse_frequencies: &[f32],
    ) -> Result<Self> {
        let device = reader.device.clone();
        let (cos, sin) = rope_tables(inverse_frequencies, context_length, &device)?;
        let embeddings = reader.embeddings(hp.dim)?;
        let vocab_size = embeddings.shape().dims()[0];
        let output_norm = reader.norm("output_norm.weight", hp.dim)?;
        let output = if reader.file.has_tensor("output.weight") {
            reader.linear("output.weight", vocab_size, hp.dim)?
        } else {
            // Tied embeddings: the output layer reads the embedding table (a second copy, since
            // the output layer is repacked; the embedding lookup keeps the GGUF form).
            linear(reader.file.tensor("token_embd.weight", &device)?)?
        };
        let layers = (0..hp.n_layers).map(|i| reader.layer(i, &hp)).collect::<Result<Vec<_>>>()?;
        if !(reader.progress)(1.0) {
            return Err(Error::load_cancelled());
        }
        Ok(Self { hp, device, embeddings, layers, output_norm, output, cos, sin })
    }

    fn vocab_size(&self) -> usize {
        self.embeddings.shape().dims()[0]
    }

    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        cache: &mut Option<(Tensor, Tensor)>,
        pos: usize,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let hp = &self.hp;
        let qkv = layer.qkv.forward(x)?;
        let heads = |y: &Tensor, n: usize| -> candle_core::Result<Tensor> {
            y.reshape((b, t, n, hp.head_dim))?.transpose(1, 2)?.contiguous()
        };
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        // GGUF stores Llama's Q/K rows permuted for the interleaved rotation.
        let q = candle_nn::rotary_emb::rope_i(&heads(&qkv[0], hp.n_heads)?, &cos, &sin)?;
        let k = candle_nn::rotary_emb::rope_i(&heads(&qkv[1], hp.n_kv_heads)?, &cos, &sin)?;
        let v = heads(&qkv[2], hp.n_kv_heads)?;
        // The cache holds f16, like the native path's (half the memory).
        let (k, v) = (k.to_dtype(DType::F16)?, v.to_dtype(DType::F16)?);
        let (k, v) = match cache.take() {
            Some((ck, cv)) => (Tensor::cat(&[&ck, &k], 2)?, Tensor::cat(&[&cv, &v], 2)?),
            None => (k, v),
        };
        *cache = Some((k.clone(), v.clone()));
        let rep = hp.n_heads / hp.n_kv_heads;
        let k = candle_transformers::utils::repeat_kv(k.to_dtype(q.dtype())?, rep)?.contiguous()?;
        let v = candle_transformers::utils::repeat_kv(v.to_dtype(q.dtype())?, rep)?.contiguous()?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (hp.head_dim as f64).sqrt()))?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, hp.n_heads * hp.head_dim))?;
        layer.wo.forward(&y)
    }

    /// `Ok(None)` when interrupted.
    fn forward_inner(
        &self,
        tokens: &[u32],
        cache: &mut LlamaCache,
        interrupt: &dyn Fn() -> bool,
    ) -> candle_core::Result<Option<Vec<f32>>> {
        let t = tokens.len();
        let pos = cache.len;
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embeddings.embedding(&ids)?.unsqueeze(0)?;
        let mask = if t > 1 { Some(causal_mask(t, pos, &self.device)?) } else { None };
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            if interrupt() {
                return Ok(None);
            }
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.hp.rms_eps as f32)?;
            x = (x + self.attention(layer, &h, kv, pos, mask.as_ref())?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.hp.rms_eps as f32)?;
            let gate_up = layer.gate_up.forward(&h)?;
            let act = (candle_nn::ops::silu(&gate_up[0])? * &gate_up[1])?;
            x = (x + layer.down.forward(&act)?)?;
        }
        cache.len = pos + t;
        let last = x.narrow(1, t - 1, 1)?.contiguous()?;
        let last = candle_nn::ops::rms_norm(&last, &self.output_norm, self.hp.rms_eps as f32)?;
        self.output.forward(&last)?.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>().map(Some)
    }
}

impl Llama {
    fn check(&self, tokens: &[u32], cached: usize) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::new(ErrorKind::Internal, "forward called with no tokens"));
        }
        if cached + tokens.len() > self.info.context_length {
            return Err(Error::new(
                ErrorKind::ContextOverflow,
                format!(
                    "{cached} cached + {} new tokens exceed the context length {}",
                    tokens.len(),
                    self.info.context_length
                ),
            ));
        }
        if let Some(bad) = tokens.iter().find(|&&id| id as usize >= self.info.vocab_size) {
            return Err(Error::invalid_argument(format!(
                "token id {bad} is out of range (vocabulary size {})",
                self.info.vocab_size
            )));
        }
        Ok(())
    }
}

fn wrong_cache() -> Error {
    Error::new(ErrorKind::Internal, "a cache from another model was passed to the Llama model")
}

fn interrupted() -> Error {
    Error::new(ErrorKind::Cancelled, "interrupted")
}

impl SequenceCache for NativeCache {
    fn len(&self) -> usize {
        self.len
    }

    fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.cut(len);
        }
    }

    fn fork(&self, len: usize) -> Option<Box<dyn SequenceCache>> {
        Some(Box::new(self.prefix(len.min(self.len))))
    }

    fn memory_bytes(&self) -> usize {
        NativeCache::memory_bytes(self)
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl LanguageModel for Llama {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn new_cache(&self) -> Box<dyn SequenceCache> {
        match &self.imp {
            Implementation::Native(m) => {
                Box::new(NativeCache::new(m.hp.n_layers, m.hp.n_kv_heads, m.hp.head_dim))
            }
            Implementation::Tensors(m) => Box::new(LlamaCache { layers: vec![None; m.hp.n_layers], len: 0 }),
        }
    }

    fn forward(
        &self,
        tokens: &[u32],
        cache: &mut dyn SequenceCache,
        interrupt: &dyn Fn() -> bool,
    ) -> Result<Vec<f32>> {
        self.check(tokens, cache.len())?;
        match &self.imp {
            Implementation::Native(m) => {
                let cache = cache.as_any_mut().downcast_mut::<NativeCache>().ok_or_else(wrong_cache)?;
                let mut batch = [native::BatchItem { tokens, cache }];
                m.forward_batch(&mut batch, interrupt).and_then(|mut l| l.pop()).ok_or_else(interrupted)
            }
            Implementation::Tensors(m) => {
                let cache = cache.as_any_mut().downcast_mut::<LlamaCache>().ok_or_else(wrong_cache)?;
                let before = cache.len;
                // A half-applied step leaves layers with different lengths: roll back to where it began.
                match m.forward_inner(tokens, cache, interrupt) {
                    Ok(Some(logits)) => Ok(logits),
                    Ok(None) => {
                        cache.cut_layers(before);
                        Err(interrupted())
                    }
                    Err(e) => {
                        cache.cut_layers(before);
                        Err(Error::backend(e))
                    }
                }
            }
        }
    }

    fn forward_batch(
        &self,
        items: &mut [BatchStep<'_>],
        interrupt: &dyn Fn() -> bool,
    ) -> Vec<Result<Vec<f32>>> {
        let Implementation::Native(m) = &self.imp else {
            return items.iter_mut().map(|it| self.forward(it.tokens, &mut *it.cache, interrupt)).collect();
        };
        // Items that fail their checks get their error; the rest run as one batch.
        let mut results: Vec<Option<Result<Vec<f32>>>> = Vec::with_capacity(items.len());
        let mut batch = Vec::new();
        for it in items.iter_mut() {
            match self.check(it.tokens, it.cache.len()) {
                Err(e) => results.push(Some(Err(e))),
                Ok(()) => match it.cache.as_any_mut().downcast_mut::<NativeCache>() {
                    Some(cache) => {
                        results.push(None);
                        batch.push(native::BatchItem { tokens: it.tokens, cache });
                    }
                    None => results.push(Some(Err(wrong_cache()))),
                },
            }
        }
        let mut logits = match m.forward_batch(&mut batch, interrupt) {
            Some(l) => l.into_iter(),
            None => return results.into_iter().map(|r| r.unwrap_or_else(|| Err(interrupted()))).collect(),
        };
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    logits.next().ok_or_else(|| Error::new(ErrorKind::Internal, "batch lost a row"))
                })
            })
            .collect()
    }
}

/// The native model read straight from the file: raw GGUF blocks repacked into our kernels'
/// form (Q/K/V and gate/up stacked as they are read where their formats agree; Q4_K_M files
/// often store V in Q6_K), with no intermediate tensors. `None` (nothing read) when some matrix
/// is in a format our kernels do not take: those run on candle. RoPE tables are left empty for
/// the caller.
fn native_from_file(
    file: &GgufFile,
    hp: &Hyper,
    names: &[String],
    inverse_frequencies: &[f32],
    total: u64,
    progress: Progress<'_>,
) -> Result<Option<native::NativeLlama>> {
    let format = |file: &GgufFile, name: &str| file.tensor_layout(name).and_then(|l| weight_format(l.0));
    let (q_dim, kv_dim) = (hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim);
    let output_name = if file.has_tensor("output.weight") { "output.weight" } else { "token_embd.weight" };
    let mut usable = format(file, "token_embd.weight").is_some() && format(file, output_name).is_some();
    for i in 0..hp.n_layers {
        usable &= ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
            .iter()
            .all(|t| format(file, &format!("blk.{i}.{t}.weight")).is_some());
    }
    if !usable {
        return Ok(None);
    }
    let data = file.mapped();
    let check = |file: &GgufFile, name: &str, rows: Option<usize>, cols: usize| -> Result<&[u8]> {
        let dims = file.tensor_layout(name).map(|l| l.1).unwrap_or_default();
        let ok = match rows {
            Some(r) => dims == [r, cols],
            None => dims.len() == 2 && dims[1] == cols,
        };
        if !ok {
            let want = rows.map(|r| format!("[{r}, {cols}]")).unwrap_or_else(|| format!("[vocab, {cols}]"));
            return Err(Error::model_format(format!(
                "'{}': tensor '{name}' has shape {dims:?}, expected {want}",
                file.path().display()
            )));
        }
        Ok(&data[file.tensor_range(name)?])
    };
    let floats = |file: &GgufFile, name: &str, len: usize| -> Result<Vec<f32>> {
        let v = dequant(file.tensor(name, &Device::Cpu)?, &Device::Cpu)?
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(Error::backend)?;
        if v.len() != len {
            return Err(Error::model_format(format!(
                "'{}': tensor '{name}' has {} values, expected {len}",
                file.path().display(),
                v.len()
            )));
        }
        Ok(v)
    };
    // Every matrix is planned first and then repacked into one WeightSpace (a few huge
    // allocations for the whole model: see WeightSpace).
    let mut plan = MatrixPlan::default();
    let dim = hp.dim;
    let embd = check(file, "token_embd.weight", None, dim)?;
    let embd_format = format(file, "token_embd.weight").expect("checked");
    let vocab = embd.len()
        / (dim / (crate::kernels::BLOCK * embd_format.kernel_blocks()) * embd_format.gguf_block_bytes());
    let embeddings = plan.add(embd_format, &[(embd, vocab)], dim);
    let output = if output_name == "output.weight" {
        let output_format = format(file, output_name).expect("checked");
        plan.add(output_format, &[(check(file, output_name, Some(vocab), dim)?, vocab)], dim)
    } else {
        // Tied: the output layer is the embedding table; one copy serves both.
        embeddings
    };
    let output_norm = floats(file, "output_norm.weight", dim)?;
    struct LayerPlan {
        attn_norm: Vec<f32>,
        qkv: Vec<usize>,
        wo: usize,
        ffn_norm: Vec<f32>,
        gate_up: Vec<usize>,
        down: usize,
    }
    let mut layer_plans = Vec::with_capacity(hp.n_layers);
    for i in 0..hp.n_layers {
        let n = |t: &str| format!("blk.{i}.{t}.weight");
        let [fq, fk, fv, fo, fg, fu, fd] =
            ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
                .map(|t| format(file, &n(t)).expect("checked"));
        let (q, k, v) = (
            check(file, &n("attn_q"), Some(q_dim), dim)?,
            check(file, &n("attn_k"), Some(kv_dim), dim)?,
            check(file, &n("attn_v"), Some(kv_dim), dim)?,
        );
        let qkv = plan.side_by_side(&[(fq, q, q_dim), (fk, k, kv_dim), (fv, v, kv_dim)], dim);
        let wo = plan.add(fo, &[(check(file, &n("attn_output"), Some(dim), q_dim)?, dim)], q_dim);
        let (g, u) = (
            check(file, &n("ffn_gate"), Some(hp.ffn_dim), dim)?,
            check(file, &n("ffn_up"), Some(hp.ffn_dim), dim)?,
        );
        let gate_up = plan.side_by_side(&[(fg, g, hp.ffn_dim), (fu, u, hp.ffn_dim)], dim);
        let down = plan.add(fd, &[(check(file, &n("ffn_down"), Some(dim), hp.ffn_dim)?, dim)], hp.ffn_dim);
        layer_plans.push(LayerPlan {
            attn_norm: floats(file, &n("attn_norm"), dim)?,
            qkv,
            wo,
            ffn_norm: floats(file, &n("ffn_norm"), dim)?,
            gate_up,
            down,
        });
    }
    debug_assert!(names.iter().all(|n| file.has_tensor(n) || n == "output.weight"));
    let matrices = plan.repack(total, progress)?;
    let side_by_side =
        |indices: Vec<usize>| native::SideBySide(indices.into_iter().map(|i| matrices[i].clone()).collect());
    let (embeddings, output) = (matrices[embeddings].clone(), matrices[output].clone());
    let layers = layer_plans
        .into_iter()
        .map(|p| native::NativeLayer {
            attn_norm: p.attn_norm,
            qkv: side_by_side(p.qkv),
            wo: matrices[p.wo].clone(),
            ffn_norm: p.ffn_norm,
            gate_up: side_by_side(p.gate_up),
            down: matrices[p.down].clone(),
        })
        .collect();
    if !progress(1.0) {
        return Err(Error::load_cancelled());
    }
    Ok(Some(native::NativeLlama {
        hp: hp.clone(),
        embeddings,
        output,
        output_norm,
        layers,
        inverse_frequencies: inverse_frequencies.to_vec(),
    }))
}

fn qmatmul(t: QTensor) -> Result<QMatMul> {
    QMatMul::from_qtensor(t).map_err(Error::backend)
}

/// The block format our kernels take for a GGUF type, if they take it.
fn weight_format(dtype: GgmlDType) -> Option<WeightFormat> {
    match dtype {
        GgmlDType::Q4_0 => Some(WeightFormat::Q4_0),
        GgmlDType::Q4_1 => Some(WeightFormat::Q4_1),
        GgmlDType::Q8_0 => Some(WeightFormat::Q8_0),
        GgmlDType::Q4K => Some(WeightFormat::Q4K),
        GgmlDType::Q6K => Some(WeightFormat::Q6K),
        _ => None,
    }
}

/// The matrices of a model to repack, with their GGUF bytes.
#[derive(Default)]
struct MatrixPlan<'a> {
    shapes: Vec<MatrixShape>,
    parts: Vec<Vec<(&'a [u8], usize)>>,
}

impl<'a> MatrixPlan<'a> {
    /// Plans a matrix whose rows are those of `parts` one after another; returns its index.
    fn add(&mut self, format: WeightFormat, parts: &[(&'a [u8], usize)], cols: usize) -> usize {
        self.shapes.push(MatrixShape { format, rows: parts.iter().map(|p| p.1).sum(), cols });
        self.parts.push(parts.to_vec());
        self.shapes.len() - 1
    }

    /// Plans matrices applied to the same input: one stacked matrix when their formats agree
    /// and groups do not straddle parts, else one per part. Returns their indices.
    fn side_by_side(&mut self, parts: &[(WeightFormat, &'a [u8], usize)], cols: usize) -> Vec<usize> {
        let (f0, whole) = (parts[0].0, &parts[..parts.len() - 1]);
        if parts.iter().all(|p| p.0 == f0) && whole.iter().all(|p| p.2 % GROUP == 0) {
            let stack: Vec<(&[u8], usize)> = parts.iter().map(|p| (p.1, p.2)).collect();
            return vec![self.add(f0, &stack, cols)];
        }
        parts.iter().map(|p| self.add(p.0, &[(p.1, p.2)], cols)).collect()
    }

    /// Repacks every planned matrix into one [`WeightSpace`], reporting progress as the
    /// fraction of `total` GGUF bytes repacked.
    fn repack(self, total: u64, progress: Progress<'_>) -> Result<Vec<Arc<QuantMatrix>>> {
        let mut space = WeightSpace::new(self.shapes).map_err(Error::model_format)?;
        let mut done = 0u64;
        for (i, parts) in self.parts.iter().enumerate() {
            space.fill(i, parts).map_err(Error::model_format)?;
            done += parts.iter().map(|p| p.0.len() as u64).sum::<u64>();
            if !progress(done as f32 / total as f32) {
                return Err(Error::load_cancelled());
            }
        }
        Ok(space.finish().into_iter().map(Arc::new).collect())
    }
}

/// The matrix repacked for our kernels, when it is on the CPU in a format they take.
fn own_matrix(t: &QTensor) -> Result<Option<QuantMatrix>> {
    let Some(format) = weight_format(t.dtype()) else { return Ok(None) };
    match (t.device().is_cpu(), t.shape().dims()) {
        (true, [rows, cols]) => {
            let bytes = t.data().map_err(Error::backend)?;
            QuantMatrix::from_gguf_bytes(format, &bytes, *rows, *cols).map(Some).map_err(Error::model_format)
        }
        _ => Ok(None),
    }
}

fn linear(t: QTensor) -> Result<Linear> {
    match own_matrix(&t)? {
        Some(m) => Ok(Linear::Own(Arc::new(m))),
        None => Ok(Linear::Candle(qmatmul(t)?)),
    }
}

fn dequant(t: QTensor, device: &Device) -> Result<Tensor> {
    t.dequantize(device).map_err(Error::backend)
}

/// Additive mask for `t` new positions after `pos` cached ones: position i sees cache + 0..=i.
fn causal_mask(t: usize, pos: usize, device: &Device) -> candle_core::Result<Tensor> {
    let kv = pos + t;
    let data: Vec<f32> = (0..t)
        .flat_map(|i| (0..kv).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(data, (t, kv), device)
}

/// RoPE's angle per position for each pair of a head's dimensions.
fn rope_inverse_frequencies(head_dim: usize, base: f32, factors: Option<&[f32]>) -> Result<Vec<f32>> {
    let half = head_dim / 2;
    if let Some(f) = factors {
        if f.len() != half {
            return Err(Error::model_format(format!("rope_freqs has {} entries, expected {half}", f.len())));
        }
    }
    Ok((0..half)
        .map(|i| {
            let f = 1.0 / base.powf(2.0 * i as f32 / head_dim as f32);
            f / factors.map(|fs| fs[i]).unwrap_or(1.0)
        })
        .collect())
}

/// The candle path's cosine and sine tables, `ctx × head_dim / 2`.
fn rope_tables(inv_freq: &[f32], ctx: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = inv_freq.len();
    let build = || -> candle_core::Result<(Tensor, Tensor)> {
        let inv = Tensor::from_vec(inv_freq.to_vec(), (1, half), device)?;
        let positions = Tensor::arange(0u32, ctx as u32, device)?.to_dtype(DType::F32)?.reshape((ctx, 1))?;
        let angles = positions.broadcast_mul(&inv)?;
        Ok((angles.cos()?, angles.sin()?))
    };
    build().map_err(Error::backend)
}
