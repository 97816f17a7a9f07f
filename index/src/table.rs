//! `Table`: one kind of item — images or texts — as searches see it: the
//! metadata entries by id, the vector rows, which entry owns each row, and
//! the ANN graph over those rows. Images and texts are two tables of the same
//! type, so loading, publishing a commit, compacting and the filtered search
//! are each written once.
//!
//! Not for: the files (see `storage/`), or building a graph (see
//! `graph/graph_cache.rs`); a table only holds the graph once it is ready.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rayon::prelude::*;

use crate::graph::ann_graph::AnnGraph;
use crate::graph::graph_cache::GraphSource;
use crate::search::{default_ef, hit_order, sort_hits, SearchParams};
use crate::storage::vector_store::{ManyScratch, VectorStoreReader};

/// An entry of a table: it knows its vector row.
pub(crate) trait TableEntry: Clone + Send + Sync {
    /// Row of the item's vectors in the table's vector file.
    fn row(&self) -> u64;
    /// Points the item at another row (compaction moves rows).
    fn set_row(&mut self, row: u64);
}

/// Items of one kind, their vector rows and their graph.
pub(crate) struct Table<E> {
    /// Live items by id.
    pub entries: HashMap<u64, E>,
    pub rows: Rows,
}

/// The vector rows of a table and its graph: what does not depend on the
/// kind of item.
pub(crate) struct Rows {
    /// Vector row → its item; `None` is a tombstone (removed or replaced). `Some(id)`
    /// exactly when `id`'s entry points at this row (`new` and `apply` keep it so).
    pub owners: Vec<Option<u64>>,
    pub vectors: VectorStoreReader,
    /// The vector file (as the commit names it) the rows are read from.
    pub vectors_file: String,
    /// The HNSW graph once loaded or built; searches are exact until then.
    pub graph: Option<Arc<AnnGraph>>,
    /// Rows `0..graph_rows` are in the graph; searches score the rows past it (a
    /// commit's, until `Shared::extend_graph` has added them) exactly.
    pub graph_rows: usize,
    /// Graph points per row: each row's vectors are clustered into this many.
    pub points_per_row: usize,
    /// File name of the saved graph in the index directory.
    pub graph_file: &'static str,
}

/// Whether a search with these parameters walks the graph (rather than
/// scoring every allowed item), when the graph is ready: not when asked to be
/// exact, nor when so few items are allowed that scoring them all is cheaper.
pub(crate) fn wants_graph(k: usize, params: &SearchParams, n_allowed: usize) -> bool {
    let want = params.candidates.max(k).min(n_allowed);
    !(params.exact || n_allowed <= params.exact_below.max(want))
}

/// `(score, id, slot)` triples, best first.
pub(crate) type Scored = Vec<(f32, u64, usize)>;

/// The best `k` of `scored` in [`sort_hits`] order (a partial selection first: the
/// same result as sorting everything, without sorting everything).
fn top_k(mut scored: Scored, k: usize) -> Scored {
    if k == 0 {
        return Vec::new();
    }
    if scored.len() > k {
        scored.select_nth_unstable_by(k - 1, hit_order);
        scored.truncate(k);
    }
    sort_hits(&mut scored);
    scored
}

impl<E: TableEntry> Table<E> {
    /// A table of `entries` over the loaded `vectors`. Fails (with the
    /// reason) when two entries share a row or one points past the last row.
    pub(crate) fn new(
        entries: HashMap<u64, E>,
        vectors: VectorStoreReader,
        vectors_file: String,
        points_per_row: usize,
        graph_file: &'static str,
    ) -> Result<Self, String> {
        let mut owners = vec![None; vectors.rows()];
        for (id, e) in &entries {
            match owners.get_mut(e.row() as usize) {
                Some(slot @ None) => *slot = Some(*id),
                Some(Some(other)) => {
                    return Err(format!(
                        "items {other} and {id} of {vectors_file} share vector row {}",
                        e.row()
                    ))
                }
                None => {
                    return Err(format!(
                        "item {id} points at vector row {} but {vectors_file} holds {} rows",
                        e.row(),
                        vectors.rows()
                    ))
                }
            }
        }
        Ok(Table {
            entries,
            rows: Rows {
                owners,
                vectors,
                vectors_file,
                graph: None,
                graph_rows: 0,
                points_per_row,
                graph_file,
            },
        })
    }

    /// Rows whose item was removed or replaced.
    pub(crate) fn dead_rows(&self) -> usize {
        self.rows.owners.len() - self.entries.len()
    }

    /// The item's vectors as stored, decoded to f32.
    pub(crate) fn vectors_of(&self, id: u64) -> Option<Vec<f32>> {
        let e = self.entries.get(&id)?;
        Some(self.rows.vectors.row_f32(e.row() as usize))
    }

    /// Publishes a commit: entries set (`Some`) or removed (`None`), then the
    /// new rows appended in order, each with the item that owned it when
    /// added. A row is live when its item still points at it. The new rows are
    /// not in the graph yet: searches score them exactly until
    /// `Shared::extend_graph` has added them, without this lock.
    pub(crate) fn apply(&mut self, entries: &HashMap<u64, Option<E>>, new_rows: &[(u64, Vec<u8>)]) {
        let rows = &mut self.rows;
        for (id, entry) in entries {
            match entry {
                Some(e) => {
                    // An item that moves to another row leaves a tombstone behind.
                    if let Some(old) = self.entries.insert(*id, e.clone()) {
                        if old.row() != e.row() {
                            rows.owners[old.row() as usize] = None;
                        }
                    }
                }
                None => {
                    if let Some(old) = self.entries.remove(id) {
                        rows.owners[old.row() as usize] = None;
                    }
                }
            }
        }
        for (id, bytes) in new_rows {
            let row = rows.vectors.rows();
            rows.vectors.push_encoded(bytes);
            let live = self
                .entries
                .get(id)
                .is_some_and(|e| e.row() as usize == row);
            rows.owners.push(live.then_some(*id));
        }
    }

    /// The filtered search, for images and texts alike: the candidates for
    /// `probes` (graph-space query vectors), scored exactly by `score(row,
    /// scratch)` → `(score, slot)`, best `k` first.
    ///
    /// Candidates are every allowed item when the search is exact (asked for,
    /// few items allowed, or no graph yet); otherwise those the graph finds
    /// (see [`Table::graph_candidates`]).
    pub(crate) fn search(
        &self,
        probes: &[&[f32]],
        k: usize,
        params: &SearchParams,
        allowed: Option<&HashSet<u64>>,
        score: impl Fn(usize, &mut Vec<f32>) -> (f32, usize) + Sync,
    ) -> Scored {
        let candidates = match self.graph_for(k, params, allowed) {
            Some(graph) => {
                let n_allowed = allowed.map_or(self.entries.len(), |a| a.len());
                let want = params.candidates.max(k).min(n_allowed);
                let mut found = self.graph_candidates(graph, probes, want, params.ef, allowed);
                // The rows not in the graph yet (a commit's, while they go in).
                let seen: HashSet<u64> = found.iter().copied().collect();
                found.extend(
                    self.rows.owners[self.rows.graph_rows.min(self.rows.owners.len())..]
                        .iter()
                        .flatten()
                        .filter(|id| allowed.is_none_or(|a| a.contains(id)) && !seen.contains(id)),
                );
                found
            }
            None => self.all_allowed(allowed),
        };
        let dim = self.rows.vectors.dim();
        let scored: Scored = candidates
            .par_iter()
            .map_init(
                || vec![0f32; dim],
                |scratch, &id| {
                    let (s, slot) = score(self.entries[&id].row() as usize, scratch);
                    (s, id, slot)
                },
            )
            .collect();
        top_k(scored, k)
    }

    /// BLIP-2's max-over-slots search ([`VectorStoreReader::max_sim`]) for several
    /// queries of one probe each, with the same `k`, parameters and filter. The results
    /// equal one `search` per query, bit for bit. When the search is exact, every
    /// allowed row is read once and scored against all the queries while it is in
    /// cache ([`VectorStoreReader::max_sim_many`]), so a batch of queries costs about
    /// one pass over the vectors instead of one pass each.
    pub(crate) fn max_sim_search_many(
        &self,
        queries: &[&[f32]],
        k: usize,
        params: &SearchParams,
        allowed: Option<&HashSet<u64>>,
    ) -> Vec<Scored> {
        let vectors = &self.rows.vectors;
        if self.graph_for(k, params, allowed).is_some() || queries.len() < 2 {
            return queries
                .iter()
                .map(|query| {
                    self.search(&[query], k, params, allowed, |row, scratch| {
                        vectors.max_sim(row, query, scratch)
                    })
                })
                .collect();
        }
        let candidates = self.all_allowed(allowed);
        let n = queries.len();
        // Each task keeps its rows' best `k` per query; the lists then merge. `hit_order`
        // is a total order, so the result is the one `search` gives.
        candidates
            .par_chunks(256)
            .map_init(ManyScratch::default, |scratch, ids| {
                let rows: Vec<usize> = ids
                    .iter()
                    .map(|id| self.entries[id].row() as usize)
                    .collect();
                let mut scores = vec![(0f32, 0); ids.len() * n];
                for (&row, out) in rows.iter().zip(scores.chunks_exact_mut(n)) {
                    vectors.max_sim_many(row, queries, scratch, out);
                }
                (0..n)
                    .map(|q| {
                        let scored: Scored = ids
                            .iter()
                            .zip(scores.chunks_exact(n))
                            .map(|(&id, s)| (s[q].0, id, s[q].1))
                            .collect();
                        top_k(scored, k)
                    })
                    .collect::<Vec<Scored>>()
            })
            .reduce(
                || vec![Vec::new(); n],
                |a, b| {
                    a.into_iter()
                        .zip(b)
                        .map(|(mut a, b)| {
                            a.extend(b);
                            top_k(a, k)
                        })
                        .collect()
                },
            )
    }

    /// The graph, when it is ready and a search with these parameters walks it
    /// (see [`wants_graph`]).
    fn graph_for(
        &self,
        k: usize,
        params: &SearchParams,
        allowed: Option<&HashSet<u64>>,
    ) -> Option<&AnnGraph> {
        let n_allowed = allowed.map_or(self.entries.len(), |a| a.len());
        self.rows
            .graph
            .as_deref()
            .filter(|_| wants_graph(k, params, n_allowed))
    }

    /// Every live item the filter allows (all without one), in row order: an exact scan
    /// then reads the vector file front to back, which the CPU's prefetcher follows
    /// (the order of the hits does not depend on it: [`hit_order`] is total).
    fn all_allowed(&self, allowed: Option<&HashSet<u64>>) -> Vec<u64> {
        match allowed {
            Some(a) => {
                let mut rows: Vec<(u64, u64)> = a
                    .iter()
                    .filter_map(|id| Some((self.entries.get(id)?.row(), *id)))
                    .collect();
                rows.sort_unstable();
                rows.into_iter().map(|(_, id)| id).collect()
            }
            None => self.rows.owners.iter().flatten().copied().collect(),
        }
    }

    /// The items whose graph points are nearest to `probes`, at least `want`
    /// of them when the graph holds that many allowed ones.
    ///
    /// Each probe asks the graph for `want × points per row` points, grouped
    /// by item; dead and filtered-out items are dropped, and while fewer than
    /// `want` items remain the search goes four times deeper, up to the whole
    /// graph, so that a filter never costs recall. The best `2 × want ×
    /// probes` items by graph similarity are kept: re-scoring is cheap next to
    /// the graph walk, and the similarity of a centroid is only a proxy.
    pub(crate) fn graph_candidates(
        &self,
        graph: &AnnGraph,
        probes: &[&[f32]],
        want: usize,
        ef: Option<usize>,
        allowed: Option<&HashSet<u64>>,
    ) -> Vec<u64> {
        let total_points = graph.points().len();
        let ef = ef.unwrap_or_else(|| default_ef(total_points));
        let per_row = total_points / self.rows.graph_rows.max(1);
        let mut depth = want * per_row.max(1);
        loop {
            let mut best: HashMap<u64, f32> = HashMap::new();
            for probe in probes {
                for (target, sim) in graph.search(probe, depth, ef.max(depth)) {
                    let Some(Some(id)) = self.rows.owners.get(target.row as usize) else {
                        continue;
                    };
                    if allowed.is_some_and(|a| !a.contains(id)) {
                        continue;
                    }
                    let e = best.entry(*id).or_insert(f32::NEG_INFINITY);
                    *e = e.max(sim);
                }
            }
            if best.len() >= want || depth >= total_points {
                let mut ranked: Vec<(u64, f32)> = best.into_iter().collect();
                ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                ranked.truncate(want * 2 * probes.len().max(1));
                return ranked.into_iter().map(|(id, _)| id).collect();
            }
            depth = (depth * 4).min(total_points);
        }
    }
}

impl Rows {
    /// What a graph build needs, copied so that it runs without the index's lock.
    pub(crate) fn graph_source(&self, dir: &std::path::Path) -> GraphSource {
        GraphSource {
            path: dir.join(self.graph_file),
            vectors_file: self.vectors_file.clone(),
            vectors: self.vectors.clone(),
            live: self.owners.iter().map(Option::is_some).collect(),
            points_per_row: self.points_per_row,
        }
    }
}
