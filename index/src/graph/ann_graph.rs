//! The HNSW graph (hnsw_rs) over graph vectors, and what goes into it.
//!
//! Why not every query vector of every image: hnsw_rs takes ~2.9 KB and ~0.3 ms
//! of build time per point, so 32 points per image would cost ~92 KB and ~10 ms
//! per image. Instead each image's Q vectors are clustered into
//! `graph_points_per_image` unit centroids ([`graph_vectors`]); the graph only
//! has to bring the right images into the candidate set, and the exact
//! max-over-slots score is then recomputed from all Q stored vectors. Texts
//! have one vector and put it in the graph as it is.
//!
//! hnsw_rs builds the graph; [`FrozenGraph`] then holds it in flat arrays
//! (~0.6 KB per point instead of ~4.5 KB) and is saved next to the vectors, so
//! that reopening an index does not rebuild it.

use std::sync::{OnceLock, RwLock, RwLockReadGuard};

use hnsw_rs::prelude::{Distance, Hnsw};

use crate::graph::frozen_graph::{FrozenGraph, GraphKey};
use crate::graph::point_map::{PointMap, PointTarget};
use crate::search::max_sim::dot;

/// Max neighbours per node and layer (layer 0 keeps twice as many).
///
/// Why 32: when a new point links back to a full neighbour list, hnsw_rs drops
/// that list's farthest entry instead of applying HNSW's diversity rule. In a
/// dense cluster of look-alike photos the lists then fill with the cluster's
/// nearest points, the links that lead across it are lost, and a search sees
/// only part of it. With 100 000 centroids in clusters of 1 000 and text-like
/// queries (release build, a probe not kept), the share of the true 200 nearest
/// that a search at ef 256 found was 0.78 with 12, 0.92 with 16, 0.96 with 24
/// and 0.997 with 32. `ann_bench --items 100000 --clusters 100`: recall@10 0.57
/// with 12, 0.91 with 32 (the most one centroid per image allows there). With
/// 32 the lists rarely fill, so a frozen point grew only from 0.615 to 0.67 KB.
const MAX_CONNECTIONS: usize = 32;
/// Candidate list size while inserting; higher builds slower and searches better.
const EF_CONSTRUCTION: usize = 100;
/// hnsw_rs's layer cap.
const MAX_LAYERS: usize = 16;
/// k-means rounds for the image centroids; more changes little on 32 slots.
const KMEANS_ROUNDS: usize = 4;

/// `1 - <a, b>` on unit vectors, clamped at 0: hnsw_rs asserts that distances
/// are non-negative, and rounding can push a dot product of unit vectors past 1.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct UnitDot;

impl Distance<f32> for UnitDot {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

/// An HNSW graph over graph vectors and the map from its point ids to items:
/// a [`FrozenGraph`] (built by hnsw_rs, compact, saved as a file) plus, for
/// points added after it was built, a live hnsw_rs graph. Both are searched
/// and their hits merged.
///
/// Points are added through `&self` while searches go on (hnsw_rs inserts
/// concurrently; the point map has its own short lock), so that the index
/// never holds its state lock while a commit's points go in.
pub(crate) struct AnnGraph {
    frozen: FrozenGraph,
    added: OnceLock<Hnsw<'static, f32, UnitDot>>,
    points: RwLock<PointMap>,
}

impl AnnGraph {
    /// Builds the graph of `items` (row, its graph vectors of `dim` values
    /// each) with hnsw_rs, in parallel over rayon, and freezes it.
    pub(crate) fn build(items: &[(u64, Vec<f32>)], dim: usize) -> Self {
        let mut points = PointMap::default();
        let batch = assign_points(items, dim, &mut points);
        let hnsw = new_hnsw(batch.len());
        insert_all(&hnsw, batch);
        AnnGraph {
            frozen: FrozenGraph::freeze(&hnsw, points.len(), dim),
            added: OnceLock::new(),
            points: RwLock::new(points),
        }
    }

    /// A graph loaded by [`FrozenGraph::load`].
    pub(crate) fn from_saved(frozen: FrozenGraph, points: PointMap) -> Self {
        AnnGraph {
            frozen,
            added: OnceLock::new(),
            points: RwLock::new(points),
        }
    }

    /// Saves the frozen part (see [`FrozenGraph::save`]).
    pub(crate) fn save(&self, path: &std::path::Path, key: &GraphKey) -> std::io::Result<()> {
        self.frozen.save(&self.points(), path, key)
    }

    /// Adds the graph vectors (`dim` values each) of more items. Searches may
    /// run meanwhile; one caller inserts at a time (the index sees to it).
    pub(crate) fn insert(&self, items: &[(u64, Vec<f32>)], dim: usize) {
        let batch = assign_points(items, dim, &mut self.points.write().expect("points lock"));
        if batch.is_empty() {
            return;
        }
        let added = self.added.get_or_init(|| new_hnsw(batch.len()));
        insert_all(added, batch);
    }

    /// The `n` nearest points to `query` with their similarity, nearest first.
    pub(crate) fn search(&self, query: &[f32], n: usize, ef: usize) -> Vec<(PointTarget, f32)> {
        let mut hits: Vec<(usize, f32)> = self.frozen.search(query, n, ef);
        if let Some(added) = self.added.get() {
            hits.extend(
                added
                    .search(query, n, ef.max(n))
                    .into_iter()
                    .map(|nb| (nb.d_id, 1.0 - nb.distance)),
            );
            hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            hits.truncate(n);
        }
        let points = self.points();
        hits.into_iter()
            .filter_map(|(id, sim)| Some((points.get(id)?, sim)))
            .collect()
    }

    /// The map from point ids to items (read-locked while held).
    pub(crate) fn points(&self) -> RwLockReadGuard<'_, PointMap> {
        self.points.read().expect("points lock")
    }

    /// Points added since the graph was frozen.
    #[cfg(test)]
    pub(crate) fn added_points(&self) -> usize {
        self.points().len() - self.frozen.len()
    }
}

fn new_hnsw(expected_points: usize) -> Hnsw<'static, f32, UnitDot> {
    Hnsw::new(
        MAX_CONNECTIONS,
        expected_points.max(1024),
        MAX_LAYERS,
        EF_CONSTRUCTION,
        UnitDot,
    )
}

/// Gives each graph vector of `items` the next point id of `points`; returns
/// the vectors with their ids, ready to insert.
fn assign_points<'a>(
    items: &'a [(u64, Vec<f32>)],
    dim: usize,
    points: &mut PointMap,
) -> Vec<(&'a [f32], usize)> {
    let mut batch = Vec::new();
    for (row, vectors) in items {
        for (slot, v) in vectors.chunks_exact(dim).enumerate() {
            let id = points.push(PointTarget {
                row: *row,
                slot: slot as u16,
            });
            batch.push((v, id));
        }
    }
    batch
}

fn insert_all(hnsw: &Hnsw<'static, f32, UnitDot>, batch: Vec<(&[f32], usize)>) {
    if batch.len() < 64 {
        batch.into_iter().for_each(|p| hnsw.insert_slice(p));
    } else {
        hnsw.parallel_insert_slice(&batch);
    }
}

/// The vectors an image puts in the graph: `k` unit centroids of its `Q` query
/// vectors (spherical k-means, deterministic start on evenly spaced slots), or
/// the vectors themselves when `k == Q`.
pub(crate) fn graph_vectors(vectors: &[f32], dim: usize, k: usize) -> Vec<f32> {
    let q = vectors.len() / dim;
    if k >= q {
        return vectors.to_vec();
    }
    let rows: Vec<&[f32]> = vectors.chunks_exact(dim).collect();
    let mut centroids: Vec<f32> = (0..k)
        .flat_map(|c| rows[c * q / k].iter().copied())
        .collect();
    let mut assignment = vec![0usize; q];
    for _ in 0..KMEANS_ROUNDS {
        for (r, row) in rows.iter().enumerate() {
            assignment[r] = (0..k)
                .max_by(|&a, &b| {
                    let da = dot(row, &centroids[a * dim..(a + 1) * dim]);
                    let db = dot(row, &centroids[b * dim..(b + 1) * dim]);
                    da.total_cmp(&db)
                })
                .unwrap_or(0);
        }
        let mut sums = vec![0f32; k * dim];
        for (r, row) in rows.iter().enumerate() {
            let c = assignment[r];
            sums[c * dim..(c + 1) * dim]
                .iter_mut()
                .zip(row.iter())
                .for_each(|(s, x)| *s += x);
        }
        for c in 0..k {
            let sum = &mut sums[c * dim..(c + 1) * dim];
            let n = dot(sum, sum).sqrt();
            // An empty cluster keeps its previous centroid.
            if n > 1e-12 {
                sum.iter_mut().for_each(|x| *x /= n);
                centroids[c * dim..(c + 1) * dim].copy_from_slice(sum);
            }
        }
    }
    centroids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_vectors_are_unit_and_k_per_image() {
        let dim = 8;
        let vectors: Vec<f32> = (0..6 * dim)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0)
            .collect::<Vec<_>>()
            .chunks_exact(dim)
            .flat_map(|v| {
                let n = dot(v, v).sqrt();
                v.iter().map(move |x| x / n).collect::<Vec<_>>()
            })
            .collect();
        for k in [1, 2, 6] {
            let g = graph_vectors(&vectors, dim, k);
            assert_eq!(g.len(), k * dim);
            for v in g.chunks_exact(dim) {
                assert!((dot(v, v) - 1.0).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn search_finds_inserted_point_first() {
        let dim = 4;
        let items: Vec<(u64, Vec<f32>)> = vec![
            (10, vec![1.0, 0.0, 0.0, 0.0]),
            (11, vec![0.0, 1.0, 0.0, 0.0]),
            (12, vec![0.0, 0.0, 1.0, 0.0]),
        ];
        let graph = AnnGraph::build(&items, dim);
        let hits = graph.search(&[0.0, 0.9, 0.1, 0.0], 2, 10);
        assert_eq!(hits[0].0, PointTarget { row: 11, slot: 0 });
        // A point added after the freeze is found too, and ranks by similarity.
        graph.insert(&[(13, vec![0.0, 0.0, 0.0, 1.0])], dim);
        assert_eq!(graph.added_points(), 1);
        let hits = graph.search(&[0.0, 0.1, 0.0, 0.9], 2, 10);
        assert_eq!(hits[0].0, PointTarget { row: 13, slot: 0 });
        assert_eq!(hits[1].0, PointTarget { row: 11, slot: 0 });
    }
}
