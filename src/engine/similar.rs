//! Image → images through an engine: the engine has no Chamfer search, so a threshold
//! algorithm over its per-query-vector searches finds the exact top k
//! ([`similar_through_engine`]); the service calls it for `qseek search --image
//! --engine` and `qseek serve --engine`.

use std::collections::HashMap;

use qseek_index::max_sim;

use super::{under_it, EngineFilter, VectorEngine};
use crate::Result;

/// Per query vector, images searched through the engine at first (then ×4 deeper). A
/// search of the Q vectors costs about the same at 16 as at 1 024 (the engine scans
/// every row either way: 1.3 s for 160 000 rows on milvus-lite, 2 loaded cores), and a
/// deeper list only tightens the bounds, so the first round goes deep.
const SIMILAR_FIRST_DEPTH: usize = 256;
/// Deepest search: Milvus's largest `topk`.
const SIMILAR_MAX_DEPTH: usize = 16_384;
/// Most images scored exactly for one image → images search through the engine (their
/// vectors are fetched: 32 KB each at Q = 32, D = 256).
const SIMILAR_MAX_CANDIDATES: usize = 4096;
/// Images whose vectors one fetch asks for.
const SIMILAR_FETCH: usize = 64;
/// Margin for the engine's and qseek's float sums of the same dot products.
const SCORE_SLACK: f32 = 1e-5;

/// Image → images through an engine.
#[derive(Debug, Clone)]
pub struct EngineSimilar {
    /// (content hash, paths, Chamfer similarity), best first, at most `want`.
    pub hits: Vec<(String, Vec<String>, f32)>,
    /// Whether the hits are proven to be the exact top `want` of the whole collection.
    pub exact: bool,
    /// Images scored exactly (their vectors fetched from the engine).
    pub scored: usize,
    /// Searches of the Q vectors (each one deeper than the last).
    pub rounds: usize,
}

/// The largest Chamfer similarity an image can have with the query when `s_i` bounds
/// its best dot product with query vector i: ½(mean s_i + max s_i). The first half
/// bounds the query → image direction; every term of the image → query direction is a
/// dot product of one of its vectors with a query vector, at most max s_i.
fn chamfer_bound(s: impl Iterator<Item = f32>) -> f32 {
    let (mut sum, mut max, mut n) = (0.0, f32::NEG_INFINITY, 0);
    for x in s {
        sum += x;
        max = max.max(x);
        n += 1;
    }
    0.5 * (sum / n as f32 + max)
}

/// The `want` images most similar to `image` (Q × `dim`, flat) by symmetric Chamfer
/// similarity, over the engine's collection (the images `filter` keeps, if given),
/// without the query's own bytes (`own_hash`), as
/// [`qseek_index::Index::similar_images`] scores them.
///
/// The engine has no Chamfer search, so this is a threshold algorithm (Fagin's) over its
/// group-by search: for each of the Q query vectors, the `depth` images whose best
/// vector matches it best, with that score. An image a full list lacks scores at most
/// the list's last score `t_i` there, so [`chamfer_bound`] bounds every image: an image
/// no list holds by the `t_i`, an image some lists hold by their scores and the other
/// lists' `t_i`. Images are scored exactly ([`qseek_index::max_sim::chamfer`] on vectors
/// fetched from the engine) best bound first, and only while their bound beats both the
/// `want`-th exact score so far and the bound of the images no list holds (those below
/// it wait: a deeper round lowers their bound). Once the `want`-th exact score beats
/// every bound left, the top `want` is exact; until then the depth grows ×4. A list
/// shorter than `depth` holds every image. Past [`SIMILAR_MAX_DEPTH`] or
/// [`SIMILAR_MAX_CANDIDATES`] scored images, the best found is returned, marked not exact.
pub fn similar_through_engine(
    engine: &dyn VectorEngine,
    image: &[f32],
    dim: usize,
    want: usize,
    own_hash: &str,
    filter: Option<&EngineFilter>,
) -> Result<EngineSimilar> {
    let q = image.len() / dim;
    let under = filter.and_then(|f| f.under.as_deref());
    let mut scored: HashMap<String, (Vec<String>, f32)> = HashMap::new();
    // The index's order: score, then (for ties) a stable key.
    let ranked = |scored: &HashMap<String, (Vec<String>, f32)>| {
        let mut r: Vec<(String, f32)> = scored
            .iter()
            .map(|(hash, (_, score))| (hash.clone(), *score))
            .collect();
        r.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        r
    };
    let kth = |scored: &HashMap<String, (Vec<String>, f32)>| {
        ranked(scored)
            .get(want.max(1) - 1)
            .map_or(f32::NEG_INFINITY, |h| h.1)
    };
    let mut depth = SIMILAR_FIRST_DEPTH.max(want + 1).min(SIMILAR_MAX_DEPTH);
    for rounds in 1.. {
        let lists = engine.images_per_vector(image, dim, depth, filter)?;
        let last: Vec<Option<f32>> = lists
            .iter()
            .map(|l| (l.len() == depth).then(|| l[depth - 1].itc))
            .collect();
        let every_image_seen = last.iter().any(Option::is_none);
        let unseen = if every_image_seen {
            f32::NEG_INFINITY
        } else {
            chamfer_bound(last.iter().flatten().copied())
        };
        // What the lists say of each image they hold and has not been scored.
        let mut seen: HashMap<&str, (Vec<Option<f32>>, &Vec<String>)> = HashMap::new();
        for (i, list) in lists.iter().enumerate() {
            for hit in list {
                let (known, _) = seen
                    .entry(hit.content_hash.as_str())
                    .or_insert_with(|| (vec![None; lists.len()], &hit.paths));
                known[i] = Some(hit.itc);
            }
        }
        // (An image the filter let through by mistake still bounds the rest: the
        // lists' last scores are over a superset.)
        let mut pending: Vec<(&str, &Vec<String>, f32)> = seen
            .into_iter()
            .filter(|(hash, (_, paths))| {
                *hash != own_hash && !scored.contains_key(*hash) && under_it(paths, under)
            })
            .map(|(hash, (known, paths))| {
                let s = known.iter().zip(&last).map(|(s, t)| {
                    s.or(*t)
                        .expect("a list shorter than the depth holds every image")
                });
                (hash, paths, chamfer_bound(s))
            })
            .collect();
        pending.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(b.0)));
        let final_round = every_image_seen || depth >= SIMILAR_MAX_DEPTH;
        let mut pending = pending.into_iter().peekable();
        while scored.len() < SIMILAR_MAX_CANDIDATES {
            // Whatever may tie the `want`-th is scored (the slack); what does not stand
            // out from the unseen images waits for a deeper round, unless none comes.
            let kth = kth(&scored);
            let worth = |c: &(&str, &Vec<String>, f32)| {
                c.2 + SCORE_SLACK > kth && (final_round || c.2 > unseen + SCORE_SLACK)
            };
            let mut batch = Vec::new();
            while batch.len() < SIMILAR_FETCH {
                match pending.next_if(worth) {
                    Some(c) => batch.push(c),
                    None => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            let hashes: Vec<String> = batch.iter().map(|c| c.0.to_string()).collect();
            let vectors = engine.image_vectors(&hashes, q, dim)?;
            for (hash, paths, _) in batch {
                let score = max_sim::chamfer(image, &vectors[hash], dim);
                scored.insert(hash.to_string(), (paths.clone(), score));
            }
        }
        let rest = unseen.max(pending.peek().map_or(f32::NEG_INFINITY, |c| c.2));
        let exact = rest == f32::NEG_INFINITY || kth(&scored) > rest + SCORE_SLACK;
        if exact || final_round || scored.len() >= SIMILAR_MAX_CANDIDATES {
            let hits = ranked(&scored)
                .into_iter()
                .take(want)
                .map(|(hash, score)| {
                    let paths = scored[&hash].0.clone();
                    (hash, paths, score)
                })
                .collect();
            return Ok(EngineSimilar {
                hits,
                exact,
                scored: scored.len(),
                rounds,
            });
        }
        depth = (depth * 4).min(SIMILAR_MAX_DEPTH);
    }
    unreachable!("the last round returns")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineImageHit, EngineTextHit, ExportReport};

    /// An engine over vectors in memory, searched exhaustively as Milvus's FLAT index
    /// with group-by does.
    #[derive(Debug)]
    struct InMemory {
        dim: usize,
        images: Vec<(String, Vec<f32>)>,
    }

    impl VectorEngine for InMemory {
        fn export(
            &self,
            _: &qseek_index::Index,
            _: crate::engine::ExportMode,
        ) -> Result<ExportReport> {
            unimplemented!()
        }

        fn holds_images(&self) -> Result<bool> {
            Ok(true)
        }

        fn search_images(
            &self,
            _: &[f32],
            _: usize,
            _: Option<&EngineFilter>,
        ) -> Result<Vec<EngineImageHit>> {
            unimplemented!()
        }

        fn images_per_vector(
            &self,
            image: &[f32],
            dim: usize,
            k: usize,
            _: Option<&EngineFilter>,
        ) -> Result<Vec<Vec<EngineImageHit>>> {
            Ok(image
                .chunks_exact(dim)
                .map(|q| {
                    let mut hits: Vec<EngineImageHit> = self
                        .images
                        .iter()
                        .map(|(hash, rows)| EngineImageHit {
                            content_hash: hash.clone(),
                            paths: vec![hash.clone()],
                            itc: max_sim::max_sim(q, rows).0,
                        })
                        .collect();
                    hits.sort_by(|a, b| {
                        b.itc
                            .total_cmp(&a.itc)
                            .then(a.content_hash.cmp(&b.content_hash))
                    });
                    hits.truncate(k);
                    hits
                })
                .collect())
        }

        fn image_vectors(
            &self,
            hashes: &[String],
            _: usize,
            _: usize,
        ) -> Result<HashMap<String, Vec<f32>>> {
            Ok(self
                .images
                .iter()
                .filter(|(hash, _)| hashes.contains(hash))
                .cloned()
                .collect())
        }

        fn search_texts(&self, _: &[f32], _: usize, _: usize) -> Result<Vec<EngineTextHit>> {
            unimplemented!()
        }
    }

    /// A unit vector of `dim` values: `a` on axis `i`, the rest on axis `j`.
    fn unit(dim: usize, i: usize, a: f32, j: usize) -> Vec<f32> {
        let mut v = vec![0.0; dim];
        v[i] = a;
        v[j] = (1.0 - a * a).sqrt();
        v
    }

    /// The image most similar on average is nobody's favourite on any single query
    /// vector: the first round's per-vector lists miss it, the bound sees that they
    /// may, and the next round finds it, fetching few images.
    #[test]
    fn the_bound_deepens_past_lists_that_miss_the_best_average() {
        let (q, dim) = (4, 8);
        let query: Vec<f32> = (0..q).flat_map(|i| unit(dim, i, 1.0, 7)).collect();
        let mut images = Vec::new();
        // More specialists per query vector than the first depth: 0.9 with it, 0 with
        // the others (Chamfer ½(0.9 / 4 + 0.9) = 0.5625).
        let specialists = SIMILAR_FIRST_DEPTH + 44;
        for i in 0..q {
            for n in 0..specialists {
                let rows = (0..q).flat_map(|_| unit(dim, i, 0.9, 7)).collect();
                images.push((format!("specialist-{i}-{n:03}"), rows));
            }
        }
        // 0.8 with every query vector (Chamfer 0.8): second on each, best overall.
        let all_round: Vec<f32> = (0..q).flat_map(|i| unit(dim, i, 0.8, 6)).collect();
        images.push(("all-round".to_string(), all_round));
        let engine = InMemory { dim, images };
        let shallow = engine
            .images_per_vector(&query, dim, SIMILAR_FIRST_DEPTH, None)
            .unwrap();
        assert!(shallow
            .iter()
            .flatten()
            .all(|h| h.content_hash != "all-round"));

        let found = similar_through_engine(&engine, &query, engine.dim, 1, "none", None).unwrap();
        assert!(found.exact);
        assert_eq!(found.rounds, 2);
        assert!(found.scored <= 2 * SIMILAR_FETCH, "{}", found.scored);
        assert_eq!(found.hits[0].0, "all-round");
        assert!((found.hits[0].2 - 0.8).abs() < 1e-6);
        let exact = engine
            .images
            .iter()
            .map(|(_, rows)| max_sim::chamfer(&query, rows, dim))
            .fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(found.hits[0].2, exact);
        // Its own bytes are never a result.
        let found =
            similar_through_engine(&engine, &query, engine.dim, 1, "all-round", None).unwrap();
        assert!(found.hits[0].0.starts_with("specialist"));
    }

    /// Unit rows from a seeded xorshift: `q` rows of `dim` values.
    fn random_image(seed: u64, q: usize, dim: usize) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        (0..q)
            .flat_map(|_| {
                let row: Vec<f32> = (0..dim).map(|_| next()).collect();
                let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
                row.into_iter().map(move |x| x / norm)
            })
            .collect()
    }

    /// Against every image scored exactly: the same top `want`, proven exact, for
    /// collections smaller and larger than the first depth, with and without a filter
    /// and the query's own bytes among them.
    #[test]
    fn the_top_k_is_the_exhaustive_top_k() {
        // (what, images, q, dim, want, under, own image)
        type Case<'a> = (
            &'a str,
            usize,
            usize,
            usize,
            usize,
            Option<&'a str>,
            Option<usize>,
        );
        let cases: [Case; 6] = [
            ("fewer images than the first depth", 40, 4, 8, 5, None, None),
            ("more than the first depth", 700, 4, 8, 10, None, None),
            ("want past the first depth", 600, 2, 6, 300, None, None),
            ("its own bytes left out", 300, 4, 8, 3, None, Some(17)),
            ("under a folder", 500, 3, 8, 7, Some("b/"), None),
            ("one query vector", 400, 1, 16, 4, None, None),
        ];
        for (what, n, q, dim, want, under, own) in cases {
            let images: Vec<(String, Vec<f32>)> = (0..n)
                .map(|i| {
                    let folder = if i % 3 == 0 { "b/" } else { "a/" };
                    (
                        format!("{folder}{i:04}"),
                        random_image(i as u64 + 1, q, dim),
                    )
                })
                .collect();
            let query = match own {
                Some(i) => images[i].1.clone(),
                None => random_image(999_999, q, dim),
            };
            let own_hash = own.map_or("none".to_string(), |i| images[i].0.clone());
            let mut exhaustive: Vec<(String, f32)> = images
                .iter()
                .filter(|(hash, _)| *hash != own_hash && under.is_none_or(|u| hash.starts_with(u)))
                .map(|(hash, rows)| (hash.clone(), max_sim::chamfer(&query, rows, dim)))
                .collect();
            exhaustive.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            exhaustive.truncate(want);
            let engine = InMemory { dim, images };
            let filter = under.map(|u| EngineFilter {
                under: Some(u.to_string()),
                ..EngineFilter::default()
            });
            let found =
                similar_through_engine(&engine, &query, dim, want, &own_hash, filter.as_ref())
                    .unwrap();
            assert!(found.exact, "{what}");
            let got: Vec<(String, f32)> = found.hits.into_iter().map(|(h, _, s)| (h, s)).collect();
            assert_eq!(got, exhaustive, "{what}");
        }
    }
}
