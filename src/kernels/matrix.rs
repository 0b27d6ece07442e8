//! A quantized weight matrix repacked for [`super::dot`], its parallel matmul, and the
//! [`WeightSpace`] a model's matrices are repacked into together.

use std::ops::{Deref, Range};
use std::sync::Arc;

use half::f16;
use rayon::prelude::*;

use super::activations::QuantizedActivations;
use super::dot::{code_position, group_dot, max_tokens_per_call, CodeWidth, RowGroup, GROUP};
use super::{Isa, BLOCK};

/// The GGUF block formats these kernels take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// 18 bytes: f16 d, 16 bytes of nibbles; w = (q − 8)·d.
    Q4_0,
    /// 20 bytes: f16 d, f16 m, 16 bytes of nibbles; w = q·d + m.
    Q4_1,
    /// 34 bytes: f16 d, 32 signed bytes; w = q·d.
    Q8_0,
    /// 144 bytes per 256 values: f16 d, f16 dmin, 6-bit scales and mins of eight 32-value
    /// sub-blocks, nibbles; w = q·(d·sc) − dmin·m. Repacked exactly as eight Q4_1-like blocks.
    Q4K,
    /// 210 bytes per 256 values: 6-bit codes, sixteen i8 scales of 16 values, f16 d;
    /// w = d·sc·(q − 32). Requantized to 8 bits per 32 values (error ≤ 1/254 of the block's
    /// largest weight, well under the 6-bit source's own step).
    Q6K,
}

impl WeightFormat {
    pub const fn gguf_block_bytes(self) -> usize {
        match self {
            WeightFormat::Q4_0 => 18,
            WeightFormat::Q4_1 => 20,
            WeightFormat::Q8_0 => 34,
            WeightFormat::Q4K => 144,
            WeightFormat::Q6K => 210,
        }
    }

    /// Kernel blocks of 32 values in one GGUF block.
    pub const fn kernel_blocks(self) -> usize {
        match self {
            WeightFormat::Q4K | WeightFormat::Q6K => 8,
            _ => 1,
        }
    }

    const fn width(self) -> CodeWidth {
        match self {
            WeightFormat::Q4_0 | WeightFormat::Q4_1 | WeightFormat::Q4K => CodeWidth::Four,
            WeightFormat::Q8_0 | WeightFormat::Q6K => CodeWidth::Eight,
        }
    }

    /// Kernel block `k` of GGUF block `b`: its codes into `dst`, and its (d, m) as stored
    /// (Q4_1's and Q8_0's f16 bits are taken as they are: no conversion).
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
            // Biased to unsigned: code = q + 128 (see CodeWidth::Eight); no offset.
            WeightFormat::Q8_0 => {
                dst.iter_mut().zip(&b[2..34]).for_each(|(c, &q)| *c = q ^ 0x80);
                (raw(0), f16::ZERO)
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
            WeightFormat::Q6K => {
                let mut w = [0f32; BLOCK];
                q6k_values(b, k, &mut w);
                let amax = w.iter().fold(0f32, |a, v| a.max(v.abs()));
                let scale = amax / 127.0;
                let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                for (c, v) in dst.iter_mut().zip(w) {
                    *c = ((v * inv).round().clamp(-127.0, 127.0) as i32 + 128) as u8;
                }
                (to_f16(scale)?, f16::ZERO)
            }
        })
    }
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

/// A zeroed buffer of `n` bytes whose pages are not yet touched (a large `calloc` maps fresh
/// zero pages), on Linux advised to use transparent huge pages: the repacked model is ~100 MB,
/// and with 4 KiB pages every one of them costs a fault on its first write.
fn zeroed_bytes(n: usize) -> Vec<u8> {
    let buffer = vec![0u8; n];
    advise_huge_pages(buffer.as_ptr() as usize, n);
    buffer
}

/// As [`zeroed_bytes`], for f16 values (allocated as `u16`, which `vec!` also zeroes by
/// `calloc`: filling f16 zeros would touch every page before the advice).
fn zeroed_halves(n: usize) -> Vec<f16> {
    use half::vec::HalfBitsVecExt;
    let buffer = vec![0u16; n];
    advise_huge_pages(buffer.as_ptr() as usize, 2 * n);
    buffer.reinterpret_into()
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
        [slots, if width == CodeWidth::Four { slots } else { 0 }, slots * width.bytes_per_block()]
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

impl WeightSpace {
    /// Zeroed room for `shapes`; refuses a row length the kernels cannot take.
    pub fn new(shapes: Vec<MatrixShape>) -> Result<Self, String> {
        let mut starts = Vec::with_capacity(shapes.len());
        let mut end = [0usize; 3];
        for shape in &shapes {
            let per_gguf_block = BLOCK * shape.format.kernel_blocks();
            if shape.cols == 0 || shape.cols % per_gguf_block != 0 {
                return Err(format!(
                    "{:?} row length {} is not a multiple of {per_gguf_block}",
                    shape.format, shape.cols
                ));
            }
            starts.push(end);
            for (e, len) in end.iter_mut().zip(shape.lens()) {
                *e += len;
            }
        }
        let filled = vec![false; shapes.len()];
        Ok(Self {
            shapes,
            starts,
            filled,
            d: zeroed_halves(end[0]),
            m: zeroed_halves(end[1]),
            codes: zeroed_bytes(end[2]),
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
        let has_m = width == CodeWidth::Four;
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
                            // Byte i of an unpacked block holds code i (and i + 16, 4-bit);
                            // four consecutive codes stay together.
                            let block_codes = &mut codes[block * GROUP * cb..(block + 1) * GROUP * cb];
                            for (c, bytes) in unpacked[..cb].chunks_exact(4).enumerate() {
                                let at = code_position(width, r, 4 * c).0;
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
        let mut space = WeightSpace::new(vec![MatrixShape { format, rows, cols }])?;
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
            let m = if width == CodeWidth::Four { self.m[slot + lane].to_f32() } else { 0.0 };
            for (j, o) in dst.iter_mut().enumerate() {
                let (at, high) = code_position(width, lane, j);
                *o = match width {
                    CodeWidth::Four => (if high { codes[at] >> 4 } else { codes[at] & 0x0F }) as f32 * d + m,
                    CodeWidth::Eight => (codes[at] as i32 - 128) as f32 * d,
                };
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

    fn random_gguf(format: WeightFormat, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut bytes = Vec::new();
        let scale =
            |rng: &mut ChaCha8Rng, lo: f32, hi: f32| f16::from_f32(rng.random_range(lo..hi)).to_le_bytes();
        if format == WeightFormat::Q4K {
            for _ in 0..rows * cols / 256 {
                bytes.extend_from_slice(&scale(&mut rng, 0.0005, 0.003));
                bytes.extend_from_slice(&scale(&mut rng, 0.0005, 0.003));
                bytes.extend((0..140).map(|_| rng.random::<u8>()));
            }
            return bytes;
        }
        if format == WeightFormat::Q6K {
            for _ in 0..rows * cols / 256 {
                bytes.extend((0..192).map(|_| rng.random::<u8>()));
                bytes.extend((0..16).map(|_| rng.random_range(-60i8..60) as u8));
                bytes.extend_from_slice(&scale(&mut rng, 0.0002, 0.001));
            }
            return bytes;
        }
        for _ in 0..rows * cols / BLOCK {
            bytes.extend_from_slice(&f16::from_f32(rng.random_range(0.001..0.05)).to_le_bytes());
            if format == WeightFormat::Q4_1 {
                bytes.extend_from_slice(&f16::from_f32(rng.random_range(-0.4..0.0)).to_le_bytes());
            }
            let n = if format == WeightFormat::Q8_0 { 32 } else { 16 };
            bytes.extend((0..n).map(|_| rng.random::<u8>()));
        }
        bytes
    }

    fn random_x(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-2.0..2.0)).collect()
    }

    const FORMATS: [(WeightFormat, GgmlDType); 5] = [
        (WeightFormat::Q4_0, GgmlDType::Q4_0),
        (WeightFormat::Q4_1, GgmlDType::Q4_1),
        (WeightFormat::Q8_0, GgmlDType::Q8_0),
        (WeightFormat::Q4K, GgmlDType::Q4K),
        (WeightFormat::Q6K, GgmlDType::Q6K),
    ];

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
            // Q4_0, Q4_1 and Q8_0 keep their f16 scales: exact. Q4_K's products of two scales
            // round to f16 (2⁻¹¹ of each term). Q6_K is requantized to 8 bits per 32 values:
            // within half a step of the block's scale.
            let (bound, rounding) = match format {
                WeightFormat::Q4K => (0.0, 1.0 / 512.0),
                WeightFormat::Q6K => (1.0 / 254.0, 1.0 / 1024.0),
                _ => {
                    assert_eq!(ours, theirs, "{format:?}: repacking is exact");
                    continue;
                }
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
        for (format, _) in FORMATS {
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
}
