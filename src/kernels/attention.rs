//! One query head attending over cached keys and values: scores, softmax, weighted sum. Plain
//! Rust compiled twice, for the baseline target and with AVX2 + FMA enabled, picked at run time:
//! the same code, vectorized 8 wide instead of 4.

use super::Isa;

/// Where one head's keys and values sit in a cache laid out `position × stride`.
#[derive(Debug, Clone, Copy)]
pub struct HeadCache<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
    /// Floats per position (all KV heads).
    pub stride: usize,
    /// This head's first float within a position.
    pub offset: usize,
}

/// `out = Σ_j softmax_j(scale · q·k_j) · v_j` over positions `0..positions`; `scores` is
/// scratch space of at least `positions` floats.
pub fn attend(isa: Isa, q: &[f32], cache: HeadCache<'_>, positions: usize, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    let hd = q.len();
    assert!(out.len() == hd && scores.len() >= positions, "attention shapes");
    assert!(positions == 0 || (positions - 1) * cache.stride + cache.offset + hd <= cache.keys.len().min(cache.values.len()), "attention cache");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => {
            debug_assert!(Isa::available().contains(&isa));
            // SAFETY: the CPU has AVX2 and FMA (every SIMD Isa implies them); the body is safe code.
            unsafe { attend_avx2(q, cache, positions, scale, scores, out) }
        }
        _ => attend_body(q, cache, positions, scale, scores, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(q: &[f32], cache: HeadCache<'_>, positions: usize, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    attend_body(q, cache, positions, scale, scores, out)
}

#[inline(always)]
fn attend_body(q: &[f32], cache: HeadCache<'_>, positions: usize, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    let hd = q.len();
    let at = |j: usize| j * cache.stride + cache.offset..j * cache.stride + cache.offset + hd;
    for (j, s) in scores[..positions].iter_mut().enumerate() {
        *s = dot(q, &cache.keys[at(j)]) * scale;
    }
    let max = scores[..positions].iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut total = 0f32;
    for s in scores[..positions].iter_mut() {
        *s = (*s - max).exp();
        total += *s;
    }
    out.fill(0.0);
    for (j, s) in scores[..positions].iter().enumerate() {
        let w = s / total;
        out.iter_mut().zip(&cache.values[at(j)]).for_each(|(o, v)| *o += w * v);
    }
}

/// Σ a·b with eight independent sums, so the compiler vectorizes it.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_matches_a_direct_softmax() {
        let (hd, kv_heads, positions) = (64, 3, 37);
        let stride = hd * kv_heads;
        let val = |i: usize| ((i * 7919) % 1000) as f32 / 500.0 - 1.0;
        let keys: Vec<f32> = (0..positions * stride).map(val).collect();
        let values: Vec<f32> = (0..positions * stride).map(|i| val(i + 13)).collect();
        let q: Vec<f32> = (0..hd).map(|i| val(i + 101)).collect();
        let offset = hd; // the second KV head
        let scale = 0.125;
        let logits: Vec<f64> = (0..positions)
            .map(|j| (0..hd).map(|c| q[c] as f64 * keys[j * stride + offset + c] as f64).sum::<f64>() * scale as f64)
            .collect();
        let max = logits.iter().cloned().fold(f64::MIN, f64::max);
        let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        let want: Vec<f64> = (0..hd).map(|c| (0..positions).map(|j| weights[j] / total * values[j * stride + offset + c] as f64).sum()).collect();
        for isa in Isa::available() {
            let (mut scores, mut out) = (vec![0f32; positions], vec![0f32; hd]);
            attend(isa, &q, HeadCache { keys: &keys, values: &values, stride, offset }, positions, scale, &mut scores, &mut out);
            for c in 0..hd {
                assert!((out[c] as f64 - want[c]).abs() < 1e-5, "{isa:?} {c}: {} vs {}", out[c], want[c]);
            }
        }
    }
}
