//! Dot products of a group of eight weight rows with quantized activation rows, per
//! instruction set. [`group_dot_portable`] is the reference every SIMD path is tested against.
//!
//! The eight rows are interleaved within each block (see [`code_position`]), so a group is read
//! as one sequential stream (two cache lines of 4-bit codes per block) and each row owns one
//! lane of every vector.

use half::f16;

use super::activations::QuantizedActivations;
use super::{Isa, BLOCK};

/// How a block's 32 codes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeWidth {
    /// 16 bytes per block: low nibble = element j, high nibble = element j + 16 (GGUF order).
    Four,
    /// 20 bytes per block: Four's nibbles, then one byte of fifth bits per four nibble bytes
    /// (see [`fifth_bit_position`]); codes 0..32 with `w = code·d + m`, as Q5's 5-bit codes.
    Five,
    /// 32 bytes per block, one byte per element biased by 128: w = (code − 128)·d, and `m` is
    /// not used (Q8_0's signed bytes, stored so that `vpdpbusd` can take them as unsigned).
    Eight,
}

impl CodeWidth {
    pub const fn bytes_per_block(self) -> usize {
        match self {
            CodeWidth::Four => BLOCK / 2,
            CodeWidth::Five => BLOCK / 2 + BLOCK / 8,
            CodeWidth::Eight => BLOCK,
        }
    }

    /// Whether blocks carry an offset `m`: the unsigned 4- and 5-bit codes do, the centred
    /// 8-bit ones do not.
    pub const fn has_offset(self) -> bool {
        !matches!(self, CodeWidth::Eight)
    }
}

/// Rows per group: one 32-bit lane of a 256-bit register per row.
pub const GROUP: usize = 8;

/// Bytes of one row in one chunk: four 8-bit codes, or eight 4-bit codes.
const CHUNK: usize = 4;

/// Where chunk `c` (bytes 4c..4c+4 of one row's block, as [`WeightFormat`] unpacks it) of row
/// `r` lives in the group's block: every chunk holds 4 bytes per row, row r at 4r.
///
/// [`WeightFormat`]: super::matrix::WeightFormat
pub const fn chunk_position(r: usize, c: usize) -> usize {
    c * GROUP * CHUNK + r * CHUNK
}

/// Where code `j` (0..32) of row `r` of a block lives inside the group's codes for that block,
/// and whether it is the high nibble (5-bit codes: their low four bits). The block's codes are
/// chunks of 32 bytes (see [`chunk_position`]): 8-bit chunk c holds codes 4c..4c+4; 4-bit chunk
/// c holds codes 4c..4c+4 in its low nibbles and 16+4c..16+4c+4 in its high ones (GGUF's nibble
/// order). So one chunk times one broadcast 4-byte slice of activations gives every row's
/// partial dot product in its own lane: no horizontal sums, and one scale multiply for eight
/// rows.
pub fn code_position(width: CodeWidth, r: usize, j: usize) -> (usize, bool) {
    let (element, high) = match width {
        CodeWidth::Four | CodeWidth::Five => (j % 16, j >= 16),
        CodeWidth::Eight => (j, false),
    };
    (chunk_position(r, element / CHUNK) + element % CHUNK, high)
}

/// Where the fifth bit of 5-bit code `j` of row `r` lives: a byte of the fifth chunk, which
/// mirrors the four nibble chunks byte for byte, and its bit: `c` for the low nibble of chunk c,
/// `4 + c` for its high nibble. The kernel then gets chunk c's fifth bits into place with one
/// 16-bit shift and a mask per nibble half, the same shift for every byte.
pub fn fifth_bit_position(r: usize, j: usize) -> (usize, u32) {
    let element = j % 16;
    let nibble_chunk = (element / CHUNK) as u32;
    (chunk_position(r, FIFTH_BITS_CHUNK) + element % CHUNK, nibble_chunk + if j >= 16 { 4 } else { 0 })
}

/// The chunk of a 5-bit block holding its fifth bits.
const FIFTH_BITS_CHUNK: usize = 4;

/// Code `j` of row `r` from a group's block of codes, unsigned as stored (8-bit: biased).
pub fn stored_code(width: CodeWidth, codes: &[u8], r: usize, j: usize) -> u8 {
    let (at, high) = code_position(width, r, j);
    let nibble = if high { codes[at] >> 4 } else { codes[at] & 0x0F };
    match width {
        CodeWidth::Eight => codes[at],
        CodeWidth::Four => nibble,
        CodeWidth::Five => {
            let (byte, bit) = fifth_bit_position(r, j);
            nibble | (((codes[byte] >> bit) & 1) << 4)
        }
    }
}

/// Eight weight rows of `blocks` blocks each: block b's scale (and offset) of row r at
/// `b * GROUP + r` of `d` (and `m`), its codes at `b * GROUP * bytes_per_block` as laid out by
/// [`code_position`].
#[derive(Debug, Clone, Copy)]
pub struct RowGroup<'a> {
    pub width: CodeWidth,
    pub blocks: usize,
    pub d: &'a [f16],
    /// Empty where the width has no offset ([`CodeWidth::has_offset`]).
    pub m: &'a [f16],
    pub codes: &'a [u8],
}

/// Most tokens one [`group_dot`] call takes on `isa`: each weight chunk is expanded once and
/// used for all of them (prefill and batched decode), as far as registers allow.
pub fn max_tokens_per_call(isa: Isa) -> usize {
    match isa {
        Isa::Portable => 1,
        // Eight integer sums and two expanded chunks fill AVX2's 16 registers; the float sums
        // live in memory, touched once per block. Measured against four per call: 5-8% faster
        // (Q4_1 and Q8_0, eight tokens).
        Isa::Avx2 | Isa::Avx512Vnni => 8,
    }
}

/// `out[k][r] = Σ_c w[r][c] · x[t0 + k][c]` for the group's eight rows and `out.len()` tokens
/// from `t0` (at most [`max_tokens_per_call`]).
pub fn group_dot(isa: Isa, w: RowGroup<'_>, a: &QuantizedActivations, t0: usize, out: &mut [[f32; GROUP]]) {
    let n = GROUP * w.blocks;
    let nt = out.len();
    assert!(
        (1..=max_tokens_per_call(isa)).contains(&nt),
        "1 to {} tokens per call",
        max_tokens_per_call(isa)
    );
    assert!(a.blocks_per_row == w.blocks && t0 + nt <= a.tokens, "activation shape");
    let m_len = if w.width.has_offset() { n } else { 0 };
    assert!(
        w.d.len() == n && w.m.len() == m_len && w.codes.len() == n * w.width.bytes_per_block(),
        "weight shape"
    );
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
            let codes = &w.codes[b * GROUP * cb..(b + 1) * GROUP * cb];
            let ai = t * bpr + b;
            let x = &a.qs[ai * BLOCK..(ai + 1) * BLOCK];
            let code = |j: usize| -> i32 {
                let code = stored_code(w.width, codes, r, j) as i32;
                if w.width.has_offset() {
                    code
                } else {
                    code - 128
                }
            };
            let isum: i32 = (0..BLOCK).map(|j| code(j) * x[j] as i32).sum();
            let wi = b * GROUP + r;
            total += w.d[wi].to_f32() * a.d[ai] * isum as f32;
            if w.width.has_offset() {
                total += w.m[wi].to_f32() * a.s[ai];
            }
        }
        *o = total;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// `$go!(NT)` with the kernels' token count `$tokens` (1 to 8) as a constant.
    macro_rules! for_token_count {
        ($tokens:expr, $go:ident) => {
            match $tokens {
                1 => $go!(1),
                2 => $go!(2),
                3 => $go!(3),
                4 => $go!(4),
                5 => $go!(5),
                6 => $go!(6),
                7 => $go!(7),
                _ => $go!(8),
            }
        };
    }

    pub(super) unsafe fn group_dot(
        isa: Isa,
        w: RowGroup<'_>,
        a: &QuantizedActivations,
        t0: usize,
        out: &mut [[f32; GROUP]],
    ) {
        macro_rules! go {
            ($nt:literal) => {
                match (w.width, isa == Isa::Avx512Vnni) {
                    (CodeWidth::Four, false) => four_avx2::<$nt>(w, a, t0, out),
                    (CodeWidth::Four, true) => four_vnni::<$nt>(w, a, t0, out),
                    (CodeWidth::Five, false) => five_avx2::<$nt>(w, a, t0, out),
                    (CodeWidth::Five, true) => five_vnni::<$nt>(w, a, t0, out),
                    (CodeWidth::Eight, false) => eight_avx2::<$nt>(w, a, t0, out),
                    (CodeWidth::Eight, true) => eight_vnni::<$nt>(w, a, t0, out),
                }
            };
        }
        for_token_count!(out.len(), go)
    }

    /// `$v`, as a value the compiler cannot see into (a macro: the asm needs the caller's AVX
    /// feature). Integer adds reassociate, so without this LLVM hoists every product of a
    /// block ahead of the sums and spills them to the stack.
    macro_rules! in_register {
        ($v:expr) => {{
            let mut v: __m256i = $v;
            std::arch::asm!("/* {0} */", inout(ymm_reg) v, options(pure, nomem, nostack, preserves_flags));
            v
        }};
    }

    /// Chunk `c` of a group's block of codes (see [`chunk_position`]).
    #[inline(always)]
    unsafe fn chunk(block: *const u8, c: usize) -> __m256i {
        _mm256_loadu_si256(block.add(chunk_position(0, c)) as *const __m256i)
    }

    /// A chunk's low and high nibbles, each in the low half of its byte.
    #[inline(always)]
    unsafe fn nibbles(packed: __m256i) -> (__m256i, __m256i) {
        let low = _mm256_set1_epi8(0x0F);
        (_mm256_and_si256(packed, low), _mm256_and_si256(_mm256_srli_epi16(packed, 4), low))
    }

    /// Chunk `c`'s 5-bit codes: its nibbles with their fifth bits (bits c and 4 + c of the
    /// fifth chunk's bytes, see [`fifth_bit_position`]) shifted to bit 4. A 16-bit shift moves
    /// bits across the byte boundary only below bit 4 (left) or above it (right), so the mask
    /// keeps each byte's own bit.
    #[inline(always)]
    unsafe fn five_bit_codes(block: *const u8, c: usize) -> (__m256i, __m256i) {
        let (low, high) = nibbles(chunk(block, c));
        let (fifth, bit) = (chunk(block, FIFTH_BITS_CHUNK), _mm256_set1_epi8(0x10));
        let low_fifth = _mm256_sll_epi16(fifth, _mm_cvtsi32_si128(4 - c as i32));
        let high_fifth = _mm256_srl_epi16(fifth, _mm_cvtsi32_si128(c as i32));
        (
            _mm256_or_si256(low, _mm256_and_si256(low_fifth, bit)),
            _mm256_or_si256(high, _mm256_and_si256(high_fifth, bit)),
        )
    }

    /// The chunks a kernel multiplies per block: 5-bit codes multiply their four nibble
    /// chunks, the fifth bits joining them on the way.
    const fn multiplied_chunks(width: CodeWidth) -> usize {
        match width {
            CodeWidth::Four | CodeWidth::Five => BLOCK / 2 / CHUNK,
            CodeWidth::Eight => BLOCK / CHUNK,
        }
    }

    /// Four activation codes from `at`, in every lane.
    #[inline(always)]
    unsafe fn slice(at: *const i8) -> __m256i {
        _mm256_set1_epi32((at as *const i32).read_unaligned())
    }

    /// The offset a block adds besides `d_w·d_x·Σ`: none, `m·s` (4-bit codes), or `−128·d·s`
    /// (biased 8-bit codes multiplied as unsigned by VNNI).
    #[derive(Clone, Copy, PartialEq)]
    enum Offset {
        None,
        M,
        Bias128,
    }

    /// How far ahead of the codes (and, a quarter as many entries ahead, the scales) to prefetch. Measured
    /// on decode: none 88, 256 B 97, 2 KiB 117 tokens/s; flat beyond.
    const PREFETCH_BYTES: usize = 2048;

    /// The shared loop over a group's blocks for `NT` tokens. Per chunk `c` of the block (codes
    /// at `block`), `expand` turns its 32 bytes into registers once; `step` adds one token's products to that
    /// token's integer sums (one lane per row). Per block, each token's sums become floats,
    /// scaled by the eight rows' `d_w` times the token's `d_x`, plus the offset.
    macro_rules! kernel {
        ($name:ident, $features:literal, $width:expr, $offset:expr,
         expand |$block:ident, $c:ident| $expand:expr,
         step |$w:ident, $x:ident, $sum:ident| $step:expr,
         ints |$s:ident| $ints:expr) => {
            #[target_feature(enable = $features)]
            unsafe fn $name<const NT: usize>(
                w: RowGroup<'_>,
                a: &QuantizedActivations,
                t0: usize,
                out: &mut [[f32; GROUP]],
            ) {
                const CHUNKS: usize = multiplied_chunks($width);
                const BLOCK_BYTES: usize = GROUP * $width.bytes_per_block();
                let bpr = w.blocks;
                let (wd, wm, wc) = (w.d.as_ptr(), w.m.as_ptr(), w.codes.as_ptr());
                let xq: [*const i8; NT] = std::array::from_fn(|k| a.qs.as_ptr().add((t0 + k) * bpr * BLOCK));
                let ad: [*const f32; NT] = std::array::from_fn(|k| a.d.as_ptr().add((t0 + k) * bpr));
                let as_: [*const f32; NT] = std::array::from_fn(|k| a.s.as_ptr().add((t0 + k) * bpr));
                let mut acc = [_mm256_setzero_ps(); NT];
                for b in 0..bpr {
                    let codes = wc.add(b * BLOCK_BYTES);
                    // The hardware prefetcher alone leaves decode waiting on memory: fetch ahead.
                    // Every cache line of a block: two of 4-bit codes, four of 8-bit ones.
                    for line in 0..BLOCK_BYTES.div_ceil(64) {
                        _mm_prefetch::<_MM_HINT_T0>(
                            codes.wrapping_add(PREFETCH_BYTES + 64 * line) as *const i8
                        );
                    }
                    _mm_prefetch::<_MM_HINT_T0>(wd.wrapping_add(b * GROUP + PREFETCH_BYTES / 4) as *const i8);
                    let mut sums = [_mm256_setzero_si256(); NT];
                    for c in 0..CHUNKS {
                        let $w = {
                            let ($block, $c) = (codes, c);
                            $expand
                        };
                        for k in 0..NT {
                            let $x = xq[k].add(b * BLOCK + c * CHUNK);
                            let $sum = sums[k];
                            sums[k] = in_register!($step);
                        }
                    }
                    let dw = _mm256_cvtph_ps(_mm_loadu_si128(wd.add(b * GROUP) as *const __m128i));
                    let wm8 = if $offset == Offset::M {
                        _mm256_cvtph_ps(_mm_loadu_si128(wm.add(b * GROUP) as *const __m128i))
                    } else {
                        dw
                    };
                    for k in 0..NT {
                        let $s = sums[k];
                        let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*ad[k].add(b)));
                        acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps($ints), scale, acc[k]);
                        match $offset {
                            Offset::None => {}
                            Offset::M => {
                                acc[k] = _mm256_fmadd_ps(wm8, _mm256_set1_ps(*as_[k].add(b)), acc[k])
                            }
                            Offset::Bias128 => {
                                acc[k] = _mm256_fmadd_ps(dw, _mm256_set1_ps(-128.0 * *as_[k].add(b)), acc[k])
                            }
                        }
                    }
                }
                for k in 0..NT {
                    _mm256_storeu_ps(out[k].as_mut_ptr(), acc[k]);
                }
            }
        };
    }

    // 4-bit: a chunk's low nibbles pair with activations 4c..4c+4, its high nibbles with
    // 16+4c..16+4c+4. AVX2 sums u8 × i8 pairs to i16: a block's eight products per lane are at
    // most 8·2·15·127 = 30480, so they add up in i16 and widen once per block.
    kernel!(
        four_avx2,
        "avx2,fma,f16c",
        CodeWidth::Four,
        Offset::M,
        expand | block,
        c | nibbles(chunk(block, c)),
        step | w,
        x,
        sum | _mm256_add_epi16(
            sum,
            _mm256_add_epi16(
                _mm256_maddubs_epi16(w.0, slice(x)),
                _mm256_maddubs_epi16(w.1, slice(x.add(16)))
            )
        ),
        ints | s | _mm256_madd_epi16(s, _mm256_set1_epi16(1))
    );
    // 5-bit: as 4-bit, but a chunk's two products per lane reach 2·2·31·127 = 15748, so each
    // chunk's i16 sums widen to i32 at once.
    kernel!(
        five_avx2,
        "avx2,fma,f16c",
        CodeWidth::Five,
        Offset::M,
        expand | block,
        c | five_bit_codes(block, c),
        step | w,
        x,
        sum | _mm256_add_epi32(
            sum,
            _mm256_madd_epi16(
                _mm256_add_epi16(
                    _mm256_maddubs_epi16(w.0, slice(x)),
                    _mm256_maddubs_epi16(w.1, slice(x.add(16)))
                ),
                _mm256_set1_epi16(1)
            )
        ),
        ints | s | s
    );
    // 8-bit codes would saturate vpmaddubsw, so AVX2 works on the signed weights (code − 128)
    // with the sign trick, |w| × sign(x, w), widening every product to i32, and needs no
    // offset.
    kernel!(
        eight_avx2,
        "avx2,fma,f16c",
        CodeWidth::Eight,
        Offset::None,
        expand | block,
        c | {
            let signed = _mm256_xor_si256(chunk(block, c), _mm256_set1_epi8(-128));
            (_mm256_sign_epi8(signed, signed), signed)
        },
        step | w,
        x,
        sum | _mm256_add_epi32(
            sum,
            _mm256_madd_epi16(
                _mm256_maddubs_epi16(w.0, _mm256_sign_epi8(slice(x), w.1)),
                _mm256_set1_epi16(1)
            )
        ),
        ints | s | s
    );
    /// The VNNI kernels, 4-bit and 8-bit, built around `$dpbusd` (u8 × i8 products summed in
    /// fours into i32 lanes): `_mm256_dpbusd_epi32` in the library, and in the tests an exact
    /// AVX2 emulation of it, so that everything else in them (the layouts, the offsets, the
    /// 128 bias of 8-bit codes) is tested on machines without AVX-512.
    macro_rules! vnni_kernels {
        ($four:ident, $five:ident, $eight:ident, $features:literal, $dpbusd:path) => {
            kernel!(
                $four,
                $features,
                CodeWidth::Four,
                Offset::M,
                expand | block,
                c | nibbles(chunk(block, c)),
                step | w,
                x,
                sum | $dpbusd($dpbusd(sum, w.0, slice(x)), w.1, slice(x.add(16))),
                ints | s | s
            );
            kernel!(
                $five,
                $features,
                CodeWidth::Five,
                Offset::M,
                expand | block,
                c | five_bit_codes(block, c),
                step | w,
                x,
                sum | $dpbusd($dpbusd(sum, w.0, slice(x)), w.1, slice(x.add(16))),
                ints | s | s
            );
            // VNNI multiplies the unsigned 8-bit codes exactly and takes 128·Σx back out per
            // block.
            kernel!(
                $eight,
                $features,
                CodeWidth::Eight,
                Offset::Bias128,
                expand | block,
                c | chunk(block, c),
                step | w,
                x,
                sum | $dpbusd(sum, w, slice(x)),
                ints | s | s
            );
        };
    }
    vnni_kernels!(
        four_vnni,
        five_vnni,
        eight_vnni,
        "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni",
        _mm256_dpbusd_epi32
    );
    #[cfg(test)]
    vnni_kernels!(four_vnni_emulated, five_vnni_emulated, eight_vnni_emulated, "avx2,fma,f16c", dpbusd_avx2);

    /// `_mm256_dpbusd_epi32` with AVX2 only, exactly: bytes widened to 16 bits (`u` zero-,
    /// `s` sign-extended), even and odd bytes multiplied and paired by `vpmaddwd`, so each i32
    /// lane gains `Σ u[4j + i]·s[4j + i]` over its four bytes.
    #[cfg(test)]
    #[inline(always)]
    unsafe fn dpbusd_avx2(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        unsafe {
            let u_even = _mm256_and_si256(u, _mm256_set1_epi16(0x00FF));
            let u_odd = _mm256_srli_epi16::<8>(u);
            let s_even = _mm256_srai_epi16::<8>(_mm256_slli_epi16::<8>(s));
            let s_odd = _mm256_srai_epi16::<8>(s);
            _mm256_add_epi32(
                acc,
                _mm256_add_epi32(_mm256_madd_epi16(u_even, s_even), _mm256_madd_epi16(u_odd, s_odd)),
            )
        }
    }

    /// The VNNI kernels' logic on AVX2 (see [`vnni_kernels`]), for the tests.
    #[cfg(test)]
    pub(super) unsafe fn group_dot_vnni_emulated(
        w: RowGroup<'_>,
        a: &QuantizedActivations,
        t0: usize,
        out: &mut [[f32; GROUP]],
    ) {
        macro_rules! go {
            ($nt:literal) => {
                match w.width {
                    CodeWidth::Four => four_vnni_emulated::<$nt>(w, a, t0, out),
                    CodeWidth::Five => five_vnni_emulated::<$nt>(w, a, t0, out),
                    CodeWidth::Eight => eight_vnni_emulated::<$nt>(w, a, t0, out),
                }
            };
        }
        // SAFETY: the caller's.
        unsafe { for_token_count!(out.len(), go) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const TOKENS: usize = 11;

    fn case(
        width: CodeWidth,
        blocks: usize,
        seed: u64,
    ) -> (Vec<f16>, Vec<f16>, Vec<u8>, QuantizedActivations) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = GROUP * blocks;
        let d = (0..n).map(|_| f16::from_f32(rng.random_range(0.001..0.05))).collect();
        let m = if width.has_offset() {
            (0..n).map(|_| f16::from_f32(rng.random_range(-0.4..0.0))).collect()
        } else {
            vec![]
        };
        let codes = (0..n * width.bytes_per_block()).map(|_| rng.random::<u8>()).collect();
        // Eleven tokens, including extreme activations (codes of ±127) and two whose codes are
        // all +127 and all −127 (the largest sums a lane can reach).
        let cols = blocks * BLOCK;
        let mut x: Vec<f32> = (0..TOKENS * cols).map(|_| rng.random_range(-2.0..2.0)).collect();
        x[3] = 50.0;
        x[BLOCK + 1] = -50.0;
        x[9 * cols..10 * cols].fill(3.0);
        x[10 * cols..].fill(-3.0);
        (d, m, codes, QuantizedActivations::quantize(&x, blocks * BLOCK))
    }

    #[test]
    fn every_simd_path_equals_the_reference() {
        for width in [CodeWidth::Four, CodeWidth::Five, CodeWidth::Eight] {
            for blocks in [1, 18, 48] {
                let (d, m, codes, a) = case(width, blocks, blocks as u64);
                let w = RowGroup { width, blocks, d: &d, m: &m, codes: &codes };
                let want: Vec<[f32; GROUP]> = (0..TOKENS)
                    .map(|t| {
                        let mut o = [0.0; GROUP];
                        group_dot_portable(w, &a, t, &mut o);
                        o
                    })
                    .collect();
                for (path, most, dot) in paths() {
                    for nt in 1..=most {
                        for t0 in 0..=TOKENS - nt {
                            let mut got = vec![[0.0; GROUP]; nt];
                            dot(w, &a, t0, &mut got);
                            for (k, row) in got.iter().enumerate() {
                                for r in 0..GROUP {
                                    let want = want[t0 + k][r];
                                    let tol = 1e-4 * want.abs().max(1.0);
                                    assert!(
                                        (want - row[r]).abs() <= tol,
                                        "{path} {width:?} blocks {blocks} nt {nt} t {} r {r}: {want} vs {}",
                                        t0 + k,
                                        row[r]
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// A kernel under test: eight rows times tokens from `t0`, as [`group_dot`].
    type Dot = Box<dyn Fn(RowGroup<'_>, &QuantizedActivations, usize, &mut [[f32; GROUP]])>;

    /// Every path [`group_dot`] can take here, plus (on x86 with AVX2) the VNNI kernels run on
    /// an AVX2 emulation of `vpdpbusd`, which this machine may not have.
    fn paths() -> Vec<(&'static str, usize, Dot)> {
        let mut out: Vec<(&'static str, usize, Dot)> = Isa::available()
            .into_iter()
            .map(|isa| {
                (
                    isa.name(),
                    max_tokens_per_call(isa),
                    Box::new(
                        move |w: RowGroup<'_>,
                              a: &QuantizedActivations,
                              t0: usize,
                              o: &mut [[f32; GROUP]]| group_dot(isa, w, a, t0, o),
                    ) as Dot,
                )
            })
            .collect();
        #[cfg(target_arch = "x86_64")]
        if Isa::available().contains(&Isa::Avx2) {
            let emulated = |w: RowGroup<'_>, a: &QuantizedActivations, t0: usize, o: &mut [[f32; GROUP]]| {
                assert!(
                    a.blocks_per_row == w.blocks && t0 + o.len() <= a.tokens && (1..=8).contains(&o.len())
                );
                // SAFETY: the CPU has AVX2, FMA and F16C; the shapes are checked above and by
                // the callers' cases.
                unsafe { x86::group_dot_vnni_emulated(w, a, t0, o) }
            };
            out.push((
                "avx512vnni emulated on avx2",
                max_tokens_per_call(Isa::Avx512Vnni),
                Box::new(emulated),
            ));
        }
        out
    }

    #[test]
    fn saturated_codes_do_not_overflow() {
        // Every 4-bit code 15 (5-bit: 31, 8-bit: ±127) against activations of all +127 or all −127.
        for (width, byte) in [
            (CodeWidth::Four, 0xFFu8),
            (CodeWidth::Five, 0xFF),
            (CodeWidth::Eight, 0xFF),
            (CodeWidth::Eight, 0x01),
        ] {
            let blocks = 4;
            let n = GROUP * blocks;
            let (d, m) = (vec![f16::ONE; n], if width.has_offset() { vec![f16::ZERO; n] } else { vec![] });
            let codes = vec![byte; n * width.bytes_per_block()];
            let a = QuantizedActivations::quantize(
                &[[1.0f32; BLOCK * 4], [-1.0; BLOCK * 4]].concat(),
                blocks * BLOCK,
            );
            let w = RowGroup { width, blocks, d: &d, m: &m, codes: &codes };
            let weight = match width {
                CodeWidth::Four => 15.0,
                CodeWidth::Five => 31.0,
                CodeWidth::Eight => byte as f32 - 128.0,
            };
            for (path, _, dot) in paths() {
                for t in 0..2 {
                    let mut got = [[0.0; GROUP]];
                    dot(w, &a, t, &mut got);
                    let want = weight
                        * 127.0
                        * (n / GROUP * BLOCK) as f32
                        * a.d[t * blocks]
                        * if t == 0 { 1.0 } else { -1.0 };
                    assert!(
                        got[0].iter().all(|&g| (g - want).abs() <= 1e-3 * want.abs()),
                        "{path} {width:?} {byte:#x} t {t}: {:?} vs {want}",
                        got[0]
                    );
                }
            }
        }
    }

    #[test]
    fn code_positions_cover_every_code_once() {
        for width in [CodeWidth::Four, CodeWidth::Five, CodeWidth::Eight] {
            // Bit i of seen[at]: some code uses bit i of byte `at`; no bit twice.
            let mut seen = vec![0u8; GROUP * width.bytes_per_block()];
            let mut claim = |at: usize, bits: u8| {
                assert_eq!(seen[at] & bits, 0, "{width:?}: byte {at} bits {bits:#x} used twice");
                seen[at] |= bits;
            };
            for r in 0..GROUP {
                for j in 0..BLOCK {
                    let (at, high) = code_position(width, r, j);
                    claim(
                        at,
                        if width == CodeWidth::Eight {
                            0xFF
                        } else if high {
                            0xF0
                        } else {
                            0x0F
                        },
                    );
                    if width == CodeWidth::Five {
                        let (byte, bit) = fifth_bit_position(r, j);
                        claim(byte, 1 << bit);
                    }
                }
            }
            assert!(seen.iter().all(|&n| n == 0xFF), "{width:?}: {seen:?}");
        }
    }

    #[test]
    fn five_bit_codes_read_their_fifth_bit() {
        // One byte of fifth bits set at a time: exactly the codes it names gain 16.
        let mut codes = vec![0u8; GROUP * CodeWidth::Five.bytes_per_block()];
        for r in 0..GROUP {
            for j in 0..BLOCK {
                let (byte, bit) = fifth_bit_position(r, j);
                codes[byte] = 1 << bit;
                for (rr, jj) in (0..GROUP).flat_map(|rr| (0..BLOCK).map(move |jj| (rr, jj))) {
                    let want = if (rr, jj) == (r, j) { 16 } else { 0 };
                    assert_eq!(stored_code(CodeWidth::Five, &codes, rr, jj), want, "set ({r}, {j})");
                }
                codes[byte] = 0;
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
