//! Activations quantized per block of 32 to i8 (llama.cpp's Q8_1 idea): a scale, the block's
//! integer sum, and the codes.

use super::{Isa, BLOCK};

/// A block's scale `max|v| / 127` and the factor that takes its values to codes: two
/// independent divisions (`1 / d` would wait on the first).
#[inline(always)]
fn scale_and_inverse(amax: f32) -> (f32, f32) {
    if amax > 0.0 {
        (amax / 127.0, 127.0 / amax)
    } else {
        (0.0, 0.0)
    }
}

/// One block's scale `d = max|v| / 127` and codes `round(v / d)` (half away from zero, like
/// `f32::round`, which is a libm call on the baseline x86-64 target; |v/d| ≤ 127, so no
/// saturation), and the codes' sum. An all-zero block gets `d = 0` and zero codes.
fn quantize_block(x: &[f32; BLOCK], qs: &mut [i8; BLOCK]) -> (f32, i32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (d, inv) = scale_and_inverse(amax);
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        let scaled = v * inv;
        *q = (scaled + 0.5f32.copysign(scaled)) as i8;
        sum += *q as i32;
    }
    (d, sum)
}

/// [`quantize_block`] eight lanes at a time, the block held in four registers, with the same
/// float operations (so both paths give identical scales and codes): serial code between the
/// matmuls, where the other threads wait, so it must not be scalar.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn quantize_block_avx2(x: &[f32; BLOCK], qs: &mut [i8; BLOCK]) -> (f32, i32) {
    use std::arch::x86_64::*;
    let sign = _mm256_set1_ps(-0.0);
    // SAFETY: four unaligned loads within the 32-value array.
    let v: [__m256; 4] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * i)) });
    let abs = |v: __m256| _mm256_andnot_ps(sign, v);
    let max8 = _mm256_max_ps(_mm256_max_ps(abs(v[0]), abs(v[1])), _mm256_max_ps(abs(v[2]), abs(v[3])));
    let max4 = _mm_max_ps(_mm256_castps256_ps128(max8), _mm256_extractf128_ps::<1>(max8));
    let max2 = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
    let amax = _mm_cvtss_f32(_mm_max_ss(max2, _mm_movehdup_ps(max2)));
    let (d, inv) = scale_and_inverse(amax);
    let inv = _mm256_set1_ps(inv);
    let half = _mm256_set1_ps(0.5);
    let ints: [__m256i; 4] = std::array::from_fn(|i| {
        let scaled = _mm256_mul_ps(v[i], inv);
        _mm256_cvttps_epi32(_mm256_add_ps(scaled, _mm256_or_ps(half, _mm256_and_ps(scaled, sign))))
    });
    let total = _mm256_add_epi32(_mm256_add_epi32(ints[0], ints[1]), _mm256_add_epi32(ints[2], ints[3]));
    let total4 = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256::<1>(total));
    let total2 = _mm_add_epi32(total4, _mm_shuffle_epi32::<0b01_00_11_10>(total4));
    let sum = _mm_cvtsi128_si32(_mm_add_epi32(total2, _mm_shuffle_epi32::<0b00_00_00_01>(total2)));
    // Packing works within 128-bit halves; the permutation puts the four-value runs back in order.
    let packed =
        _mm256_packs_epi16(_mm256_packs_epi32(ints[0], ints[1]), _mm256_packs_epi32(ints[2], ints[3]));
    let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: qs is 32 bytes.
    unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), ordered) };
    (d, sum)
}

/// Every block of `x` into `out` (sized for it) by `block`.
#[inline(always)]
fn quantize_blocks(
    x: &[f32],
    out: &mut QuantizedActivations,
    block: impl Fn(&[f32; BLOCK], &mut [i8; BLOCK]) -> (f32, i32),
) {
    let blocks =
        x.chunks_exact(BLOCK).zip(out.qs.chunks_exact_mut(BLOCK)).zip(out.d.iter_mut().zip(out.s.iter_mut()));
    for ((chunk, qs), (d, s)) in blocks {
        let (scale, sum) =
            block(chunk.try_into().expect("whole blocks"), qs.try_into().expect("whole blocks"));
        *d = scale;
        *s = scale * sum as f32;
    }
}

/// [`quantize_blocks`] with the AVX2 block inlined: a call per block would wait out each
/// block's whole latency (two divisions among it) before the next could start.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn quantize_blocks_avx2(x: &[f32], out: &mut QuantizedActivations) {
    quantize_blocks(x, out, |x, qs| quantize_block_avx2(x, qs))
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
        assert!(cols.is_multiple_of(BLOCK) && x.len().is_multiple_of(cols.max(1)), "activation shape");
        let tokens = x.len().checked_div(cols).unwrap_or(0);
        let n = x.len() / BLOCK;
        let mut out = Self {
            tokens,
            blocks_per_row: cols / BLOCK,
            d: vec![0.0; n],
            s: vec![0.0; n],
            qs: vec![0; x.len()],
        };
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512Vnni => {
                debug_assert!(Isa::available().contains(&isa));
                // SAFETY: every SIMD Isa implies AVX2.
                unsafe { quantize_blocks_avx2(x, &mut out) }
            }
            _ => quantize_blocks(x, &mut out, quantize_block),
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
        let mut x: Vec<f32> =
            (0..32 * 40).map(|i| (((i * 7919 + 13) % 2001) as f32 - 1000.0) * 0.003).collect();
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
