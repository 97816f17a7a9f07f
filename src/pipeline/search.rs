//! `qseek search`: photos for a sentence, photos for a photo, sentences for a photo.
//!
//! Text → images follows the BLIP-2 retrieval protocol (LAVIS `compute_sim_matrix`):
//! the ITC score (max over the image's query vectors of the cosine with the text)
//! ranks the whole collection through the index, then the top `rerank` candidates are
//! rescored as ITM match logit + ITC and ranked above everything else. Image → texts
//! is the same with the roles swapped. Image → images uses the index's symmetric
//! Chamfer similarity over query vectors (BLIP-2 defines no image–image score).

use std::path::Path;

use candle_core::Tensor;
use qseek_index::{Filter, SearchParams};
use serde::Serialize;

use super::indexer::content_hash;
use super::{match_probability, rows3, Collection};
use crate::preprocess::image::{decode_rgb, LoadOptions};
use crate::preprocess::text::pre_caption;
use crate::{Error, Result};

/// How to search.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    /// Results wanted.
    pub k: usize,
    /// Candidates rescored with the ITM head (0: ITC only).
    pub rerank: usize,
    /// Drop results whose ITM match probability is below this (needs `rerank > 0`).
    pub min_prob: Option<f32>,
    /// Only images whose path starts with this (absolute) prefix.
    pub under: Option<String>,
    /// Walk the HNSW graph instead of scoring every image exactly. The graph is saved
    /// with the index and built (~0.3 ms per image) only when missing or stale; a
    /// one-shot search is about as fast exact.
    pub ann: bool,
    /// Decoding limits (query images, and indexed images when reranking needs them).
    pub load: LoadOptions,
    /// Pairs per ITM call.
    pub batch: usize,
}

/// One result. Every field is always present in JSON (null when it does not apply),
/// so the document has one stable shape.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Hit {
    /// 1-based.
    pub rank: usize,
    /// The image (first of its paths), for image results.
    pub path: Option<String>,
    /// Other paths with the same bytes.
    pub copies: Vec<String>,
    /// The text, for text results.
    pub text: Option<String>,
    /// The text's external id, if it has one.
    pub id: Option<String>,
    /// What the ranking used: ITM logit + ITC when reranked, ITC otherwise; the
    /// similarity for image → image.
    pub score: f32,
    /// ITC score: max over query vectors of the cosine.
    pub itc: Option<f32>,
    /// ITM "match" logit, when reranked.
    pub itm_logit: Option<f32>,
    /// ITM match probability (softmax of the two logits), when reranked.
    pub itm_prob: Option<f32>,
}

/// Results and what the user should know about them.
#[derive(Debug, Default)]
pub struct SearchResult {
    /// Best first.
    pub hits: Vec<Hit>,
    /// Warnings (e.g. a candidate whose file is gone could not be reranked).
    pub notes: Vec<String>,
}

impl SearchOptions {
    fn params(&self, want: usize, with_path_filter: bool) -> SearchParams {
        let defaults = SearchParams::default();
        SearchParams {
            candidates: defaults.candidates.max(want),
            filter: self
                .under
                .clone()
                .filter(|_| with_path_filter)
                .map(|p| Filter {
                    path_prefix: Some(p),
                    query: None,
                }),
            exact: !self.ann,
            // With `ann`, the graph even for small collections (tests exercise it).
            exact_below: 0,
            ..defaults
        }
    }

    fn check(&self) -> Result<()> {
        if self.min_prob.is_some() && self.rerank == 0 {
            return Err(Error::Usage(
                "--min-prob needs ITM reranking: use it with --rerank N (N > 0)".into(),
            ));
        }
        if self.k == 0 {
            return Err(Error::Usage("-k must be at least 1".into()));
        }
        Ok(())
    }
}

/// The path to show for an image (the first under the filter, if any) and its copies.
fn split_paths(mut paths: Vec<String>, under: Option<&str>) -> (Option<String>, Vec<String>) {
    if paths.is_empty() {
        return (None, paths);
    }
    let first = under
        .and_then(|u| paths.iter().position(|p| p.starts_with(u)))
        .unwrap_or(0);
    let path = paths.remove(first);
    (Some(path), paths)
}

/// A candidate on its way to becoming a [`Hit`].
struct Candidate {
    path: Option<String>,
    copies: Vec<String>,
    text: Option<String>,
    id: Option<String>,
    itc: f32,
    itm: Option<(f32, f32)>,
}

/// Images for a sentence.
pub fn text_to_images(c: &Collection, query: &str, opts: &SearchOptions) -> Result<SearchResult> {
    opts.check()?;
    if pre_caption(query).is_empty() {
        return Err(Error::Usage(
            "the query is empty: give a sentence, or --image FILE".into(),
        ));
    }
    let ids = c.embedder.tokenize(&[query.to_string()])?;
    let text = c
        .embedder
        .embed_token_ids(&ids)?
        .to_vec2::<f32>()?
        .remove(0);
    let want = opts.k.max(opts.rerank);
    let found = c
        .index
        .search_images(&text, want, &opts.params(want, true))?;
    let mut result = SearchResult::default();
    let mut candidates: Vec<(qseek_index::ImageId, Candidate)> = found
        .into_iter()
        .map(|h| {
            let (path, copies) = split_paths(h.paths, opts.under.as_deref());
            (
                h.image_id,
                Candidate {
                    path,
                    copies,
                    text: None,
                    id: None,
                    itc: h.score,
                    itm: None,
                },
            )
        })
        .collect();
    let n = opts.rerank.min(candidates.len());
    // Vision features of the candidates to rerank: stored, or recomputed from a file.
    let mut vision = Vec::new();
    for (image_id, cand) in &candidates[..n] {
        let v = match c.index.vision_features(*image_id)? {
            Some((values, shape)) => Some(Tensor::from_vec(
                values,
                shape,
                c.embedder.model().device(),
            )?),
            None => recompute_vision(c, cand, opts, &mut result.notes)?,
        };
        vision.push(v);
    }
    let ids_one = &ids[0];
    let todo: Vec<(usize, &Tensor)> = vision
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.as_ref().map(|v| (i, v)))
        .collect();
    for chunk in todo.chunks(opts.batch.max(1)) {
        let batch = Tensor::stack(&chunk.iter().map(|(_, v)| *v).collect::<Vec<_>>(), 0)?;
        let logits = c
            .embedder
            .itm_logits(&batch, &vec![ids_one.clone(); chunk.len()])?
            .to_vec2::<f32>()?;
        for ((i, _), l) in chunk.iter().zip(logits) {
            candidates[*i].1.itm = Some((l[0], l[1]));
        }
    }
    result.hits = rank(candidates.into_iter().map(|(_, c)| c).collect(), opts);
    Ok(result)
}

/// The vision-encoder output of a candidate, from the first of its files that still
/// decodes; `None` (with a note) when none does.
fn recompute_vision(
    c: &Collection,
    cand: &Candidate,
    opts: &SearchOptions,
    notes: &mut Vec<String>,
) -> Result<Option<Tensor>> {
    let mut last_error = None;
    for path in cand.path.iter().chain(&cand.copies) {
        match c.embedder.pixel_values(Path::new(path), &opts.load) {
            Ok(pixels) => {
                let batch = c.embedder.pixel_batch(&[pixels])?;
                let vision = c.embedder.model().vision_features(&batch)?;
                return Ok(Some(vision.squeeze(0)?));
            }
            Err(e) => last_error = Some(e),
        }
    }
    let why = last_error.map_or_else(|| "no path".to_string(), |e| e.to_string());
    notes.push(format!(
        "{}: not reranked: the index holds no vision features for it and its file cannot be read ({why}); run `qseek index` to bring the index up to date",
        cand.path.as_deref().unwrap_or("?")
    ));
    Ok(None)
}

/// Reranked candidates first (ITM logit + ITC), then the rest by ITC, as LAVIS's
/// protocol ranks them; then `--min-prob` and `-k`.
fn rank(candidates: Vec<Candidate>, opts: &SearchOptions) -> Vec<Hit> {
    let score = |c: &Candidate| c.itm.map_or(c.itc, |(_, yes)| yes + c.itc);
    let mut all: Vec<Candidate> = candidates;
    // Stable: ties keep the index's order (ITC, then id).
    all.sort_by(|a, b| {
        b.itm
            .is_some()
            .cmp(&a.itm.is_some())
            .then(score(b).total_cmp(&score(a)))
    });
    all.into_iter()
        .filter(|c| match opts.min_prob {
            Some(p) => c
                .itm
                .is_some_and(|(no, yes)| match_probability(no, yes) >= p),
            None => true,
        })
        .take(opts.k)
        .enumerate()
        .map(|(i, c)| Hit {
            rank: i + 1,
            score: score(&c),
            itc: Some(c.itc),
            itm_logit: c.itm.map(|(_, yes)| yes),
            itm_prob: c.itm.map(|(no, yes)| match_probability(no, yes)),
            path: c.path,
            copies: c.copies,
            text: c.text,
            id: c.id,
        })
        .collect()
}

/// A query image: its bytes' hash, vision features (1, tokens, hidden) and query
/// vectors (Q × D, flat).
struct QueryImage {
    hash: String,
    vision: Tensor,
    vectors: Vec<f32>,
}

fn embed_query_image(c: &Collection, path: &Path, load: &LoadOptions) -> Result<QueryImage> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let img = decode_rgb(&bytes, path, load)?;
    let pixels = c.embedder.image_preprocessor().pixel_values(&img);
    let (vision, embeds) = c
        .embedder
        .embed_pixels(&c.embedder.pixel_batch(&[pixels])?)?;
    Ok(QueryImage {
        hash: content_hash(&bytes),
        vision,
        vectors: rows3(&embeds)?.remove(0),
    })
}

/// Images similar to an image file (itself excluded when it is in the index).
pub fn image_to_images(c: &Collection, image: &Path, opts: &SearchOptions) -> Result<SearchResult> {
    opts.check()?;
    let query = embed_query_image(c, image, &opts.load)?;
    let params = opts.params(opts.k, true);
    let hits = match c.index.image_by_hash(&query.hash) {
        Some(info) => c.index.similar_to_image(info.image_id, opts.k, &params)?,
        None => c.index.similar_images(&query.vectors, opts.k, &params)?,
    };
    let mut result = SearchResult::default();
    if opts.rerank > 0 || opts.min_prob.is_some() {
        result.notes.push(
            "image → image search has no ITM score: --rerank and --min-prob are ignored".into(),
        );
    }
    result.hits = hits
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            let (path, copies) = split_paths(h.paths, opts.under.as_deref());
            Hit {
                rank: i + 1,
                path,
                copies,
                text: None,
                id: None,
                score: h.score,
                itc: None,
                itm_logit: None,
                itm_prob: None,
            }
        })
        .collect();
    Ok(result)
}

/// Texts of the index for an image file.
pub fn image_to_texts(c: &Collection, image: &Path, opts: &SearchOptions) -> Result<SearchResult> {
    opts.check()?;
    if c.index.stats().texts == 0 {
        return Err(Error::Usage(
            "the index holds no texts: add some with `qseek texts add FILE`".into(),
        ));
    }
    let query = embed_query_image(c, image, &opts.load)?;
    let want = opts.k.max(opts.rerank);
    let found = c
        .index
        .search_texts(&query.vectors, want, &opts.params(want, false))?;
    let mut candidates: Vec<Candidate> = found
        .into_iter()
        .map(|h| Candidate {
            path: None,
            copies: Vec::new(),
            text: Some(h.text),
            id: h.external_id,
            itc: h.score,
            itm: None,
        })
        .collect();
    let n = opts.rerank.min(candidates.len());
    for start in (0..n).step_by(opts.batch.max(1)) {
        let end = (start + opts.batch.max(1)).min(n);
        let texts: Vec<String> = candidates[start..end]
            .iter()
            .map(|c| c.text.clone().unwrap_or_default())
            .collect();
        let ids = c.embedder.tokenize(&texts)?;
        // One image with every text: its cross-attention keys and values computed once.
        let logits = c
            .embedder
            .itm_logits(&query.vision, &ids)?
            .to_vec2::<f32>()?;
        for (cand, l) in candidates[start..end].iter_mut().zip(logits) {
            cand.itm = Some((l[0], l[1]));
        }
    }
    Ok(SearchResult {
        hits: rank(candidates, opts),
        notes: Vec::new(),
    })
}
