//! Search parameters, filters and hits, and the max-sim kernels that score them.

pub mod max_sim;

use crate::photo::PhotoFilter;
use crate::storage::metadata_store::{ImageId, TextId};

/// Restricts a search to some images (or texts).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Only images with a path that starts with this string.
    pub path_prefix: Option<String>,
    /// Only items that match this tantivy query over `name` (file name),
    /// `path` (path components) and `text`, e.g. `name:beach OR path:2023`.
    pub query: Option<String>,
    /// Only images whose metadata passes: when, with which camera, where.
    pub photo: PhotoFilter,
}

/// How a search is run.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchParams {
    /// HNSW search width; raised to the number of points asked for when lower.
    /// `None` (the default): [`default_ef`] of the graph's size.
    pub ef: Option<usize>,
    /// Distinct items whose score is recomputed exactly; at least `k`.
    pub candidates: usize,
    /// Optional restriction.
    pub filter: Option<Filter>,
    /// Score every (allowed) item exactly, without the graph.
    pub exact: bool,
    /// Below this many allowed items the search is exact anyway: scoring a
    /// few thousand items beats walking a graph to find a few of them.
    pub exact_below: usize,
}

impl Default for SearchParams {
    fn default() -> Self {
        SearchParams {
            ef: None,
            // Measured with `ann_bench` at 100 000 int8 images: recall@10 0.990 with
            // (ef 256, 200), 0.985 with (128, 100); p50 5.0 ms vs 2.4 ms.
            candidates: 200,
            filter: None,
            exact: false,
            exact_below: 2048,
        }
    }
}

/// The HNSW search width for a graph of `points` points when the search does not
/// set one: 256 up to 100 000 points, then 256 more per tenfold (512 at 1 000 000).
///
/// A wider beam costs time, and the width a search needs grows with the graph.
/// `ann_bench --dtype int8` (one point per image, 100 images per cluster): at
/// 100 000 images, ef 512 found the same top 10 as 256 (recall@10 0.995) at twice
/// the p50 (5.1–5.9 ms against 2.2); at 1 000 000, 256 gave recall@10 0.962 and
/// 512 gave 0.991.
pub fn default_ef(points: usize) -> usize {
    const BASE: f64 = 256.0;
    const FROM: f64 = 100_000.0;
    let tenfolds = (points as f64 / FROM).log10().max(0.0);
    (BASE * (1.0 + tenfolds)).round() as usize
}

/// One image found by a search.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageHit {
    /// The image.
    pub image_id: ImageId,
    /// Every path with this image's bytes, sorted.
    pub paths: Vec<String>,
    /// Exact score from the stored vectors: max-over-slots dot product for a
    /// text query, symmetric Chamfer similarity for an image query.
    pub score: f32,
    /// Query slot of the image that reached the score (0 for image queries).
    pub best_slot: usize,
}

/// One text found by a search.
#[derive(Debug, Clone, PartialEq)]
pub struct TextHit {
    /// The text.
    pub text_id: TextId,
    /// Its string.
    pub text: String,
    /// The caller's id for it, if given.
    pub external_id: Option<String>,
    /// Max over the query vectors of the dot product with the text's vector.
    pub score: f32,
    /// Query vector that reached the score.
    pub best_slot: usize,
}

/// Sorts by score, highest first, ties by id so that results are deterministic.
pub(crate) fn sort_hits<T>(hits: &mut [(f32, u64, T)]) {
    hits.sort_by(hit_order);
}

/// The order of [`sort_hits`]: score, highest first, then id.
pub(crate) fn hit_order<T>(a: &(f32, u64, T), b: &(f32, u64, T)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ef_grows_by_a_base_per_tenfold_past_100_000_points() {
        for (points, ef) in [
            (0, 256),
            (1, 256),
            (100_000, 256),
            (300_000, 378),
            (1_000_000, 512),
            (10_000_000, 768),
        ] {
            assert_eq!(default_ef(points), ef, "{points} points");
        }
    }
}
