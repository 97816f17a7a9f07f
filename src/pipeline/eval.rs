//! `qseek eval`: image–text retrieval R@K with the BLIP-2 protocol (LAVIS
//! `compute_sim_matrix` and `_report_metrics`), through the index users search with.
//!
//! 1. The dataset's images are indexed (vectors and vision features) and its captions
//!    added as texts, in a cache index: a second run only redoes what changed.
//! 2. ITC similarity = max over the Q query vectors of the cosine, no temperature:
//!    exactly (every pair, one matrix product) and through the index's HNSW search.
//! 3. For each image its top `k_test` texts, and for each text its top `k_test` images
//!    (by exact ITC), are rescored as ITM match logit + ITC; every other pair gets −100.
//! 4. Text retrieval (i2t: the rank of an image's best-ranked caption) and image
//!    retrieval (t2i) R@1/5/10 and their means.
//!
//! What it feeds the model is what the reference feeds it: images decoded as
//! `Image.open(p).convert("RGB")` (the EXIF orientation is *not* applied, unlike
//! `qseek index`), vision features in f32 when the vision model computes in f32 (the
//! cache stores them in f32), and captions that are equal once tokenised are embedded
//! and scored once, so that they tie exactly, as they do in one reference batch.
//!
//! Ties (the −100 entries when k_test < 10, and duplicate captions) are ordered as
//! LAVIS's `np.argsort(score)[::-1]` orders them: the *higher* index first (the reverse
//! of an ascending stable sort, which is what numpy's sort does on the short rows where
//! ties arise; on long rows numpy leaves the order of ties unspecified). Images left
//! without a caption by `limit_texts` count as text-retrieval misses, as LAVIS's rank
//! of 1e20 does.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use candle_core::{Device, Tensor};
use qseek_index::{ImageId, SearchParams, VectorDtype};
use rayon::prelude::*;
use serde::Serialize;

use super::indexer::{index_files, IndexOptions};
use super::texts::{add_texts, TextEntry};
use super::{default_feature_dtype, progress_bar, Collection};
use crate::error::BadRequest;
use crate::model::Precision;
use crate::preprocess::image::LoadOptions;
use crate::preprocess::text::pre_caption;
use crate::rerank::{itm_scores, ItmPair, ItmScore};
use crate::{Error, Result};

/// A retrieval test set: images, their captions, and which caption belongs to which image.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Image files (absolute paths), in annotation order.
    pub images: Vec<PathBuf>,
    /// Captions, image by image.
    pub texts: Vec<String>,
    /// The image of each text.
    pub txt2img: Vec<usize>,
    /// The texts of each image.
    pub img2txt: Vec<Vec<usize>>,
}

/// Reads a LAVIS/BLIP retrieval annotation file (a JSON list of `{"image": relative
/// path, "caption": [captions...]}`; a single caption string is accepted too). Every
/// problem — malformed entries, missing image files — is reported before any model work.
/// `limit_images` keeps the first N entries, `limit_texts` the first N captions.
pub fn load_dataset(
    annotations: &Path,
    images_dir: &Path,
    limit_images: Option<usize>,
    limit_texts: Option<usize>,
) -> Result<Dataset> {
    let text = std::fs::read_to_string(annotations).map_err(|source| Error::Io {
        path: annotations.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| {
        Error::from(BadRequest::BadDataset {
            path: annotations.to_path_buf(),
            reason,
        })
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let entries = value
        .as_array()
        .ok_or_else(|| bad("expected a JSON list of {\"image\", \"caption\"} entries".into()))?;
    if entries.is_empty() {
        return Err(bad("the list is empty".into()));
    }
    let images_dir = super::walk::absolute(images_dir).map_err(|source| Error::Io {
        path: images_dir.to_path_buf(),
        source,
    })?;
    let mut data = Dataset {
        images: Vec::new(),
        texts: Vec::new(),
        txt2img: Vec::new(),
        img2txt: Vec::new(),
    };
    let mut missing = Vec::new();
    let n = limit_images.unwrap_or(usize::MAX).min(entries.len());
    for (i, entry) in entries.iter().take(n).enumerate() {
        let image = entry
            .get("image")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad(format!("entry {i}: no \"image\" string")))?;
        let captions: Vec<&str> = match entry.get("caption") {
            Some(serde_json::Value::String(s)) => vec![s.as_str()],
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .map(|c| c.as_str())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    bad(format!(
                        "entry {i} ({image}): \"caption\" holds a non-string"
                    ))
                })?,
            _ => return Err(bad(format!("entry {i} ({image}): no \"caption\" list"))),
        };
        if captions.is_empty() {
            return Err(bad(format!("entry {i} ({image}): empty \"caption\" list")));
        }
        if let Some(c) = captions.iter().find(|c| pre_caption(c).is_empty()) {
            return Err(bad(format!(
                "entry {i} ({image}): caption {c:?} is empty once normalised"
            )));
        }
        let path = images_dir.join(image);
        if !path.is_file() {
            missing.push(image.to_string());
        }
        let img = data.images.len();
        data.images.push(path);
        let mut own = Vec::new();
        for c in captions {
            if data.texts.len() < limit_texts.unwrap_or(usize::MAX) {
                own.push(data.texts.len());
                data.txt2img.push(img);
                data.texts.push(c.to_string());
            }
        }
        data.img2txt.push(own);
    }
    if !missing.is_empty() {
        return Err(BadRequest::DatasetImagesMissing {
            annotations: annotations.to_path_buf(),
            images_dir: images_dir.to_path_buf(),
            missing: missing.len(),
            examples: missing.iter().take(5).cloned().collect(),
        }
        .into());
    }
    if data.texts.is_empty() {
        return Err(bad("no captions selected".into()));
    }
    Ok(data)
}

/// R@K of both directions, in percent, as LAVIS reports them.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Metrics {
    /// Text retrieval (image → text) R@1.
    pub txt_r1: f64,
    /// R@5.
    pub txt_r5: f64,
    /// R@10.
    pub txt_r10: f64,
    /// Mean of the three.
    pub txt_r_mean: f64,
    /// Image retrieval (text → image) R@1.
    pub img_r1: f64,
    /// R@5.
    pub img_r5: f64,
    /// R@10.
    pub img_r10: f64,
    /// Mean of the three.
    pub img_r_mean: f64,
    /// Mean of the two means.
    pub r_mean: f64,
}

/// The rank of each query's ground truth: per image (its best caption; `None` when
/// `limit_texts` left it none, a miss) and per text.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Ranks {
    /// Image → text ranks.
    pub i2t: Vec<Option<usize>>,
    /// Text → image ranks.
    pub t2i: Vec<usize>,
}

/// Fraction of the exact top-k_test candidates that the index's HNSW search found.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct CandidateRecall {
    /// Texts per image.
    pub i2t: f64,
    /// Images per text.
    pub t2i: f64,
}

/// Everything `qseek eval` reports.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Images evaluated.
    pub images: usize,
    /// Texts evaluated.
    pub texts: usize,
    /// Candidates reranked per query.
    pub k_test: usize,
    /// ITC only, through the index's HNSW search.
    pub itc_index: Metrics,
    /// ITC only, every pair scored.
    pub itc_exact: Metrics,
    /// ITC + ITM rerank of the top k_test: the BLIP-2 protocol.
    pub itm_rerank: Metrics,
    /// HNSW candidate recall against exact for the same k_test.
    pub candidate_recall: CandidateRecall,
    /// Distinct (image, text) pairs run through the ITM head.
    pub itm_pairs: usize,
    /// Images this run embedded (0 when the cache had them all).
    pub images_embedded: usize,
    /// Texts this run embedded (0 when the cache had them all).
    pub texts_embedded: usize,
    /// Ground-truth ranks of each variant.
    pub ranks: BTreeMap<String, Ranks>,
    /// Wall-clock seconds per stage.
    pub seconds: BTreeMap<String, f64>,
}

/// Position of `item` in `scores` sorted descending, ties by the higher index first
/// (LAVIS's `np.argsort(score)[::-1]`).
fn position(scores: &[f32], item: usize) -> usize {
    let s = scores[item];
    scores
        .iter()
        .enumerate()
        .filter(|&(j, &x)| x > s || (x == s && j > item))
        .count()
}

/// The `k` best indices of `scores`, in the order of [`position`].
fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(b.cmp(&a)));
    idx.truncate(k);
    idx
}

/// LAVIS `_report_metrics` on score matrices `i2t` (images × texts) and `t2i` (texts × images).
pub fn report_metrics(data: &Dataset, i2t: &[Vec<f32>], t2i: &[Vec<f32>]) -> (Metrics, Ranks) {
    let ranks_i2t: Vec<Option<usize>> = i2t
        .par_iter()
        .zip(&data.img2txt)
        .map(|(row, gts)| gts.iter().map(|&t| position(row, t)).min())
        .collect();
    let ranks_t2i: Vec<usize> = t2i
        .par_iter()
        .zip(&data.txt2img)
        .map(|(row, &img)| position(row, img))
        .collect();
    // An image without a caption (`None`) is a miss at every K, and counts.
    let percent = |hits: usize, n: usize| 100.0 * hits as f64 / n.max(1) as f64;
    let i2t_recall = |k: usize| {
        let hits = ranks_i2t.iter().filter(|r| r.is_some_and(|r| r < k));
        percent(hits.count(), ranks_i2t.len())
    };
    let t2i_recall = |k: usize| {
        percent(
            ranks_t2i.iter().filter(|&&r| r < k).count(),
            ranks_t2i.len(),
        )
    };
    let (tr1, tr5, tr10) = (i2t_recall(1), i2t_recall(5), i2t_recall(10));
    let (ir1, ir5, ir10) = (t2i_recall(1), t2i_recall(5), t2i_recall(10));
    let (tr_mean, ir_mean) = ((tr1 + tr5 + tr10) / 3.0, (ir1 + ir5 + ir10) / 3.0);
    (
        Metrics {
            txt_r1: tr1,
            txt_r5: tr5,
            txt_r10: tr10,
            txt_r_mean: tr_mean,
            img_r1: ir1,
            img_r5: ir5,
            img_r10: ir10,
            img_r_mean: ir_mean,
            r_mean: (tr_mean + ir_mean) / 2.0,
        },
        Ranks {
            i2t: ranks_i2t,
            t2i: ranks_t2i,
        },
    )
}

fn transpose(m: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let cols = m.first().map_or(0, Vec::len);
    (0..cols)
        .map(|j| m.iter().map(|row| row[j]).collect())
        .collect()
}

/// ITC for every pair: (images, Q·D) vectors and (texts, D) vectors → images × texts.
fn exact_itc(
    image_vectors: &[Vec<f32>],
    text_vectors: &[Vec<f32>],
    q: usize,
    d: usize,
) -> Result<Vec<Vec<f32>>> {
    let t = text_vectors.len();
    let texts = Tensor::from_vec(text_vectors.concat(), (t, d), &Device::Cpu)?.t()?;
    let mut out = Vec::with_capacity(image_vectors.len());
    for chunk in image_vectors.chunks(256) {
        let n = chunk.len();
        let imgs = Tensor::from_vec(chunk.concat(), (n * q, d), &Device::Cpu)?;
        let sims = imgs.matmul(&texts)?.reshape((n, q, t))?.max(1)?;
        out.extend(sims.to_vec2::<f32>()?);
    }
    Ok(out)
}

/// The cache index inside the cache folder `root` for a vision model computing in
/// `compute`: one index per (vision dtype, vector dtype, feature dtype), so that a run
/// never reads embeddings that another precision made (a bf16 run and an f32 run on
/// one folder each keep their own, and each reuses its own). Vectors are always f32 (ITC
/// exact is exact); features follow [`default_feature_dtype`].
pub fn cache_index_dir(root: &Path, compute: Precision) -> Result<PathBuf> {
    if root.join("manifest.json").exists() {
        return Err(BadRequest::NotAnEvalCache {
            path: root.to_path_buf(),
        }
        .into());
    }
    let name = |d: &dyn std::fmt::Debug| format!("{d:?}").to_lowercase();
    Ok(root.join(format!(
        "vision-{}.vectors-{}.features-{}",
        compute.name(),
        name(&VectorDtype::F32),
        name(&default_feature_dtype(compute))
    )))
}

/// Refuses a cache index whose vectors or features are not what evaluation with this
/// collection's model needs (e.g. an index made by `qseek index --vectors int8`).
fn check_cache(c: &Collection) -> Result<()> {
    let m = c.index.manifest();
    let features = default_feature_dtype(c.embedder.model().precision());
    if m.vector_dtype != VectorDtype::F32
        || !m.store_vision_features
        || m.vision_feature_dtype != features
    {
        return Err(BadRequest::WrongEvalCache {
            path: c.index.path().to_path_buf(),
            vectors: format!("{:?}", m.vector_dtype),
            features: if m.store_vision_features {
                format!("{:?}", m.vision_feature_dtype)
            } else {
                "no".into()
            },
            wanted_features: format!("{features:?}"),
        }
        .into());
    }
    Ok(())
}

/// How to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Candidates reranked per query.
    pub k_test: usize,
    /// Indexing options (batch, decoding limits, progress).
    pub index: IndexOptions,
    /// Pairs per ITM call.
    pub batch: usize,
    /// Show progress bars.
    pub progress: bool,
}

/// Runs the whole protocol on `data` with the collection (the cache index).
pub fn evaluate(
    c: &Collection,
    data: &Dataset,
    opts: &EvalOptions,
    stop: &AtomicBool,
) -> Result<EvalReport> {
    check_cache(c)?;
    let mut seconds = BTreeMap::new();
    let (q, d) = (c.index.manifest().num_query_tokens, c.index.manifest().dim);
    let k = opts.k_test.max(1);

    // 1. Cache: image vectors and vision features, text vectors. Decoded as the
    // reference decodes: no EXIF rotation.
    let t0 = Instant::now();
    let index_opts = IndexOptions {
        load: LoadOptions {
            exif_orientation: false,
            ..opts.index.load
        },
        ..opts.index.clone()
    };
    let summary = index_files(c, &data.images, &index_opts, stop)?;
    if let Some(f) = summary.failed.first() {
        return Err(BadRequest::DatasetImageFailed {
            path: f.path.clone(),
            reason: f.reason.clone(),
            failed: summary.failed.len(),
        }
        .into());
    }
    if summary.interrupted {
        return Err(Error::Interrupted {
            during: "embedding images",
        });
    }
    let entries: Vec<TextEntry> = data
        .texts
        .iter()
        .enumerate()
        .map(|(i, t)| TextEntry {
            id: Some(i.to_string()),
            text: t.clone(),
        })
        .collect();
    let texts = add_texts(c, &entries, opts.batch, opts.progress)?;
    seconds.insert("embed".to_string(), t0.elapsed().as_secs_f64());

    let image_ids: Vec<ImageId> = data
        .images
        .iter()
        .map(|p| {
            c.index
                .image_by_path(&p.to_string_lossy())
                .map(|i| i.image_id)
                .ok_or_else(|| Error::Internal(format!("{}: not in the cache index", p.display())))
        })
        .collect::<Result<_>>()?;
    let image_vectors: Vec<Vec<f32>> = image_ids
        .iter()
        .map(|&id| {
            c.index
                .image_vectors(id)
                .expect("indexed image has vectors")
        })
        .collect();
    let text_ids: HashMap<String, u64> = c
        .index
        .texts()
        .into_iter()
        .filter_map(|t| Some((t.external_id?, t.text_id)))
        .collect();
    // Captions with the same tokens are one text to the model: each is scored through
    // its first occurrence, so that duplicates tie exactly.
    let ids = c.embedder.tokenize(&data.texts)?;
    let mut first_with: HashMap<&[u32], usize> = HashMap::new();
    let canonical: Vec<usize> = ids
        .iter()
        .enumerate()
        .map(|(t, tokens)| *first_with.entry(tokens.as_slice()).or_insert(t))
        .collect();
    let mut text_vectors: Vec<Vec<f32>> = Vec::with_capacity(data.texts.len());
    for (i, &first) in canonical.iter().enumerate() {
        let vector = if first < i {
            text_vectors[first].clone()
        } else {
            text_ids
                .get(&i.to_string())
                .and_then(|&id| c.index.text_vector(id))
                .ok_or_else(|| Error::Internal(format!("text {i} is not in the cache index")))?
        };
        text_vectors.push(vector);
    }

    // 2. ITC, exact and through the index.
    let t0 = Instant::now();
    let sim_i2t = exact_itc(&image_vectors, &text_vectors, q, d)?;
    let sim_t2i = transpose(&sim_i2t);
    // The exact top k_test of each query: the candidates ITM reranks, and what the
    // index's candidates are measured against.
    let top_i2t: Vec<Vec<usize>> = sim_i2t.iter().map(|r| top_k(r, k)).collect();
    let top_t2i: Vec<Vec<usize>> = sim_t2i.iter().map(|r| top_k(r, k)).collect();
    seconds.insert("itc_exact".to_string(), t0.elapsed().as_secs_f64());

    let t0 = Instant::now();
    // The parameters `qseek search` uses, forced onto the graph even for small sets.
    let params = SearchParams {
        candidates: SearchParams::default().candidates.max(k),
        exact: false,
        exact_below: 0,
        ..SearchParams::default()
    };
    c.index.build_graphs();
    let text_of: HashMap<u64, usize> = text_ids
        .iter()
        .filter_map(|(ext, &id)| Some((id, ext.parse::<usize>().ok()?)))
        .filter(|(_, i)| *i < data.texts.len())
        .collect();
    let mut images_of: HashMap<ImageId, Vec<usize>> = HashMap::new();
    for (i, id) in image_ids.iter().enumerate() {
        images_of.entry(*id).or_default().push(i);
    }
    let n_img = data.images.len();
    let n_txt = data.texts.len();
    let index_i2t: Vec<Vec<f32>> = image_vectors
        .par_iter()
        .map(|v| -> Result<Vec<f32>> {
            let mut row = vec![-100f32; n_txt];
            for h in c.index.search_texts(v, k, &params)? {
                if let Some(&t) = text_of.get(&h.text_id) {
                    row[t] = h.score;
                }
            }
            Ok(row)
        })
        .collect::<Result<_>>()?;
    let index_t2i: Vec<Vec<f32>> = text_vectors
        .par_iter()
        .map(|v| -> Result<Vec<f32>> {
            let mut row = vec![-100f32; n_img];
            for h in c.index.search_images(v, k, &params)? {
                for &i in images_of.get(&h.image_id).into_iter().flatten() {
                    row[i] = h.score;
                }
            }
            Ok(row)
        })
        .collect::<Result<_>>()?;
    seconds.insert("itc_index".to_string(), t0.elapsed().as_secs_f64());
    let overlap = |index_rows: &[Vec<f32>], exact_top: &[Vec<usize>], k: usize| {
        let total: usize = index_rows
            .iter()
            .zip(exact_top)
            .map(|(ir, top)| {
                let mine = top_k(ir, k);
                top.iter().filter(|x| mine.contains(x)).count()
            })
            .sum();
        total as f64 / (index_rows.len() * k).max(1) as f64
    };
    let candidate_recall = CandidateRecall {
        i2t: overlap(&index_i2t, &top_i2t, k.min(n_txt)),
        t2i: overlap(&index_t2i, &top_t2i, k.min(n_img)),
    };

    // 3. ITM on the top k_test candidates of each direction (a duplicate caption
    // through its first occurrence).
    let t0 = Instant::now();
    let mut pairs: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, texts) in top_i2t.iter().enumerate() {
        pairs
            .entry(i)
            .or_default()
            .extend(texts.iter().map(|&t| canonical[t]));
    }
    for (t, images) in top_t2i.iter().enumerate() {
        for &i in images {
            pairs.entry(i).or_default().push(canonical[t]);
        }
    }
    for texts in pairs.values_mut() {
        texts.sort_unstable();
        texts.dedup();
    }
    let n_pairs: usize = pairs.values().map(Vec::len).sum();
    let progress = progress_bar(n_pairs as u64, "ITM pairs", opts.progress);
    let mut itm: HashMap<(usize, usize), ItmScore> = HashMap::with_capacity(n_pairs);
    let device = c.embedder.model().device().clone();
    for (&i, texts) in &pairs {
        let (values, shape) = c
            .index
            .vision_features(image_ids[i])?
            .ok_or_else(|| Error::Internal("the cache index holds no vision features".into()))?;
        let vision = Tensor::from_vec(values, shape, &device)?;
        for chunk in texts.chunks(opts.batch.max(1)) {
            // One image with every text of the chunk: `itm_scores` computes its
            // cross-attention keys and values once.
            let pairs: Vec<ItmPair> = chunk
                .iter()
                .map(|&t| ItmPair {
                    vision: vision.clone(),
                    ids: ids[t].clone(),
                })
                .collect();
            for (&t, score) in chunk
                .iter()
                .zip(itm_scores(&c.embedder, &pairs, pairs.len())?)
            {
                itm.insert((i, t), score);
            }
            progress.inc(chunk.len() as u64);
        }
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Interrupted {
                during: "reranking",
            });
        }
    }
    progress.finish_and_clear();
    let mut score_i2t = vec![vec![-100f32; n_txt]; n_img];
    for (i, texts) in top_i2t.iter().enumerate() {
        for &t in texts {
            score_i2t[i][t] = itm[&(i, canonical[t])].rerank_score(sim_i2t[i][t]);
        }
    }
    let mut score_t2i = vec![vec![-100f32; n_img]; n_txt];
    for (t, images) in top_t2i.iter().enumerate() {
        for &i in images {
            score_t2i[t][i] = itm[&(i, canonical[t])].rerank_score(sim_t2i[t][i]);
        }
    }
    seconds.insert("itm_rerank".to_string(), t0.elapsed().as_secs_f64());

    let (itc_index, ranks_index) = report_metrics(data, &index_i2t, &index_t2i);
    let (itc_exact, ranks_exact) = report_metrics(data, &sim_i2t, &sim_t2i);
    let (itm_rerank, ranks_itm) = report_metrics(data, &score_i2t, &score_t2i);
    let mut ranks = BTreeMap::new();
    ranks.insert("itc_index".to_string(), ranks_index);
    ranks.insert("itc_exact".to_string(), ranks_exact);
    ranks.insert("itm_rerank".to_string(), ranks_itm);
    Ok(EvalReport {
        images: n_img,
        texts: n_txt,
        k_test: k,
        itc_index,
        itc_exact,
        itm_rerank,
        candidate_recall,
        itm_pairs: n_pairs,
        images_embedded: summary.embedded,
        texts_embedded: texts.added + texts.replaced,
        ranks,
        seconds,
    })
}
