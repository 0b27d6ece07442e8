//! Q4_1 weights × Q8_1-quantized activations.
//!
//! GGUF's Q4_1 block holds 32 weights as 4-bit codes with an f16 scale `d` and offset `m`
//! (w = q·d + m; codes 0..16 in the low nibbles, 16..32 in the high ones). At load the blocks
//! are repacked with f32 scales so the inner loop converts nothing. Activations are quantized
//! per 32 values to i8 with a scale, and their sum is kept, so a block's dot product is
//! `d_w·d_x·Σ q_w q_x + m_w·(d_x Σ q_x)`.

use half::f16;
use rayon::prelude::*;

pub(crate) const BLOCK: usize = 32;
const GGUF_BLOCK_BYTES: usize = 20;

/// One repacked weight block.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct WeightBlock {
    pub d: f32,
    pub m: f32,
    /// Low nibble: element j; high nibble: element j + 16.
    pub qs: [u8; 16],
}

/// One quantized activation block.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct ActBlock {
    pub d: f32,
    /// d · Σ qs
    pub s: f32,
    pub qs: [i8; 32],
}

/// A Q4_1 matrix of `rows` outputs × `cols` inputs, repacked.
pub struct Q4_1Matrix {
    pub rows: usize,
    pub cols: usize,
    blocks: Vec<WeightBlock>,
}

impl Q4_1Matrix {
    /// From GGUF bytes (row-major, `cols / 32` blocks per row).
    pub fn from_gguf_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self, String> {
        if cols % BLOCK != 0 {
            return Err(format!("Q4_1 row length {cols} is not a multiple of {BLOCK}"));
        }
        let n_blocks = rows * cols / BLOCK;
        if bytes.len() != n_blocks * GGUF_BLOCK_BYTES {
            return Err(format!("Q4_1 data is {} bytes, expected {}", bytes.len(), n_blocks * GGUF_BLOCK_BYTES));
        }
        let blocks = bytes
            .chunks_exact(GGUF_BLOCK_BYTES)
            .map(|b| WeightBlock {
                d: f16::from_le_bytes([b[0], b[1]]).to_f32(),
                m: f16::from_le_bytes([b[2], b[3]]).to_f32(),
                qs: b[4..20].try_into().expect("16 bytes"),
            })
            .collect();
        Ok(Self { rows, cols, blocks })
    }

    fn row(&self, r: usize) -> &[WeightBlock] {
        let per_row = self.cols / BLOCK;
        &self.blocks[r * per_row..(r + 1) * per_row]
    }

    /// The weights as f32 (for tests and references).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for b in &self.blocks {
            let lo = b.qs.iter().map(|q| (q & 0x0F) as f32 * b.d + b.m);
            let hi = b.qs.iter().map(|q| (q >> 4) as f32 * b.d + b.m);
            out.extend(lo.chain(hi));
        }
        out
    }

    /// `out[t][r] = Σ_c x[t][c] · w[r][c]` for `x` of `tokens × cols`; out is `tokens × rows`.
    /// Parallel over output rows on the current rayon pool.
    pub fn matmul(&self, x: &[f32], tokens: usize) -> Vec<f32> {
        assert_eq!(x.len(), tokens * self.cols, "input shape");
        let acts: Vec<Vec<ActBlock>> = x.chunks_exact(self.cols).map(quantize_row).collect();
        let dot = dot_fn();
        // Row chunks large enough to amortise scheduling, small enough to balance two threads.
        const CHUNK: usize = 32;
        let chunks: Vec<Vec<f32>> = (0..self.rows.div_ceil(CHUNK))
            .into_par_iter()
            .map(|c| {
                let rows = c * CHUNK..((c + 1) * CHUNK).min(self.rows);
                let mut local = Vec::with_capacity(rows.len() * tokens);
                for r in rows {
                    let w = self.row(r);
                    for a in &acts {
                        local.push(dot(w, a));
                    }
                }
                local
            })
            .collect();
        let mut out = vec![0f32; tokens * self.rows];
        for (c, local) in chunks.iter().enumerate() {
            for (i, v) in local.iter().enumerate() {
                let (r, t) = (c * CHUNK + i / tokens, i % tokens);
                out[t * self.rows + r] = *v;
            }
        }
        out
    }
}

/// Quantizes one row of activations (length a multiple of 32).
pub fn quantize_row(x: &[f32]) -> Vec<ActBlock> {
    x.chunks_exact(BLOCK)
        .map(|chunk| {
            let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut qs = [0i8; 32];
            let mut sum = 0i32;
            for (q, v) in qs.iter_mut().zip(chunk) {
                *q = (v * inv).round() as i8;
                sum += *q as i32;
            }
            ActBlock { d, s: d * sum as f32, qs }
        })
        .collect()
}

type DotFn = fn(&[WeightBlock], &[ActBlock]) -> f32;

fn dot_fn() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return |w, a| unsafe { dot_avx2(w, a) };
        }
    }
    dot_portable
}

/// The reference: plain integer arithmetic, one element at a time.
pub fn dot_portable(w: &[WeightBlock], a: &[ActBlock]) -> f32 {
    w.iter()
        .zip(a)
        .map(|(w, a)| {
            let mut isum = 0i32;
            for j in 0..16 {
                isum += (w.qs[j] & 0x0F) as i32 * a.qs[j] as i32;
                isum += (w.qs[j] >> 4) as i32 * a.qs[j + 16] as i32;
            }
            w.d * a.d * isum as f32 + w.m * a.s
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(w: &[WeightBlock], a: &[ActBlock]) -> f32 {
    use std::arch::x86_64::*;
    let low_nibbles = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut offsets = 0f32;
    for (w, a) in w.iter().zip(a) {
        let packed = _mm_loadu_si128(w.qs.as_ptr() as *const __m128i);
        let lo = _mm_and_si128(packed, low_nibbles);
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low_nibbles);
        let codes = _mm256_set_m128i(hi, lo);
        let xs = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
        // u8 × i8 pairs summed to i16 (at most 2·15·128, no overflow), then pairs to i32.
        let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(codes, xs), ones);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(w.d * a.d), acc);
        offsets += w.m * a.s;
    }
    let quad = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    let single = _mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1));
    _mm_cvtss_f32(single) + offsets
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random_matrix(rows: usize, cols: usize, seed: u64) -> (Q4_1Matrix, Vec<u8>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut bytes = Vec::new();
        for _ in 0..rows * cols / BLOCK {
            bytes.extend_from_slice(&f16::from_f32(rng.random_range(0.001..0.05)).to_le_bytes());
            bytes.extend_from_slice(&f16::from_f32(rng.random_range(-0.4..0.0)).to_le_bytes());
            bytes.extend((0..16).map(|_| rng.random::<u8>()));
        }
        (Q4_1Matrix::from_gguf_bytes(&bytes, rows, cols).unwrap(), bytes)
    }

    fn random_x(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-2.0..2.0)).collect()
    }

    #[test]
    fn repacking_matches_candles_dequantization() {
        use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
        let (m, bytes) = random_matrix(4, 64, 1);
        let q = qtensor_from_ggml(GgmlDType::Q4_1, &bytes, vec![4, 64], &candle_core::Device::Cpu).unwrap();
        let theirs = q.dequantize(&candle_core::Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(m.dequantize(), theirs);
    }

    #[test]
    fn simd_dot_equals_the_reference() {
        let (m, _) = random_matrix(3, 576, 2);
        let a = quantize_row(&random_x(576, 3));
        for r in 0..3 {
            let want = dot_portable(m.row(r), &a);
            let got = dot_fn()(m.row(r), &a);
            assert!((want - got).abs() <= 1e-4 * want.abs().max(1.0), "row {r}: {want} vs {got}");
        }
    }

    #[test]
    fn matmul_is_close_to_the_f32_product() {
        let (rows, cols, tokens) = (70, 1536, 3);
        let (m, _) = random_matrix(rows, cols, 4);
        let x = random_x(tokens * cols, 5);
        let w = m.dequantize();
        let out = m.matmul(&x, tokens);
        for t in 0..tokens {
            for r in 0..rows {
                let exact: f32 = (0..cols).map(|c| x[t * cols + c] * w[r * cols + c]).sum();
                let got = out[t * rows + r];
                // Activation quantization to 8 bits: relative error well under 1% of the row's scale.
                let scale: f32 = (0..cols).map(|c| (x[t * cols + c] * w[r * cols + c]).abs()).sum();
                assert!((exact - got).abs() <= 0.01 * scale, "t {t} r {r}: {exact} vs {got}");
            }
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(Q4_1Matrix::from_gguf_bytes(&[0; 20], 1, 31).is_err());
        assert!(Q4_1Matrix::from_gguf_bytes(&[0; 19], 1, 32).is_err());
    }
}
