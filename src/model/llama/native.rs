//! The Llama forward pass on the CPU without tensors: plain f32 buffers, our quantized kernels
//! for every matrix, and a batch of sequences per call, so one pass over the weights serves
//! every session that has work (continuous batching).
//!
//! It computes what the candle path in `super` computes (tested against it); candle remains the
//! path for GPUs and for weight formats our kernels do not take.

use std::sync::Arc;

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::Hyper;
use crate::kernels::attention::{attend, HeadCache};
use crate::kernels::elementwise::{dot, rotate_pairs, silu_mul};
use crate::kernels::{Isa, QuantMatrix, QuantizedActivations};

pub(super) struct NativeLayer {
    pub attn_norm: Vec<f32>,
    /// Q, K and V.
    pub qkv: SideBySide,
    pub wo: Arc<QuantMatrix>,
    pub ffn_norm: Vec<f32>,
    /// Gate and up.
    pub gate_up: SideBySide,
    pub down: Arc<QuantMatrix>,
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

pub(super) struct NativeLlama {
    pub hp: Hyper,
    /// Shared with `output` when the model ties them.
    pub embeddings: Arc<QuantMatrix>,
    pub output: Arc<QuantMatrix>,
    pub output_norm: Vec<f32>,
    pub layers: Vec<NativeLayer>,
    /// RoPE's angle per position for each pair of a head's dimensions. The cosines and sines
    /// are computed per step for its rows' positions (a few hundred values), not kept as
    /// tables for the whole context (2 MiB at 8k positions, and ~10 ms of a model's load).
    pub inverse_frequencies: Vec<f32>,
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
        let mean = dot(from, from) / from.len() as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((o, v), w) in out.iter_mut().zip(from).zip(weight) {
            *o = v * scale * w;
        }
    }
}

fn append_f16(to: &mut Vec<f16>, from: &[f32]) {
    let at = to.len();
    to.resize(at + from.len(), f16::ZERO);
    to[at..].convert_from_f32_slice(from);
}

impl NativeLlama {
    fn kv_dim(&self) -> usize {
        self.hp.n_kv_heads * self.hp.head_dim
    }

    /// The cosines and sines of position `pos`'s angles, `head_dim / 2` each (as the candle
    /// path's tables compute them: the f32 product of position and frequency).
    fn rope_angles(&self, pos: usize) -> (Vec<f32>, Vec<f32>) {
        self.inverse_frequencies.iter().map(|f| (pos as f32 * f).sin_cos()).map(|(s, c)| (c, s)).unzip()
    }

    /// Rotates the pairs (2i, 2i + 1) of each head in `x` by the angles of one position (GGUF's
    /// Llama rows are permuted for this interleaved form).
    fn rope(&self, x: &mut [f32], (cos, sin): &(Vec<f32>, Vec<f32>)) {
        for head in x.chunks_exact_mut(self.hp.head_dim) {
            rotate_pairs(Isa::detect(), head, cos, sin);
        }
    }

    /// Appends each item's tokens to its cache and returns the logits of each item's last token.
    /// `None` when `interrupt` fired; every cache is then as it was.
    pub(super) fn forward_batch(
        &self,
        batch: &mut [BatchItem<'_>],
        interrupt: &dyn Fn() -> bool,
    ) -> Option<Vec<Vec<f32>>> {
        let hp = &self.hp;
        let (dim, kv_dim, q_dim) = (hp.dim, self.kv_dim(), hp.n_heads * hp.head_dim);
        let n: usize = batch.iter().map(|b| b.tokens.len()).sum();
        // (item, position) of every row of the batch.
        let rows: Vec<(usize, usize)> = batch
            .iter()
            .enumerate()
            .flat_map(|(i, b)| (0..b.tokens.len()).map(move |t| (i, b.cache.len + t)))
            .collect();
        let starts: Vec<usize> = batch.iter().map(|b| b.cache.len).collect();
        let angles: Vec<(Vec<f32>, Vec<f32>)> = rows.iter().map(|&(_, pos)| self.rope_angles(pos)).collect();

        let mut x = vec![0f32; n * dim];
        for (row, &id) in x.chunks_exact_mut(dim).zip(batch.iter().flat_map(|b| b.tokens)) {
            self.embeddings.dequantize_row(id as usize, row);
        }
        let mut h = vec![0f32; n * dim];
        let eps = hp.rms_eps as f32;
        let width = q_dim + 2 * kv_dim;
        let (mut qkv, mut o) = (vec![0f32; n * width], vec![0f32; n * dim]);
        let (mut gate_up, mut act) = (vec![0f32; n * 2 * hp.ffn_dim], vec![0f32; n * hp.ffn_dim]);
        for (l, layer) in self.layers.iter().enumerate() {
            if interrupt() {
                for (b, &start) in batch.iter_mut().zip(&starts) {
                    b.cache.cut(start);
                }
                return None;
            }
            rms_norm_rows(&mut h, &x, &layer.attn_norm, eps);
            layer.qkv.matmul_to(&h, n, &mut qkv);
            for (row, angles) in qkv.chunks_exact_mut(width).zip(&angles) {
                self.rope(&mut row[..q_dim + kv_dim], angles);
            }
            for (row, &(i, _)) in qkv.chunks_exact(width).zip(&rows) {
                let (keys, values) = row[q_dim..].split_at(kv_dim);
                for ((head, k), v) in batch[i].cache.layers[l]
                    .iter_mut()
                    .zip(keys.chunks_exact(hp.head_dim))
                    .zip(values.chunks_exact(hp.head_dim))
                {
                    append_f16(&mut head.keys, k);
                    append_f16(&mut head.values, v);
                }
            }
            let attn = self.attention(l, batch, &rows, &qkv);
            matmul_to(std::slice::from_ref(&layer.wo), &attn, n, &mut o);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);

            rms_norm_rows(&mut h, &x, &layer.ffn_norm, eps);
            layer.gate_up.matmul_to(&h, n, &mut gate_up);
            for (row, out) in gate_up.chunks_exact(2 * hp.ffn_dim).zip(act.chunks_exact_mut(hp.ffn_dim)) {
                let (gate, up) = row.split_at(hp.ffn_dim);
                silu_mul(Isa::detect(), gate, up, out);
            }
            matmul_to(std::slice::from_ref(&layer.down), &act, n, &mut o);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }
        for b in batch.iter_mut() {
            b.cache.len += b.tokens.len();
        }
        // Only each item's last row reaches the output layer.
        let last_rows: Vec<f32> = batch
            .iter()
            .scan(0, |end, b| {
                *end += b.tokens.len();
                Some(*end)
            })
            .flat_map(|end| x[(end - 1) * dim..end * dim].iter().copied())
            .collect();
        let mut last = vec![0f32; last_rows.len()];
        rms_norm_rows(&mut last, &last_rows, &self.output_norm, eps);
        let mut logits: Vec<Vec<f32>> = batch.iter().map(|_| vec![0f32; self.output.rows]).collect();
        let mut outs: Vec<&mut [f32]> = logits.iter_mut().map(Vec::as_mut_slice).collect();
        self.output.matmul_into(
            &QuantizedActivations::quantize(&last, self.output.cols),
            Isa::detect(),
            &mut outs,
        );
        Some(logits)
    }

    /// Causal attention of every row of the batch over its own sequence's cache (which already
    /// holds this step's keys and values). Grouped-query: query heads `g·group..(g + 1)·group`
    /// read KV head g, in one pass over it.
    fn attention(&self, l: usize, batch: &[BatchItem<'_>], rows: &[(usize, usize)], qkv: &[f32]) -> Vec<f32> {
        let hp = &self.hp;
        let (hd, kv_dim, q_dim) = (hp.head_dim, self.kv_dim(), hp.n_heads * hp.head_dim);
        let width = q_dim + 2 * kv_dim;
        let group = hp.n_heads / hp.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0f32; rows.len() * q_dim];
        let isa = Isa::detect();
        // Work item i: row i / n_kv_heads, KV head i % n_kv_heads; its output is contiguous.
        let one_item = |i: usize, out: &mut [f32]| {
            let (r, kv_head) = (i / hp.n_kv_heads, i % hp.n_kv_heads);
            let (item, pos) = rows[r];
            let head = &batch[item].cache.layers[l][kv_head];
            let first_q = r * width + kv_head * group * hd;
            let queries = &qkv[first_q..first_q + group * hd];
            let mut scores = vec![0f32; group * (pos + 1)];
            let cache = HeadCache { keys: &head.keys, values: &head.values, head_dim: hd };
            attend(isa, queries, cache, pos + 1, scale, &mut scores, out);
        };
        // Parallel only when there is enough work to pay for waking threads.
        let work: usize = rows.iter().map(|&(_, pos)| pos + 1).sum::<usize>() * hp.n_heads * hd;
        if rows.len() * hp.n_kv_heads > 1 && work > 1 << 16 {
            out.par_chunks_mut(group * hd).enumerate().for_each(|(i, o)| one_item(i, o));
        } else {
            out.chunks_mut(group * hd).enumerate().for_each(|(i, o)| one_item(i, o));
        }
        out
    }
}
