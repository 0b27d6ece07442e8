//! The forward pass over candle tensors: the path for GPUs, and the comparison the native path
//! is tested against. It runs the plain Llama-family layer (no biases, Q/K norms, sandwich
//! norms, fused tensors or sliding windows, interleaved rope, SiLU); other families run on the
//! native CPU path only, for now.

use std::any::Any;
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::config::Config;
use super::family::{Activation, RopeStyle};
use super::interrupted;
use super::weights::weight_format;
use crate::error::{Error, ErrorKind, Result};
use crate::kernels::QuantMatrix;
use crate::model::gguf::{GgmlType, GgufFile};
use crate::model::{Progress, SequenceCache};

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

/// The forward pass over candle tensors.
pub struct TensorTransformer {
    config: Config,
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
pub struct TensorCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl SequenceCache for TensorCache {
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
        let mut copy = TensorCache { layers: self.layers.clone(), len: self.len };
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

impl TensorCache {
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

    fn layer(&mut self, i: usize, config: &Config) -> Result<Layer> {
        let n = |t: &str| format!("blk.{i}.{t}.weight");
        let (dim, ffn_dim) = (config.dim, config.ffn_dim);
        let (q_dim, kv_dim) = (config.q_dim(), config.kv_dim());
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

impl TensorTransformer {
    /// Every weight read through candle (the GPU path, and formats our kernels lack); refused
    /// for files this path does not compute faithfully.
    pub fn load(
        file: &GgufFile,
        config: Config,
        device: &Device,
        context_length: usize,
        progress: Progress<'_>,
    ) -> Result<Self> {
        check_plain_layers(file, &config)?;
        let names = tensor_names(file, config.n_layers);
        let total: u64 = names.iter().map(|n| file.tensor_bytes(n)).sum::<u64>().max(1);
        let factors = match config.rope.factor_tensor(context_length).filter(|n| file.has_tensor(n)) {
            Some(name) => Some(file.tensor_f32(name)?),
            None => None,
        };
        let inverse_frequencies =
            config.rope.inverse_frequencies(config.head_dim, config.rope.base, factors.as_deref())?;
        let reader = TensorReader { file, device: device.clone(), done: 0, total, progress };
        Self::read(reader, config, context_length, &inverse_frequencies)
    }

    fn read(
        mut reader: TensorReader<'_, '_>,
        config: Config,
        context_length: usize,
        inverse_frequencies: &[f32],
    ) -> Result<Self> {
        let device = reader.device.clone();
        let (cos, sin) = rope_tables(inverse_frequencies, context_length, &device)?;
        let embeddings = reader.embeddings(config.dim)?;
        let vocab_size = embeddings.shape().dims()[0];
        let output_norm = reader.norm("output_norm.weight", config.dim)?;
        let output = if reader.file.has_tensor("output.weight") {
            reader.linear("output.weight", vocab_size, config.dim)?
        } else {
            // Tied embeddings: the output layer reads the embedding table (a second copy, since
            // the output layer is repacked; the embedding lookup keeps the GGUF form).
            linear(reader.file.tensor("token_embd.weight", &device)?)?
        };
        let layers = (0..config.n_layers).map(|i| reader.layer(i, &config)).collect::<Result<Vec<_>>>()?;
        if !(reader.progress)(1.0) {
            return Err(Error::load_cancelled());
        }
        Ok(Self { config, device, embeddings, layers, output_norm, output, cos, sin })
    }

    pub fn is_cpu(&self) -> bool {
        self.device.is_cpu()
    }

    pub fn new_cache(&self) -> TensorCache {
        TensorCache { layers: vec![None; self.config.n_layers], len: 0 }
    }

    /// Appends `tokens` to `cache` and returns the last token's logits; on failure or
    /// interruption the cache is rolled back to where the step began (a half-applied step
    /// leaves layers with different lengths).
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut TensorCache,
        interrupt: &dyn Fn() -> bool,
    ) -> Result<Vec<f32>> {
        let before = cache.len;
        match self.forward_inner(tokens, cache, interrupt) {
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

    pub fn vocab_size(&self) -> usize {
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
        let hp = &self.config;
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
        let scores = (q.matmul(&k.t()?)? * hp.attention_scale as f64)?;
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
        cache: &mut TensorCache,
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
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.config.rms_eps)?;
            x = (x + self.attention(layer, &h, kv, pos, mask.as_ref())?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.config.rms_eps)?;
            let gate_up = layer.gate_up.forward(&h)?;
            let act = (candle_nn::ops::silu(&gate_up[0])? * &gate_up[1])?;
            x = (x + layer.down.forward(&act)?)?;
        }
        cache.len = pos + t;
        let last = x.narrow(1, t - 1, 1)?.contiguous()?;
        let last = candle_nn::ops::rms_norm(&last, &self.output_norm, self.config.rms_eps)?;
        self.output.forward(&last)?.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>().map(Some)
    }
}

fn qmatmul(t: QTensor) -> Result<QMatMul> {
    QMatMul::from_qtensor(t).map_err(Error::backend)
}

/// The matrix repacked for our kernels, when it is on the CPU in a format they take.
fn own_matrix(t: &QTensor) -> Result<Option<QuantMatrix>> {
    let Some(format) = weight_format(GgmlType::of_candle(t.dtype())) else { return Ok(None) };
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

/// The tensors of one layer, by their name within it.
const LAYER_TENSORS: [&str; 9] =
    ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"];

/// Every tensor this path reads (`output.weight` only where the output layer is not tied to
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

/// Unsupported unless the file is made of the plain layer this path computes: anything else
/// would run and give wrong logits.
fn check_plain_layers(file: &GgufFile, config: &Config) -> Result<()> {
    let f = config.family;
    let extra = ["attn_qkv.weight", "attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_output.bias"];
    let plain = f.rope == RopeStyle::Interleaved
        && f.activation == Activation::Silu
        && !f.qk_norm
        && !f.sandwich_norms
        && !f.scale_embeddings
        && config.window.is_none()
        && config.logit_softcap.is_none()
        && (0..config.n_layers).all(|i| {
            extra.iter().all(|t| !file.has_tensor(&format!("blk.{i}.{t}")))
                && file.has_tensor(&format!("blk.{i}.ffn_gate.weight"))
        });
    if plain {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Unsupported,
        format!(
            "'{}': the candle tensor path (GPU, or weight formats the CPU kernels lack) runs only plain \
             Llama-family layers; this {} file needs the native CPU path",
            file.path().display(),
            f.architecture
        ),
    ))
}
