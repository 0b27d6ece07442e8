//! Dot products of a group of four weight rows with one quantized activation row, per
//! instruction set. [`group_dot_portable`] is the reference every SIMD path is tested against.
//!
//! The four rows are interleaved block by block (block b of rows 0..4, then block b + 1, ...),
//! so a group is read as one sequential stream: one cache line of 4-bit codes per block step.

use super::activations::QuantizedActivations;
use super::{Isa, BLOCK};

/// How a block's 32 codes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeWidth {
    /// 16 bytes per block: low nibble = element j, high nibble = element j + 16 (GGUF order).
    Four,
    /// 32 bytes per block, one byte per element biased by 128: w = (code − 128)·d, and `m` is
    /// not used (Q8_0's signed bytes, stored so that `vpdpbusd` can take them as unsigned).
    Eight,
}

impl CodeWidth {
    pub const fn bytes_per_block(self) -> usize {
        match self {
            CodeWidth::Four => BLOCK / 2,
            CodeWidth::Eight => BLOCK,
        }
    }
}

/// Rows per group.
pub const GROUP: usize = 4;

/// Four weight rows of `blocks` blocks each, interleaved: block b of row r is at index
/// `b * GROUP + r` of `d` and `m`, and at `(b * GROUP + r) * bytes_per_block` of `codes`.
#[derive(Debug, Clone, Copy)]
pub struct RowGroup<'a> {
    pub width: CodeWidth,
    pub blocks: usize,
    pub d: &'a [f32],
    /// Empty for [`CodeWidth::Eight`].
    pub m: &'a [f32],
    pub codes: &'a [u8],
}

/// Most tokens one [`group_dot`] call takes on `isa`: each weight block is expanded once and
/// used for all of them (prefill and batched decode), as far as registers allow.
pub fn max_tokens_per_call(isa: Isa) -> usize {
    match isa {
        Isa::Portable => 1,
        Isa::Avx2 => 2,
        // AVX-512VL has 32 vector registers: room for 4 tokens × 4 rows of accumulators.
        Isa::Avx512Vnni => 4,
    }
}

/// `out[k][r] = Σ_c w[r][c] · x[t0 + k][c]` for the group's four rows and `out.len()` tokens
/// from `t0` (at most [`max_tokens_per_call`]).
pub fn group_dot(isa: Isa, w: RowGroup<'_>, a: &QuantizedActivations, t0: usize, out: &mut [[f32; GROUP]]) {
    let n = GROUP * w.blocks;
    let nt = out.len();
    assert!((1..=max_tokens_per_call(isa)).contains(&nt), "1 to {} tokens per call", max_tokens_per_call(isa));
    assert!(a.blocks_per_row == w.blocks && t0 + nt <= a.tokens, "activation shape");
    let m_len = if w.width == CodeWidth::Four { n } else { 0 };
    assert!(w.d.len() == n && w.m.len() == m_len && w.codes.len() == n * w.width.bytes_per_block(), "weight shape");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => {
            debug_assert!(Isa::available().contains(&isa));
            // SAFETY: the CPU supports `isa` (Isa::detect / Isa::available checked it), and the
            // asserts above bound every index the kernel reads.
            unsafe { x86::group_dot(isa, w, a, t0, out) }
        }
        _ => out.iter_mut().enumerate().for_each(|(k, o)| group_dot_portable(w, a, t0 + k, o)),
    }
}

/// The reference: integer arithmetic one element at a time.
pub fn group_dot_portable(w: RowGroup<'_>, a: &QuantizedActivations, t: usize, out: &mut [f32; GROUP]) {
    let bpr = w.blocks;
    let cb = w.width.bytes_per_block();
    for (r, o) in out.iter_mut().enumerate() {
        let mut total = 0f32;
        for b in 0..bpr {
            let wi = b * GROUP + r;
            let ai = t * bpr + b;
            let codes = &w.codes[wi * cb..(wi + 1) * cb];
            let x = &a.qs[ai * BLOCK..(ai + 1) * BLOCK];
            let code = |j: usize| -> i32 {
                match w.width {
                    CodeWidth::Four if j < 16 => (codes[j] & 0x0F) as i32,
                    CodeWidth::Four => (codes[j - 16] >> 4) as i32,
                    CodeWidth::Eight => codes[j] as i32 - 128,
                }
            };
            let isum: i32 = (0..BLOCK).map(|j| code(j) * x[j] as i32).sum();
            total += w.d[wi] * a.d[ai] * isum as f32;
            if w.width == CodeWidth::Four {
                total += w.m[wi] * a.s[ai];
            }
        }
        *o = total;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    pub(super) unsafe fn group_dot(isa: Isa, w: RowGroup<'_>, a: &QuantizedActivations, t0: usize, out: &mut [[f32; GROUP]]) {
        macro_rules! go {
            ($nt:literal) => {
                match (w.width, isa == Isa::Avx512Vnni) {
                    (CodeWidth::Four, false) => four_avx2::<$nt>(w, a, t0, out),
                    (CodeWidth::Four, true) => four_vnni::<$nt>(w, a, t0, out),
                    (CodeWidth::Eight, false) => eight_avx2::<$nt>(w, a, t0, out),
                    (CodeWidth::Eight, true) => eight_vnni::<$nt>(w, a, t0, out),
                }
            };
        }
        match out.len() {
            1 => go!(1),
            2 => go!(2),
            3 => go!(3),
            _ => go!(4),
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
        _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
    }

    /// Σ_b w[b·GROUP + r]·s[b] for the four rows r at once: `w` interleaved as in [`RowGroup`].
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn group_offsets(w: *const f32, s: *const f32, blocks: usize) -> __m128 {
        let mut acc = _mm_setzero_ps();
        for b in 0..blocks {
            acc = _mm_fmadd_ps(_mm_loadu_ps(w.add(b * GROUP)), _mm_set1_ps(*s.add(b)), acc);
        }
        acc
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        let low = _mm_set1_epi8(0x0F);
        let packed = _mm_loadu_si128(p as *const __m128i);
        _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), low), _mm_and_si128(packed, low))
    }

    /// The offset a row adds once, after its blocks: none, `Σ m·s` (4-bit codes), or
    /// `−128·Σ d·s` (biased 8-bit codes multiplied as unsigned).
    #[derive(Clone, Copy, PartialEq)]
    enum Offset {
        None,
        M,
        Bias128,
    }

    /// How far ahead of the codes (and, as many floats ahead, the scales) to prefetch. Measured
    /// on decode: none 88, 256 B 97, 2 KiB 117 tokens/s; flat beyond.
    const PREFETCH_BYTES: usize = 2048;

    /// The shared loop over a group's blocks for `NT` tokens: `expand` turns a block's codes
    /// into 32 bytes once, `product` gives its 8 partial sums with one token's activations;
    /// each (row, token) adds `d_w·d_x·Σ` in float per block, then the row's offset.
    macro_rules! kernel {
        ($name:ident, $features:literal, $width:expr, $offset:expr, expand |$ptr:ident| $expand:expr, product |$codes:ident, $xs:ident| $product:expr) => {
            #[target_feature(enable = $features)]
            unsafe fn $name<const NT: usize>(w: RowGroup<'_>, a: &QuantizedActivations, t0: usize, out: &mut [[f32; GROUP]]) {
                let bpr = w.blocks;
                let cb = $width.bytes_per_block();
                let (wd, wc) = (w.d.as_ptr(), w.codes.as_ptr());
                let xq: [*const i8; NT] = std::array::from_fn(|k| a.qs.as_ptr().add((t0 + k) * bpr * BLOCK));
                let ad: [*const f32; NT] = std::array::from_fn(|k| a.d.as_ptr().add((t0 + k) * bpr));
                let mut acc = [[_mm256_setzero_ps(); GROUP]; NT];
                for b in 0..bpr {
                    // The hardware prefetcher alone leaves decode waiting on memory: fetch ahead.
                    _mm_prefetch::<_MM_HINT_T0>(wc.wrapping_add(b * GROUP * cb + PREFETCH_BYTES) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(wd.wrapping_add(b * GROUP + PREFETCH_BYTES / 4) as *const i8);
                    let expanded: [__m256i; GROUP] = std::array::from_fn(|r| {
                        let $ptr = wc.add((b * GROUP + r) * cb);
                        $expand
                    });
                    let dw = _mm_loadu_ps(wd.add(b * GROUP));
                    for k in 0..NT {
                        let $xs = _mm256_loadu_si256(xq[k].add(b * BLOCK) as *const __m256i);
                        // d_w·d_x for the four rows, then broadcast per row.
                        let scales = _mm_mul_ps(dw, _mm_set1_ps(*ad[k].add(b)));
                        let scales = [
                            _mm256_broadcastss_ps(scales),
                            _mm256_broadcastss_ps(_mm_shuffle_ps(scales, scales, 0x55)),
                            _mm256_broadcastss_ps(_mm_shuffle_ps(scales, scales, 0xAA)),
                            _mm256_broadcastss_ps(_mm_shuffle_ps(scales, scales, 0xFF)),
                        ];
                        for r in 0..GROUP {
                            let $codes = expanded[r];
                            let p: __m256i = $product;
                            acc[k][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scales[r], acc[k][r]);
                        }
                    }
                }
                for k in 0..NT {
                    let s = a.s.as_ptr().add((t0 + k) * bpr);
                    let offsets = match $offset {
                        Offset::None => _mm_setzero_ps(),
                        Offset::M => group_offsets(w.m.as_ptr(), s, bpr),
                        Offset::Bias128 => _mm_mul_ps(_mm_set1_ps(-128.0), group_offsets(wd, s, bpr)),
                    };
                    let mut offs = [0f32; GROUP];
                    _mm_storeu_ps(offs.as_mut_ptr(), offsets);
                    for r in 0..GROUP {
                        out[k][r] = hsum(acc[k][r]) + offs[r];
                    }
                }
            }
        };
    }

    // u8 × i8 pairs summed to i16 (at most 2·15·127: no saturation), then pairs to i32.
    kernel!(four_avx2, "avx2,fma", CodeWidth::Four, Offset::M,
        expand |p| nibbles(p),
        product |codes, xs| _mm256_madd_epi16(_mm256_maddubs_epi16(codes, xs), _mm256_set1_epi16(1)));
    kernel!(four_vnni, "avx2,fma,avx512f,avx512vl,avx512bw,avx512vnni", CodeWidth::Four, Offset::M,
        expand |p| nibbles(p),
        product |codes, xs| _mm256_dpbusd_epi32(_mm256_setzero_si256(), codes, xs));
    // 8-bit codes would saturate vpmaddubsw, so AVX2 works on the signed weights (code − 128)
    // with the sign trick, |w| × sign(x, w), and needs no offset term. VNNI multiplies the
    // unsigned codes exactly and takes 128·Σx back out once per row.
    kernel!(eight_avx2, "avx2,fma", CodeWidth::Eight, Offset::None,
        expand |p| _mm256_xor_si256(_mm256_loadu_si256(p as *const __m256i), _mm256_set1_epi8(-128)),
        product |signed, xs| _mm256_madd_epi16(
            _mm256_maddubs_epi16(_mm256_sign_epi8(signed, signed), _mm256_sign_epi8(xs, signed)),
            _mm256_set1_epi16(1)
        ));
    kernel!(eight_vnni, "avx2,fma,avx512f,avx512vl,avx512bw,avx512vnni", CodeWidth::Eight, Offset::Bias128,
        expand |p| _mm256_loadu_si256(p as *const __m256i),
        product |codes, xs| _mm256_dpbusd_epi32(_mm256_setzero_si256(), codes, xs));
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn case(width: CodeWidth, blocks: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<u8>, QuantizedActivations) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = GROUP * blocks;
        let d = (0..n).map(|_| rng.random_range(0.001..0.05)).collect();
        let m = if width == CodeWidth::Four { (0..n).map(|_| rng.random_range(-0.4..0.0)).collect() } else { vec![] };
        let codes = (0..n * width.bytes_per_block()).map(|_| rng.random::<u8>()).collect();
        // Five tokens, including extreme activations (codes of ±127).
        let mut x: Vec<f32> = (0..5 * blocks * BLOCK).map(|_| rng.random_range(-2.0..2.0)).collect();
        x[3] = 50.0;
        x[BLOCK + 1] = -50.0;
        (d, m, codes, QuantizedActivations::quantize(&x, blocks * BLOCK))
    }

    #[test]
    fn every_simd_path_equals_the_reference() {
        for width in [CodeWidth::Four, CodeWidth::Eight] {
            for blocks in [1, 18, 48] {
                let (d, m, codes, a) = case(width, blocks, blocks as u64);
                let w = RowGroup { width, blocks, d: &d, m: &m, codes: &codes };
                let want: Vec<[f32; GROUP]> = (0..5)
                    .map(|t| {
                        let mut o = [0.0; GROUP];
                        group_dot_portable(w, &a, t, &mut o);
                        o
                    })
                    .collect();
                for isa in Isa::available() {
                    for nt in 1..=max_tokens_per_call(isa) {
                        for t0 in 0..=5 - nt {
                            let mut got = vec![[0.0; GROUP]; nt];
                            group_dot(isa, w, &a, t0, &mut got);
                            for (k, row) in got.iter().enumerate() {
                                for r in 0..GROUP {
                                    let want = want[t0 + k][r];
                                    let tol = 1e-4 * want.abs().max(1.0);
                                    assert!((want - row[r]).abs() <= tol, "{isa:?} {width:?} blocks {blocks} nt {nt} t {} r {r}: {want} vs {}", t0 + k, row[r]);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "weight shape")]
    fn short_weights_are_refused() {
        let (d, m, codes, a) = case(CodeWidth::Four, 2, 1);
        let w = RowGroup { width: CodeWidth::Four, blocks: 2, d: &d, m: &m, codes: &codes[1..] };
        group_dot(Isa::detect(), w, &a, 0, &mut [[0.0; GROUP]]);
    }
}
