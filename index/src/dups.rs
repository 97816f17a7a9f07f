//! Near-duplicate images: groups of images whose symmetric Chamfer similarity
//! ([`max_sim::chamfer`]) is at least a threshold, every two of them.
//!
//! **Candidates.** Each image's neighbours come from the HNSW graph (its graph
//! points as probes, [`DupParams::neighbours`] images deep), or, for a small
//! collection or filter, from every pair (a blocked exact scan: blocks of images
//! decoded once, each pair scored once). Candidate pairs are deduplicated and each is
//! scored once, exactly, from the stored vectors.
//!
//! **Groups.** The pairs at or above the threshold are the edges. Their connected
//! components are split by **complete linkage**: inside a component, edges are taken
//! from the most similar down, and two groups merge only when every pair across them
//! is at or above the threshold (pairs the candidates did not score are scored then).
//! So every two members of a group are near-duplicates of each other: two photos that
//! are each similar to a third but not to each other never end up in one group by
//! transitivity; the third joins the one it is most similar to.
//!
//! Not for: ordering a group's members (by size, date, path: the caller's policy), or
//! byte-identical copies (one image with several paths: the index already merged them).

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use crate::graph::ann_graph::graph_vectors;
use crate::search::max_sim;
use crate::storage::metadata_store::{ImageEntry, ImageId};
use crate::table::Table;

/// How [`crate::Index::near_duplicates`] looks for near-duplicates.
#[derive(Debug, Clone, PartialEq)]
pub struct DupParams {
    /// Two images are near-duplicates when their symmetric Chamfer similarity is at
    /// least this.
    pub threshold: f32,
    /// Images each image asks the graph for (its nearest by graph point). A group
    /// larger than this is still found: each member brings its own neighbours.
    pub neighbours: usize,
    /// HNSW search width; `None`: [`DupParams::DEFAULT_EF`].
    pub ef: Option<usize>,
    /// Only images with a path that starts with this string.
    pub path_prefix: Option<String>,
    /// Score every pair (n²/2 Chamfer similarities), without the graph.
    pub exact: bool,
    /// Up to this many images the scan is exact anyway: every pair, about 10 µs of CPU
    /// each (`ann_bench --items 1000 --dups --exact`: 499 500 pairs in 4.9 s of CPU), so
    /// 256 images cost about 0.3 s, less than building a graph for them.
    pub exact_below: usize,
}

impl DupParams {
    /// The graph search width of a near-duplicate scan: a near-duplicate is among an
    /// image's very nearest points, which a narrow beam finds (`ann_bench --dups`: every
    /// planted group of 100 000 images found with 64; wider beams were not measured).
    pub const DEFAULT_EF: usize = 64;
}

impl Default for DupParams {
    fn default() -> Self {
        DupParams {
            threshold: 0.95,
            neighbours: 10,
            ef: None,
            path_prefix: None,
            exact: false,
            exact_below: 256,
        }
    }
}

/// Near-duplicates found by [`crate::Index::near_duplicates`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DupReport {
    /// The groups, each with at least two images, in the order of their smallest id.
    pub groups: Vec<DupGroup>,
    /// For every image scanned, its best similarity to another image among the pairs
    /// scored (the nearest neighbour's, as far as the candidates found it); an image
    /// with no candidate is left out. The distribution a user calibrates the threshold
    /// on.
    pub nearest: Vec<f32>,
    /// Images scanned (those the prefix allows).
    pub images: usize,
    /// The images scanned that have more than one path (byte-identical copies), by id.
    pub with_copies: Vec<ImageId>,
    /// Pairs whose similarity was computed.
    pub pairs_scored: usize,
    /// Whether every pair was scored (no graph).
    pub exact: bool,
}

/// Images every two of which are near-duplicates.
#[derive(Debug, Clone, PartialEq)]
pub struct DupGroup {
    /// The images, by id.
    pub members: Vec<ImageId>,
    /// `similarity[i * n + j]`: the symmetric Chamfer similarity of members `i` and `j`
    /// (`n` members; 1 on the diagonal).
    pub similarity: Vec<f32>,
}

impl DupGroup {
    /// The similarity of members `i` and `j`.
    pub fn similarity(&self, i: usize, j: usize) -> f32 {
        self.similarity[i * self.members.len() + j]
    }
}

/// A scored pair: two images (the smaller id first) and their similarity.
type Edge = (u64, u64, f32);

/// A connected component: its images (sorted) and its edges.
type Component = (Vec<u64>, Vec<Edge>);

/// Images per block of the exact scan: a block's decoded vectors (64 × Q × D f32,
/// 2 MiB at 32 × 256) stay in cache while the pairs against it are scored.
const BLOCK: usize = 64;

/// Finds the near-duplicate groups among `ids` (live images of `table`). `graph_ef`
/// is `Some` when the scan walks the graph (which the caller has made ready).
pub(crate) fn near_duplicates(
    table: &Table<ImageEntry>,
    ids: &[u64],
    params: &DupParams,
    graph_ef: Option<usize>,
    points_per_image: usize,
) -> DupReport {
    let dim = table.rows.vectors.dim();
    let vectors = |id: u64| table.rows.vectors.row_f32(table.entries[&id].row as usize);
    let scored: Vec<(u64, u64, f32)> = match graph_ef {
        None => exact_pairs(ids, dim, &vectors),
        Some(ef) => {
            let allowed: HashSet<u64> = ids.iter().copied().collect();
            let pairs = graph_pairs(table, ids, &allowed, params, ef, points_per_image);
            score_pairs(&pairs, dim, &vectors)
        }
    };
    let mut nearest: HashMap<u64, f32> = HashMap::new();
    for &(a, b, s) in &scored {
        for id in [a, b] {
            let e = nearest.entry(id).or_insert(f32::NEG_INFINITY);
            *e = e.max(s);
        }
    }
    let pairs_scored = scored.len();
    let known: HashMap<(u64, u64), f32> = scored.iter().map(|&(a, b, s)| ((a, b), s)).collect();
    let edges: Vec<(u64, u64, f32)> = scored
        .into_iter()
        .filter(|e| e.2 >= params.threshold)
        .collect();
    let mut groups: Vec<DupGroup> = components(&edges)
        .into_par_iter()
        .flat_map_iter(|(members, edges)| {
            complete_linkage(&members, edges, &known, params.threshold, &|a, b| {
                max_sim::chamfer(&vectors(a), &vectors(b), dim)
            })
        })
        .collect();
    groups.sort_by_key(|g| g.members[0]);
    let mut nearest: Vec<f32> = nearest.into_values().collect();
    nearest.sort_by(f32::total_cmp);
    DupReport {
        groups,
        nearest,
        images: ids.len(),
        with_copies: ids
            .iter()
            .copied()
            .filter(|id| table.entries[id].paths.len() > 1)
            .collect(),
        pairs_scored,
        exact: graph_ef.is_none(),
    }
}

/// Every pair of `ids`, scored: blocks of [`BLOCK`] images decoded once, each pair of
/// blocks (a block with itself included) one task.
fn exact_pairs(
    ids: &[u64],
    dim: usize,
    vectors: &(impl Fn(u64) -> Vec<f32> + Sync),
) -> Vec<(u64, u64, f32)> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    let blocks: Vec<Vec<(u64, Vec<f32>)>> = sorted
        .par_chunks(BLOCK)
        .map(|chunk| chunk.iter().map(|&id| (id, vectors(id))).collect())
        .collect();
    let tasks: Vec<(usize, usize)> = (0..blocks.len())
        .flat_map(|i| (i..blocks.len()).map(move |j| (i, j)))
        .collect();
    tasks
        .into_par_iter()
        .flat_map_iter(|(i, j)| {
            let (a, b) = (&blocks[i], &blocks[j]);
            let mut out = Vec::new();
            for (x, (ida, va)) in a.iter().enumerate() {
                // Within a block, each pair once.
                let from = if i == j { x + 1 } else { 0 };
                for (idb, vb) in &b[from..] {
                    out.push((*ida, *idb, max_sim::chamfer(va, vb, dim)));
                }
            }
            out
        })
        .collect()
}

/// The candidate pairs `(a, b)`, `a < b`, each once: each image's nearest images by
/// graph point (and every image the graph does not hold yet, as a search does).
fn graph_pairs(
    table: &Table<ImageEntry>,
    ids: &[u64],
    allowed: &HashSet<u64>,
    params: &DupParams,
    ef: usize,
    points_per_image: usize,
) -> Vec<(u64, u64)> {
    let graph = table
        .rows
        .graph
        .as_deref()
        .expect("the caller made the graph ready");
    let dim = table.rows.vectors.dim();
    let filter = params.path_prefix.is_some().then_some(allowed);
    let pending: Vec<u64> = table.rows.owners[table.rows.graph_rows.min(table.rows.owners.len())..]
        .iter()
        .flatten()
        .filter(|id| allowed.contains(id))
        .copied()
        .collect();
    let mut pairs: Vec<(u64, u64)> = ids
        .par_iter()
        .flat_map_iter(|&id| {
            let v = table.rows.vectors.row_f32(table.entries[&id].row as usize);
            let probes = graph_vectors(&v, dim, points_per_image);
            let probes: Vec<&[f32]> = probes.chunks_exact(dim).collect();
            // One more than wanted: the image finds itself.
            let mut found =
                table.graph_candidates(graph, &probes, params.neighbours + 1, Some(ef), filter);
            found.truncate(params.neighbours + 1);
            found.extend(&pending);
            found
                .into_iter()
                .filter(move |&other| other != id)
                .map(move |other| (id.min(other), id.max(other)))
        })
        .collect();
    pairs.par_sort_unstable();
    pairs.dedup();
    pairs
}

/// Each pair's similarity; pairs come sorted by their first image, which is decoded
/// once for all its pairs.
fn score_pairs(
    pairs: &[(u64, u64)],
    dim: usize,
    vectors: &(impl Fn(u64) -> Vec<f32> + Sync),
) -> Vec<(u64, u64, f32)> {
    pairs
        .par_chunk_by(|x, y| x.0 == y.0)
        .flat_map_iter(|run| {
            let a = vectors(run[0].0);
            run.iter()
                .map(move |&(ia, ib)| (ia, ib, max_sim::chamfer(&a, &vectors(ib), dim)))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The connected components of the edges with more than one image: each its images
/// (sorted) and its edges.
fn components(edges: &[Edge]) -> Vec<Component> {
    let mut parent: HashMap<u64, u64> = HashMap::new();
    fn find(parent: &mut HashMap<u64, u64>, x: u64) -> u64 {
        let p = *parent.entry(x).or_insert(x);
        if p == x {
            return x;
        }
        let root = find(parent, p);
        parent.insert(x, root);
        root
    }
    for &(a, b, _) in edges {
        let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
        if ra != rb {
            parent.insert(ra.max(rb), ra.min(rb));
        }
    }
    let mut by_root: HashMap<u64, Component> = HashMap::new();
    for &e in edges {
        let root = find(&mut parent, e.0);
        by_root.entry(root).or_default().1.push(e);
    }
    let ids: Vec<u64> = parent.keys().copied().collect();
    for id in ids {
        let root = find(&mut parent, id);
        by_root.entry(root).or_default().0.push(id);
    }
    by_root
        .into_values()
        .map(|(mut members, edges)| {
            members.sort_unstable();
            (members, edges)
        })
        .collect()
}

/// Splits one component into groups by complete linkage (see the module doc):
/// `edges` from the most similar down (ties by ids), two groups merging only when
/// every pair across them reaches `threshold`; `known` holds the pairs already scored
/// (by `(smaller id, larger id)`), `score` scores the others.
fn complete_linkage(
    members: &[u64],
    mut edges: Vec<(u64, u64, f32)>,
    known: &HashMap<(u64, u64), f32>,
    threshold: f32,
    score: &(impl Fn(u64, u64) -> f32 + Sync),
) -> Vec<DupGroup> {
    edges.sort_by(|x, y| y.2.total_cmp(&x.2).then((x.0, x.1).cmp(&(y.0, y.1))));
    let mut sims: HashMap<(u64, u64), f32> = HashMap::new();
    let mut sim = |a: u64, b: u64| -> f32 {
        let key = (a.min(b), a.max(b));
        if let Some(&s) = known.get(&key).or_else(|| sims.get(&key)) {
            return s;
        }
        let s = score(key.0, key.1);
        sims.insert(key, s);
        s
    };
    // Each image's group (an index into `groups`), and the groups' members.
    let mut group_of: HashMap<u64, usize> =
        members.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let mut groups: Vec<Vec<u64>> = members.iter().map(|&id| vec![id]).collect();
    for (a, b, _) in edges {
        let (ga, gb) = (group_of[&a], group_of[&b]);
        if ga == gb {
            continue;
        }
        let all_pass = groups[ga]
            .iter()
            .all(|&x| groups[gb].iter().all(|&y| sim(x, y) >= threshold));
        if !all_pass {
            continue;
        }
        let moved = std::mem::take(&mut groups[gb]);
        for &id in &moved {
            group_of.insert(id, ga);
        }
        groups[ga].extend(moved);
    }
    groups
        .into_iter()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort_unstable();
            let n = g.len();
            let mut similarity = vec![1.0; n * n];
            for i in 0..n {
                for j in i + 1..n {
                    let s = sim(g[i], g[j]);
                    similarity[i * n + j] = s;
                    similarity[j * n + i] = s;
                }
            }
            DupGroup {
                members: g,
                similarity,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Complete linkage on a small table of similarities (by pair), threshold 0.9.
    fn groups_of(n: u64, sims: &[(u64, u64, f32)]) -> Vec<Vec<u64>> {
        let known: HashMap<(u64, u64), f32> = sims.iter().map(|&(a, b, s)| ((a, b), s)).collect();
        let edges: Vec<(u64, u64, f32)> = sims.iter().copied().filter(|e| e.2 >= 0.9).collect();
        let mut out: Vec<Vec<u64>> = components(&edges)
            .into_iter()
            .flat_map(|(members, edges)| {
                complete_linkage(&members, edges, &known, 0.9, &|a, b| {
                    known.get(&(a, b)).copied().unwrap_or(0.0)
                })
            })
            .map(|g| g.members)
            .collect();
        out.sort();
        assert!(out.iter().flatten().all(|&id| id < n));
        out
    }

    #[test]
    fn a_chain_is_not_merged_by_transitivity() {
        // 0 ~ 1 ~ 2, but 0 and 2 are not alike: 1 joins its nearer one, 0.
        let sims = [(0, 1, 0.97), (1, 2, 0.95), (0, 2, 0.5)];
        assert_eq!(groups_of(3, &sims), vec![vec![0, 1]]);
        // The same chain the other way round: 1 is nearer 2.
        let sims = [(0, 1, 0.93), (1, 2, 0.99), (0, 2, 0.5)];
        assert_eq!(groups_of(3, &sims), vec![vec![1, 2]]);
    }

    #[test]
    fn a_clique_is_one_group_and_unrelated_pairs_stay_apart() {
        let sims = [
            (0, 1, 0.95),
            (0, 2, 0.92),
            (1, 2, 0.91),
            (3, 4, 0.99),
            (2, 3, 0.3),
            (5, 6, 0.89),
        ];
        assert_eq!(groups_of(7, &sims), vec![vec![0, 1, 2], vec![3, 4]]);
    }

    #[test]
    fn a_pair_the_candidates_missed_is_scored_before_merging() {
        // 0–1 and 2–3 are pairs; 1–2 links them; 0–2, 0–3 and 1–3 were never scored
        // by the candidates: `score` says 0–3 fails, so the groups stay apart.
        let known: HashMap<(u64, u64), f32> =
            [((0, 1), 0.99), ((2, 3), 0.98), ((1, 2), 0.95)].into();
        let edges: Vec<(u64, u64, f32)> = known.iter().map(|(&(a, b), &s)| (a, b, s)).collect();
        let scored = std::sync::Mutex::new(Vec::new());
        let groups = complete_linkage(&[0, 1, 2, 3], edges, &known, 0.9, &|a, b| {
            scored.lock().unwrap().push((a, b));
            if (a, b) == (0, 3) {
                0.5
            } else {
                0.93
            }
        });
        let members: Vec<Vec<u64>> = groups.iter().map(|g| g.members.clone()).collect();
        assert_eq!(members, vec![vec![0, 1], vec![2, 3]]);
        assert!(scored.lock().unwrap().contains(&(0, 3)));
        assert_eq!(groups[0].similarity(0, 1), 0.99);
        assert_eq!(groups[0].similarity(1, 1), 1.0);
    }
}
