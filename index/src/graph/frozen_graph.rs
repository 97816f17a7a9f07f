//! An HNSW graph built by hnsw_rs, frozen into flat arrays: compact in memory,
//! written to and read back from one file, searched with HNSW's own algorithm.
//!
//! Why: hnsw_rs keeps every point as a tree of small allocations (an f32 copy
//! of the vector, a `Vec` per layer, one `Arc` per edge): ~4.5 KB per point,
//! more than the int8 vectors of a whole 32-slot image. Frozen, a point costs
//! its f16 vector (2·D bytes), its edges (4 bytes each) and ~20 bytes of
//! bookkeeping: ~0.6 KB at D = 256. hnsw_rs cannot reload a graph it did not
//! build and cannot be extended from flat arrays, so points added after the
//! freeze go to a small hnsw_rs graph beside it (see [`crate::graph::ann_graph`]).
//!
//! File layout (little-endian): `MAGIC`, then a JSON header line
//! ([`GraphKey`] plus the array lengths), then the arrays in the order of the
//! struct's fields, then the blake3 hash of everything before it. A file that
//! does not match its hash, or whose key is not the one asked for, is ignored
//! and the graph is rebuilt: the file is a cache, the vector files are the truth.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{Read, Write};
use std::path::Path;

use half::f16;
use hnsw_rs::prelude::{Distance, Hnsw};
use serde::{Deserialize, Serialize};

use crate::graph::point_map::{PointMap, PointTarget};
use crate::search::max_sim::{dot_f16, prefetch};

const MAGIC: &[u8; 8] = b"QSKGRPH1";

/// What a graph file was built from; a file is only used for the same key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GraphKey {
    /// The vector file whose rows the points refer to (a compaction renames it).
    pub vectors_file: String,
    /// Rows of that file the graph was built over (later rows are not in it).
    pub rows_covered: u64,
    /// D.
    pub dim: usize,
    /// Graph points per row.
    pub points_per_row: usize,
}

#[derive(Serialize, Deserialize)]
struct Header {
    key: GraphKey,
    points: usize,
    edges: usize,
    entry: u32,
    max_level: u8,
}

/// A frozen HNSW graph. Point `p` has `levels[p] + 1` neighbour lists, stored
/// one after the other from `adjacency[offsets[p]]`, each as a count then ids.
/// What each point stands for is the caller's [`PointMap`] (its first
/// `len()` entries), saved and loaded with the graph.
#[derive(Debug, Default)]
pub(crate) struct FrozenGraph {
    dim: usize,
    entry: u32,
    max_level: u8,
    levels: Vec<u8>,
    offsets: Vec<u64>,
    adjacency: Vec<u32>,
    vectors: Vec<f16>,
}

/// An f32 that orders totally, for the search heaps.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sim(f32);
impl Eq for Sim {}
impl PartialOrd for Sim {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Sim {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl FrozenGraph {
    /// Freezes an hnsw_rs graph whose data ids are `0..n`.
    pub(crate) fn freeze<D: Distance<f32> + Send + Sync>(
        hnsw: &Hnsw<'_, f32, D>,
        n: usize,
        dim: usize,
    ) -> Self {
        let mut g = FrozenGraph {
            dim,
            levels: vec![0; n],
            offsets: vec![0; n + 1],
            vectors: vec![f16::ZERO; n * dim],
            ..FrozenGraph::default()
        };
        let mut lists: Vec<Vec<Vec<u32>>> = vec![Vec::new(); n];
        // hnsw_rs's point iterator panics on an empty graph.
        let points = (hnsw.get_nb_point() > 0).then(|| hnsw.get_point_indexation());
        for point in points.into_iter().flatten() {
            let id = point.get_origin_id();
            let level = point.get_point_id().0;
            g.levels[id] = level;
            for (v, x) in g.vectors[id * dim..(id + 1) * dim]
                .iter_mut()
                .zip(point.get_v())
            {
                *v = f16::from_f32(*x);
            }
            lists[id] = point
                .get_neighborhood_id()
                .into_iter()
                .take(level as usize + 1)
                .map(|layer| layer.iter().map(|nb| nb.d_id as u32).collect())
                .collect();
        }
        // The entry point: the first point on the top layer.
        g.max_level = g.levels.iter().copied().max().unwrap_or(0);
        g.entry = g.levels.iter().position(|&l| l == g.max_level).unwrap_or(0) as u32;
        for (p, layers) in lists.into_iter().enumerate() {
            g.offsets[p] = g.adjacency.len() as u64;
            for l in 0..=g.levels[p] as usize {
                let ids = layers.get(l).map_or(&[][..], |v| v.as_slice());
                g.adjacency.push(ids.len() as u32);
                g.adjacency.extend_from_slice(ids);
            }
        }
        g.offsets[n] = g.adjacency.len() as u64;
        g
    }

    /// Number of points.
    pub(crate) fn len(&self) -> usize {
        self.levels.len()
    }

    fn neighbours(&self, p: u32, level: u8) -> &[u32] {
        let p = p as usize;
        if level > self.levels[p] {
            return &[];
        }
        let mut at = self.offsets[p] as usize;
        for _ in 0..level {
            at += 1 + self.adjacency[at] as usize;
        }
        let count = self.adjacency[at] as usize;
        &self.adjacency[at + 1..at + 1 + count]
    }

    fn vector(&self, p: u32) -> &[f16] {
        let p = p as usize;
        &self.vectors[p * self.dim..(p + 1) * self.dim]
    }

    fn sim(&self, query: &[f32], p: u32, scratch: &mut [f32]) -> f32 {
        dot_f16(query, self.vector(p), scratch)
    }

    /// The `n` points most similar to `query` (point id, similarity), most
    /// similar first: greedy descent through the upper layers, then a beam of
    /// width `ef` on layer 0 (Malkov & Yashunin 2018, Algorithms 2 and 5).
    pub(crate) fn search(&self, query: &[f32], n: usize, ef: usize) -> Vec<(usize, f32)> {
        if self.levels.is_empty() {
            return Vec::new();
        }
        let ef = ef.max(n).max(1);
        let mut scratch = vec![0f32; self.dim];
        let mut ep = self.entry;
        let mut ep_sim = self.sim(query, ep, &mut scratch);
        for level in (1..=self.max_level).rev() {
            let mut moved = true;
            while moved {
                moved = false;
                for &nb in self.neighbours(ep, level) {
                    let s = self.sim(query, nb, &mut scratch);
                    if s > ep_sim {
                        (ep, ep_sim, moved) = (nb, s, true);
                    }
                }
            }
        }
        let mut visited = vec![0u64; self.len().div_ceil(64)];
        let mut visit = |p: u32| {
            let (word, bit) = (p as usize / 64, 1u64 << (p % 64));
            let first = visited[word] & bit == 0;
            visited[word] |= bit;
            first
        };
        visit(ep);
        let mut frontier = BinaryHeap::from([(Sim(ep_sim), ep)]);
        let mut best = BinaryHeap::from([Reverse((Sim(ep_sim), ep))]);
        let mut fresh = Vec::new();
        while let Some((Sim(s), p)) = frontier.pop() {
            let worst = best.peek().map_or(f32::NEG_INFINITY, |r| (r.0).0 .0);
            if best.len() >= ef && s < worst {
                break;
            }
            // The unvisited neighbours' vectors lie anywhere in memory: ask for all of
            // them before scoring the first, so that their cache misses overlap.
            fresh.clear();
            fresh.extend(
                self.neighbours(p, 0)
                    .iter()
                    .copied()
                    .filter(|&nb| visit(nb)),
            );
            for &nb in &fresh {
                prefetch(self.vector(nb));
            }
            for &nb in &fresh {
                let s = self.sim(query, nb, &mut scratch);
                let worst = best.peek().map_or(f32::NEG_INFINITY, |r| (r.0).0 .0);
                if best.len() < ef || s > worst {
                    frontier.push((Sim(s), nb));
                    best.push(Reverse((Sim(s), nb)));
                    if best.len() > ef {
                        best.pop();
                    }
                }
            }
        }
        let mut out: Vec<(usize, f32)> = best
            .into_iter()
            .map(|Reverse((Sim(s), p))| (p as usize, s))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out.truncate(n);
        out
    }

    /// Bytes this graph holds in memory.
    fn memory_bytes(&self) -> usize {
        self.levels.len()
            + self.offsets.len() * 8
            + self.adjacency.len() * 4
            + self.vectors.len() * 2
    }

    /// Writes the graph, with what its points stand for (`points`' first
    /// `len()` entries), to `path` through a temporary file and a rename, so
    /// that a reader sees the old file or the new one, never a mix.
    pub(crate) fn save(
        &self,
        points: &PointMap,
        path: &Path,
        key: &GraphKey,
    ) -> std::io::Result<()> {
        let header = Header {
            key: key.clone(),
            points: self.len(),
            edges: self.adjacency.len(),
            entry: self.entry,
            max_level: self.max_level,
        };
        let mut bytes = Vec::with_capacity(self.memory_bytes() + 10 * self.len() + 1024);
        bytes.extend_from_slice(MAGIC);
        serde_json::to_writer(&mut bytes, &header)?;
        bytes.push(b'\n');
        let targets = || points.iter().take(self.len()).map(|(_, t)| t);
        targets().for_each(|t| bytes.extend(t.row.to_le_bytes()));
        targets().for_each(|t| bytes.extend(t.slot.to_le_bytes()));
        bytes.extend_from_slice(&self.levels);
        self.offsets
            .iter()
            .for_each(|x| bytes.extend(x.to_le_bytes()));
        self.adjacency
            .iter()
            .for_each(|x| bytes.extend(x.to_le_bytes()));
        self.vectors
            .iter()
            .for_each(|x| bytes.extend(x.to_le_bytes()));
        let hash = blake3::hash(&bytes);
        bytes.extend_from_slice(hash.as_bytes());
        let tmp = path.with_extension(format!("graph.{}.tmp", std::process::id()));
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Reads a graph written by [`FrozenGraph::save`] whose key `accept`s, with
    /// the point map it was saved with and the rows it covers. `None` when the
    /// file is missing, was built for something else, or is damaged.
    pub(crate) fn load(
        path: &Path,
        accept: impl Fn(&GraphKey) -> bool,
    ) -> Option<(Self, PointMap, u64)> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .ok()?
            .read_to_end(&mut bytes)
            .ok()?;
        let body_len = bytes.len().checked_sub(32)?;
        let (body, hash) = bytes.split_at(body_len);
        if blake3::hash(body).as_bytes() != hash || !body.starts_with(MAGIC) {
            return None;
        }
        let body = &body[MAGIC.len()..];
        let newline = body.iter().position(|&b| b == b'\n')?;
        let header: Header = serde_json::from_slice(&body[..newline]).ok()?;
        let key = header.key;
        if !accept(&key) {
            return None;
        }
        let mut rest = &body[newline + 1..];
        let mut take = |len: usize| -> Option<&[u8]> {
            let (head, tail) = rest.split_at_checked(len)?;
            rest = tail;
            Some(head)
        };
        let n = header.points;
        let u64s = |b: &[u8]| -> Vec<u64> {
            b.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let rows = u64s(take(n.checked_mul(8)?)?);
        let slots: Vec<u16> = take(n * 2)?
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let levels = take(n)?.to_vec();
        let offsets = u64s(take((n + 1) * 8)?);
        let adjacency: Vec<u32> = take(header.edges.checked_mul(4)?)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let vectors = take(n.checked_mul(key.dim * 2)?)?
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]))
            .collect();
        if !rest.is_empty() {
            return None;
        }
        let g = FrozenGraph {
            dim: key.dim,
            entry: header.entry,
            max_level: header.max_level,
            levels,
            offsets,
            adjacency,
            vectors,
        };
        if !g.is_well_formed() {
            return None;
        }
        let mut points = PointMap::default();
        for (row, slot) in rows.into_iter().zip(slots) {
            points.push(PointTarget { row, slot });
        }
        Some((g, points, key.rows_covered))
    }

    /// Every offset, count and neighbour id in range, so that a search cannot
    /// index out of bounds even on a file that hashes right but is not ours.
    fn is_well_formed(&self) -> bool {
        let n = self.len();
        if n == 0 {
            return self.adjacency.is_empty();
        }
        if self.entry as usize >= n || self.levels[self.entry as usize] != self.max_level {
            return false;
        }
        (0..n).all(|p| {
            let (start, end) = (self.offsets[p] as usize, self.offsets[p + 1] as usize);
            if start > end || end > self.adjacency.len() {
                return false;
            }
            let mut at = start;
            for _ in 0..=self.levels[p] {
                let Some(&count) = self.adjacency.get(at) else {
                    return false;
                };
                let ids = at + 1..at + 1 + count as usize;
                if ids.end > end || self.adjacency[ids.clone()].iter().any(|&i| i as usize >= n) {
                    return false;
                }
                at = ids.end;
            }
            at == end
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::ann_graph::AnnGraph;
    use crate::search::max_sim::dot;

    fn key(rows_covered: u64) -> GraphKey {
        GraphKey {
            vectors_file: "image_vectors.bin".into(),
            rows_covered,
            dim: 8,
            points_per_row: 1,
        }
    }

    #[test]
    fn a_saved_graph_loads_back_equal_and_only_for_its_key() {
        let items: Vec<(u64, Vec<f32>)> = (0..300u64)
            .map(|i| {
                let mut v: Vec<f32> = (0..8)
                    .map(|d| ((i * 31 + d * 7) % 17) as f32 - 8.0)
                    .collect();
                let n = dot(&v, &v).sqrt();
                v.iter_mut().for_each(|x| *x /= n);
                (i, v)
            })
            .collect();
        let graph = AnnGraph::build(&items, 8);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.graph");
        graph.save(&path, &key(300)).unwrap();

        let (loaded, points, covered) = FrozenGraph::load(&path, |k| *k == key(300)).unwrap();
        assert_eq!(covered, 300);
        assert!(points.iter().eq(graph.points().iter()));
        let loaded = AnnGraph::from_saved(loaded, points);
        for (_, q) in items.iter().step_by(13) {
            assert_eq!(loaded.search(q, 5, 32), graph.search(q, 5, 32));
        }
        assert!(FrozenGraph::load(&path, |k| *k == key(299)).is_none());
        assert!(FrozenGraph::load(&dir.path().join("missing"), |_| true).is_none());
    }
}
