//! Similarity kernels: dot products and BLIP-2's max-over-slots score.
//!
//! BLIP-2's image–text contrastive (ITC) score is `max_q <query_q, text>` over
//! the image's Q query vectors (Li et al. 2023, §3.2,
//! <https://arxiv.org/abs/2301.12597>). All vectors are L2-normalised, so a dot
//! product is a cosine similarity.

use half::f16;

/// Lanes summed independently so that the compiler keeps 8 (or 16 with AVX-512)
/// floats per register and does not serialise on one accumulator.
const LANES: usize = 16;

/// The widest vector instructions the kernels are compiled for at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Avx512,
    Avx2,
    /// The build's baseline (SSE2 on x86-64).
    Base,
}

/// Asks the CPU to load `values` into L2, one request per 64-byte line (a hint; not L1,
/// which holds the row being scored).
pub(crate) fn prefetch<T>(values: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let start = values.as_ptr().cast::<i8>();
        for offset in (0..std::mem::size_of_val(values)).step_by(64) {
            // SAFETY: SSE is part of x86-64; `offset` < the slice's size in bytes, so the
            // address is inside `values` (`wrapping_add`: no in-bounds requirement), and a
            // prefetch only hints the cache: it never reads nor faults.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(start.wrapping_add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// Detected once. The kernels are the same Rust code compiled three ways: each lane
/// sums in the same order and Rust never fuses a multiply and an add on its own, so
/// every level gives bit-identical scores (a test checks it).
fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Level::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                return Level::Avx2;
            }
        }
        Level::Base
    })
}

/// A public kernel `$name` that runs `$body` compiled for the CPU's widest vectors.
macro_rules! kernel {
    ($(#[$doc:meta])* pub fn $name:ident = $body:ident($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        $(#[$doc])*
        #[inline]
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn wide($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                fn narrow($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                match level() {
                    // SAFETY: `level` detected AVX-512F on this CPU, the one feature `wide`
                    // is compiled for; `$body` is safe code, bounds-checked as at any level.
                    Level::Avx512 => return unsafe { wide($($arg),*) },
                    // SAFETY: `level` detected AVX2 on this CPU, the one feature `narrow`
                    // is compiled for; `$body` is safe code, as above.
                    Level::Avx2 => return unsafe { narrow($($arg),*) },
                    Level::Base => {}
                }
            }
            $body($($arg),*)
        }
    };
}

kernel! {
    /// Dot product of two f32 vectors of the same length.
    pub fn dot = dot_body(a: &[f32], b: &[f32]) -> f32
}

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let chunks_a = a.chunks_exact(LANES);
    let chunks_b = b.chunks_exact(LANES);
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for i in 0..LANES {
            acc[i] += ca[i] * cb[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Dot product of an f32 query with int8 codes; the caller multiplies by the scale.
#[inline(always)]
pub fn dot_i8(a: &[f32], codes: &[i8]) -> f32 {
    debug_assert_eq!(a.len(), codes.len());
    let mut acc = [0f32; LANES];
    let chunks_a = a.chunks_exact(LANES);
    let chunks_b = codes.chunks_exact(LANES);
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, &y)| x * y as f32)
        .sum();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for i in 0..LANES {
            acc[i] += ca[i] * cb[i] as f32;
        }
    }
    acc.iter().sum::<f32>() + tail
}

kernel! {
    /// Max over the rows of `rows` (`Q × D`, row-major) of `<query, row>`, with the
    /// row that reached it. This is BLIP-2's ITC score of a text (`query`) against an
    /// image.
    pub fn max_sim = max_sim_body(query: &[f32], rows: &[f32]) -> (f32, usize)
}

#[inline(always)]
fn max_sim_body(query: &[f32], rows: &[f32]) -> (f32, usize) {
    let dim = query.len();
    debug_assert!(dim > 0 && rows.len().is_multiple_of(dim));
    let mut best = (f32::NEG_INFINITY, 0);
    for (slot, row) in rows.chunks_exact(dim).enumerate() {
        let s = dot_body(query, row);
        if s > best.0 {
            best = (s, slot);
        }
    }
    best
}

kernel! {
    /// Dot product of an f32 query with an f16 vector, converted into `scratch`
    /// (same length) first.
    pub fn dot_f16 = dot_f16_body(query: &[f32], row: &[f16], scratch: &mut [f32]) -> f32
}

#[inline(always)]
fn dot_f16_body(query: &[f32], row: &[f16], scratch: &mut [f32]) -> f32 {
    use half::slice::HalfFloatSliceExt;
    // convert_to_f32_slice uses F16C when the CPU has it (detected at run time).
    row.convert_to_f32_slice(scratch);
    dot_body(query, scratch)
}

kernel! {
    /// [`max_sim`] over f16 rows; converts one row at a time into `scratch` (length D).
    pub fn max_sim_f16 = max_sim_f16_body(query: &[f32], rows: &[f16], scratch: &mut [f32]) -> (f32, usize)
}

#[inline(always)]
fn max_sim_f16_body(query: &[f32], rows: &[f16], scratch: &mut [f32]) -> (f32, usize) {
    let dim = query.len();
    let mut best = (f32::NEG_INFINITY, 0);
    for (slot, row) in rows.chunks_exact(dim).enumerate() {
        let s = dot_f16_body(query, row, scratch);
        if s > best.0 {
            best = (s, slot);
        }
    }
    best
}

kernel! {
    /// [`max_sim`] over int8 rows with one scale per row.
    pub fn max_sim_i8 = max_sim_i8_body(query: &[f32], codes: &[i8], scales: &[f32]) -> (f32, usize)
}

#[inline(always)]
fn max_sim_i8_body(query: &[f32], codes: &[i8], scales: &[f32]) -> (f32, usize) {
    let dim = query.len();
    let mut best = (f32::NEG_INFINITY, 0);
    for (slot, (row, scale)) in codes.chunks_exact(dim).zip(scales).enumerate() {
        let s = dot_i8(query, row) * scale;
        if s > best.0 {
            best = (s, slot);
        }
    }
    best
}

/// [`dot`] of every query with every row of `rows` (`n × D`): `dots[q * n + r]` is
/// `dot(queries[q], row r)`, **bit for bit** (a test checks it on every level). With
/// AVX-512, 4 queries meet 4 rows at a time: 16 independent sums hide the adds'
/// latency, each chunk loaded serves 4 products, the block's rows and all the queries
/// stay in L1, and the 16 lane folds are one register transpose then 16 vertical adds
/// in [`dot`]'s order. With AVX2, 2 queries meet 4 rows: 8 sums, each folded from lanes
/// 0–7 then 8–15 (two passes over k, 8 accumulators each). A server's batch of text
/// searches is this case; at the baseline it is one [`dot`] per pair.
pub fn dots_many(queries: &[&[f32]], rows: &[f32], dots: &mut [f32]) {
    dots_many_warming(queries, rows, &[], dots)
}

/// [`dots_many`], asking the CPU meanwhile to bring `next` (the rows a scan reads next)
/// into cache, a few lines per query, so that the loads from memory overlap the
/// arithmetic (a hint: the results do not depend on it).
pub fn dots_many_warming(queries: &[&[f32]], rows: &[f32], next: &[f32], dots: &mut [f32]) {
    // SAFETY: `level()` is what this CPU was detected to have, `dots_many_at`'s one
    // requirement (the kernels check the slices' lengths themselves).
    unsafe { dots_many_at(level(), queries, rows, next, dots) }
}

/// [`dots_many_warming`] at `level`.
///
/// # Safety
/// The CPU has `level`'s features.
unsafe fn dots_many_at(
    level: Level,
    queries: &[&[f32]],
    rows: &[f32],
    next: &[f32],
    dots: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if level != Level::Base {
        // SAFETY: the caller guarantees the CPU has `level`, which is not `Base`:
        // `x86::dots_many`'s requirement.
        return unsafe { x86::dots_many(level, queries, rows, next, dots) };
    }
    let _ = (level, next);
    dots_many_body(queries, rows, dots)
}

fn dots_many_body(queries: &[&[f32]], rows: &[f32], dots: &mut [f32]) {
    let Some(dim) = queries.first().map(|q| q.len()) else {
        return;
    };
    let n_rows = rows.len() / dim;
    for (query, dots) in queries.iter().zip(dots.chunks_exact_mut(n_rows)) {
        for (d, row) in dots.iter_mut().zip(rows.chunks_exact(dim)) {
            *d = dot(query, row);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{dot_body, Level, LANES};

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

    /// [`super::dots_many`] at the CPU's width (AVX-512F or AVX2).
    ///
    /// # Safety
    /// `level` is the CPU's (not [`Level::Base`]).
    pub(super) unsafe fn dots_many(
        level: Level,
        queries: &[&[f32]],
        rows: &[f32],
        next: &[f32],
        dots: &mut [f32],
    ) {
        #[target_feature(enable = "avx512f")]
        fn zmm(queries: &[&[f32]], rows: &[f32], next: &[f32], dots: &mut [f32]) {
            dots_many_at::<Zmm>(queries, rows, next, dots)
        }
        #[target_feature(enable = "avx2")]
        fn ymm(queries: &[&[f32]], rows: &[f32], next: &[f32], dots: &mut [f32]) {
            dots_many_at::<Ymm>(queries, rows, next, dots)
        }
        match level {
            // SAFETY: `level` is the CPU's (this fn's contract): it has AVX-512F, the one
            // feature `zmm` is compiled for; `zmm` takes only slices, which it checks.
            Level::Avx512 => unsafe { zmm(queries, rows, next, dots) },
            // SAFETY: as above: the CPU has AVX2, the one feature `ymm` is compiled for.
            Level::Avx2 => unsafe { ymm(queries, rows, next, dots) },
            Level::Base => unreachable!("no block kernel at the baseline"),
        }
    }

    /// [`super::max_sim_many`] at the CPU's width: [`walk`]'s sums go straight into a
    /// running first maximum per query, with no matrix of dots in between.
    ///
    /// # Safety
    /// `level` is the CPU's (not [`Level::Base`]).
    pub(super) unsafe fn max_sim_many(
        level: Level,
        queries: &[&[f32]],
        rows: &[f32],
        next: &[f32],
        state: &mut Vec<f32>,
        out: &mut [(f32, usize)],
    ) {
        #[target_feature(enable = "avx512f")]
        fn zmm(q: &[&[f32]], r: &[f32], n: &[f32], s: &mut Vec<f32>, o: &mut [(f32, usize)]) {
            max_sim_many_at::<Zmm>(q, r, n, s, o)
        }
        #[target_feature(enable = "avx2")]
        fn ymm(q: &[&[f32]], r: &[f32], n: &[f32], s: &mut Vec<f32>, o: &mut [(f32, usize)]) {
            max_sim_many_at::<Ymm>(q, r, n, s, o)
        }
        match level {
            // SAFETY: `level` is the CPU's (this fn's contract): it has AVX-512F, the one
            // feature `zmm` is compiled for; `zmm` takes only slices, which it checks.
            Level::Avx512 => unsafe { zmm(queries, rows, next, state, out) },
            // SAFETY: as above: the CPU has AVX2, the one feature `ymm` is compiled for.
            Level::Avx2 => unsafe { ymm(queries, rows, next, state, out) },
            Level::Base => unreachable!("no block kernel at the baseline"),
        }
    }

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
                // SAFETY: `walk::<W>` is reached only through `dots_many`/`max_sim_many`'s
                // `zmm` (W = Zmm) or `ymm` (W = Ymm), whose callers guarantee the CPU has
                // W's features. `ptrs[..qb]` are QB pointers to queries of `dim` values
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
                    let x: [__m512; QB] =
                        std::array::from_fn(|i| _mm512_loadu_ps(queries[i].add(k)));
                    let y: [__m512; RB] =
                        std::array::from_fn(|r| _mm512_loadu_ps(rows.add(r * dim + k)));
                    for i in 0..QB {
                        for r in 0..RB {
                            // Multiply, then add: what `dot_body` does (no fused multiply-add).
                            acc[i * RB + r] =
                                _mm512_add_ps(acc[i * RB + r], _mm512_mul_ps(x[i], y[r]));
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
}

/// The first maximum of `scores` with its index: the slot every max-sim kernel reports
/// (`(-inf, 0)` when empty), for scores already computed. The kernels above keep their
/// own loop: there, an iterator closure is compiled without the kernel's target features,
/// which made `max_sim` 2.4× slower (criterion `max_sim_q32_d256/dtype/f32`: 0.50 →
/// 1.22 µs).
#[inline(always)]
pub fn first_max(scores: impl IntoIterator<Item = f32>) -> (f32, usize) {
    let mut best = (f32::NEG_INFINITY, 0);
    for (slot, s) in scores.into_iter().enumerate() {
        if s > best.0 {
            best = (s, slot);
        }
    }
    best
}

/// [`max_sim`] of several queries against the same rows, bit for bit:
/// `out[q] = max_sim(queries[q], rows)`, slot included. With AVX-512 or AVX2 the sums
/// of [`dots_many`]'s blocks go straight into a running first maximum per query; at the
/// baseline it is [`dots_many`] then [`first_max`]. `dots` is scratch; `next` as in
/// [`dots_many_warming`].
pub fn max_sim_many(
    queries: &[&[f32]],
    rows: &[f32],
    next: &[f32],
    dots: &mut Vec<f32>,
    out: &mut [(f32, usize)],
) {
    // SAFETY: `level()` is what this CPU was detected to have, `max_sim_many_at`'s one
    // requirement (the kernels check the slices' lengths themselves).
    unsafe { max_sim_many_at(level(), queries, rows, next, dots, out) }
}

/// [`max_sim_many`] at `level`.
///
/// # Safety
/// The CPU has `level`'s features.
unsafe fn max_sim_many_at(
    level: Level,
    queries: &[&[f32]],
    rows: &[f32],
    next: &[f32],
    dots: &mut Vec<f32>,
    out: &mut [(f32, usize)],
) {
    let Some(dim) = queries.first().map(|q| q.len()) else {
        return;
    };
    #[cfg(target_arch = "x86_64")]
    if level != Level::Base {
        // SAFETY: the caller guarantees the CPU has `level`, which is not `Base`:
        // `x86::max_sim_many`'s requirement.
        return unsafe { x86::max_sim_many(level, queries, rows, next, dots, out) };
    }
    let _ = (level, next);
    let n_rows = rows.len() / dim;
    dots.clear();
    dots.resize(queries.len() * n_rows, 0.0);
    dots_many_body(queries, rows, dots);
    for (best, dots) in out.iter_mut().zip(dots.chunks_exact(n_rows)) {
        *best = first_max(dots.iter().copied());
    }
}

/// Symmetric Chamfer similarity of two multi-vector images (`Q × D` each):
/// the mean over A's slots of the best match in B, averaged with the same from B to A.
///
/// Why this one (BLIP-2 defines no image–image score): each query slot attends
/// to a different aspect of the picture, so two photos are alike when every
/// aspect of one finds a counterpart in the other. The max over all slot pairs
/// would be dominated by the generic slots every photo shares; the mean of all
/// pairs blurs the aspects together. Averaging both directions makes the score
/// symmetric. It is the ColBERT "MaxSim" late-interaction score, normalised to [-1, 1].
///
/// Both directions read one matrix of dot products ([`dots_many`]: `dot(a_i, b_j)` is
/// `dot(b_j, a_i)` bit for bit, the products being the same and summed in the same
/// order), so the score is the one two passes of [`max_sim`] give, for half the dots.
pub fn chamfer(a: &[f32], b: &[f32], dim: usize) -> f32 {
    let rows_a: Vec<&[f32]> = a.chunks_exact(dim).collect();
    let (na, nb) = (rows_a.len(), b.len() / dim);
    let mut dots = vec![0f32; na * nb];
    dots_many(&rows_a, b, &mut dots);
    let a_to_b = dots
        .chunks_exact(nb.max(1))
        .map(|row| first_max(row.iter().copied()).0)
        .sum::<f32>()
        / na as f32;
    let b_to_a = (0..nb)
        .map(|j| first_max((0..na).map(|i| dots[i * nb + j])).0)
        .sum::<f32>()
        / nb as f32;
    0.5 * (a_to_b + b_to_a)
}

/// L2 norm of a vector.
pub fn norm(v: &[f32]) -> f32 {
    dot(v, v).sqrt()
}

/// Vectors must be L2-normalised: dot products are cosine similarities only then.
pub(crate) fn debug_assert_unit(vectors: &[f32], dim: usize) {
    if cfg!(debug_assertions) {
        for v in vectors.chunks_exact(dim) {
            let n = norm(v);
            debug_assert!(
                (n - 1.0).abs() < 1e-2,
                "vector is not L2-normalised (norm {n})"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_for_lengths_around_the_lane_count() {
        for len in [1, 7, 16, 17, 33, 256] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-4, "len {len}");
        }
    }

    #[test]
    fn every_level_gives_the_baselines_bits() {
        let values = |n: usize, seed: f32| -> Vec<f32> {
            (0..n).map(|i| ((i as f32 + seed) * 0.731).sin()).collect()
        };
        for dim in [1, 15, 16, 17, 256, 259] {
            let q = values(dim, 0.5);
            let rows = values(dim * 5, 3.0);
            let halves: Vec<f16> = rows.iter().map(|&x| f16::from_f32(x)).collect();
            let codes: Vec<i8> = rows.iter().map(|&x| (x * 127.0) as i8).collect();
            let scales = values(5, 9.0);
            let mut scratch = vec![0f32; dim];
            let mut scratch2 = vec![0f32; dim];
            let cases = [
                (dot(&q, &rows[..dim]), dot_body(&q, &rows[..dim])),
                (max_sim(&q, &rows).0, max_sim_body(&q, &rows).0),
                (
                    max_sim_f16(&q, &halves, &mut scratch).0,
                    max_sim_f16_body(&q, &halves, &mut scratch2).0,
                ),
                (
                    max_sim_i8(&q, &codes, &scales).0,
                    max_sim_i8_body(&q, &codes, &scales).0,
                ),
            ];
            for (i, (fast, base)) in cases.into_iter().enumerate() {
                assert_eq!(
                    fast.to_bits(),
                    base.to_bits(),
                    "case {i}, dim {dim} ({:?})",
                    level()
                );
            }
        }
    }

    /// Every level this CPU runs, the baseline first.
    fn cpu_levels() -> Vec<Level> {
        let mut levels = vec![Level::Base];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                levels.push(Level::Avx2);
            }
            if level() == Level::Avx512 {
                levels.push(Level::Avx512);
            }
        }
        levels
    }

    /// Every block kernel the CPU runs gives [`dot`]'s bits and [`max_sim`]'s first
    /// maximum, for query and row counts around the block sizes (4 × 4 with AVX-512,
    /// 2 × 4 with AVX2).
    #[test]
    fn many_queries_give_dots_bits() {
        let values = |n: usize, seed: f32| -> Vec<f32> {
            (0..n).map(|i| ((i as f32 + seed) * 0.731).sin()).collect()
        };
        let mut dots = Vec::new();
        for (dim, n_queries) in [
            (1, 5),
            (15, 1),
            (16, 2),
            (17, 3),
            (48, 4),
            (256, 5),
            (256, 16),
            (259, 9),
        ] {
            for n_rows in [1, 3, 5, 16, 17, 32, 33] {
                let mut rows = values(dim * n_rows, 3.0);
                if n_rows > 8 {
                    // Ties across blocks and lanes: the first slot must win. And a NaN
                    // row, which never does.
                    let (head, tail) = rows.split_at_mut(5 * dim);
                    tail[..dim].copy_from_slice(&head[dim..2 * dim]);
                    tail[2 * dim..3 * dim].copy_from_slice(&head[..dim]);
                    tail[dim] = f32::NAN;
                }
                let queries: Vec<Vec<f32>> = (0..n_queries)
                    .map(|q| values(dim, q as f32 * 1.7))
                    .collect();
                let refs: Vec<&[f32]> = queries.iter().map(|q| q.as_slice()).collect();
                let mut base = vec![0f32; refs.len() * n_rows];
                dots_many_body(&refs, &rows, &mut base);
                for level in cpu_levels() {
                    let mut at_level = vec![0f32; refs.len() * n_rows];
                    let mut best = vec![(0f32, 0); refs.len()];
                    // SAFETY: `cpu_levels` lists only the levels this CPU was detected
                    // to have; the slices' lengths are checked by the kernels.
                    unsafe {
                        dots_many_at(level, &refs, &rows, &[], &mut at_level);
                        max_sim_many_at(level, &refs, &rows, &[], &mut dots, &mut best);
                    }
                    let case = format!("{level:?}, dim {dim}, {n_rows} rows");
                    for (q, query) in refs.iter().enumerate() {
                        for (r, row) in rows.chunks_exact(dim).enumerate() {
                            let one = dot_body(query, row).to_bits();
                            assert_eq!(base[q * n_rows + r].to_bits(), one, "baseline");
                            assert_eq!(at_level[q * n_rows + r].to_bits(), one, "{case}");
                        }
                        let one = max_sim_body(query, &rows);
                        assert_eq!(
                            (best[q].0.to_bits(), best[q].1),
                            (one.0.to_bits(), one.1),
                            "{case}, query {q}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn max_sim_returns_best_slot() {
        let rows = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
        assert_eq!(max_sim(&[0.0, 1.0], &rows), (1.0, 1));
        assert_eq!(max_sim(&[1.0, 0.0], &rows), (1.0, 0));
    }

    #[test]
    fn chamfer_gives_the_bits_of_two_max_sim_passes() {
        let values = |n: usize, seed: f32| -> Vec<f32> {
            (0..n).map(|i| ((i as f32 + seed) * 0.731).sin()).collect()
        };
        let two_passes = |a: &[f32], b: &[f32], dim: usize| {
            let one_way = |x: &[f32], y: &[f32]| {
                let n = x.len() / dim;
                x.chunks_exact(dim)
                    .map(|row| max_sim(row, y).0)
                    .sum::<f32>()
                    / n as f32
            };
            0.5 * (one_way(a, b) + one_way(b, a))
        };
        for dim in [3, 16, 17, 256] {
            for (na, nb) in [(1, 1), (5, 3), (32, 32), (17, 33)] {
                let (a, b) = (values(na * dim, 0.3), values(nb * dim, 7.0));
                assert_eq!(
                    chamfer(&a, &b, dim).to_bits(),
                    two_passes(&a, &b, dim).to_bits(),
                    "dim {dim}, {na} × {nb}"
                );
            }
        }
    }

    #[test]
    fn chamfer_is_symmetric_and_one_for_identical_images() {
        let a = [1.0, 0.0, 0.0, 1.0];
        let b = [0.6, 0.8, 1.0, 0.0];
        assert!((chamfer(&a, &a, 2) - 1.0).abs() < 1e-6);
        assert!((chamfer(&a, &b, 2) - chamfer(&b, &a, 2)).abs() < 1e-6);
    }
}
