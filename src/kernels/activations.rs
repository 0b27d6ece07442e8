//! Activations quantized per block of 32 to i8 (llama.cpp's Q8_1 idea): a scale, the block's
//! integer sum, and the codes.

use super::{Isa, BLOCK};

/// Codes `round(v · inv)` of one block (half away from zero, like `f32::round`, which is a libm
/// call on the baseline x86-64 target; |v·inv| ≤ 127, so no saturation), and their sum.
fn round_block(x: &[f32; BLOCK], inv: f32, qs: &mut [i8; BLOCK]) -> i32 {
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        let scaled = v * inv;
        *q = (scaled + 0.5f32.copysign(scaled)) as i8;
        sum += *q as i32;
    }
    sum
}

/// [`round_block`] eight lanes at a time, with the same roundings (one multiply, one add of
/// ±0.5, truncation), so both paths give identical codes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn round_block_avx2(x: &[f32; BLOCK], inv: f32, qs: &mut [i8; BLOCK]) -> i32 {
    use std::arch::x86_64::*;
    let sign = _mm256_set1_ps(-0.0);
    let half = _mm256_set1_ps(0.5);
    let inv = _mm256_set1_ps(inv);
    // SAFETY: four unaligned loads within the 32-value array.
    let ints: [__m256i; 4] = std::array::from_fn(|i| unsafe {
        let scaled = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(8 * i)), inv);
        _mm256_cvttps_epi32(_mm256_add_ps(scaled, _mm256_or_ps(half, _mm256_and_ps(scaled, sign))))
    });
    let total = _mm256_add_epi32(_mm256_add_epi32(ints[0], ints[1]), _mm256_add_epi32(ints[2], ints[3]));
    // SAFETY: a 256-bit vector is eight i32s.
    let lanes: [i32; 8] = unsafe { std::mem::transmute(total) };
    // Packing works within 128-bit halves; the permutation puts the four-value runs back in order.
    let packed = _mm256_packs_epi16(_mm256_packs_epi32(ints[0], ints[1]), _mm256_packs_epi32(ints[2], ints[3]));
    let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: qs is 32 bytes.
    unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), ordered) };
    lanes.iter().sum()
}

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
        Self::quantize_on(Isa::detect(), x, cols)
    }

    /// As [`Self::quantize`] on a given path; every path gives the same codes and scales.
    pub fn quantize_on(isa: Isa, x: &[f32], cols: usize) -> Self {
        assert!(cols % BLOCK == 0 && x.len() % cols.max(1) == 0, "activation shape");
        let tokens = if cols == 0 { 0 } else { x.len() / cols };
        let n = x.len() / BLOCK;
        let mut out = Self { tokens, blocks_per_row: cols / BLOCK, d: vec![0.0; n], s: vec![0.0; n], qs: vec![0; x.len()] };
        let blocks = x.chunks_exact(BLOCK).zip(out.qs.chunks_exact_mut(BLOCK)).zip(out.d.iter_mut().zip(out.s.iter_mut()));
        for ((chunk, qs), (d, s)) in blocks {
            let chunk: &[f32; BLOCK] = chunk.try_into().expect("whole blocks");
            let qs: &mut [i8; BLOCK] = qs.try_into().expect("whole blocks");
            let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
            *d = amax / 127.0;
            let inv = if *d > 0.0 { 1.0 / *d } else { 0.0 };
            let sum = match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 | Isa::Avx512Vnni => {
                    debug_assert!(Isa::available().contains(&isa));
                    // SAFETY: every SIMD Isa implies AVX2; the arrays are whole blocks.
                    unsafe { round_block_avx2(chunk, inv, qs) }
                }
                _ => round_block(chunk, inv, qs),
            };
            *s = *d * sum as f32;
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
    fn every_path_gives_the_same_codes() {
        // Random values, values landing exactly on .5 after scaling (127·k/254 of the block's
        // largest), a zero block and a one-hot block.
        let mut x: Vec<f32> = (0..32 * 40).map(|i| (((i * 7919 + 13) % 2001) as f32 - 1000.0) * 0.003).collect();
        for (i, v) in x[..32].iter_mut().enumerate() {
            *v = if i == 0 { 127.0 } else { (i as f32 - 16.0) + 0.5 };
        }
        x[32..64].fill(0.0);
        x[64..96].fill(0.0);
        x[70] = -3.0;
        let want = QuantizedActivations::quantize_on(Isa::Portable, &x, 32 * 8);
        for isa in Isa::available() {
            let got = QuantizedActivations::quantize_on(isa, &x, 32 * 8);
            assert_eq!((&got.qs, &got.d, &got.s), (&want.qs, &want.d, &want.s), "{isa:?}");
        }
        assert_eq!(&want.qs[..4], &[127, -15, -14, -13], "halves round away from zero");
    }

    #[test]
    fn zero_blocks_stay_zero() {
        let q = QuantizedActivations::quantize(&[0.0; 32], 32);
        assert!(q.qs.iter().all(|&v| v == 0) && q.d[0] == 0.0 && q.s[0] == 0.0);
    }
}
