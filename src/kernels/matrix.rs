//! A quantized weight matrix repacked for [`super::dot`], its parallel matmul, and the
//! [`WeightSpace`] a model's matrices are repacked into together.

use std::ops::{Deref, Range};
use std::sync::Arc;

use half::f16;
use rayon::prelude::*;

use super::activations::QuantizedActivations;
use super::dot::{
    chunk_position, fifth_bit_position, group_dot, max_tokens_per_call, stored_code, CodeWidth, RowGroup,
    GROUP,
};
use super::{Isa, BLOCK};

/// The GGUF block formats these kernels take. Each is repacked per 32 values into one of the
/// kernel forms ([`CodeWidth`]): exactly where the format's values are already
/// `(code − 128)·d` or `code·d + m` (4- or 5-bit codes) with an f16 scale per 32 values, else
/// requantized to 8 bits per 32 values
/// (error at most 1/254 of the block's largest weight: finer than every such source's own step,
/// and as llama.cpp's own dot products quantize activations to 8 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// 18 bytes: f16 d, 16 bytes of nibbles; w = (q − 8)·d.
    Q4_0,
    /// 20 bytes: f16 d, f16 m, 16 bytes of nibbles; w = q·d + m.
    Q4_1,
    /// 22 bytes: f16 d, 32 fifth bits, nibbles; w = (q − 16)·d. Exact in 5 bits.
    Q5_0,
    /// 24 bytes: f16 d, f16 m, 32 fifth bits, nibbles; w = q·d + m. Exact in 5 bits.
    Q5_1,
    /// 34 bytes: f16 d, 32 signed bytes; w = q·d.
    Q8_0,
    /// 84 bytes per 256 values: 4-bit scales and mins of sixteen 16-value sub-blocks, 2-bit
    /// codes, f16 d and dmin; w = d·sc·q − dmin·m. Requantized.
    Q2K,
    /// 110 bytes per 256 values: high bits, 2-bit low codes, sixteen 6-bit scales, f16 d;
    /// w = d·(sc − 32)·(q − 4). Requantized.
    Q3K,
    /// 144 bytes per 256 values: f16 d, f16 dmin, 6-bit scales and mins of eight 32-value
    /// sub-blocks, nibbles; w = q·(d·sc) − dmin·m. Repacked exactly as eight Q4_1-like blocks.
    Q4K,
    /// 176 bytes per 256 values: Q4_K's layout with a fifth bit per value. Repacked exactly as
    /// eight Q5_1-like blocks, scales rounded to f16 as Q4_K's.
    Q5K,
    /// 210 bytes per 256 values: 6-bit codes, sixteen i8 scales of 16 values, f16 d;
    /// w = d·sc·(q − 32). Requantized.
    Q6K,
    /// 18 bytes: f16 d, nibbles indexing a fixed non-linear table of i8; w = d·table[q].
    /// Exact in 8 bits.
    IQ4NL,
    /// 136 bytes per 256 values: f16 d, 6-bit scales of eight 32-value sub-blocks, nibbles into
    /// IQ4_NL's table; w = d·(sc − 32)·table[q]. Exact codes, scales rounded to f16 as Q4_K's.
    IQ4XS,
    /// Plain floats (32 per kernel block). Requantized.
    F16,
    BF16,
    F32,
}

/// IQ4_NL's and IQ4_XS's code values (GGML's `kvalues_iq4nl`).
const IQ4_VALUES: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

impl WeightFormat {
    /// Bytes of one GGUF block (for floats: of 32 values).
    pub const fn gguf_block_bytes(self) -> usize {
        match self {
            WeightFormat::Q4_0 | WeightFormat::IQ4NL => 18,
            WeightFormat::Q4_1 => 20,
            WeightFormat::Q5_0 => 22,
            WeightFormat::Q5_1 => 24,
            WeightFormat::Q8_0 => 34,
            WeightFormat::Q2K => 84,
            WeightFormat::Q3K => 110,
            WeightFormat::Q4K => 144,
            WeightFormat::Q5K => 176,
            WeightFormat::Q6K => 210,
            WeightFormat::IQ4XS => 136,
            WeightFormat::F16 | WeightFormat::BF16 => 64,
            WeightFormat::F32 => 128,
        }
    }

    /// Kernel blocks of 32 values in one GGUF block.
    pub const fn kernel_blocks(self) -> usize {
        match self {
            WeightFormat::Q2K
            | WeightFormat::Q3K
            | WeightFormat::Q4K
            | WeightFormat::Q5K
            | WeightFormat::Q6K
            | WeightFormat::IQ4XS => 8,
            _ => 1,
        }
    }

    const fn width(self) -> CodeWidth {
        match self {
            WeightFormat::Q4_0 | WeightFormat::Q4_1 | WeightFormat::Q4K => CodeWidth::Four,
            WeightFormat::Q5_0 | WeightFormat::Q5_1 | WeightFormat::Q5K => CodeWidth::Five,
            _ => CodeWidth::Eight,
        }
    }

    /// Kernel block `k` of GGUF block `b`: its codes into `dst`, and its (d, m) as stored
    /// (f16 bits taken as they are wherever the format's own scale serves: no conversion).
    fn unpack(self, b: &[u8], k: usize, dst: &mut [u8]) -> Result<(f16, f16), String> {
        let raw = |at: usize| f16::from_le_bytes([b[at], b[at + 1]]);
        let half = |at: usize| raw(at).to_f32();
        Ok(match self {
            WeightFormat::Q4_0 => {
                dst.copy_from_slice(&b[2..18]);
                (raw(0), to_f16(-8.0 * half(0))?)
            }
            WeightFormat::Q4_1 => {
                dst.copy_from_slice(&b[4..20]);
                (raw(0), raw(2))
            }
            // 8-bit codes are biased to unsigned: code = q + 128 (see CodeWidth::Eight).
            WeightFormat::Q8_0 => {
                dst.iter_mut().zip(&b[2..34]).for_each(|(c, &q)| *c = q ^ 0x80);
                (raw(0), f16::ZERO)
            }
            WeightFormat::Q5_0 => {
                let high = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                pack_five_bit_codes(|i| five_bit_code(&b[6..22], high, i), dst);
                (raw(0), to_f16(-16.0 * half(0))?)
            }
            WeightFormat::Q5_1 => {
                let high = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                pack_five_bit_codes(|i| five_bit_code(&b[8..24], high, i), dst);
                (raw(0), raw(2))
            }
            WeightFormat::Q5K => {
                let (sc, mn) = q4k_scale_min(k, &b[4..16]);
                pack_five_bit_codes(|i| q5k_code(b, k, i), dst);
                (to_f16(half(0) * sc as f32)?, to_f16(-(half(2) * mn as f32))?)
            }
            WeightFormat::IQ4NL => {
                iq4_codes(&b[2..18], dst);
                (raw(0), f16::ZERO)
            }
            WeightFormat::IQ4XS => {
                let scales_high = u16::from_le_bytes([b[2], b[3]]);
                let low = (b[4 + k / 2] >> (4 * (k % 2))) & 0xF;
                let scale = (low | (((scales_high >> (2 * k)) & 3) as u8) << 4) as i32 - 32;
                iq4_codes(&b[8 + 16 * k..8 + 16 * (k + 1)], dst);
                (to_f16(half(0) * scale as f32)?, f16::ZERO)
            }
            WeightFormat::Q4K => {
                let (sc, mn) = q4k_scale_min(k, &b[4..16]);
                // Sub-blocks 2j and 2j+1 share 32 bytes: low nibbles, then high nibbles.
                let qs = &b[16 + (k / 2) * 32..16 + (k / 2) * 32 + 32];
                let code = |i: usize| if k.is_multiple_of(2) { qs[i] & 0xF } else { qs[i] >> 4 };
                for (i, c) in dst.iter_mut().enumerate() {
                    *c = code(i) | (code(i + 16) << 4);
                }
                (to_f16(half(0) * sc as f32)?, to_f16(-(half(2) * mn as f32))?)
            }
            _ => {
                let mut values = [0f32; BLOCK];
                self.values(b, k, &mut values);
                (requantize_eight(&values, dst)?, f16::ZERO)
            }
        })
    }

    /// Every value of `bytes`, whole GGUF blocks of this format, in order: GGML's dequantization
    /// (the exactly repacked formats' as repacked: Q4_K's, Q5_K's and IQ4_XS's scale products
    /// rounded to f16).
    pub fn dequantize(self, bytes: &[u8]) -> Vec<f32> {
        let mut out =
            Vec::with_capacity(bytes.len() / self.gguf_block_bytes() * BLOCK * self.kernel_blocks());
        for b in bytes.chunks_exact(self.gguf_block_bytes()) {
            for k in 0..self.kernel_blocks() {
                let mut v = [0f32; BLOCK];
                self.values(b, k, &mut v);
                out.extend_from_slice(&v);
            }
        }
        out
    }

    /// The 32 values of kernel block `k` of GGUF block `b`, by GGML's dequantization formula:
    /// for the formats repacked by requantizing, and as the reference in tests.
    fn values(self, b: &[u8], k: usize, out: &mut [f32; BLOCK]) {
        match self {
            WeightFormat::Q2K => q2k_values(b, k, out),
            WeightFormat::Q3K => q3k_values(b, k, out),
            WeightFormat::Q5K => q5k_values(b, k, out),
            WeightFormat::Q6K => q6k_values(b, k, out),
            WeightFormat::F16 => {
                for (v, x) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *v = f16::from_le_bytes([x[0], x[1]]).to_f32();
                }
            }
            WeightFormat::BF16 => {
                for (v, x) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *v = half::bf16::from_le_bytes([x[0], x[1]]).to_f32();
                }
            }
            WeightFormat::F32 => {
                for (v, x) in out.iter_mut().zip(b.chunks_exact(4)) {
                    *v = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
                }
            }
            exact => {
                // The exactly repacked formats: their values are their codes times their scales.
                let mut codes = [0u8; BLOCK];
                let width = exact.width();
                let cb = width.bytes_per_block();
                let (d, m) = exact.unpack(b, k, &mut codes[..cb]).unwrap_or((f16::ZERO, f16::ZERO));
                // The unpacked chunks spread to row 0 of a group, to be read as the kernels do.
                let mut group = [0u8; GROUP * BLOCK];
                for (c, chunk) in codes[..cb].chunks_exact(4).enumerate() {
                    group[chunk_position(0, c)..chunk_position(0, c) + 4].copy_from_slice(chunk);
                }
                for (i, v) in out.iter_mut().enumerate() {
                    let code = stored_code(width, &group, 0, i) as f32;
                    let code = if width.has_offset() { code } else { code - 128.0 };
                    *v = code * d.to_f32() + m.to_f32();
                }
            }
        }
    }
}

/// Code `i` (0..32) of a Q5_0/Q5_1 block: its nibble (low nibbles are codes 0..16, high ones
/// 16..32) and its fifth bit from `high`.
fn five_bit_code(nibbles: &[u8], high: u32, i: usize) -> u8 {
    let nibble = if i < 16 { nibbles[i] & 0xF } else { nibbles[i - 16] >> 4 };
    nibble | ((((high >> i) & 1) as u8) << 4)
}

/// 5-bit codes `code(0..32)` as one row's block of [`CodeWidth::Five`]: bytes 0..16 their
/// nibbles (code i low, code i + 16 high), bytes 16..20 their fifth bits, chunk by chunk as the
/// group layout wants them (bit c of byte i: code 4c + i; bit 4 + c: code 16 + 4c + i).
fn pack_five_bit_codes(code: impl Fn(usize) -> u8, dst: &mut [u8]) {
    dst.fill(0);
    for i in 0..BLOCK {
        let (element, high) = (i % 16, i >= 16);
        let q = code(i);
        dst[element] |= (q & 0xF) << if high { 4 } else { 0 };
        // Row 0's place in the group's fifth-bit chunk: the byte's offset within its 4-byte
        // slice is the unpacked chunk's byte.
        let (byte, bit) = fifth_bit_position(0, i);
        dst[BLOCK / 2 + byte % 4] |= ((q >> 4) & 1) << bit;
    }
}

/// IQ4 nibbles (low nibbles are values 0..16, high ones 16..32) as biased 8-bit codes.
fn iq4_codes(nibbles: &[u8], dst: &mut [u8]) {
    for (i, c) in dst.iter_mut().enumerate() {
        let q = if i < 16 { nibbles[i] & 0xF } else { nibbles[i - 16] >> 4 };
        *c = (IQ4_VALUES[q as usize] as i32 + 128) as u8;
    }
}

/// 32 values as biased 8-bit codes with one scale (the largest magnitude maps to ±127).
fn requantize_eight(values: &[f32; BLOCK], dst: &mut [u8]) -> Result<f16, String> {
    let amax = values.iter().fold(0f32, |a, v| a.max(v.abs()));
    if !amax.is_finite() {
        return Err(format!("a weight block holds a non-finite value ({amax})"));
    }
    let scale = to_f16(amax / 127.0)?;
    let inv = if scale.to_f32() > 0.0 { 1.0 / scale.to_f32() } else { 0.0 };
    for (c, v) in dst.iter_mut().zip(values) {
        *c = ((v * inv).round().clamp(-127.0, 127.0) as i32 + 128) as u8;
    }
    Ok(scale)
}

/// The 32 values of kernel block `k` of a Q2_K block (two 16-value sub-blocks).
fn q2k_values(b: &[u8], k: usize, out: &mut [f32; BLOCK]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let d = f16::from_le_bytes([b[80], b[81]]).to_f32();
    let dmin = f16::from_le_bytes([b[82], b[83]]).to_f32();
    // Values 128h..128h+128 read bytes 32h..32h+32, two bits at shift 2·(k % 4).
    let (h, shift) = (k / 4, 2 * (k % 4));
    for (l, v) in out.iter_mut().enumerate() {
        let sc = scales[2 * k + l / 16];
        let q = (qs[32 * h + l] >> shift) & 3;
        *v = d * (sc & 0xF) as f32 * q as f32 - dmin * (sc >> 4) as f32;
    }
}

/// The sixteen signed scales of a Q3_K block, unpacked from their 12 bytes.
fn q3k_scales(packed: &[u8]) -> [i32; 16] {
    let mut out = [0i32; 16];
    for (j, s) in out.iter_mut().enumerate() {
        let low = if j < 8 { packed[j] & 0xF } else { packed[j - 8] >> 4 };
        let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        *s = (low | (high << 4)) as i32 - 32;
    }
    out
}

/// The 32 values of kernel block `k` of a Q3_K block.
fn q3k_values(b: &[u8], k: usize, out: &mut [f32; BLOCK]) {
    let (hmask, qs) = (&b[0..32], &b[32..96]);
    let scales = q3k_scales(&b[96..108]);
    let d = f16::from_le_bytes([b[108], b[109]]).to_f32();
    let (h, shift) = (k / 4, 2 * (k % 4));
    for (l, v) in out.iter_mut().enumerate() {
        let low = ((qs[32 * h + l] >> shift) & 3) as i32;
        let high_set = hmask[l] & (1 << k) != 0;
        let q = low - if high_set { 0 } else { 4 };
        *v = d * scales[2 * k + l / 16] as f32 * q as f32;
    }
}

/// The 32 values of kernel block `k` of a Q5_K block, by GGML's formula (the tests' reference).
fn q5k_values(b: &[u8], k: usize, out: &mut [f32; BLOCK]) {
    let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
    let dmin = f16::from_le_bytes([b[2], b[3]]).to_f32();
    let (sc, mn) = q4k_scale_min(k, &b[4..16]);
    for (l, v) in out.iter_mut().enumerate() {
        *v = d * sc as f32 * q5k_code(b, k, l) as f32 - dmin * mn as f32;
    }
}

/// Code `l` of sub-block `k` of a Q5_K block: a nibble of the 32 bytes sub-blocks 2j and
/// 2j + 1 share (low, then high), and bit k of the l-th high-bit byte.
fn q5k_code(b: &[u8], k: usize, l: usize) -> u8 {
    let (qh, nibbles) = (&b[16..48], &b[48 + 32 * (k / 2)..48 + 32 * (k / 2) + 32]);
    let low = if k.is_multiple_of(2) { nibbles[l] & 0xF } else { nibbles[l] >> 4 };
    low | (((qh[l] >> k) & 1) << 4)
}

/// The 6-bit scale and min of Q4_K sub-block `j` from the 12 packed bytes.
fn q4k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The 32 values of kernel block `k` (values 32k..32k+32) of a Q6_K block.
fn q6k_values(b: &[u8], k: usize, out: &mut [f32; BLOCK]) {
    let (h, quarter) = (k / 4, k % 4);
    let ql = &b[h * 64..h * 64 + 64];
    let qh = &b[128 + h * 32..128 + h * 32 + 32];
    let scales = &b[192 + h * 8..192 + h * 8 + 8];
    let d = f16::from_le_bytes([b[208], b[209]]).to_f32();
    for (l, v) in out.iter_mut().enumerate() {
        let (low, shift) = match quarter {
            0 => (ql[l] & 0xF, 0),
            1 => (ql[l + 32] & 0xF, 2),
            2 => (ql[l] >> 4, 4),
            _ => (ql[l + 32] >> 4, 6),
        };
        let q = (low | (((qh[l] >> shift) & 3) << 4)) as i32 - 32;
        let sc = scales[l / 16 + 2 * quarter] as i8;
        *v = d * sc as f32 * q as f32;
    }
}

/// A block's scale or offset as stored: f16, as GGUF stores them, so Q4_0, Q4_1 and Q8_0 keep
/// theirs exactly. Q4_K's products of two scales and Q6_K's requantized ones round (relative
/// error 2⁻¹¹, far below their 4- or 6-bit steps). Half the bytes of f32: decode streams every
/// weight once per token, and the scales were a quarter of a 4-bit matrix.
fn to_f16(v: f32) -> Result<f16, String> {
    let h = f16::from_f32(v);
    if h.is_finite() {
        Ok(h)
    } else {
        Err(format!("block scale {v} is outside the f16 range"))
    }
}

/// Integer types whose all-zero bytes are the value 0.
trait ZeroBits: Copy {}
impl ZeroBits for u8 {}
impl ZeroBits for u16 {}

/// `n` zeroed values whose pages are not yet touched (the allocator's zeroed memory maps fresh
/// zero pages), on Linux advised to use transparent huge pages: the repacked model is hundreds
/// of MB, and with 4 KiB pages every page costs a fault on its first write. The largest
/// allocation of a load, so a refusal is an error, not an abort of the host process.
fn try_zeroed<T: ZeroBits>(n: usize) -> Result<Vec<T>, String> {
    let refused = || {
        format!("cannot allocate {} MiB for the repacked weights", (n as u128 * size_of::<T>() as u128) >> 20)
    };
    let layout = std::alloc::Layout::array::<T>(n).map_err(|_| refused())?;
    if layout.size() == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: a layout of non-zero size; the memory is n zeroed T, which ZeroBits makes valid
    // values, and the Vec frees it with the same layout through the same global allocator.
    let buffer = unsafe {
        let ptr = std::alloc::alloc_zeroed(layout) as *mut T;
        if ptr.is_null() {
            return Err(refused());
        }
        Vec::from_raw_parts(ptr, n, n)
    };
    advise_huge_pages(buffer.as_ptr() as usize, layout.size());
    Ok(buffer)
}

/// As [`try_zeroed`], for f16 values (allocated as `u16`: filling f16 zeros would touch every
/// page before the advice).
fn try_zeroed_halves(n: usize) -> Result<Vec<f16>, String> {
    use half::vec::HalfBitsVecExt;
    Ok(try_zeroed::<u16>(n)?.reinterpret_into())
}

fn advise_huge_pages(start: usize, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let (first, end) = (start.next_multiple_of(HUGE), start + len);
        if end >= first + HUGE {
            // SAFETY: advice on whole pages inside one allocation; MADV_HUGEPAGE changes how
            // they are backed, never their contents. A refusal (THP off) changes nothing.
            unsafe {
                libc::madvise(first as *mut libc::c_void, (end - first) / HUGE * HUGE, libc::MADV_HUGEPAGE)
            };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (start, len);
}

/// One of a matrix's arrays: its range of an allocation it may share with other matrices (see
/// [`WeightSpace`]).
#[derive(Clone)]
struct Shared<T> {
    all: Arc<Vec<T>>,
    range: Range<usize>,
}

impl<T> Shared<T> {
    fn whole(all: Vec<T>) -> Self {
        Self { range: 0..all.len(), all: Arc::new(all) }
    }

    fn part(all: &Arc<Vec<T>>, start: usize, len: usize) -> Self {
        Self { all: all.clone(), range: start..start + len }
    }
}

impl<T> Deref for Shared<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.all[self.range.clone()]
    }
}

/// `rows` outputs × `cols` inputs, repacked per block to `w = code·d + m` (4-bit codes) or
/// `w = (code − 128)·d` (8-bit codes).
pub struct QuantMatrix {
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
    d: Shared<f16>,
    m: Shared<f16>,
    codes: Shared<u8>,
}

/// Tasks per thread in one matmul: more balance the threads, fewer cost fewer wake-ups
/// (measured on decode with 2 threads: 2 → 104, 4 → 118-121, 8 → 110 tokens/s).
const TASKS_PER_THREAD: usize = 4;

/// The format and size of a matrix to repack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatrixShape {
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
}

impl MatrixShape {
    /// Lengths of the repacked scales, offsets and codes: whole groups of rows (a last partial
    /// group is padded with rows of scale 0, whose outputs are 0 whatever their codes).
    fn lens(&self) -> [usize; 3] {
        let slots = self.rows.div_ceil(GROUP) * GROUP * (self.cols / BLOCK);
        let width = self.format.width();
        [slots, if width.has_offset() { slots } else { 0 }, slots * width.bytes_per_block()]
    }
}

/// Room for several matrices' repacked weights in three allocations (scales, offsets, codes)
/// rather than three per matrix: a whole model then sits on a few dozen 2 MiB huge pages
/// instead of ~25,000 4 KiB pages, each a page fault on its first write (measured: a quarter of
/// the load's CPU time). Matrices are repacked one by one ([`Self::fill`]) and handed out
/// together ([`Self::finish`]), sharing the allocations.
pub struct WeightSpace {
    shapes: Vec<MatrixShape>,
    /// Where each matrix's arrays start.
    starts: Vec<[usize; 3]>,
    filled: Vec<bool>,
    d: Vec<f16>,
    m: Vec<f16>,
    codes: Vec<u8>,
}

/// Why [`WeightSpace::new`] refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpaceError {
    /// A row length the kernels cannot take.
    Shape(String),
    /// The memory for the repacked weights could not be had.
    Memory(String),
}

impl std::fmt::Display for SpaceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpaceError::Shape(why) | SpaceError::Memory(why) => f.write_str(why),
        }
    }
}

impl WeightSpace {
    /// Zeroed room for `shapes`; refuses a row length the kernels cannot take, and reports
    /// memory it cannot get instead of aborting.
    pub fn new(shapes: Vec<MatrixShape>) -> Result<Self, SpaceError> {
        let mut starts = Vec::with_capacity(shapes.len());
        let mut end = [0usize; 3];
        for shape in &shapes {
            let per_gguf_block = BLOCK * shape.format.kernel_blocks();
            if shape.cols == 0 || shape.cols % per_gguf_block != 0 {
                return Err(SpaceError::Shape(format!(
                    "{:?} row length {} is not a multiple of {per_gguf_block}",
                    shape.format, shape.cols
                )));
            }
            starts.push(end);
            for (e, len) in end.iter_mut().zip(shape.lens()) {
                *e = e
                    .checked_add(len)
                    .ok_or_else(|| SpaceError::Memory("the repacked weights overflow".into()))?;
            }
        }
        let filled = vec![false; shapes.len()];
        Ok(Self {
            shapes,
            starts,
            filled,
            d: try_zeroed_halves(end[0]).map_err(SpaceError::Memory)?,
            m: try_zeroed_halves(end[1]).map_err(SpaceError::Memory)?,
            codes: try_zeroed(end[2]).map_err(SpaceError::Memory)?,
        })
    }

    /// Repacks matrix `i` from GGUF bytes: `parts` are row-major matrices (whole GGUF blocks
    /// per row) of the same format and width whose rows, one after another, are matrix `i`'s
    /// (Q, K and V as one). Every part but the last must have a multiple of [`GROUP`] rows, so
    /// groups never straddle parts. Parallel over groups on the current rayon pool.
    pub fn fill(&mut self, i: usize, parts: &[(&[u8], usize)]) -> Result<(), String> {
        let MatrixShape { format, rows, cols } = self.shapes[i];
        let block_bytes = format.gguf_block_bytes();
        let bpr = cols / BLOCK;
        let gguf_row_bytes = cols / (BLOCK * format.kernel_blocks()) * block_bytes;
        let part_rows: usize = parts.iter().map(|p| p.1).sum();
        for (p, (bytes, n)) in parts.iter().enumerate() {
            if bytes.len() != n * gguf_row_bytes {
                return Err(format!(
                    "{format:?} data is {} bytes, expected {}",
                    bytes.len(),
                    n * gguf_row_bytes
                ));
            }
            if p + 1 < parts.len() && n % GROUP != 0 {
                return Err(format!("stacked part {p} has {n} rows, not a multiple of {GROUP}"));
            }
        }
        if part_rows != rows {
            return Err(format!("the parts have {part_rows} rows, expected {rows}"));
        }
        let width = format.width();
        let cb = width.bytes_per_block();
        let has_m = width.has_offset();
        let ([d0, m0, c0], [dn, mn, cn]) = (self.starts[i], self.shapes[i].lens());
        let (d, m, codes) =
            (&mut self.d[d0..d0 + dn], &mut self.m[m0..m0 + mn], &mut self.codes[c0..c0 + cn]);
        // Row r's GGUF bytes.
        let source = |mut r: usize| -> Option<&[u8]> {
            for (bytes, n) in parts {
                if r < *n {
                    return Some(&bytes[r * gguf_row_bytes..(r + 1) * gguf_row_bytes]);
                }
                r -= n;
            }
            None
        };
        let group_len = GROUP * bpr;
        let groups = dn / group_len.max(1);
        let mut m_chunks: Vec<&mut [f16]> = if has_m {
            m.chunks_mut(group_len).collect()
        } else {
            (0..groups).map(|_| &mut [][..]).collect()
        };
        d.par_chunks_mut(group_len)
            .zip(codes.par_chunks_mut(group_len * cb))
            .zip(m_chunks.par_iter_mut())
            .enumerate()
            .try_for_each(|(g, ((d, codes), m))| {
                let mut unpacked = [0u8; BLOCK];
                for r in 0..GROUP {
                    let Some(row) = source(g * GROUP + r) else { continue };
                    for (gguf_block, b) in row.chunks_exact(block_bytes).enumerate() {
                        for k in 0..format.kernel_blocks() {
                            let block = gguf_block * format.kernel_blocks() + k;
                            let slot = block * GROUP + r;
                            let (scale, offset) = format.unpack(b, k, &mut unpacked[..cb])?;
                            // An unpacked block's 4-byte chunks go to their places in the group.
                            let block_codes = &mut codes[block * GROUP * cb..(block + 1) * GROUP * cb];
                            for (c, bytes) in unpacked[..cb].chunks_exact(4).enumerate() {
                                let at = chunk_position(r, c);
                                block_codes[at..at + 4].copy_from_slice(bytes);
                            }
                            d[slot] = scale;
                            if has_m {
                                m[slot] = offset;
                            }
                        }
                    }
                }
                Ok::<(), String>(())
            })?;
        self.filled[i] = true;
        Ok(())
    }

    /// The matrices, in the order of their shapes. Every one must have been filled.
    pub fn finish(self) -> Vec<QuantMatrix> {
        assert!(
            self.filled.iter().all(|&f| f),
            "every matrix of a WeightSpace is filled before it is finished"
        );
        let (d, m, codes) = (Arc::new(self.d), Arc::new(self.m), Arc::new(self.codes));
        self.shapes
            .iter()
            .zip(&self.starts)
            .map(|(shape, &[d0, m0, c0])| {
                let [dn, mn, cn] = shape.lens();
                QuantMatrix {
                    format: shape.format,
                    rows: shape.rows,
                    cols: shape.cols,
                    d: Shared::part(&d, d0, dn),
                    m: Shared::part(&m, m0, mn),
                    codes: Shared::part(&codes, c0, cn),
                }
            })
            .collect()
    }
}

impl QuantMatrix {
    /// From GGUF bytes (row-major, whole GGUF blocks per row).
    pub fn from_gguf_bytes(
        format: WeightFormat,
        bytes: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, String> {
        Self::from_gguf_parts(format, &[(bytes, rows)], cols)
    }

    /// Several GGUF matrices of the same format and width, their rows one after another in one
    /// matrix (see [`WeightSpace::fill`]). A model's loader puts all its matrices in one
    /// [`WeightSpace`] instead.
    pub fn from_gguf_parts(
        format: WeightFormat,
        parts: &[(&[u8], usize)],
        cols: usize,
    ) -> Result<Self, String> {
        let rows = parts.iter().map(|p| p.1).sum();
        let mut space =
            WeightSpace::new(vec![MatrixShape { format, rows, cols }]).map_err(|e| e.to_string())?;
        space.fill(0, parts)?;
        Ok(space.finish().remove(0))
    }

    /// The rows of `parts` one after another, as one matrix: one matmul (one round of thread
    /// wake-ups, one activation quantization) instead of several. `None` unless all parts share
    /// format and width and each but the last has a multiple of [`GROUP`] rows.
    pub fn stack(parts: &[&QuantMatrix]) -> Option<QuantMatrix> {
        let first = parts.first()?;
        let (_, whole) = parts.split_last()?;
        if parts.iter().any(|p| p.format != first.format || p.cols != first.cols)
            || whole.iter().any(|p| p.rows % GROUP != 0)
        {
            return None;
        }
        // Groups never straddle parts (only the last may end in a padded group), so the
        // interleaved arrays simply concatenate.
        Some(QuantMatrix {
            format: first.format,
            rows: parts.iter().map(|p| p.rows).sum(),
            cols: first.cols,
            d: Shared::whole(parts.iter().flat_map(|p| p.d.iter().copied()).collect()),
            m: Shared::whole(parts.iter().flat_map(|p| p.m.iter().copied()).collect()),
            codes: Shared::whole(parts.iter().flat_map(|p| p.codes.iter().copied()).collect()),
        })
    }

    fn blocks_per_row(&self) -> usize {
        self.cols / BLOCK
    }

    /// Rows `GROUP·g..GROUP·(g + 1)`.
    fn group(&self, g: usize) -> RowGroup<'_> {
        let n = GROUP * self.blocks_per_row();
        let cb = self.format.width().bytes_per_block();
        RowGroup {
            width: self.format.width(),
            blocks: self.blocks_per_row(),
            d: &self.d[g * n..(g + 1) * n],
            m: if self.m.is_empty() { &[] } else { &self.m[g * n..(g + 1) * n] },
            codes: &self.codes[g * n * cb..(g + 1) * n * cb],
        }
    }

    /// The weights as f32 (for tests and references).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        if self.cols > 0 {
            out.chunks_exact_mut(self.cols).enumerate().for_each(|(r, row)| self.dequantize_row(r, row));
        }
        out
    }

    /// Row `r` as f32 (an embedding lookup), written into `out` (`cols` long).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows && out.len() == self.cols, "row {r} of {}, {} columns", self.rows, self.cols);
        let cb = self.format.width().bytes_per_block();
        let bpr = self.blocks_per_row();
        let width = self.format.width();
        let (group, lane) = (r / GROUP, r % GROUP);
        for (block, dst) in out.chunks_exact_mut(BLOCK).enumerate() {
            let slot = (group * bpr + block) * GROUP;
            let codes = &self.codes[slot * cb..(slot + GROUP) * cb];
            let d = self.d[slot + lane].to_f32();
            let m = if width.has_offset() { self.m[slot + lane].to_f32() } else { 0.0 };
            for (j, o) in dst.iter_mut().enumerate() {
                let code = stored_code(width, codes, lane, j) as f32;
                *o = if width.has_offset() { code * d + m } else { (code - 128.0) * d };
            }
        }
    }

    /// `out[t][r] = Σ_c x[t][c] · w[r][c]` for `x` of `tokens × cols`; out is `tokens × rows`.
    /// Parallel over output rows on the current rayon pool.
    pub fn matmul(&self, x: &[f32], tokens: usize) -> Vec<f32> {
        assert_eq!(x.len(), tokens * self.cols, "input shape");
        let acts = QuantizedActivations::quantize(x, self.cols);
        self.matmul_quantized(&acts, Isa::detect())
    }

    /// As [`Self::matmul`], with activations already quantized and the instruction set chosen.
    pub fn matmul_quantized(&self, acts: &QuantizedActivations, isa: Isa) -> Vec<f32> {
        let mut out = vec![0f32; acts.tokens * self.rows];
        let mut rows: Vec<&mut [f32]> =
            if self.rows == 0 { Vec::new() } else { out.chunks_exact_mut(self.rows).collect() };
        self.matmul_into(acts, isa, &mut rows);
        out
    }

    /// As [`Self::matmul_quantized`], writing token t's `rows` outputs into `outs[t]` (each
    /// exactly `rows` long, anywhere: the side-by-side parts of a wider row, or a vector per
    /// sequence), so no result is copied afterwards.
    pub fn matmul_into(&self, acts: &QuantizedActivations, isa: Isa, outs: &mut [&mut [f32]]) {
        assert_eq!(acts.blocks_per_row, self.blocks_per_row(), "input shape");
        let tokens = acts.tokens;
        assert!(outs.len() == tokens && outs.iter().all(|o| o.len() == self.rows), "output shape");
        if self.rows == 0 || tokens == 0 {
            return;
        }
        // Few, large tasks: each costs a wake-up; enough of them to balance the threads.
        let threads = rayon::current_num_threads().max(1);
        let tile = self.rows.div_ceil(threads * TASKS_PER_THREAD).next_multiple_of(GROUP).max(2 * GROUP);
        // tiles[i][t]: token t's outputs for rows i·tile.. (`tile` is a multiple of GROUP, so
        // tiles start on group boundaries).
        let mut tiles: Vec<Vec<&mut [f32]>> =
            (0..self.rows.div_ceil(tile)).map(|_| Vec::with_capacity(tokens)).collect();
        for row in outs.iter_mut() {
            for (i, part) in row.chunks_mut(tile).enumerate() {
                tiles[i].push(part);
            }
        }
        let per_call = max_tokens_per_call(isa);
        tiles.into_par_iter().enumerate().for_each(|(i, mut outs)| {
            let (start, end) = (i * tile, ((i + 1) * tile).min(self.rows));
            let mut lanes = vec![[0f32; GROUP]; per_call];
            for r in (start..end).step_by(GROUP) {
                let n = (end - r).min(GROUP);
                let group = self.group(r / GROUP);
                for t0 in (0..tokens).step_by(per_call) {
                    let nt = per_call.min(tokens - t0);
                    group_dot(isa, group, acts, t0, &mut lanes[..nt]);
                    for (out, rows) in outs[t0..t0 + nt].iter_mut().zip(&lanes) {
                        let out = &mut out[r - start..r - start + n];
                        // A whole group as one fixed-size move, not a memcpy call.
                        match <&mut [f32; GROUP]>::try_from(&mut *out) {
                            Ok(whole) => *whole = *rows,
                            Err(_) => out.copy_from_slice(&rows[..n]),
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Where a format's blocks keep their f16 scales (`true`: a min or an offset, stored
    /// negative or subtracted): random bytes elsewhere are valid codes.
    fn scale_fields(format: WeightFormat) -> &'static [(usize, bool)] {
        match format {
            WeightFormat::Q4_1 | WeightFormat::Q5_1 => &[(0, false), (2, true)],
            WeightFormat::Q4K | WeightFormat::Q5K => &[(0, false), (2, false)],
            WeightFormat::Q2K => &[(80, false), (82, false)],
            WeightFormat::Q3K => &[(108, false)],
            WeightFormat::Q6K => &[(208, false)],
            _ => &[(0, false)],
        }
    }

    /// Random blocks of `format` with sane scales, including edge codes (every code value
    /// occurs: the bytes are uniform) and, in every eighth block, a zero scale.
    fn random_gguf(format: WeightFormat, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let blocks = rows * cols / (BLOCK * format.kernel_blocks());
        let size = format.gguf_block_bytes();
        let mut bytes = Vec::with_capacity(blocks * size);
        for block in 0..blocks {
            let at = bytes.len();
            match format {
                WeightFormat::F16 | WeightFormat::BF16 | WeightFormat::F32 => {
                    for _ in 0..BLOCK {
                        let v: f32 = rng.random_range(-0.1..0.1);
                        match format {
                            WeightFormat::F16 => bytes.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
                            WeightFormat::BF16 => {
                                bytes.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes())
                            }
                            _ => bytes.extend_from_slice(&v.to_le_bytes()),
                        }
                    }
                    continue;
                }
                _ => bytes.extend((0..size).map(|_| rng.random::<u8>())),
            }
            if format == WeightFormat::Q6K {
                for b in &mut bytes[at + 192..at + 208] {
                    *b = rng.random_range(-60i8..60) as u8;
                }
            }
            for &(offset, is_min) in scale_fields(format) {
                let v: f32 = match (is_min, block % 8) {
                    (false, 7) => 0.0,
                    (false, _) => rng.random_range(0.0005..0.01),
                    (true, _) => rng.random_range(-0.4..0.0),
                };
                bytes[at + offset..at + offset + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
            }
        }
        bytes
    }

    fn random_x(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-2.0..2.0)).collect()
    }

    /// Every format candle reads, with its GGUF type: candle's dequantization is GGML's.
    const FORMATS: [(WeightFormat, GgmlDType); 13] = [
        (WeightFormat::Q4_0, GgmlDType::Q4_0),
        (WeightFormat::Q4_1, GgmlDType::Q4_1),
        (WeightFormat::Q5_0, GgmlDType::Q5_0),
        (WeightFormat::Q5_1, GgmlDType::Q5_1),
        (WeightFormat::Q8_0, GgmlDType::Q8_0),
        (WeightFormat::Q2K, GgmlDType::Q2K),
        (WeightFormat::Q3K, GgmlDType::Q3K),
        (WeightFormat::Q4K, GgmlDType::Q4K),
        (WeightFormat::Q5K, GgmlDType::Q5K),
        (WeightFormat::Q6K, GgmlDType::Q6K),
        (WeightFormat::F16, GgmlDType::F16),
        (WeightFormat::BF16, GgmlDType::BF16),
        (WeightFormat::F32, GgmlDType::F32),
    ];

    fn candle_values(dtype: GgmlDType, bytes: &[u8], rows: usize, cols: usize) -> Vec<f32> {
        let q = qtensor_from_ggml(dtype, bytes, vec![rows, cols], &candle_core::Device::Cpu).unwrap();
        q.dequantize(&candle_core::Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn reference_values_equal_ggmls_formulas_exactly() {
        // Q4_K's reference is its repacked form, whose scale products round to f16 (bounded in
        // repacking_matches_candles_dequantization); every other format's is GGML's formula.
        for (format, dtype) in FORMATS.into_iter().filter(|f| f.0 != WeightFormat::Q4K) {
            let bytes = random_gguf(format, 4, 512, 7);
            let (ours, theirs) = (format.dequantize(&bytes), candle_values(dtype, &bytes, 4, 512));
            let first_difference = ours.iter().zip(&theirs).position(|(a, b)| a != b);
            assert_eq!(first_difference, None, "{format:?}");
            assert_eq!(ours.len(), theirs.len());
        }
    }

    /// GGML's `dequantize_row_iq4_nl` and `dequantize_row_iq4_xs`, transcribed loop for loop
    /// (candle has no IQ types to compare with).
    fn ggml_iq4(format: WeightFormat, bytes: &[u8]) -> Vec<f32> {
        let table = IQ4_VALUES;
        let mut y = Vec::new();
        for b in bytes.chunks_exact(format.gguf_block_bytes()) {
            let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
            let mut emit = |dl: f32, qs: &[u8]| {
                let mut block = [0f32; 32];
                for j in 0..16 {
                    block[j] = dl * table[(qs[j] & 0xf) as usize] as f32;
                    block[j + 16] = dl * table[(qs[j] >> 4) as usize] as f32;
                }
                y.extend_from_slice(&block);
            };
            if format == WeightFormat::IQ4NL {
                emit(d, &b[2..18]);
                continue;
            }
            let scales_h = u16::from_le_bytes([b[2], b[3]]);
            for ib in 0..8 {
                let ls = ((b[4 + ib / 2] as i32 >> (4 * (ib % 2))) & 0xf)
                    | (((scales_h as i32 >> (2 * ib)) & 3) << 4);
                emit(d * (ls - 32) as f32, &b[8 + 16 * ib..8 + 16 * ib + 16]);
            }
        }
        y
    }

    #[test]
    fn iq4_values_equal_ggmls_formulas() {
        for format in [WeightFormat::IQ4NL, WeightFormat::IQ4XS] {
            let bytes = random_gguf(format, 4, 512, 9);
            let theirs = ggml_iq4(format, &bytes);
            let ours = QuantMatrix::from_gguf_bytes(format, &bytes, 4, 512).unwrap().dequantize();
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                // IQ4_NL is exact; IQ4_XS rounds d·(sc − 32) to f16, as Q4_K its scale products.
                let tolerance = if format == WeightFormat::IQ4NL { 0.0 } else { b.abs() / 1024.0 };
                assert!((a - b).abs() <= tolerance, "{format:?} value {i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn repacking_matches_candles_dequantization() {
        for (format, dtype) in FORMATS {
            let (rows, cols) = (8, 512);
            let bytes = random_gguf(format, rows, cols, 1);
            let m = QuantMatrix::from_gguf_bytes(format, &bytes, rows, cols).unwrap();
            let q = qtensor_from_ggml(dtype, &bytes, vec![rows, cols], &candle_core::Device::Cpu).unwrap();
            let theirs = q
                .dequantize(&candle_core::Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let ours = m.dequantize();
            // Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 keep their f16 scales: exact. Q4_K's and Q5_K's
            // products of two scales round to f16 (2⁻¹¹ of each term). The others are
            // requantized to 8 bits per 32 values: within half a step of the block's scale, plus
            // its f16 rounding.
            let (bound, rounding) = match format {
                WeightFormat::Q4K | WeightFormat::Q5K => (0.0, 1.0 / 512.0),
                WeightFormat::Q4_0
                | WeightFormat::Q4_1
                | WeightFormat::Q5_0
                | WeightFormat::Q5_1
                | WeightFormat::Q8_0 => {
                    assert_eq!(ours, theirs, "{format:?}: repacking is exact");
                    continue;
                }
                _ => (1.0 / 254.0, 1.0 / 1024.0),
            };
            for (block, (o, t)) in ours.chunks(BLOCK).zip(theirs.chunks(BLOCK)).enumerate() {
                let amax = t.iter().fold(0f32, |a, v| a.max(v.abs()));
                for (i, (a, b)) in o.iter().zip(t).enumerate() {
                    assert!(
                        (a - b).abs() <= amax * (bound + rounding) + 1e-9,
                        "{format:?} block {block} value {i}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn k_quant_rows_must_hold_whole_super_blocks() {
        let err = QuantMatrix::from_gguf_bytes(WeightFormat::Q4K, &[0; 144], 1, 128).err().unwrap();
        assert!(err.contains("multiple of 256"), "{err}");
        let err = QuantMatrix::from_gguf_bytes(WeightFormat::Q6K, &[0; 200], 1, 256).err().unwrap();
        assert!(err.contains("expected 210"), "{err}");
    }

    #[test]
    fn matmul_is_close_to_the_f32_product_on_every_path() {
        // Odd row counts exercise the 1-3 row tails and uneven tiles; 1 and 3 tokens both layouts.
        for format in FORMATS.map(|f| f.0).into_iter().chain([WeightFormat::IQ4NL, WeightFormat::IQ4XS]) {
            let narrow = if format.kernel_blocks() > 1 { 512 } else { 576 };
            for (rows, cols, tokens) in [(70, 1536, 11), (37, narrow, 1)] {
                let m = QuantMatrix::from_gguf_bytes(format, &random_gguf(format, rows, cols, 4), rows, cols)
                    .unwrap();
                let x = random_x(tokens * cols, 5);
                let w = m.dequantize();
                let acts = QuantizedActivations::quantize(&x, cols);
                for isa in Isa::available() {
                    let out = m.matmul_quantized(&acts, isa);
                    for t in 0..tokens {
                        for r in 0..rows {
                            let exact: f32 = (0..cols).map(|c| x[t * cols + c] * w[r * cols + c]).sum();
                            let got = out[t * rows + r];
                            // Activation quantization to 8 bits: error well under 1% of the row's scale.
                            let scale: f32 =
                                (0..cols).map(|c| (x[t * cols + c] * w[r * cols + c]).abs()).sum();
                            assert!(
                                (exact - got).abs() <= 0.01 * scale,
                                "{format:?} {isa:?} t {t} r {r}: {exact} vs {got}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn stacked_matrices_compute_their_parts() {
        let f = WeightFormat::Q4_1;
        let a = QuantMatrix::from_gguf_bytes(f, &random_gguf(f, 8, 64, 1), 8, 64).unwrap();
        let b = QuantMatrix::from_gguf_bytes(f, &random_gguf(f, 4, 64, 2), 4, 64).unwrap();
        let s = QuantMatrix::stack(&[&a, &b]).unwrap();
        assert_eq!(s.dequantize(), [a.dequantize(), b.dequantize()].concat());
        let mut row = vec![0f32; 64];
        for r in 0..12 {
            s.dequantize_row(r, &mut row);
            assert_eq!(row, s.dequantize()[r * 64..(r + 1) * 64], "row {r}");
        }
        let x = random_x(2 * 64, 3);
        let (oa, ob, os) = (a.matmul(&x, 2), b.matmul(&x, 2), s.matmul(&x, 2));
        for t in 0..2 {
            assert_eq!(os[t * 12..t * 12 + 8], oa[t * 8..t * 8 + 8]);
            assert_eq!(os[t * 12 + 8..t * 12 + 12], ob[t * 4..t * 4 + 4]);
        }
        let (ab, bb) = (random_gguf(f, 8, 64, 1), random_gguf(f, 4, 64, 2));
        let direct = QuantMatrix::from_gguf_parts(f, &[(&ab, 8), (&bb, 4)], 64).unwrap();
        assert_eq!(direct.dequantize(), s.dequantize());
        assert!(
            QuantMatrix::from_gguf_parts(f, &[(&random_gguf(f, 3, 64, 4), 3), (&bb, 4)], 64).is_err(),
            "a 3-row part would straddle groups"
        );
        let odd = QuantMatrix::from_gguf_bytes(f, &random_gguf(f, 3, 64, 4), 3, 64).unwrap();
        assert!(
            QuantMatrix::stack(&[&odd, &a]).is_none(),
            "a 3-row part before another would straddle groups"
        );
        assert_eq!(
            QuantMatrix::stack(&[&a, &odd]).unwrap().dequantize(),
            [a.dequantize(), odd.dequantize()].concat()
        );
        let q8 = QuantMatrix::from_gguf_bytes(
            WeightFormat::Q8_0,
            &random_gguf(WeightFormat::Q8_0, 4, 64, 5),
            4,
            64,
        )
        .unwrap();
        assert!(QuantMatrix::stack(&[&a, &q8]).is_none());
    }

    #[test]
    fn a_shared_space_holds_each_matrix_as_built_alone() {
        let (f, g) = (WeightFormat::Q4_1, WeightFormat::Q8_0);
        let (a, b, c) = (random_gguf(f, 8, 64, 1), random_gguf(f, 3, 64, 2), random_gguf(g, 5, 96, 3));
        let shapes = vec![
            MatrixShape { format: f, rows: 11, cols: 64 },
            MatrixShape { format: g, rows: 5, cols: 96 },
            MatrixShape { format: f, rows: 3, cols: 64 },
        ];
        let mut space = WeightSpace::new(shapes).unwrap();
        // Filled out of order; the first one stacks two parts.
        space.fill(1, &[(&c, 5)]).unwrap();
        space.fill(2, &[(&b, 3)]).unwrap();
        let err = space.fill(0, &[(&a, 8)]).unwrap_err();
        assert!(err.contains("expected 11"), "{err}");
        space.fill(0, &[(&a, 8), (&b, 3)]).unwrap();
        let shared = space.finish();
        let alone = [
            QuantMatrix::from_gguf_parts(f, &[(&a, 8), (&b, 3)], 64).unwrap(),
            QuantMatrix::from_gguf_bytes(g, &c, 5, 96).unwrap(),
            QuantMatrix::from_gguf_bytes(f, &b, 3, 64).unwrap(),
        ];
        for (i, (s, a)) in shared.iter().zip(&alone).enumerate() {
            assert_eq!((s.format, s.rows, s.cols), (a.format, a.rows, a.cols), "matrix {i}");
            assert_eq!(s.dequantize(), a.dequantize(), "matrix {i}");
            let x = random_x(2 * s.cols, i as u64);
            assert_eq!(s.matmul(&x, 2), a.matmul(&x, 2), "matrix {i}");
        }
    }

    #[test]
    #[should_panic(expected = "every matrix of a WeightSpace is filled")]
    fn an_unfilled_matrix_is_a_bug() {
        let space =
            WeightSpace::new(vec![MatrixShape { format: WeightFormat::Q8_0, rows: 1, cols: 32 }]).unwrap();
        space.finish();
    }

    #[test]
    fn bad_shapes_are_refused() {
        for (format, _) in FORMATS {
            let n = format.gguf_block_bytes();
            assert!(QuantMatrix::from_gguf_bytes(format, &vec![0; n], 1, 31).is_err());
            assert!(QuantMatrix::from_gguf_bytes(format, &vec![0; n - 1], 1, 32).is_err());
        }
    }

    #[test]
    fn memory_the_machine_lacks_is_an_error_not_an_abort() {
        // 2^45 codes and scales (tens of TiB): the allocator refuses, the host lives on.
        let shape = MatrixShape { format: WeightFormat::Q8_0, rows: 1 << 30, cols: 1 << 20 };
        match WeightSpace::new(vec![shape]) {
            Err(SpaceError::Memory(why)) => assert!(why.contains("cannot allocate"), "{why}"),
            other => panic!("expected a memory error, got {:?}", other.map(|_| ())),
        }
        let overflowing = vec![MatrixShape { format: WeightFormat::Q8_0, rows: 1 << 40, cols: 1 << 22 }; 64];
        assert!(matches!(WeightSpace::new(overflowing), Err(SpaceError::Memory(_))));
    }
}
