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
                    // SAFETY: `level` found the CPU features these were compiled for.
                    Level::Avx512 => return unsafe { wide($($arg),*) },
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

/// Symmetric Chamfer similarity of two multi-vector images (`Q × D` each):
/// the mean over A's slots of the best match in B, averaged with the same from B to A.
///
/// Why this one (BLIP-2 defines no image–image score): each query slot attends
/// to a different aspect of the picture, so two photos are alike when every
/// aspect of one finds a counterpart in the other. The max over all slot pairs
/// would be dominated by the generic slots every photo shares; the mean of all
/// pairs blurs the aspects together. Averaging both directions makes the score
/// symmetric. It is the ColBERT "MaxSim" late-interaction score, normalised to [-1, 1].
pub fn chamfer(a: &[f32], b: &[f32], dim: usize) -> f32 {
    let one_way = |x: &[f32], y: &[f32]| {
        let n = x.len() / dim;
        x.chunks_exact(dim)
            .map(|row| max_sim(row, y).0)
            .sum::<f32>()
            / n as f32
    };
    0.5 * (one_way(a, b) + one_way(b, a))
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

    #[test]
    fn max_sim_returns_best_slot() {
        let rows = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
        assert_eq!(max_sim(&[0.0, 1.0], &rows), (1.0, 1));
        assert_eq!(max_sim(&[1.0, 0.0], &rows), (1.0, 0));
    }

    #[test]
    fn chamfer_is_symmetric_and_one_for_identical_images() {
        let a = [1.0, 0.0, 0.0, 1.0];
        let b = [0.6, 0.8, 1.0, 0.0];
        assert!((chamfer(&a, &a, 2) - 1.0).abs() < 1e-6);
        assert!((chamfer(&a, &b, 2) - chamfer(&b, &a, 2)).abs() < 1e-6);
    }
}
