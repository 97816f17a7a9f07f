//! The x86-64 builds of the similarity kernels ([`AVX512`], [`AVX2`]): the bodies of
//! `mod.rs` under `#[target_feature]`, and the block kernels of [`super::dots_many`] and
//! [`super::max_sim_many`], whose sums are [`dot_body`]'s bit for bit.

use std::arch::x86_64::*;

use super::{
    dot_body, dot_f16_body, max_sim_body, max_sim_f16_body, max_sim_i8_body, Build, LANES,
};

/// How far past the block being scored its prefetches run, in rows: two blocks,
/// about a microsecond ahead (criterion `exact_scan_10k_f32_top10/16_texts`: 1 to 4
/// blocks within noise of each other, none 1.8× slower).
const AHEAD: usize = 8;

/// A register width the block kernels run at: `QB` queries meet `RB` rows at a
/// time, `QB · RB` sums, each one of [`dot_body`]'s bit for bit.
trait Width {
    /// Queries per block, at most [`MAX_QB`].
    const QB: usize;
    /// Rows per block.
    const RB: usize;

    /// `acc.iter().sum()` of [`dot_body`]'s 16 lanes for each of `QB` queries
    /// against each of `RB` rows (`dim` apart), over the first `main` values (a
    /// multiple of 16): entry `i · RB + r` is query `i` with row `r`.
    ///
    /// # Safety
    /// The CPU has the width's features; `queries` holds `QB` pointers to `main`
    /// values each, `rows` points to `RB` rows of `dim ≥ main` values.
    unsafe fn lane_sums(
        queries: &[*const f32],
        rows: *const f32,
        dim: usize,
        main: usize,
    ) -> [f32; LANES];
}

/// The most queries a block of any width meets.
const MAX_QB: usize = 4;

/// AVX-512F: 4 queries × 4 rows, 16 sums, one register each.
struct Zmm;
/// AVX2: 2 queries × 4 rows, 8 sums. A sum's 16 lanes take two registers, so the
/// block runs lanes 0–7 of every chunk, then lanes 8–15: 8 accumulators at a time.
struct Ymm;

/// The same bodies compiled for `$features` (the block kernels at `$width`): a
/// [`Build`] whose functions are safe to call where the CPU has those features.
macro_rules! build {
    ($name:literal, $features:literal, $needs:expr, $width:ty) => {{
        #[target_feature(enable = $features)]
        fn dot(a: &[f32], b: &[f32]) -> f32 {
            dot_body(a, b)
        }
        #[target_feature(enable = $features)]
        fn max_sim(query: &[f32], rows: &[f32]) -> (f32, usize) {
            max_sim_body(query, rows)
        }
        #[target_feature(enable = $features)]
        fn dot_f16(query: &[f32], row: &[half::f16], scratch: &mut [f32]) -> f32 {
            dot_f16_body(query, row, scratch)
        }
        #[target_feature(enable = $features)]
        fn max_sim_f16(query: &[f32], rows: &[half::f16], scratch: &mut [f32]) -> (f32, usize) {
            max_sim_f16_body(query, rows, scratch)
        }
        #[target_feature(enable = $features)]
        fn max_sim_i8(query: &[f32], codes: &[i8], scales: &[f32]) -> (f32, usize) {
            max_sim_i8_body(query, codes, scales)
        }
        #[target_feature(enable = $features)]
        fn dots_many(queries: &[&[f32]], rows: &[f32], next: &[f32], dots: &mut [f32]) {
            dots_many_at::<$width>(queries, rows, next, dots)
        }
        #[target_feature(enable = $features)]
        fn max_sim_many(
            queries: &[&[f32]],
            rows: &[f32],
            next: &[f32],
            state: &mut Vec<f32>,
            out: &mut [(f32, usize)],
        ) {
            max_sim_many_at::<$width>(queries, rows, next, state, out)
        }
        Build {
            name: $name,
            needs: $needs,
            dot,
            max_sim,
            dot_f16,
            max_sim_f16,
            max_sim_i8,
            dots_many,
            max_sim_many,
        }
    }};
}

/// AVX-512F: the bodies in 512-bit vectors, blocks of 4 queries × 4 rows.
pub(super) static AVX512: Build = build!("avx512", "avx512f", |f| f.avx512f, Zmm);

/// AVX2: the bodies in 256-bit vectors, blocks of 2 queries × 4 rows.
pub(super) static AVX2: Build = build!("avx2", "avx2", |f| f.avx2, Ymm);

/// [`super::dots_many`] in blocks of `W`.
///
/// Like [`max_sim_many_at`] and [`walk`], a generic body inlined into the `build!`
/// functions (each compiled for `W`'s features), whose `W::lane_sums` it calls: only
/// those call it.
#[inline(always)]
fn dots_many_at<W: Width>(queries: &[&[f32]], rows: &[f32], next: &[f32], dots: &mut [f32]) {
    let Some(dim) = queries.first().map(|q| q.len()) else {
        return;
    };
    let n_rows = rows.len() / dim;
    debug_assert_eq!(dots.len(), queries.len() * n_rows);
    let first = walk::<W>(queries, rows, next, &mut Sink::Dots(dots));
    for (q, query) in queries.iter().enumerate() {
        for r in first..n_rows {
            dots[q * n_rows + r] = dot_body(query, &rows[r * dim..(r + 1) * dim]);
        }
    }
}

/// [`super::max_sim_many`] in blocks of `W`: [`walk`]'s sums go straight into a running
/// first maximum per query, with no matrix of dots in between.
#[inline(always)]
fn max_sim_many_at<W: Width>(
    queries: &[&[f32]],
    rows: &[f32],
    next: &[f32],
    state: &mut Vec<f32>,
    out: &mut [(f32, usize)],
) {
    let Some(dim) = queries.first().map(|q| q.len()) else {
        return;
    };
    let (n_rows, sums) = (rows.len() / dim, W::QB * W::RB);
    state.clear();
    state.resize(queries.len().div_ceil(W::QB) * 2 * sums, 0.0);
    for group in state.chunks_exact_mut(2 * sums) {
        // Every lane's best so far is -inf (what `first_max` starts from), found in
        // the block at row 0.
        group[..sums].fill(f32::NEG_INFINITY);
    }
    let first = walk::<W>(queries, rows, next, &mut Sink::Best(state));
    for (q, (query, best)) in queries.iter().zip(out.iter_mut()).enumerate() {
        let group = &state[(q / W::QB) * 2 * sums..][..2 * sums];
        // The blocks' first maximum: the largest lane, the earliest row among equals.
        *best = (f32::NEG_INFINITY, 0);
        for r in 0..W::RB {
            let lane = (q % W::QB) * W::RB + r;
            let (score, row) = (group[lane], group[sums + lane].to_bits() as usize + r);
            if score > best.0 || (score == best.0 && row < best.1) {
                *best = (score, row);
            }
        }
        // Then the rows after the blocks, in order.
        for r in first..n_rows {
            let score = dot_body(query, &rows[r * dim..(r + 1) * dim]);
            if score > best.0 {
                *best = (score, r);
            }
        }
    }
}

/// Where [`walk`] puts each block's `QB · RB` sums (query `g · QB + i` with row
/// `first + r` in lane `i · RB + r`).
enum Sink<'a> {
    /// Every dot: `dots[q * n_rows + row]`.
    Dots(&'a mut [f32]),
    /// Per group of QB queries, 2 × QB · RB values: each lane's greatest sum so
    /// far, then (as bits) the `first` of the block where it was first reached. A
    /// sum replaces the best only when greater, as in `first_max`, so NaN never does.
    Best(&'a mut [f32]),
}

/// The blocks of RB rows of `rows` (the first `first` rows, returned; the caller
/// scores the rest), each met by every group of QB queries: sums in [`dot_body`]'s
/// bits, handed to `sink`.
#[inline(always)]
fn walk<W: Width>(queries: &[&[f32]], rows: &[f32], next: &[f32], sink: &mut Sink) -> usize {
    let dim = queries[0].len();
    debug_assert!(dim > 0 && rows.len().is_multiple_of(dim));
    assert!(queries.iter().all(|q| q.len() == dim));
    let (qb, rb) = (W::QB, W::RB);
    let n_rows = rows.len() / dim;
    let main = dim - dim % LANES;
    let groups = queries.len().div_ceil(qb);
    let mut first = 0;
    if main == 0 {
        return 0;
    }
    while first + rb <= n_rows {
        // The rows `AHEAD` past this block, in `rows` then `next`.
        let ahead = (first + AHEAD) * dim;
        let ahead: &[f32] = if ahead < rows.len() {
            &rows[ahead..rows.len().min(ahead + rb * dim)]
        } else {
            let at = (ahead - rows.len()).min(next.len());
            &next[at..next.len().min(at + rb * dim)]
        };
        let lines = (ahead.len() * 4).div_ceil(64);
        // Each group of queries asks for its share of the lines.
        let share = lines.div_ceil(groups);
        let block = &rows[first * dim..(first + rb) * dim];
        for g in 0..groups {
            let base = ahead.as_ptr().cast::<i8>();
            for line in (g * share).min(lines)..((g + 1) * share).min(lines) {
                // SAFETY: SSE is part of x86-64; line < ⌈bytes of `ahead` / 64⌉, so the
                // address is inside `ahead` (`wrapping_add`: no in-bounds requirement),
                // and a prefetch only hints the cache: it never reads nor faults.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(line * 64)) };
            }
            // The last group repeats its last query when the count is not a
            // multiple of QB (its sums are dropped).
            let q_of = |i: usize| (g * qb + i).min(queries.len() - 1);
            let ptrs: [*const f32; MAX_QB] = std::array::from_fn(|i| queries[q_of(i)].as_ptr());
            // SAFETY: `walk::<W>` is reached only through the `build!` functions of W's
            // build (W = Zmm: AVX512, W = Ymm: AVX2), which run only on a CPU with W's
            // features (the build's `needs`). `ptrs[..qb]` are QB pointers to queries of `dim` values
            // (asserted above), `block` is RB rows of `dim` (a checked slice of `rows`),
            // and `main` = dim - dim % 16 is a multiple of 16 and ≤ dim.
            let mut sums = unsafe { W::lane_sums(&ptrs[..qb], block.as_ptr(), dim, main) };
            let sums = &mut sums[..qb * rb];
            if main < dim {
                for (lane, sum) in sums.iter_mut().enumerate() {
                    let (query, r) = (queries[q_of(lane / rb)], lane % rb);
                    let row = &block[r * dim..(r + 1) * dim];
                    let tail: f32 = query[main..]
                        .iter()
                        .zip(&row[main..])
                        .map(|(x, y)| x * y)
                        .sum();
                    *sum += tail;
                }
            }
            match sink {
                Sink::Dots(dots) => {
                    for i in 0..qb.min(queries.len() - g * qb) {
                        let at = (g * qb + i) * n_rows + first;
                        dots[at..at + rb].copy_from_slice(&sums[i * rb..(i + 1) * rb]);
                    }
                }
                Sink::Best(state) => {
                    let group = &mut state[g * 2 * sums.len()..(g + 1) * 2 * sums.len()];
                    let (best, found) = group.split_at_mut(sums.len());
                    for ((sum, best), found) in sums.iter().zip(best).zip(found) {
                        if *sum > *best {
                            *best = *sum;
                            *found = f32::from_bits(first as u32);
                        }
                    }
                }
            }
        }
        first += rb;
    }
    first
}

impl Width for Zmm {
    const QB: usize = 4;
    const RB: usize = 4;

    #[target_feature(enable = "avx512f")]
    unsafe fn lane_sums(
        queries: &[*const f32],
        rows: *const f32,
        dim: usize,
        main: usize,
    ) -> [f32; LANES] {
        const QB: usize = Zmm::QB;
        const RB: usize = Zmm::RB;
        debug_assert!(queries.len() == QB && main.is_multiple_of(16) && main <= dim);
        let mut acc = [_mm512_setzero_ps(); QB * RB];
        let mut k = 0;
        while k < main {
            // SAFETY: the CPU has AVX-512F (this fn's contract). `main` is a multiple
            // of 16 and k runs 0, 16, … below it, so k + 16 ≤ main ≤ dim: each of the
            // QB queries (`main` values at `queries[i]`) and each of the RB rows (row r
            // at `rows + r · dim`, `dim` values) has 16 floats at k. Unaligned loads.
            unsafe {
                let x: [__m512; QB] = std::array::from_fn(|i| _mm512_loadu_ps(queries[i].add(k)));
                let y: [__m512; RB] =
                    std::array::from_fn(|r| _mm512_loadu_ps(rows.add(r * dim + k)));
                for i in 0..QB {
                    for r in 0..RB {
                        // Multiply, then add: what `dot_body` does (no fused multiply-add).
                        acc[i * RB + r] = _mm512_add_ps(acc[i * RB + r], _mm512_mul_ps(x[i], y[r]));
                    }
                }
            }
            k += 16;
        }
        // Sum j's lane l is acc[j][l]; after the transpose, lane j of t[l]. Folding
        // t[0], t[1], … from -0.0 is `acc[j].iter().sum()` for all 16 sums at once.
        let mut sums = _mm512_set1_ps(-0.0);
        for column in transpose16(acc) {
            sums = _mm512_add_ps(sums, column);
        }
        let mut out = [0f32; LANES];
        // SAFETY: AVX-512F is there (this fn's contract); `out` is 16 floats, all
        // that an unaligned store of one 512-bit vector writes.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), sums) };
        out
    }
}

impl Width for Ymm {
    const QB: usize = 2;
    const RB: usize = 4;

    #[target_feature(enable = "avx2")]
    unsafe fn lane_sums(
        queries: &[*const f32],
        rows: *const f32,
        dim: usize,
        main: usize,
    ) -> [f32; LANES] {
        const QB: usize = Ymm::QB;
        const RB: usize = Ymm::RB;
        debug_assert!(queries.len() == QB && main.is_multiple_of(16) && main <= dim);
        let mut sums = _mm256_set1_ps(-0.0);
        // Lanes 0–7 of each sum, then lanes 8–15: `dot_body`'s fold order.
        for half in [0, 8] {
            let mut acc = [_mm256_setzero_ps(); QB * RB];
            let mut k = half;
            while k < main {
                // SAFETY: the CPU has AVX2 (this fn's contract). `main` is a
                // multiple of 16 and k runs `half` (0 or 8), + 16, … below it, so
                // k + 8 ≤ main ≤ dim: each of the QB queries (`main` values at
                // `queries[i]`) and each of the RB rows (row r at `rows + r · dim`,
                // `dim` values) has 8 floats at k. Unaligned loads.
                unsafe {
                    let x: [__m256; QB] =
                        std::array::from_fn(|i| _mm256_loadu_ps(queries[i].add(k)));
                    let y: [__m256; RB] =
                        std::array::from_fn(|r| _mm256_loadu_ps(rows.add(r * dim + k)));
                    for i in 0..QB {
                        for r in 0..RB {
                            acc[i * RB + r] =
                                _mm256_add_ps(acc[i * RB + r], _mm256_mul_ps(x[i], y[r]));
                        }
                    }
                }
                k += 16;
            }
            for column in transpose8(acc) {
                sums = _mm256_add_ps(sums, column);
            }
        }
        let mut out = [0f32; LANES];
        // SAFETY: AVX2 is there (this fn's contract); an unaligned store of one
        // 256-bit vector writes 8 floats, the first 8 of `out`'s 16.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sums) };
        out
    }
}

/// A 16 × 16 transpose: lane j of `out[i]` is lane i of `r[j]`.
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // Within each 128-bit lane: pairs of rows, then groups of four.
    let mut u = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        let (a, b, c, d) = (r[4 * g], r[4 * g + 1], r[4 * g + 2], r[4 * g + 3]);
        let (t0, t1) = (_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
        let (t2, t3) = (_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
        // u[4g + c], 128-bit lane L: rows 4g..4g+4 of column 4L + c.
        u[4 * g] = _mm512_shuffle_ps::<0x44>(t0, t2);
        u[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(t0, t2);
        u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(t1, t3);
        u[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(t1, t3);
    }
    // Then the four groups' 128-bit lanes.
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
        let v1 = _mm512_shuffle_f32x4::<0xDD>(u[c], u[4 + c]);
        let w0 = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
        let w1 = _mm512_shuffle_f32x4::<0xDD>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(v0, w0);
        out[4 + c] = _mm512_shuffle_f32x4::<0x88>(v1, w1);
        out[8 + c] = _mm512_shuffle_f32x4::<0xDD>(v0, w0);
        out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(v1, w1);
    }
    out
}

/// An 8 × 8 transpose: lane j of `out[i]` is lane i of `r[j]`.
#[target_feature(enable = "avx2")]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    // Within each 128-bit half: pairs of rows, then groups of four.
    let mut u = [_mm256_setzero_ps(); 8];
    for g in 0..2 {
        let (a, b, c, d) = (r[4 * g], r[4 * g + 1], r[4 * g + 2], r[4 * g + 3]);
        let (t0, t1) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
        let (t2, t3) = (_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
        // u[4g + c], half H: rows 4g..4g+4 of column 4H + c.
        u[4 * g] = _mm256_shuffle_ps::<0x44>(t0, t2);
        u[4 * g + 1] = _mm256_shuffle_ps::<0xEE>(t0, t2);
        u[4 * g + 2] = _mm256_shuffle_ps::<0x44>(t1, t3);
        u[4 * g + 3] = _mm256_shuffle_ps::<0xEE>(t1, t3);
    }
    // Then the two groups' halves.
    std::array::from_fn(|c| match c {
        0..4 => _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c]),
        _ => _mm256_permute2f128_ps::<0x31>(u[c - 4], u[c]),
    })
}
