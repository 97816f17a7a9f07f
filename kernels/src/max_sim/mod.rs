//! Similarity kernels: dot products and BLIP-2's max-over-slots score.
//!
//! BLIP-2's image–text contrastive (ITC) score is `max_q <query_q, text>` over
//! the image's Q query vectors (Li et al. 2023, §3.2,
//! <https://arxiv.org/abs/2301.12597>). All vectors are L2-normalised, so a dot
//! product is a cosine similarity.
//!
//! The kernels are plain Rust bodies (`*_body`), compiled once per instruction set into a
//! `Build` (`x86.rs`: AVX-512F and AVX2, beside the block kernels of [`dots_many`] and
//! [`max_sim_many`]; the baseline here). The first build this CPU runs is picked once
//! ([`build_name`] says which). Each lane sums in the same order and Rust never fuses a
//! multiply and an add on its own, so every build gives bit-identical scores (a test
//! checks each build this CPU runs).

use std::sync::OnceLock;

use half::f16;

use crate::cpu::Features;

#[cfg(target_arch = "x86_64")]
mod x86;

/// Lanes summed independently so that the compiler keeps 8 (or 16 with AVX-512)
/// floats per register and does not serialise on one accumulator.
const LANES: usize = 16;

/// One build of the kernels: the bodies compiled for an instruction set. Its functions
/// are safe to call on a CPU that has its [`needs`](Build::needs): they take slices, which
/// they check.
struct Build {
    /// `avx512`, `avx2` or `baseline`.
    name: &'static str,
    /// Whether a CPU with these features runs it.
    needs: fn(&Features) -> bool,
    dot: unsafe fn(&[f32], &[f32]) -> f32,
    max_sim: unsafe fn(&[f32], &[f32]) -> (f32, usize),
    dot_f16: unsafe fn(&[f32], &[f16], &mut [f32]) -> f32,
    max_sim_f16: MaxSimF16,
    max_sim_i8: MaxSimI8,
    dots_many: DotsMany,
    max_sim_many: MaxSimMany,
}

/// [`max_sim_f16`]'s signature.
type MaxSimF16 = unsafe fn(&[f32], &[f16], &mut [f32]) -> (f32, usize);
/// [`max_sim_i8`]'s.
type MaxSimI8 = unsafe fn(&[f32], &[i8], &[f32]) -> (f32, usize);
/// [`dots_many_warming`]'s.
type DotsMany = unsafe fn(&[&[f32]], &[f32], &[f32], &mut [f32]);
/// [`max_sim_many`]'s.
type MaxSimMany = unsafe fn(&[&[f32]], &[f32], &[f32], &mut Vec<f32>, &mut [(f32, usize)]);

/// The build's baseline (SSE2 on x86-64): the bodies as they are; [`dots_many`] is one
/// [`dot`] per pair, [`max_sim_many`] that then [`first_max`].
static BASELINE: Build = Build {
    name: "baseline",
    needs: |_| true,
    dot: dot_body,
    max_sim: max_sim_body,
    dot_f16: dot_f16_body,
    max_sim_f16: max_sim_f16_body,
    max_sim_i8: max_sim_i8_body,
    dots_many: |queries, rows, _next, dots| dots_many_body(queries, rows, dots),
    max_sim_many: max_sim_many_body,
};

/// Every build, widest first; the baseline last.
#[cfg(target_arch = "x86_64")]
static BUILDS: [&Build; 3] = [&x86::AVX512, &x86::AVX2, &BASELINE];
#[cfg(not(target_arch = "x86_64"))]
static BUILDS: [&Build; 1] = [&BASELINE];

/// The widest build this CPU runs, picked at the first call.
fn chosen() -> &'static Build {
    static CHOSEN: OnceLock<&'static Build> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        BUILDS
            .into_iter()
            .find(|build| (build.needs)(Features::get()))
            .expect("the baseline runs anywhere")
    })
}

/// The name of the build the kernels run here: `avx512`, `avx2` or `baseline`.
pub fn build_name() -> &'static str {
    chosen().name
}

/// Dot product of two f32 vectors of the same length.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: `chosen` is a build this CPU runs (its `needs`), its functions' one
    // requirement.
    unsafe { (chosen().dot)(a, b) }
}

/// Max over the rows of `rows` (`Q × D`, row-major) of `<query, row>`, with the
/// row that reached it. This is BLIP-2's ITC score of a text (`query`) against an
/// image.
#[inline]
pub fn max_sim(query: &[f32], rows: &[f32]) -> (f32, usize) {
    // SAFETY: as in `dot`.
    unsafe { (chosen().max_sim)(query, rows) }
}

/// Dot product of an f32 query with an f16 vector, converted into `scratch`
/// (same length) first.
#[inline]
pub fn dot_f16(query: &[f32], row: &[f16], scratch: &mut [f32]) -> f32 {
    // SAFETY: as in `dot`.
    unsafe { (chosen().dot_f16)(query, row, scratch) }
}

/// [`max_sim`] over f16 rows; converts one row at a time into `scratch` (length D).
#[inline]
pub fn max_sim_f16(query: &[f32], rows: &[f16], scratch: &mut [f32]) -> (f32, usize) {
    // SAFETY: as in `dot`.
    unsafe { (chosen().max_sim_f16)(query, rows, scratch) }
}

/// [`max_sim`] over int8 rows with one scale per row.
#[inline]
pub fn max_sim_i8(query: &[f32], codes: &[i8], scales: &[f32]) -> (f32, usize) {
    // SAFETY: as in `dot`.
    unsafe { (chosen().max_sim_i8)(query, codes, scales) }
}

/// [`dot`] of every query with every row of `rows` (`n × D`): `dots[q * n + r]` is
/// `dot(queries[q], row r)`, **bit for bit** (a test checks it on every build). With
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
    // SAFETY: as in `dot`.
    unsafe { (chosen().dots_many)(queries, rows, next, dots) }
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
    // SAFETY: as in `dot`.
    unsafe { (chosen().max_sim_many)(queries, rows, next, dots, out) }
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

#[inline(always)]
fn dot_f16_body(query: &[f32], row: &[f16], scratch: &mut [f32]) -> f32 {
    use half::slice::HalfFloatSliceExt;
    // convert_to_f32_slice uses F16C when the CPU has it (detected at run time).
    row.convert_to_f32_slice(scratch);
    dot_body(query, scratch)
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

fn dots_many_body(queries: &[&[f32]], rows: &[f32], dots: &mut [f32]) {
    let Some(dim) = queries.first().map(|q| q.len()) else {
        return;
    };
    let n_rows = rows.len() / dim;
    for (query, dots) in queries.iter().zip(dots.chunks_exact_mut(n_rows)) {
        for (d, row) in dots.iter_mut().zip(rows.chunks_exact(dim)) {
            *d = dot_body(query, row);
        }
    }
}

fn max_sim_many_body(
    queries: &[&[f32]],
    rows: &[f32],
    _next: &[f32],
    dots: &mut Vec<f32>,
    out: &mut [(f32, usize)],
) {
    let Some(dim) = queries.first().map(|q| q.len()) else {
        return;
    };
    let n_rows = rows.len() / dim;
    dots.clear();
    dots.resize(queries.len() * n_rows, 0.0);
    dots_many_body(queries, rows, dots);
    for (best, dots) in out.iter_mut().zip(dots.chunks_exact(n_rows)) {
        *best = first_max(dots.iter().copied());
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

    /// Every build, whether this CPU runs it or not: (build, runs here).
    fn builds() -> Vec<(&'static Build, bool)> {
        let builds: Vec<_> = BUILDS
            .into_iter()
            .map(|b| (b, (b.needs)(Features::get())))
            .collect();
        let names = |runs: bool| {
            builds
                .iter()
                .filter(|(_, r)| *r == runs)
                .map(|(b, _)| b.name)
                .collect::<Vec<_>>()
        };
        eprintln!(
            "builds run: {:?}; not run (this CPU lacks their features): {:?}",
            names(true),
            names(false)
        );
        builds
    }

    #[test]
    fn every_build_gives_the_baselines_bits() {
        let values = |n: usize, seed: f32| -> Vec<f32> {
            (0..n).map(|i| ((i as f32 + seed) * 0.731).sin()).collect()
        };
        for (build, runs) in builds() {
            if !runs {
                continue;
            }
            for dim in [1, 15, 16, 17, 256, 259] {
                let q = values(dim, 0.5);
                let rows = values(dim * 5, 3.0);
                let halves: Vec<f16> = rows.iter().map(|&x| f16::from_f32(x)).collect();
                let codes: Vec<i8> = rows.iter().map(|&x| (x * 127.0) as i8).collect();
                let scales = values(5, 9.0);
                let mut scratch = vec![0f32; dim];
                let mut scratch2 = vec![0f32; dim];
                // SAFETY: `builds` says this CPU runs `build`: its functions' requirement.
                let cases = unsafe {
                    [
                        ((build.dot)(&q, &rows[..dim]), dot_body(&q, &rows[..dim])),
                        ((build.max_sim)(&q, &rows).0, max_sim_body(&q, &rows).0),
                        (
                            (build.dot_f16)(&q, &halves[..dim], &mut scratch),
                            dot_f16_body(&q, &halves[..dim], &mut scratch2),
                        ),
                        (
                            (build.max_sim_f16)(&q, &halves, &mut scratch).0,
                            max_sim_f16_body(&q, &halves, &mut scratch2).0,
                        ),
                        (
                            (build.max_sim_i8)(&q, &codes, &scales).0,
                            max_sim_i8_body(&q, &codes, &scales).0,
                        ),
                    ]
                };
                for (i, (fast, base)) in cases.into_iter().enumerate() {
                    assert_eq!(
                        fast.to_bits(),
                        base.to_bits(),
                        "case {i}, dim {dim} ({})",
                        build.name
                    );
                }
            }
        }
        // The public functions run the chosen build, which this CPU runs.
        assert!((chosen().needs)(Features::get()), "{}", build_name());
    }

    /// Every build the CPU runs gives [`dot`]'s bits and [`max_sim`]'s first maximum in
    /// its block kernels, for query and row counts around the block sizes (4 × 4 with
    /// AVX-512, 2 × 4 with AVX2).
    #[test]
    fn many_queries_give_dots_bits() {
        let values = |n: usize, seed: f32| -> Vec<f32> {
            (0..n).map(|i| ((i as f32 + seed) * 0.731).sin()).collect()
        };
        let mut dots = Vec::new();
        let builds = builds();
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
                for (build, _) in builds.iter().filter(|(_, runs)| *runs) {
                    let mut of_build = vec![0f32; refs.len() * n_rows];
                    let mut best = vec![(0f32, 0); refs.len()];
                    // SAFETY: `builds` says this CPU runs `build`: its functions'
                    // requirement (they check the slices' lengths themselves).
                    unsafe {
                        (build.dots_many)(&refs, &rows, &[], &mut of_build);
                        (build.max_sim_many)(&refs, &rows, &[], &mut dots, &mut best);
                    }
                    let case = format!("{}, dim {dim}, {n_rows} rows", build.name);
                    for (q, query) in refs.iter().enumerate() {
                        for (r, row) in rows.chunks_exact(dim).enumerate() {
                            let one = dot_body(query, row).to_bits();
                            assert_eq!(base[q * n_rows + r].to_bits(), one, "baseline");
                            assert_eq!(of_build[q * n_rows + r].to_bits(), one, "{case}");
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
