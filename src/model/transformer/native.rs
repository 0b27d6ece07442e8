//! The forward pass on the CPU without tensors: plain f32 buffers, our quantized kernels for
//! every matrix, and a batch of sequences per call, so one pass over the weights serves every
//! session that has work (continuous batching). Every family runs here; where they differ
//! (biases, Q/K norms, sandwich norms, the activation, the rotation, sliding windows) the
//! layer holds the optional part or [`Config`] says which variant.
//!
//! For Llama-family files it computes what the candle path in `super::tensors` computes
//! (tested against it, and every family against candle-transformers' reference models).

use std::sync::Arc;

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::config::Config;
use super::family::{Activation, RopeStyle};
use crate::kernels::attention::{attend, HeadCache};
use crate::kernels::elementwise::{dot, gelu_tanh_mul, rotate_halves, rotate_pairs, silu_mul};
use crate::kernels::{Isa, QuantMatrix, QuantizedActivations};
use crate::model::log_softmax_at;

pub(super) struct NativeLayer {
    pub attn_norm: Vec<f32>,
    /// Q, K and V (one fused matrix or their stack).
    pub qkv: SideBySide,
    /// Biases of Q, K and V side by side (Qwen2, some Phi-3 files).
    pub qkv_bias: Option<Vec<f32>>,
    /// Per-head RMS norm weights of queries and keys (`head_dim` each: Qwen3, Gemma 3).
    pub qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    pub wo: Arc<QuantMatrix>,
    pub wo_bias: Option<Vec<f32>>,
    /// Norm of the attention output before the residual (Gemma's sandwich norms).
    pub post_attention_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    /// Gate and up (one fused matrix or their stack).
    pub gate_up: SideBySide,
    pub down: Arc<QuantMatrix>,
    pub post_ffn_norm: Option<Vec<f32>>,
    /// Index into [`NativeTransformer::inverse_frequencies`]: the global or the local table.
    pub rope_table: usize,
    /// The positions this layer attends to, counting back from (and including) the query's.
    pub window: Option<usize>,
}

/// Matrices applied to the same input, each token's outputs side by side: one stacked matrix
/// (one round of thread wake-ups) where their formats agree, else one per part.
pub(super) struct SideBySide(pub Vec<Arc<QuantMatrix>>);

impl SideBySide {
    /// Each token's outputs of every part, side by side, into `out` (`tokens` rows).
    fn matmul_to(&self, x: &[f32], tokens: usize, out: &mut [f32]) {
        matmul_to(&self.0, x, tokens, out)
    }
}

/// The outputs of `parts` (matrices with the same input) for `tokens` rows of `x`, each
/// token's side by side, into `out`: a buffer the caller reuses, since every layer's outputs
/// have the same shape and a fresh zeroed vector per matmul cost a serial memset and a
/// malloc/free pair each (a few percent of a batched step).
fn matmul_to(parts: &[Arc<QuantMatrix>], x: &[f32], tokens: usize, out: &mut [f32]) {
    let acts = QuantizedActivations::quantize(x, parts[0].cols);
    let width: usize = parts.iter().map(|m| m.rows).sum();
    debug_assert_eq!(out.len(), tokens * width);
    let mut at = 0;
    for m in parts {
        let mut outs: Vec<&mut [f32]> =
            out.chunks_exact_mut(width).map(|row| &mut row[at..at + m.rows]).collect();
        m.matmul_into(&acts, Isa::detect(), &mut outs);
        at += m.rows;
    }
}

pub(super) struct NativeTransformer {
    pub config: Config,
    /// Shared with `output` when the model ties them.
    pub embeddings: Arc<QuantMatrix>,
    pub output: Arc<QuantMatrix>,
    pub output_norm: Vec<f32>,
    pub layers: Vec<NativeLayer>,
    /// RoPE's angle per position for each pair of a head's dimensions: the global table, and
    /// the local layers' one where their base differs. Cosines and sines are computed per step
    /// for its rows' positions (a few hundred values), not kept as tables for the whole context
    /// (2 MiB at 8k positions, and ~10 ms of a model's load).
    pub inverse_frequencies: Vec<Vec<f32>>,
}

/// Keys and values of one sequence: per layer and KV head, `len × head_dim` values each, in f16
/// like llama.cpp's default cache (half the memory and half the bytes attention reads). Each
/// head's rows are contiguous: attention reads one head at a time, and with all heads of a
/// position side by side it read a third of every few cache lines, a stride the hardware
/// prefetcher follows poorly (measured: 2.5× less useful bandwidth than a sequential read).
pub struct NativeCache {
    /// `layers[l][h]`: the keys and values of KV head h of layer l.
    pub(super) layers: Vec<Vec<HeadRows>>,
    pub(super) len: usize,
    head_dim: usize,
}

#[derive(Clone, Default)]
pub(super) struct HeadRows {
    pub keys: Vec<f16>,
    pub values: Vec<f16>,
}

impl NativeCache {
    pub(super) fn new(n_layers: usize, n_kv_heads: usize, head_dim: usize) -> Self {
        Self { layers: vec![vec![HeadRows::default(); n_kv_heads]; n_layers], len: 0, head_dim }
    }

    /// Room for `additional` more positions in every head, or an error: a cache that cannot
    /// grow fails its step instead of aborting the host process when the allocator refuses.
    pub(super) fn reserve(&mut self, additional: usize) -> Result<(), String> {
        let values = additional.saturating_mul(self.head_dim);
        for rows in self.layers.iter_mut().flatten() {
            rows.keys.try_reserve(values).and_then(|()| rows.values.try_reserve(values)).map_err(|_| {
                format!("out of memory: the key/value cache cannot grow by {additional} positions")
            })?;
        }
        Ok(())
    }

    /// Forgets every position at or after `len` (also repairs a step that stopped halfway,
    /// where early layers hold more positions than `len`).
    pub(super) fn cut(&mut self, len: usize) {
        for head in self.layers.iter_mut().flatten() {
            head.keys.truncate(len * self.head_dim);
            head.values.truncate(len * self.head_dim);
        }
        self.len = self.len.min(len);
    }

    /// A copy of the first `len` positions (`len` ≤ `self.len`).
    pub(super) fn prefix(&self, len: usize) -> Self {
        let at = len * self.head_dim;
        let copy = |h: &HeadRows| HeadRows { keys: h.keys[..at].to_vec(), values: h.values[..at].to_vec() };
        let layers = self.layers.iter().map(|heads| heads.iter().map(copy).collect()).collect();
        Self { layers, len, head_dim: self.head_dim }
    }

    /// Bytes held, spare capacity included.
    pub(super) fn memory_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|h| (h.keys.capacity() + h.values.capacity()) * std::mem::size_of::<f16>())
            .sum()
    }
}

/// One sequence's part of a batch.
pub struct BatchItem<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut NativeCache,
}

/// RMS norm of each row of `from` (rows as long as `weight`) into the same row of `out`.
fn rms_norm_rows(out: &mut [f32], from: &[f32], weight: &[f32], eps: f32) {
    for (out, from) in out.chunks_exact_mut(weight.len()).zip(from.chunks_exact(weight.len())) {
        let scale = rms_scale(from, eps);
        for ((o, v), w) in out.iter_mut().zip(from).zip(weight) {
            *o = v * scale * w;
        }
    }
}

/// As [`rms_norm_rows`], in place.
fn rms_norm_in_place(xs: &mut [f32], weight: &[f32], eps: f32) {
    for row in xs.chunks_exact_mut(weight.len()) {
        let scale = rms_scale(row, eps);
        row.iter_mut().zip(weight).for_each(|(v, w)| *v *= scale * w);
    }
}

fn rms_scale(row: &[f32], eps: f32) -> f32 {
    1.0 / (dot(row, row) / row.len() as f32 + eps).sqrt()
}

/// Adds `bias` to every row of `xs` (rows as long as `bias`).
fn add_bias(xs: &mut [f32], bias: &[f32]) {
    for row in xs.chunks_exact_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
    }
}

fn append_f16(to: &mut Vec<f16>, from: &[f32]) {
    let at = to.len();
    to.resize(at + from.len(), f16::ZERO);
    to[at..].convert_from_f32_slice(from);
}

impl NativeTransformer {
    /// The cosines and sines of position `pos`'s angles in each rope table, `head_dim / 2`
    /// each (as the candle path's tables compute them: the f32 product of position and
    /// frequency), times the rope's attention factor.
    fn rope_angles(&self, pos: usize) -> Vec<(Vec<f32>, Vec<f32>)> {
        let factor = self.config.rope.attention_factor;
        self.inverse_frequencies
            .iter()
            .map(|table| {
                table
                    .iter()
                    .map(|f| (pos as f32 * f).sin_cos())
                    .map(|(s, c)| (c * factor, s * factor))
                    .unzip()
            })
            .collect()
    }

    /// Rotates each head in `x` by the angles of one position, in the family's pairing.
    fn rope(&self, x: &mut [f32], (cos, sin): &(Vec<f32>, Vec<f32>)) {
        for head in x.chunks_exact_mut(self.config.head_dim) {
            match self.config.family.rope {
                RopeStyle::Interleaved => rotate_pairs(Isa::detect(), head, cos, sin),
                RopeStyle::Halves => rotate_halves(head, cos, sin),
            }
        }
    }

    /// Each batch row's token embedding (scaled by √width where the family does).
    fn embed(&self, batch: &[BatchItem<'_>], n: usize) -> Vec<f32> {
        let dim = self.config.dim;
        let mut x = vec![0f32; n * dim];
        for (row, &id) in x.chunks_exact_mut(dim).zip(batch.iter().flat_map(|b| b.tokens)) {
            self.embeddings.dequantize_row(id as usize, row);
        }
        if self.config.family.scale_embeddings {
            // As llama.cpp: √width in f32.
            let scale = (dim as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= scale);
        }
        x
    }

    /// Appends each item's tokens to its cache and returns the logits of each item's last token.
    /// `None` when `interrupt` fired; every cache is then as it was.
    pub(super) fn forward_batch(
        &self,
        batch: &mut [BatchItem<'_>],
        interrupt: &dyn Fn() -> bool,
    ) -> Option<Vec<Vec<f32>>> {
        let x = self.run_layers(batch, interrupt)?;
        Some(self.logits(batch, &x))
    }

    /// Appends each item's tokens to its cache and returns every row's final hidden state
    /// (before the output norm). `None` when `interrupt` fired; every cache is then as it was.
    fn run_layers(&self, batch: &mut [BatchItem<'_>], interrupt: &dyn Fn() -> bool) -> Option<Vec<f32>> {
        let n: usize = batch.iter().map(|b| b.tokens.len()).sum();
        // (item, position) of every row of the batch.
        let rows: Vec<(usize, usize)> = batch
            .iter()
            .enumerate()
            .flat_map(|(i, b)| (0..b.tokens.len()).map(move |t| (i, b.cache.len + t)))
            .collect();
        let starts: Vec<usize> = batch.iter().map(|b| b.cache.len).collect();
        let angles: Vec<Vec<(Vec<f32>, Vec<f32>)>> =
            rows.iter().map(|&(_, pos)| self.rope_angles(pos)).collect();
        let mut step = Step::new(&self.config, n);
        let mut x = self.embed(batch, n);
        for (l, layer) in self.layers.iter().enumerate() {
            if interrupt() {
                for (b, &start) in batch.iter_mut().zip(&starts) {
                    b.cache.cut(start);
                }
                return None;
            }
            self.attention_block(l, layer, batch, &rows, &angles, &mut x, &mut step);
            self.ffn_block(layer, &mut x, &mut step);
        }
        for b in batch.iter_mut() {
            b.cache.len += b.tokens.len();
        }
        Some(x)
    }

    /// Appends one sequence's tokens to its cache and returns `ln p(next[i])` after each token
    /// i, every position in one pass. `None` when `interrupt` fired (the cache as it was).
    pub(super) fn score(
        &self,
        item: BatchItem<'_>,
        next: &[u32],
        interrupt: &dyn Fn() -> bool,
    ) -> Option<Vec<f32>> {
        // Output rows per chunk: each row's logits are a vocabulary of floats (1 MiB at 262k).
        const ROWS: usize = 16;
        let x = self.run_layers(&mut [item], interrupt)?;
        let dim = self.config.dim;
        let mut out = Vec::with_capacity(next.len());
        for (rows, targets) in x.chunks(ROWS * dim).zip(next.chunks(ROWS)) {
            let logits = self.output_rows(rows);
            out.extend(logits.iter().zip(targets).map(|(l, &t)| log_softmax_at(l, t as usize)));
        }
        Some(out)
    }

    /// `x += attention(norm(x))` for one layer, appending this step's keys and values to each
    /// item's cache.
    #[allow(clippy::too_many_arguments)]
    fn attention_block(
        &self,
        l: usize,
        layer: &NativeLayer,
        batch: &mut [BatchItem<'_>],
        rows: &[(usize, usize)],
        angles: &[Vec<(Vec<f32>, Vec<f32>)>],
        x: &mut [f32],
        step: &mut Step,
    ) {
        let c = &self.config;
        let (q_dim, kv_dim, n) = (c.q_dim(), c.kv_dim(), rows.len());
        let width = q_dim + 2 * kv_dim;
        rms_norm_rows(&mut step.h, x, &layer.attn_norm, c.rms_eps);
        layer.qkv.matmul_to(&step.h, n, &mut step.qkv);
        if let Some(bias) = &layer.qkv_bias {
            add_bias(&mut step.qkv, bias);
        }
        for (row, angles) in step.qkv.chunks_exact_mut(width).zip(angles) {
            let (qk, _) = row.split_at_mut(q_dim + kv_dim);
            if let Some((q_norm, k_norm)) = &layer.qk_norm {
                let (q, k) = qk.split_at_mut(q_dim);
                rms_norm_in_place(q, q_norm, c.rms_eps);
                rms_norm_in_place(k, k_norm, c.rms_eps);
            }
            self.rope(qk, &angles[layer.rope_table]);
        }
        for (row, &(i, _)) in step.qkv.chunks_exact(width).zip(rows) {
            let (keys, values) = row[q_dim..].split_at(kv_dim);
            for ((head, k), v) in batch[i].cache.layers[l]
                .iter_mut()
                .zip(keys.chunks_exact(c.head_dim))
                .zip(values.chunks_exact(c.head_dim))
            {
                append_f16(&mut head.keys, k);
                append_f16(&mut head.values, v);
            }
        }
        let attn = self.attention(l, layer.window, batch, rows, &step.qkv);
        matmul_to(std::slice::from_ref(&layer.wo), &attn, n, &mut step.o);
        self.add_residual(x, &mut step.o, layer.wo_bias.as_deref(), layer.post_attention_norm.as_deref());
    }

    /// `x += ffn(norm(x))` for one layer.
    fn ffn_block(&self, layer: &NativeLayer, x: &mut [f32], step: &mut Step) {
        let c = &self.config;
        let n = x.len() / c.dim;
        rms_norm_rows(&mut step.h, x, &layer.ffn_norm, c.rms_eps);
        layer.gate_up.matmul_to(&step.h, n, &mut step.gate_up);
        for (row, out) in step.gate_up.chunks_exact(2 * c.ffn_dim).zip(step.act.chunks_exact_mut(c.ffn_dim)) {
            let (gate, up) = row.split_at(c.ffn_dim);
            match c.family.activation {
                Activation::Silu => silu_mul(Isa::detect(), gate, up, out),
                Activation::GeluTanh => gelu_tanh_mul(Isa::detect(), gate, up, out),
            }
        }
        matmul_to(std::slice::from_ref(&layer.down), &step.act, n, &mut step.o);
        self.add_residual(x, &mut step.o, None, layer.post_ffn_norm.as_deref());
    }

    /// `x += norm(out + bias)`, with the bias and the (sandwich) norm where the layer has them.
    fn add_residual(&self, x: &mut [f32], out: &mut [f32], bias: Option<&[f32]>, norm: Option<&[f32]>) {
        if let Some(bias) = bias {
            add_bias(out, bias);
        }
        if let Some(norm) = norm {
            rms_norm_in_place(out, norm, self.config.rms_eps);
        }
        x.iter_mut().zip(out.iter()).for_each(|(a, b)| *a += b);
    }

    /// The logits of each item's last row (the only rows that reach the output layer).
    fn logits(&self, batch: &[BatchItem<'_>], x: &[f32]) -> Vec<Vec<f32>> {
        let dim = self.config.dim;
        let last_rows: Vec<f32> = batch
            .iter()
            .scan(0, |end, b| {
                *end += b.tokens.len();
                Some(*end)
            })
            .flat_map(|end| x[(end - 1) * dim..end * dim].iter().copied())
            .collect();
        self.output_rows(&last_rows)
    }

    /// The logits of hidden rows: output norm, output layer, soft-capping where the model has it.
    fn output_rows(&self, rows: &[f32]) -> Vec<Vec<f32>> {
        let mut normed = vec![0f32; rows.len()];
        rms_norm_rows(&mut normed, rows, &self.output_norm, self.config.rms_eps);
        let mut logits: Vec<Vec<f32>> =
            (0..rows.len() / self.config.dim).map(|_| vec![0f32; self.output.rows]).collect();
        let mut outs: Vec<&mut [f32]> = logits.iter_mut().map(Vec::as_mut_slice).collect();
        self.output.matmul_into(
            &QuantizedActivations::quantize(&normed, self.output.cols),
            Isa::detect(),
            &mut outs,
        );
        if let Some(cap) = self.config.logit_softcap {
            logits.iter_mut().flatten().for_each(|v| *v = (*v / cap).tanh() * cap);
        }
        logits
    }

    /// Causal attention of every row of the batch over its own sequence's cache (which already
    /// holds this step's keys and values), over the last `window` positions where the layer is
    /// local. Grouped-query: query heads `g·group..(g + 1)·group` read KV head g, in one pass
    /// over it.
    fn attention(
        &self,
        l: usize,
        window: Option<usize>,
        batch: &[BatchItem<'_>],
        rows: &[(usize, usize)],
        qkv: &[f32],
    ) -> Vec<f32> {
        let c = &self.config;
        let (hd, q_dim) = (c.head_dim, c.q_dim());
        let width = q_dim + 2 * c.kv_dim();
        let group = c.n_heads / c.n_kv_heads;
        let mut out = vec![0f32; rows.len() * q_dim];
        let isa = Isa::detect();
        let first_position = |pos: usize| window.map_or(0, |w| (pos + 1).saturating_sub(w));
        // Work item i: row i / n_kv_heads, KV head i % n_kv_heads; its output is contiguous.
        let one_item = |i: usize, out: &mut [f32]| {
            let (r, kv_head) = (i / c.n_kv_heads, i % c.n_kv_heads);
            let (item, pos) = rows[r];
            let head = &batch[item].cache.layers[l][kv_head];
            let first_q = r * width + kv_head * group * hd;
            let queries = &qkv[first_q..first_q + group * hd];
            let from = first_position(pos);
            let seen = pos + 1 - from;
            let mut scores = vec![0f32; group * seen];
            let (keys, values) = (&head.keys[from * hd..], &head.values[from * hd..]);
            let cache = HeadCache { keys, values, head_dim: hd };
            attend(isa, queries, cache, seen, c.attention_scale, &mut scores, out);
        };
        // Parallel only when there is enough work to pay for waking threads.
        let work: usize =
            rows.iter().map(|&(_, pos)| pos + 1 - first_position(pos)).sum::<usize>() * c.n_heads * hd;
        if rows.len() * c.n_kv_heads > 1 && work > 1 << 16 {
            out.par_chunks_mut(group * hd).enumerate().for_each(|(i, o)| one_item(i, o));
        } else {
            out.chunks_mut(group * hd).enumerate().for_each(|(i, o)| one_item(i, o));
        }
        out
    }
}

/// Buffers one step reuses across its layers (every layer's outputs have the same shapes).
struct Step {
    h: Vec<f32>,
    qkv: Vec<f32>,
    o: Vec<f32>,
    gate_up: Vec<f32>,
    act: Vec<f32>,
}

impl Step {
    fn new(c: &Config, n: usize) -> Self {
        Self {
            h: vec![0f32; n * c.dim],
            qkv: vec![0f32; n * (c.q_dim() + 2 * c.kv_dim())],
            o: vec![0f32; n * c.dim],
            gate_up: vec![0f32; n * 2 * c.ffn_dim],
            act: vec![0f32; n * c.ffn_dim],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cache_that_cannot_grow_says_so_and_keeps_what_it_has() {
        let mut cache = NativeCache::new(2, 2, 64);
        cache.reserve(16).unwrap();
        append_f16(&mut cache.layers[0][0].keys, &[1.0; 64]);
        let err = cache.reserve(usize::MAX / 64).unwrap_err();
        assert!(err.contains("out of memory") && err.contains("cannot grow"), "{err}");
        assert_eq!(cache.layers[0][0].keys.len(), 64, "what the cache held is kept");
    }
}
