//! Query heads attending over cached keys and values: scores, softmax, weighted sum. The cache
//! holds f16 (half the memory, and half the bytes every decode step reads: with several long
//! sessions those reads rival the weights'). The heads of one grouped-query group are computed
//! in one call over their KV head, so its rows come from memory once for all of them.

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::elementwise::{dot, softmax_in_place};
use super::Isa;

/// One KV head's keys and values, `head_dim` per position, positions one after another (read
/// sequentially: a head's rows interleaved with other heads' are a stride the hardware
/// prefetcher follows poorly).
#[derive(Debug, Clone, Copy)]
pub struct HeadCache<'a> {
    pub keys: &'a [f16],
    pub values: &'a [f16],
    pub head_dim: usize,
}

impl HeadCache<'_> {
    /// Where position `j` starts in `keys` and `values`.
    fn start(&self, j: usize) -> usize {
        j * self.head_dim
    }
}

/// For each query head `h` in `queries` (heads of `cache.head_dim` side by side, all reading this KV
/// head): `out_h = Σ_j softmax_j(scale · q_h·k_j) · v_j` over positions `0..positions`.
/// `scores` is scratch space of at least `heads × positions` floats.
pub fn attend(
    isa: Isa,
    queries: &[f32],
    cache: HeadCache<'_>,
    positions: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let head_dim = cache.head_dim;
    assert!(
        head_dim > 0 && queries.len().is_multiple_of(head_dim) && out.len() == queries.len(),
        "attention shapes"
    );
    assert!(scores.len() >= queries.len() / head_dim * positions, "attention scratch");
    let end = positions.checked_sub(1).map_or(0, |last| cache.start(last) + head_dim);
    assert!(end <= cache.keys.len().min(cache.values.len()), "attention cache");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni => {
            debug_assert!(Isa::available().contains(&isa));
            // SAFETY: every SIMD Isa implies AVX2, FMA and F16C (Isa::available checks them);
            // the body is safe code.
            unsafe { attend_avx2(queries, cache, positions, scale, scores, out) }
        }
        _ => attend_body::<Portable>(queries, cache, positions, scale, scores, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2(
    queries: &[f32],
    cache: HeadCache<'_>,
    positions: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    attend_body::<F16c>(queries, cache, positions, scale, scores, out)
}

/// One instruction-set path through attention: how cached f16 rows become f32, how scores and
/// weighted values are computed, and which path the softmax's exponentials take (a trait
/// rather than closures so that everything inlines into [`attend_avx2`]).
trait AttendPath {
    const ISA: Isa;
    fn widen(from: &[f16], to: &mut [f32]);

    /// `scores[h · positions + j] = scale · q_h·k_j`.
    #[inline(always)]
    fn scores(queries: &[f32], cache: HeadCache<'_>, positions: usize, scale: f32, scores: &mut [f32]) {
        scores_by_rows::<Self>(queries, cache, positions, scale, scores)
    }

    /// `out_h = Σ_j weights[h · positions + j] · v_j`.
    #[inline(always)]
    fn weighted_values(weights: &[f32], cache: HeadCache<'_>, positions: usize, out: &mut [f32]) {
        weighted_values_by_rows::<Self>(weights, cache, positions, out)
    }
}

/// [`AttendPath::weighted_values`] one position at a time, each value row widened once for every head.
#[inline(always)]
fn weighted_values_by_rows<W: AttendPath + ?Sized>(
    weights: &[f32],
    cache: HeadCache<'_>,
    positions: usize,
    out: &mut [f32],
) {
    let hd = cache.head_dim;
    let mut row = vec![0f32; hd];
    out.fill(0.0);
    for j in 0..positions {
        let at = cache.start(j);
        W::widen(&cache.values[at..at + hd], &mut row);
        for (h, o) in out.chunks_exact_mut(hd).enumerate() {
            let w = weights[h * positions + j];
            o.iter_mut().zip(&row).for_each(|(o, v)| *o += w * v);
        }
    }
}

/// [`AttendPath::scores`] one position at a time, each key widened once for every head.
#[inline(always)]
fn scores_by_rows<W: AttendPath + ?Sized>(
    queries: &[f32],
    cache: HeadCache<'_>,
    positions: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let hd = cache.head_dim;
    let mut row = vec![0f32; hd];
    for j in 0..positions {
        let at = cache.start(j);
        W::widen(&cache.keys[at..at + hd], &mut row);
        for (h, q) in queries.chunks_exact(hd).enumerate() {
            scores[h * positions + j] = dot(q, &row) * scale;
        }
    }
}

struct Portable;

impl AttendPath for Portable {
    const ISA: Isa = Isa::Portable;
    #[inline(always)]
    fn widen(from: &[f16], to: &mut [f32]) {
        from.convert_to_f32_slice(to)
    }
}

#[cfg(target_arch = "x86_64")]
struct F16c;

#[cfg(target_arch = "x86_64")]
impl AttendPath for F16c {
    const ISA: Isa = Isa::Avx2;
    #[inline(always)]
    fn widen(from: &[f16], to: &mut [f32]) {
        // SAFETY: only instantiated inside attend_avx2, which runs where the CPU has F16C.
        unsafe { widen_f16c(from, to) }
    }

    #[inline(always)]
    fn scores(queries: &[f32], cache: HeadCache<'_>, positions: usize, scale: f32, scores: &mut [f32]) {
        if !cache.head_dim.is_multiple_of(8) {
            return scores_by_rows::<Self>(queries, cache, positions, scale, scores);
        }
        // SAFETY: inside attend_avx2 (AVX2, FMA, F16C); attend checked the cache bounds, and the
        // head size is a multiple of eight.
        unsafe { scores_f16c(queries, cache, positions, scale, scores) }
    }

    #[inline(always)]
    fn weighted_values(weights: &[f32], cache: HeadCache<'_>, positions: usize, out: &mut [f32]) {
        if !cache.head_dim.is_multiple_of(64) {
            return weighted_values_by_rows::<Self>(weights, cache, positions, out);
        }
        // SAFETY: inside attend_avx2 (AVX2, FMA, F16C); attend checked the cache bounds, and the
        // head size is a multiple of 64.
        unsafe { weighted_values_f16c(weights, cache, positions, out) }
    }
}

/// The query heads of one group split into runs of at most three, as even as possible (four
/// heads: 2 + 2). A run's heads share every widened key and value row, and its sums stay in
/// the 16 AVX2 registers beside the row and the heads' operands: three heads × three
/// positions, or × 16 dimensions (one more, and LLVM spills a sum to the stack every step).
#[cfg(target_arch = "x86_64")]
fn head_runs(heads: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let runs = heads.div_ceil(3);
    (0..runs).map(move |i| i * heads / runs..(i + 1) * heads / runs)
}

/// [`AttendPath::weighted_values`] with the sums in registers. Each value row is widened once
/// for every head of a run (widening costs as much as the multiply-adds it feeds), and each
/// run keeps six to eight independent chains of FMAs.
///
/// # Safety
/// AVX2, FMA and F16C; `cache` holds `positions` rows; `cache.head_dim` is a multiple of 64.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn weighted_values_f16c(weights: &[f32], cache: HeadCache<'_>, positions: usize, out: &mut [f32]) {
    let hd = cache.head_dim;
    for run in head_runs(out.len() / hd) {
        let (weights, out) =
            (&weights[run.start * positions..run.end * positions], &mut out[run.start * hd..run.end * hd]);
        // SAFETY: as for this function; the run's slices hold its heads.
        unsafe {
            match run.len() {
                1 => weighted_values_run::<1, 8>(weights, cache, positions, out),
                2 => weighted_values_run::<2, 4>(weights, cache, positions, out),
                _ => weighted_values_run::<3, 2>(weights, cache, positions, out),
            }
        }
    }
}

/// How many value rows ahead of the one in use to prefetch (measured in isolation, eight
/// sessions' caches out of cache: 5.1 → 4.5 ms per step on one thread).
#[cfg(target_arch = "x86_64")]
const PREFETCH_ROWS: usize = 8;

/// `NH` heads' weighted values, `8·NC` dimensions at a time.
///
/// # Safety
/// As [`weighted_values_f16c`]; `8·NC` divides 64.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn weighted_values_run<const NH: usize, const NC: usize>(
    weights: &[f32],
    cache: HeadCache<'_>,
    positions: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let hd = cache.head_dim;
    assert!(
        weights.len() >= NH * positions
            && cache.values.len() >= positions * hd
            && out.len() >= NH * hd
            && hd.is_multiple_of(8 * NC)
    );
    // Raw pointers in the loop: it is a few instructions per row, and slice bounds checks
    // were a third of them.
    let (values, weights) = (cache.values.as_ptr(), weights.as_ptr());
    for part in (0..hd).step_by(8 * NC) {
        let mut acc = [[_mm256_setzero_ps(); NC]; NH];
        let mut row = values.wrapping_add(part);
        for j in 0..positions {
            // A pass reads part of each row, a stride the hardware prefetcher follows poorly:
            // ask for this pass's part of a row further on (one line, or two for 64 values).
            let ahead = row.wrapping_add(PREFETCH_ROWS * hd);
            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            if 16 * NC > 64 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(32).cast());
            }
            // SAFETY (this loop): `weights` holds NH rows of `positions`, `row` points at
            // 8·NC values of row j (part + 8·NC ≤ hd), all asserted above.
            let w: [__m256; NH] =
                std::array::from_fn(|h| _mm256_set1_ps(unsafe { *weights.add(h * positions + j) }));
            for c in 0..NC {
                let v = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(row.add(8 * c).cast())) };
                for (acc_h, &w_h) in acc.iter_mut().zip(&w) {
                    acc_h[c] = _mm256_fmadd_ps(w_h, v, acc_h[c]);
                }
            }
            row = row.wrapping_add(hd);
        }
        for (h, acc) in acc.iter().enumerate() {
            for (c, acc) in acc.iter().enumerate() {
                let at = h * hd + part + 8 * c;
                // SAFETY: eight floats.
                unsafe { _mm256_storeu_ps(out[at..at + 8].as_mut_ptr(), *acc) };
            }
        }
    }
}

/// [`AttendPath::scores`] with each key row widened once for every head of a run, and several
/// positions at a time: each (head, position) keeps its products in its own vector, dimensions
/// outer and positions inner (independent chains of FMAs rather than one chain per score
/// waiting on each multiply-add's latency), summed across in one tree of `vhaddps` per four
/// positions.
///
/// # Safety
/// AVX2, FMA and F16C; `cache` holds `positions` rows; `cache.head_dim` is a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scores_f16c(
    queries: &[f32],
    cache: HeadCache<'_>,
    positions: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let hd = cache.head_dim;
    for run in head_runs(queries.len() / hd) {
        let (queries, scores) =
            (&queries[run.start * hd..run.end * hd], &mut scores[run.start * positions..run.end * positions]);
        // SAFETY: as for this function; the run's slices hold its heads.
        unsafe {
            match run.len() {
                1 => scores_run::<1, 8>(queries, cache, positions, scale, scores),
                2 => scores_run::<2, 4>(queries, cache, positions, scale, scores),
                _ => scores_run::<3, 3>(queries, cache, positions, scale, scores),
            }
        }
    }
}

/// `NH` heads' scores, `NP` positions at a time. A last partial block repeats its last
/// position; those lanes are dropped.
///
/// # Safety
/// As [`scores_f16c`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scores_run<const NH: usize, const NP: usize>(
    queries: &[f32],
    cache: HeadCache<'_>,
    positions: usize,
    scale: f32,
    scores: &mut [f32],
) {
    use std::arch::x86_64::*;
    let hd = cache.head_dim;
    assert!(
        queries.len() >= NH * hd
            && cache.keys.len() >= positions * hd
            && scores.len() >= NH * positions
            && hd.is_multiple_of(8)
    );
    // Raw pointers in the loop, as in weighted_values_run.
    let (keys, queries) = (cache.keys.as_ptr(), queries.as_ptr());
    for first in (0..positions).step_by(NP) {
        let count = (positions - first).min(NP);
        let rows: [*const f16; NP] =
            std::array::from_fn(|p| keys.wrapping_add(cache.start(first + p.min(count - 1))));
        let mut acc = [[_mm256_setzero_ps(); NP]; NH];
        for c in (0..hd).step_by(8) {
            // SAFETY (this loop): eight values each, within the NH query heads and the rows
            // first..first + count (asserted above); unaligned loads.
            let q: [__m256; NH] =
                std::array::from_fn(|h| unsafe { _mm256_loadu_ps(queries.add(h * hd + c)) });
            for (p, row) in rows.iter().enumerate() {
                let k = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(row.add(c).cast())) };
                for h in 0..NH {
                    acc[h][p] = _mm256_fmadd_ps(q[h], k, acc[h][p]);
                }
            }
        }
        for (h, acc) in acc.iter().enumerate() {
            for quad in (0..count).step_by(4) {
                // Four positions' partial sums (zeros past NP), each 128-bit half of `both`
                // holding four of every position's eight lanes summed; adding the halves
                // finishes them.
                let v: [__m256; 4] =
                    std::array::from_fn(|i| acc.get(quad + i).copied().unwrap_or(_mm256_setzero_ps()));
                let both = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
                let sums = _mm_mul_ps(
                    _mm_add_ps(_mm256_castps256_ps128(both), _mm256_extractf128_ps::<1>(both)),
                    _mm_set1_ps(scale),
                );
                let at = h * positions + first + quad;
                match scores.get_mut(at..at + 4) {
                    // SAFETY: four floats.
                    Some(four) if count - quad >= 4 => unsafe { _mm_storeu_ps(four.as_mut_ptr(), sums) },
                    _ => {
                        let mut lanes = [0f32; 4];
                        // SAFETY: four floats.
                        unsafe { _mm_storeu_ps(lanes.as_mut_ptr(), sums) };
                        for (i, lane) in lanes.iter().take(count - quad).enumerate() {
                            scores[at + i] = *lane;
                        }
                    }
                }
            }
        }
    }
}

/// `to = from` as f32, eight at a time with `vcvtph2ps`. Not itself a `target_feature`
/// function, so that it inlines into [`attend_avx2`] (where the intrinsic then inlines too).
///
/// # Safety
/// The CPU must have F16C.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn widen_f16c(from: &[f16], to: &mut [f32]) {
    use std::arch::x86_64::*;
    assert_eq!(from.len(), to.len());
    let mut from8 = from.chunks_exact(8);
    let mut to8 = to.chunks_exact_mut(8);
    for (f, t) in (&mut from8).zip(&mut to8) {
        // SAFETY: both chunks hold exactly eight values; unaligned loads and stores.
        unsafe { _mm256_storeu_ps(t.as_mut_ptr(), _mm256_cvtph_ps(_mm_loadu_si128(f.as_ptr().cast()))) };
    }
    for (f, t) in from8.remainder().iter().zip(to8.into_remainder()) {
        *t = f.to_f32();
    }
}

#[inline(always)]
fn attend_body<W: AttendPath>(
    queries: &[f32],
    cache: HeadCache<'_>,
    positions: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = cache.head_dim;
    let heads = queries.len() / hd;
    W::scores(queries, cache, positions, scale, scores);
    for s in scores[..heads * positions].chunks_exact_mut(positions.max(1)) {
        softmax_in_place(W::ISA, s);
    }
    W::weighted_values(scores, cache, positions, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_matches_a_direct_softmax() {
        // Head sizes of one and two register blocks and one with a tail after the last eight;
        // grouped-query groups of one to four and eight (runs of heads 1, 2, 3, 2 + 2 and
        // 3 + 3 + 2); one position, and 37 (partial blocks of four and eight positions).
        let shapes = [(64, 3), (12, 2), (128, 2), (64, 1), (64, 4), (64, 8)];
        for ((hd, heads), positions) in shapes.into_iter().flat_map(|s| [(s, 1), (s, 37)]) {
            let val = |i: usize| ((i * 7919) % 1000) as f32 / 500.0 - 1.0;
            let keys: Vec<f16> = (0..positions * hd).map(|i| f16::from_f32(val(i))).collect();
            let values: Vec<f16> = (0..positions * hd).map(|i| f16::from_f32(val(i + 13))).collect();
            let queries: Vec<f32> = (0..heads * hd).map(|i| val(i + 101)).collect();
            let scale = 0.125;
            let mut want = vec![0f64; heads * hd];
            for (q, want) in queries.chunks_exact(hd).zip(want.chunks_exact_mut(hd)) {
                let at = |j: usize, c: usize| j * hd + c;
                let logits: Vec<f64> = (0..positions)
                    .map(|j| {
                        (0..hd).map(|c| q[c] as f64 * keys[at(j, c)].to_f64()).sum::<f64>() * scale as f64
                    })
                    .collect();
                let max = logits.iter().cloned().fold(f64::MIN, f64::max);
                let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for (c, w) in want.iter_mut().enumerate() {
                    *w = (0..positions).map(|j| weights[j] / total * values[at(j, c)].to_f64()).sum();
                }
            }
            for isa in Isa::available() {
                let (mut scores, mut out) = (vec![0f32; heads * positions], vec![0f32; heads * hd]);
                let cache = HeadCache { keys: &keys, values: &values, head_dim: hd };
                attend(isa, &queries, cache, positions, scale, &mut scores, &mut out);
                for (c, (got, want)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (*got as f64 - want).abs() < 1e-5,
                        "{isa:?} hd {hd} heads {heads} positions {positions} value {c}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
