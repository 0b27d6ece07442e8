//! Activations quantized per block of 32 to i8 (llama.cpp's Q8_1 idea): a scale, the block's
//! integer sum, and the codes.

use super::BLOCK;

/// `tokens` rows of `cols` activations, quantized. Row `t`, block `b` lives at index
/// `t * blocks_per_row + b` of the per-block vectors.
#[derive(Debug, Clone, Default)]
pub struct QuantizedActivations {
    pub tokens: usize,
    pub blocks_per_row: usize,
    /// Scale of each block.
    pub d: Vec<f32>,
    /// `d · Σ qs` of each block: multiplies the weights' offset `m`.
    pub s: Vec<f32>,
    /// 32 codes per block.
    pub qs: Vec<i8>,
}

impl QuantizedActivations {
    /// Quantizes `x`, `tokens × cols` row-major; `cols` must be a multiple of 32.
    pub fn quantize(x: &[f32], cols: usize) -> Self {
        assert!(cols % BLOCK == 0 && x.len() % cols.max(1) == 0, "activation shape");
        let tokens = if cols == 0 { 0 } else { x.len() / cols };
        let n = x.len() / BLOCK;
        let mut out = Self { tokens, blocks_per_row: cols / BLOCK, d: Vec::with_capacity(n), s: Vec::with_capacity(n), qs: vec![0; x.len()] };
        for (chunk, qs) in x.chunks_exact(BLOCK).zip(out.qs.chunks_exact_mut(BLOCK)) {
            let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, v) in qs.iter_mut().zip(chunk) {
                // Rounds half away from zero like f32::round, which is a libm call on the
                // baseline x86-64 target; this vectorizes. |v·inv| ≤ 127, so no saturation.
                let scaled = v * inv;
                *q = (scaled + 0.5f32.copysign(scaled)) as i8;
                sum += *q as i32;
            }
            out.d.push(d);
            out.s.push(d * sum as f32);
        }
        out
    }

    /// Block range of token `t`.
    pub fn row(&self, t: usize) -> std::ops::Range<usize> {
        t * self.blocks_per_row..(t + 1) * self.blocks_per_row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_scale_back_to_the_input() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) * 0.1).collect();
        let q = QuantizedActivations::quantize(&x, 64);
        assert_eq!((q.tokens, q.blocks_per_row, q.d.len()), (1, 2, 2));
        for (i, v) in x.iter().enumerate() {
            let back = q.qs[i] as f32 * q.d[i / BLOCK];
            assert!((back - v).abs() <= q.d[i / BLOCK] / 2.0 + 1e-6, "{i}: {back} vs {v}");
        }
        let sum0: i32 = q.qs[..32].iter().map(|&v| v as i32).sum();
        assert_eq!(q.s[0], q.d[0] * sum0 as f32);
    }

    #[test]
    fn zero_blocks_stay_zero() {
        let q = QuantizedActivations::quantize(&[0.0; 32], 32);
        assert!(q.qs.iter().all(|&v| v == 0) && q.d[0] == 0.0 && q.s[0] == 0.0);
    }
}
