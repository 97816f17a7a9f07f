//! Loading or building a table's graph from a snapshot of its rows, without
//! any lock of the index.
//!
//! The saved graph file is a cache: it is used when it was built over (a
//! prefix of) the same vector file, and extended with the rows added since;
//! otherwise — or when those added rows would be more than a quarter of the
//! graph — the graph is built afresh (hnsw_rs, in parallel over rayon) and
//! saved. Saving is best effort: a read-only index still searches, it just
//! rebuilds at the next open.
//!
//! Who calls this and how the result reaches searches: `Shared::ensure_graph`
//! in `state.rs`.

use std::path::PathBuf;

use rayon::prelude::*;

use crate::graph::ann_graph::{graph_vectors, AnnGraph};
use crate::graph::frozen_graph::{FrozenGraph, GraphKey};
use crate::storage::vector_store::VectorStoreReader;

/// What a graph is built from: a table's rows as of one commit. Taken under
/// the index's read lock (cheap: the vectors are shared chunks), read without it.
pub(crate) struct GraphSource {
    /// Where the graph is saved.
    pub path: PathBuf,
    /// The vector file the rows are in (the saved graph's key).
    pub vectors_file: String,
    pub vectors: VectorStoreReader,
    /// Whether each row's item was live at the snapshot.
    pub live: Vec<bool>,
    /// Graph points per row.
    pub points_per_row: usize,
}

impl GraphSource {
    fn key(&self, rows_covered: u64) -> GraphKey {
        GraphKey {
            vectors_file: self.vectors_file.clone(),
            rows_covered,
            dim: self.vectors.dim(),
            points_per_row: self.points_per_row,
        }
    }

    /// The graph vectors of the live rows from `start` on.
    pub(crate) fn live_from(&self, start: usize) -> Vec<(u64, Vec<f32>)> {
        graph_points(
            &self.vectors,
            start..self.live.len(),
            |row| self.live[row],
            self.points_per_row,
        )
    }

    /// The graph over the live rows: the saved one, extended, or a new one (then saved).
    pub(crate) fn load_or_build(&self) -> AnnGraph {
        let dim = self.vectors.dim();
        let rows = self.live.len() as u64;
        if let Some((saved, points, covered)) = FrozenGraph::load(&self.path, |k| {
            k.rows_covered <= rows && *k == self.key(k.rows_covered)
        }) {
            let added = self.live[covered as usize..].iter().filter(|l| **l).count();
            if added * self.points_per_row <= (saved.len() / 4).max(1024) {
                let graph = AnnGraph::from_saved(saved, points);
                graph.insert(&self.live_from(covered as usize), dim);
                return graph;
            }
        }
        let graph = AnnGraph::build(&self.live_from(0), dim);
        let _ = graph.save(&self.path, &self.key(rows));
        graph
    }
}

/// The graph vectors (`points_per_row` unit centroids each) of the rows in
/// `range` that are live, computed in parallel.
pub(crate) fn graph_points(
    vectors: &VectorStoreReader,
    range: std::ops::Range<usize>,
    is_live: impl Fn(usize) -> bool + Sync,
    points_per_row: usize,
) -> Vec<(u64, Vec<f32>)> {
    let dim = vectors.dim();
    range
        .into_par_iter()
        .filter(|&row| is_live(row))
        .map(|row| {
            let v = vectors.row_f32(row);
            (row as u64, graph_vectors(&v, dim, points_per_row))
        })
        .collect()
}
