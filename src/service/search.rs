//! Searching a collection: photos for a sentence, photos like a photo, sentences for a
//! photo. One typed request in, the document `qseek search --json` prints (and
//! `GET /api/search` answers) out.
//!
//! Text → images follows the BLIP-2 retrieval protocol (LAVIS `compute_sim_matrix`):
//! the ITC score (max over the image's query vectors of the cosine with the text)
//! ranks the whole collection through the index, then the top `rerank` candidates are
//! rescored as ITM match logit + ITC ([`crate::rerank`]) and ranked above everything
//! else. Image → texts is the same with the roles swapped. Image → images uses the
//! index's symmetric Chamfer similarity over query vectors (BLIP-2 defines no
//! image–image score); through an engine, qseek scores the engine's candidates with the
//! same function ([`crate::engine::similar::similar_through_engine`]).
//!
//! Policies decided here and nowhere else: reranking defaults to 16 when the index
//! stores vision features and to 0 otherwise (with a note saying why); a minimum match
//! probability needs reranking; image → images has no ITM score.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use candle_core::Tensor;
use qseek_index::{Filter, ImageId, PhotoFilter, PhotoMeta, QueryTerm, SearchParams};
use serde::{Deserialize, Serialize};

use crate::engine::similar::similar_through_engine;
use crate::engine::{under_it, EngineFilter, VectorEngine};
use crate::error::{BadRequest, NotFound, Param};
use crate::pipeline::indexer::content_hash;
use crate::pipeline::walk::absolute;
use crate::pipeline::{rows3, Collection};
use crate::preprocess::image::{decode_rgb, LoadOptions};
use crate::preprocess::text::pre_caption;
use crate::rerank::{ItmPair, ItmScore};
use crate::service::calls::ModelCalls;
use crate::service::query::{Sort, Term, TermInput};
use crate::{Error, Result};

/// Candidates reranked when the request does not say and the index stores vision features.
pub const DEFAULT_RERANK: usize = 16;

/// The ITM match probability for a negative text term at which a candidate is dropped.
pub const DEFAULT_NOT_PROB: f32 = 0.5;

/// What to search by.
#[derive(Debug, Clone)]
pub enum QueryInput {
    /// A sentence: photos for it.
    Text(String),
    /// An image file the user names (the command line).
    ImageFile(PathBuf),
    /// An image's bytes (an upload), shared with the request that carried them.
    ImageBytes(Bytes),
    /// An image of the index, by id.
    IndexedImage(ImageId),
}

/// Which search ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Photos for a sentence.
    TextToImages,
    /// Photos like a photo.
    ImageToImages,
    /// Sentences for a photo.
    ImageToTexts,
}

/// A search.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    /// What to search by.
    pub query: QueryInput,
    /// With an image query: find texts instead of images.
    pub texts: bool,
    /// Results wanted.
    pub k: usize,
    /// Results skipped before those (paging); ranks count them.
    pub offset: usize,
    /// Candidates rescored with the ITM head; `None`: [`DEFAULT_RERANK`] when the index
    /// stores vision features, else 0.
    pub rerank: Option<usize>,
    /// Drop results whose ITM match probability is below this (needs reranking).
    pub min_prob: Option<f32>,
    /// Only images under this folder (or whose path starts with this prefix).
    pub under: Option<PathBuf>,
    /// The weight of `query` (1 unless the user wrote `2:…`).
    pub weight: f32,
    /// More terms, combined with `query` ([`search`] says how): texts and photos with
    /// their weights; a text with a negative weight must not match.
    pub terms: Vec<Term>,
    /// Drop a reranked candidate whose ITM match probability for a negative text term is
    /// at least this (default [`DEFAULT_NOT_PROB`]).
    pub not_prob: Option<f32>,
    /// Only images whose metadata passes (date taken, camera, place).
    pub photo: PhotoFilter,
    /// The order of the results.
    pub sort: Sort,
    /// Walk the HNSW graph instead of scoring every image exactly.
    pub ann: bool,
}

impl SearchRequest {
    /// A request with the defaults: 10 results, default reranking, no filter.
    pub fn new(query: QueryInput) -> Self {
        Self {
            query,
            texts: false,
            k: 10,
            offset: 0,
            rerank: None,
            min_prob: None,
            under: None,
            weight: 1.0,
            terms: Vec::new(),
            not_prob: None,
            photo: PhotoFilter::default(),
            sort: Sort::Score,
            ann: false,
        }
    }
}

/// How the service runs searches (not part of a request).
#[derive(Debug, Clone)]
pub struct SearchSettings {
    /// Decoding limits (query images, and indexed images when reranking needs them).
    pub load: LoadOptions,
    /// Decoding limits of uploaded query images ([`QueryInput::ImageBytes`]).
    pub upload: LoadOptions,
    /// Most candidates a request may rerank (`None`: any). Without stored vision
    /// features each one runs the image encoder.
    pub max_rerank: Option<usize>,
    /// Read indexed files only inside the index's roots and these folders
    /// ([`read_roots`]; `None`: anywhere, as the command line does).
    pub confine_reads: Option<Vec<PathBuf>>,
    /// Longest sentence taken, in characters (`None`: any; the model truncates to 35
    /// tokens anyway).
    pub max_query_chars: Option<usize>,
    /// Take candidates and their scores from this engine instead of the local index
    /// (which still gives stored vision features for the rerank, and image ids, when it
    /// holds the image).
    pub engine: Option<Arc<dyn VectorEngine>>,
}

impl SearchSettings {
    /// Settings without limits: what the command line uses (the user chose the inputs).
    pub fn new(load: LoadOptions) -> Self {
        Self {
            load,
            upload: load,
            max_rerank: None,
            confine_reads: None,
            max_query_chars: None,
            engine: None,
        }
    }
}

/// The query as the response echoes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct QueryEcho {
    /// The sentence, for text → images.
    pub text: Option<String>,
    /// The query image (its path, or how it came), for image queries.
    pub image: Option<String>,
    /// Which search ran.
    pub mode: Mode,
    /// Results asked for.
    pub k: usize,
    /// Candidates reranked (after the default was applied).
    pub rerank: usize,
    /// Every term with a positive weight, and those with a negative weight that are
    /// photos, the query first.
    pub terms: Vec<TermEcho>,
    /// The negative text terms: results whose ITM match probability for one of them
    /// reached `not_prob` were dropped.
    pub not: Vec<String>,
    /// That probability, when there are negative text terms.
    pub not_prob: Option<f32>,
}

/// A term of the query as the response echoes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct TermEcho {
    /// The sentence, for a text term.
    pub text: Option<String>,
    /// The photo (its path, or how it came), for a photo term.
    pub image: Option<String>,
    /// The photo's id, when the index holds it.
    pub image_id: Option<ImageId>,
    /// Its weight.
    pub weight: f32,
}

/// One result. Every field is always present in JSON (null when it does not apply),
/// so the document has one stable shape.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Hit {
    /// 1-based, counting the skipped `offset`.
    pub rank: usize,
    /// The image's id in the index, for image results.
    pub image_id: Option<ImageId>,
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
    /// The ITM match probability for each negative text term (`query.not`), when
    /// reranked.
    pub not_probs: Option<Vec<f32>>,
    /// When the photo was taken: RFC 3339, without an offset when the photo records
    /// none (its camera's local time).
    pub taken_at: Option<String>,
    /// The camera's make and model.
    pub camera: Option<String>,
    /// The lens.
    pub lens: Option<String>,
    /// Where it was taken: `[latitude, longitude]` in degrees.
    pub gps: Option<[f64; 2]>,
    /// Width in pixels, for image results.
    pub width: Option<u32>,
    /// Height in pixels, for image results.
    pub height: Option<u32>,
}

/// What a result shows of its photo: the metadata and size fields of [`Hit`].
#[derive(Debug, Clone, Default, PartialEq)]
struct PhotoFields {
    photo: Option<PhotoMeta>,
    width: Option<u32>,
    height: Option<u32>,
}

impl PhotoFields {
    fn of(c: &Collection, image_id: Option<ImageId>) -> Self {
        match image_id.and_then(|id| c.index.image(id)) {
            Some(info) => Self {
                photo: info.photo,
                width: Some(info.width),
                height: Some(info.height),
            },
            None => Self::default(),
        }
    }

    fn taken(&self) -> Option<&qseek_index::TakenAt> {
        self.photo.as_ref()?.taken.as_ref()
    }

    fn into_hit(self, hit: Hit) -> Hit {
        let photo = self.photo.unwrap_or_default();
        Hit {
            taken_at: photo.taken.map(|t| t.to_rfc3339()),
            camera: photo.camera(),
            lens: photo.lens,
            gps: photo.gps.map(|g| [g.lat, g.lon]),
            width: self.width,
            height: self.height,
            ..hit
        }
    }
}

/// A stable sort by date taken, oldest first, those without a date last.
fn sort_by_date<T>(items: &mut [T], fields: impl Fn(&T) -> &PhotoFields) {
    items.sort_by(|a, b| match (fields(a).taken(), fields(b).taken()) {
        (Some(x), Some(y)) => x.cmp_time(y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
}

/// The answer: the document `qseek search --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct SearchResponse {
    /// The query, with the defaults applied.
    pub query: QueryEcho,
    /// Best first.
    pub results: Vec<Hit>,
    /// What the user should know about the results (e.g. a candidate that could not be
    /// reranked).
    pub notes: Vec<String>,
}

/// Runs a search. `model` embeds the sentence and scores ITM pairs (straight, or
/// batched with other requests).
pub fn search(
    c: &Collection,
    model: &dyn ModelCalls,
    settings: &SearchSettings,
    req: &SearchRequest,
) -> Result<SearchResponse> {
    let combined = req.weight != 1.0 || !req.terms.is_empty();
    let any_text = matches!(req.query, QueryInput::Text(_))
        || req
            .terms
            .iter()
            .any(|t| matches!(t.input, TermInput::Text(_)));
    let mode = match (&req.query, req.texts) {
        (QueryInput::Text(_), _) => Mode::TextToImages,
        (_, true) => Mode::ImageToTexts,
        _ if combined && any_text => Mode::TextToImages,
        (_, false) => Mode::ImageToImages,
    };
    if combined && req.texts {
        return Err(BadRequest::TermsWithTexts.into());
    }
    let stored = c.index.manifest().store_vision_features;
    let rerank = req
        .rerank
        .unwrap_or(if stored { DEFAULT_RERANK } else { 0 });
    if let Some(limit) = settings.max_rerank {
        if rerank > limit {
            return Err(BadRequest::RerankTooLarge { rerank, limit }.into());
        }
    }
    let opts = Options::check(req, rerank)?;
    if settings.engine.is_some() && opts.ann {
        // The engine's own index decides how exact its candidates are.
        return Err(BadRequest::EngineUnsupported {
            what: "the index's graph search (ann)",
        }
        .into());
    }
    if settings.engine.is_some() && combined {
        return Err(BadRequest::EngineUnsupported {
            what: "a query of several terms or a weighted one",
        }
        .into());
    }
    let mut notes = Vec::new();
    let main_echo = |text: Option<String>, image: Option<String>, image_id| TermEcho {
        text,
        image,
        image_id,
        weight: req.weight,
    };
    let (text, image, hits, terms, not) = match &req.query {
        _ if combined => {
            let found = combined_to_images(c, model, settings, req, &opts, &mut notes)?;
            let main = &found.terms[0];
            let (text, image) = (main.text.clone(), main.image.clone());
            (text, image, found.hits, found.terms, found.not)
        }
        QueryInput::Text(q) => {
            check_sentence(q, settings)?;
            let hits = text_to_images(c, model, settings, q, &opts, &mut notes)?;
            let echo = main_echo(Some(q.clone()), None, None);
            (Some(q.clone()), None, hits, vec![echo], Vec::new())
        }
        input => {
            let (name, query) = query_image(c, input, settings)?;
            let echo = main_echo(None, Some(name.clone()), query.image_id);
            let hits = if req.texts {
                image_to_texts(c, model, settings, &query, &opts)?
            } else {
                if req.rerank.is_some_and(|n| n > 0) || req.min_prob.is_some() {
                    notes.push(
                        "image → image search has no ITM score: rerank and the minimum probability are ignored".into(),
                    );
                }
                image_to_images(c, settings, &query, &opts, &mut notes)?
            };
            (None, Some(name), hits, vec![echo], Vec::new())
        }
    };
    if req.rerank.is_none() && !stored && mode != Mode::ImageToImages {
        notes.push(
            "ranked by ITC only: this index stores no vision features, so ITM reranking would run the image encoder on each candidate's file; an index built with stored vision features makes it cheap".into(),
        );
    }
    Ok(SearchResponse {
        query: QueryEcho {
            text,
            image,
            mode,
            k: req.k,
            rerank,
            terms,
            not_prob: (!not.is_empty()).then_some(opts.not_prob),
            not,
        },
        results: hits,
        notes,
    })
}

/// A checked request, as the searches below use it.
struct Options {
    k: usize,
    offset: usize,
    rerank: usize,
    min_prob: Option<f32>,
    under: Option<String>,
    photo: PhotoFilter,
    sort: Sort,
    not_prob: f32,
    ann: bool,
}

impl Options {
    fn check(req: &SearchRequest, rerank: usize) -> Result<Self> {
        if req.k == 0 {
            return Err(BadRequest::OutOfRange {
                param: Param::K,
                expected: "at least 1",
            }
            .into());
        }
        if let Some(p) = req.not_prob {
            if !(0.0..=1.0).contains(&p) {
                return Err(BadRequest::OutOfRange {
                    param: Param::NotProb,
                    expected: "between 0 and 1",
                }
                .into());
            }
        }
        if let Some(p) = req.min_prob {
            if !(0.0..=1.0).contains(&p) {
                return Err(BadRequest::OutOfRange {
                    param: Param::MinProb,
                    expected: "between 0 and 1",
                }
                .into());
            }
            if rerank == 0 {
                return Err(BadRequest::MinProbNeedsRerank.into());
            }
        }
        let under = match &req.under {
            Some(u) => {
                let abs = absolute(u).map_err(|source| Error::Io {
                    path: u.clone(),
                    source,
                })?;
                let mut s = abs.to_string_lossy().into_owned();
                if abs.is_dir() && !s.ends_with('/') {
                    s.push('/');
                }
                Some(s)
            }
            None => None,
        };
        Ok(Self {
            k: req.k,
            offset: req.offset,
            rerank,
            min_prob: req.min_prob,
            under,
            photo: req.photo.clone(),
            sort: req.sort,
            not_prob: req.not_prob.unwrap_or(DEFAULT_NOT_PROB),
            ann: req.ann,
        })
    }

    /// Results to fetch from the index: everything up to the last one shown.
    fn want(&self) -> usize {
        self.offset.saturating_add(self.k)
    }

    /// How the index searches: for images (`images`), with the folder and metadata
    /// filters; for texts, without.
    fn params(&self, want: usize, images: bool) -> SearchParams {
        let defaults = SearchParams::default();
        let filter = Filter {
            path_prefix: self.under.clone(),
            query: None,
            photo: self.photo.clone(),
        };
        SearchParams {
            candidates: defaults.candidates.max(want),
            filter: (images && filter != Filter::default()).then_some(filter),
            exact: !self.ann,
            // With `ann`, the graph even for small collections (tests exercise it).
            exact_below: 0,
            ..defaults
        }
    }
}

fn check_sentence(q: &str, settings: &SearchSettings) -> Result<()> {
    if let Some(limit) = settings.max_query_chars {
        let chars = q.chars().count();
        if chars > limit {
            return Err(BadRequest::QueryTooLong { chars, limit }.into());
        }
    }
    if pre_caption(q).is_empty() {
        return Err(BadRequest::EmptyQuery.into());
    }
    Ok(())
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
    image_id: Option<ImageId>,
    path: Option<String>,
    copies: Vec<String>,
    text: Option<String>,
    id: Option<String>,
    itc: f32,
    itm: Option<Reranked>,
    /// The ITM match probability for each negative text term, when reranked.
    not_probs: Option<Vec<f32>>,
    fields: PhotoFields,
}

/// What the ITM head said of a reranked candidate: the (weighted) match logit its
/// score adds to the ITC, and the match probability `min_prob` is compared with.
#[derive(Debug, Clone, Copy)]
struct Reranked {
    logit: f32,
    prob: f32,
}

impl From<ItmScore> for Reranked {
    fn from(itm: ItmScore) -> Self {
        Reranked {
            logit: itm.yes,
            prob: itm.probability(),
        }
    }
}

fn text_to_images(
    c: &Collection,
    model: &dyn ModelCalls,
    settings: &SearchSettings,
    query: &str,
    opts: &Options,
    notes: &mut Vec<String>,
) -> Result<Vec<Hit>> {
    let want = opts.want().max(opts.rerank);
    let (ids, found) = match &settings.engine {
        // The engine knows an image by its bytes' hash; the local index, when it holds
        // the same bytes, gives its id (and so its stored vision features).
        Some(engine) => {
            let (embed, ids) = model.embed_text(query)?;
            let under = opts.under.as_deref();
            let filter = EngineFilter {
                under: opts.under.clone(),
                photo: opts.photo.clone(),
            };
            let found = engine.search_images(&embed, want, Some(&filter))?;
            let found = found
                .into_iter()
                .filter(|h| under_it(&h.paths, under))
                .map(|h| {
                    let image_id = c.index.image_by_hash(&h.content_hash).map(|i| i.image_id);
                    (image_id, h.paths, h.itc)
                });
            (ids, found.collect::<Vec<_>>())
        }
        None => {
            let (ids, found) =
                model.search_text(&c.index, query, want, &opts.params(want, true))?;
            let found = found
                .into_iter()
                .map(|h| (Some(h.image_id), h.paths, h.score));
            (ids, found.collect())
        }
    };
    let mut candidates: Vec<Candidate> = found
        .into_iter()
        .map(|(image_id, paths, itc)| {
            let (path, copies) = split_paths(paths, opts.under.as_deref());
            Candidate {
                fields: PhotoFields::of(c, image_id),
                image_id,
                path,
                copies,
                text: None,
                id: None,
                itc,
                itm: None,
                not_probs: None,
            }
        })
        .collect();
    let n = opts.rerank.min(candidates.len());
    let (which, pairs): (Vec<usize>, Vec<ItmPair>) =
        rerank_vision(c, settings, &candidates[..n], notes)?
            .into_iter()
            .map(|(i, vision)| {
                let ids = ids.clone();
                (i, ItmPair { vision, ids })
            })
            .unzip();
    for (i, score) in which.into_iter().zip(model.itm(pairs)?) {
        candidates[i].itm = Some(score.into());
    }
    Ok(rank(candidates, opts))
}

/// The vision-encoder output of each candidate to rerank, by its position: stored, or
/// recomputed from a file; a candidate with neither is left out (with a note).
fn rerank_vision(
    c: &Collection,
    settings: &SearchSettings,
    candidates: &[Candidate],
    notes: &mut Vec<String>,
) -> Result<Vec<(usize, Tensor)>> {
    let roots = read_roots(c, settings);
    let mut out = Vec::new();
    for (i, cand) in candidates.iter().enumerate() {
        let stored = match cand.image_id {
            Some(image_id) => c.index.vision_features(image_id)?,
            None => None,
        };
        let vision = match stored {
            Some((values, shape)) => Some(Tensor::from_vec(
                values,
                shape,
                c.embedder.model().device(),
            )?),
            None => recompute_vision(c, cand, &settings.load, roots.as_deref(), notes)?,
        };
        if let Some(vision) = vision {
            out.push((i, vision));
        }
    }
    Ok(out)
}

/// A term of a combined query, embedded.
enum Embedded {
    Text {
        text: String,
        vector: Vec<f32>,
        ids: Vec<u32>,
        weight: f32,
    },
    Image {
        name: String,
        query: QueryImage,
        weight: f32,
    },
}

/// What [`combined_to_images`] found, and the query it ran.
struct Combined {
    hits: Vec<Hit>,
    terms: Vec<TermEcho>,
    not: Vec<String>,
}

/// Photos for a combined query: the request's query (with its weight) and its terms.
///
/// A candidate's score is the weighted sum of each term's similarity: a text's ITC
/// (max over the image's query vectors), a photo's symmetric Chamfer similarity; a
/// negative weight subtracts. The query photos are not results. The top `rerank`
/// candidates are then rescored: each text term with a positive weight adds its weight
/// × its ITM match logit (and `itm_prob` is the least of their match probabilities,
/// which `min_prob` is compared with); each negative text term is a classifier: a
/// candidate whose match probability for it reaches `not_prob` is dropped. Without a
/// text term, the candidate score alone ranks, as image → images does.
fn combined_to_images(
    c: &Collection,
    model: &dyn ModelCalls,
    settings: &SearchSettings,
    req: &SearchRequest,
    opts: &Options,
    notes: &mut Vec<String>,
) -> Result<Combined> {
    let main = match &req.query {
        QueryInput::Text(q) => Err(q.clone()),
        input => Ok(input.clone()),
    };
    let rest = req.terms.iter().map(|t| {
        let input = match &t.input {
            TermInput::Text(q) => Err(q.clone()),
            TermInput::ImageFile(p) => Ok(QueryInput::ImageFile(p.clone())),
            TermInput::IndexedImage(id) => Ok(QueryInput::IndexedImage(*id)),
        };
        (input, t.weight)
    });
    let mut embedded = Vec::new();
    for (input, weight) in std::iter::once((main, req.weight)).chain(rest) {
        embedded.push(match input {
            Err(text) => {
                check_sentence(&text, settings)?;
                let (vector, ids) = model.embed_text(&text)?;
                Embedded::Text {
                    text,
                    vector,
                    ids,
                    weight,
                }
            }
            Ok(input) => {
                let (name, query) = query_image(c, &input, settings)?;
                Embedded::Image {
                    name,
                    query,
                    weight,
                }
            }
        });
    }
    let weight = |e: &Embedded| match e {
        Embedded::Text { weight, .. } | Embedded::Image { weight, .. } => *weight,
    };
    if embedded.iter().all(|e| weight(e) < 0.0) {
        return Err(qseek_index::Error::NoPositiveTerm.into());
    }
    let terms: Vec<QueryTerm> = embedded
        .iter()
        .map(|e| match e {
            Embedded::Text { vector, weight, .. } => QueryTerm::Text {
                vector,
                weight: *weight,
            },
            Embedded::Image { query, weight, .. } => QueryTerm::Image {
                vectors: &query.vectors,
                weight: *weight,
            },
        })
        .collect();
    // The query photos are not results: ask for as many more.
    let exclude: HashSet<ImageId> = embedded
        .iter()
        .filter_map(|e| match e {
            Embedded::Image { query, .. } => query.image_id,
            Embedded::Text { .. } => None,
        })
        .collect();
    let want = opts.want().max(opts.rerank);
    let ask = want + exclude.len();
    let found = c
        .index
        .search_images_combined(&terms, ask, &opts.params(ask, true))?;
    let mut candidates: Vec<Candidate> = found
        .into_iter()
        .filter(|h| !exclude.contains(&h.image_id))
        .take(want)
        .map(|h| {
            let (path, copies) = split_paths(h.paths, opts.under.as_deref());
            Candidate {
                fields: PhotoFields::of(c, Some(h.image_id)),
                image_id: Some(h.image_id),
                path,
                copies,
                text: None,
                id: None,
                itc: h.score,
                itm: None,
                not_probs: None,
            }
        })
        .collect();
    // The rerank: every text term with every candidate that has vision features.
    let texts: Vec<(f32, &Vec<u32>)> = embedded
        .iter()
        .filter_map(|e| match e {
            Embedded::Text { ids, weight, .. } => Some((*weight, ids)),
            Embedded::Image { .. } => None,
        })
        .collect();
    if !texts.is_empty() {
        let n = opts.rerank.min(candidates.len());
        let visions = rerank_vision(c, settings, &candidates[..n], notes)?;
        let pairs = visions
            .iter()
            .flat_map(|(_, vision)| {
                texts.iter().map(|(_, ids)| ItmPair {
                    vision: vision.clone(),
                    ids: (*ids).clone(),
                })
            })
            .collect();
        let scores = model.itm(pairs)?;
        for ((i, _), scores) in visions.iter().zip(scores.chunks(texts.len())) {
            let mut positive = None::<Reranked>;
            let mut not_probs = Vec::new();
            for (&(weight, _), score) in texts.iter().zip(scores) {
                let prob = score.probability();
                if weight > 0.0 {
                    let r = positive.get_or_insert(Reranked {
                        logit: 0.0,
                        prob: 1.0,
                    });
                    r.logit += weight * score.yes;
                    r.prob = r.prob.min(prob);
                } else {
                    not_probs.push(prob);
                }
            }
            candidates[*i].itm = positive;
            candidates[*i].not_probs = Some(not_probs);
        }
    }
    let not: Vec<String> = embedded
        .iter()
        .filter_map(|e| match e {
            Embedded::Text { text, weight, .. } if *weight < 0.0 => Some(text.clone()),
            _ => None,
        })
        .collect();
    if !not.is_empty() && opts.rerank == 0 {
        notes.push(
            "without reranking, a term after --not only subtracts its similarity: nothing is dropped for matching it".into(),
        );
    }
    let echo = embedded
        .iter()
        .filter(|e| !matches!(e, Embedded::Text { weight, .. } if *weight < 0.0))
        .map(|e| match e {
            Embedded::Text { text, weight, .. } => TermEcho {
                text: Some(text.clone()),
                image: None,
                image_id: None,
                weight: *weight,
            },
            Embedded::Image {
                name,
                query,
                weight,
            } => TermEcho {
                text: None,
                image: Some(name.clone()),
                image_id: query.image_id,
                weight: *weight,
            },
        })
        .collect();
    Ok(Combined {
        hits: rank(candidates, opts),
        terms: echo,
        not,
    })
}

/// The vision-encoder output of a candidate, from the first of its files that still
/// decodes; `None` (with a note) when none does.
fn recompute_vision(
    c: &Collection,
    cand: &Candidate,
    load: &LoadOptions,
    roots: Option<&[PathBuf]>,
    notes: &mut Vec<String>,
) -> Result<Option<Tensor>> {
    let mut last_error = None;
    for path in cand.path.iter().chain(&cand.copies) {
        let pixels =
            confined(Path::new(path), roots).and_then(|at| c.embedder.pixel_values(&at, load));
        match pixels {
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
        "{}: not reranked: the index holds no vision features for it and its file cannot be read ({why}); index its folder again to bring the index up to date",
        cand.path.as_deref().unwrap_or("?")
    ));
    Ok(None)
}

/// Reranked candidates first (ITM logit + ITC), then the rest by ITC, as LAVIS's
/// protocol ranks them; then the minimum probability, the order by date if asked (of
/// every candidate that passes the minimum probability, else of the first `offset + k`),
/// the offset and `k`.
fn rank(candidates: Vec<Candidate>, opts: &Options) -> Vec<Hit> {
    // The reranked: ITM match logit + ITC (`ItmScore::rerank_score`; weighted sums of
    // both for a combined query).
    let score = |c: &Candidate| c.itm.map_or(c.itc, |itm| itm.logit + c.itc);
    let mut all: Vec<Candidate> = candidates;
    // Stable: ties keep the index's order (ITC, then id).
    all.sort_by(|a, b| {
        b.itm
            .is_some()
            .cmp(&a.itm.is_some())
            .then(score(b).total_cmp(&score(a)))
    });
    all.retain(|c| match opts.min_prob {
        Some(p) => c.itm.is_some_and(|itm| itm.prob >= p),
        None => true,
    });
    all.retain(|c| {
        let not = c.not_probs.as_deref().unwrap_or_default();
        not.iter().all(|&p| p < opts.not_prob)
    });
    if opts.sort == Sort::Date {
        if opts.min_prob.is_none() {
            all.truncate(opts.want());
        }
        sort_by_date(&mut all, |c| &c.fields);
    }
    all.into_iter()
        .enumerate()
        .skip(opts.offset)
        .take(opts.k)
        .map(|(i, c)| {
            let hit = Hit {
                rank: i + 1,
                score: score(&c),
                itc: Some(c.itc),
                itm_logit: c.itm.map(|itm| itm.logit),
                itm_prob: c.itm.map(|itm| itm.prob),
                not_probs: c.not_probs,
                image_id: c.image_id,
                path: c.path,
                copies: c.copies,
                text: c.text,
                id: c.id,
                ..Hit::default()
            };
            c.fields.into_hit(hit)
        })
        .collect()
}

/// A query image: its id when the index holds it, its vision features (1, tokens,
/// hidden) and query vectors (Q × D, flat).
struct QueryImage {
    image_id: Option<ImageId>,
    content_hash: String,
    vision: Tensor,
    vectors: Vec<f32>,
}

/// Embeds the query image; returns how to name it in the response too. An indexed
/// image is read from its own (indexed) file only.
fn query_image(
    c: &Collection,
    input: &QueryInput,
    settings: &SearchSettings,
) -> Result<(String, QueryImage)> {
    let (name, bytes, path, load) = match input {
        QueryInput::ImageFile(path) => {
            let bytes = std::fs::read(path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            (
                path.display().to_string(),
                Bytes::from(bytes),
                path.clone(),
                &settings.load,
            )
        }
        QueryInput::ImageBytes(bytes) => (
            "(uploaded)".to_string(),
            bytes.clone(),
            PathBuf::from("(uploaded)"),
            &settings.upload,
        ),
        QueryInput::IndexedImage(id) => {
            let info = c.index.image(*id).ok_or(NotFound::Image { id: *id })?;
            let (path, bytes) = read_indexed(&info, read_roots(c, settings).as_deref())?;
            (format!("id:{id}"), Bytes::from(bytes), path, &settings.load)
        }
        QueryInput::Text(_) => unreachable!("text queries take no image"),
    };
    let img = decode_rgb(&bytes, &path, load)?;
    let pixels = c.embedder.image_preprocessor().pixel_values(&img);
    let (vision, embeds) = c
        .embedder
        .embed_pixels(&c.embedder.pixel_batch(&[pixels])?)?;
    let hash = content_hash(&bytes);
    let image_id = c.index.image_by_hash(&hash).map(|i| i.image_id);
    Ok((
        name,
        QueryImage {
            image_id,
            content_hash: hash,
            vision,
            vectors: rows3(&embeds)?.remove(0),
        },
    ))
}

/// The canonical folders and files that reads of indexed files must stay in: the
/// index's recorded roots and [`SearchSettings::confine_reads`]'s folders. `None`
/// (read anywhere): the command line, or an index that records no roots (made before
/// qseek kept them).
pub fn read_roots(c: &Collection, settings: &SearchSettings) -> Option<Vec<PathBuf>> {
    let extra = settings.confine_reads.as_ref()?;
    let recorded = c.index.roots();
    if recorded.is_empty() {
        return None;
    }
    let all = recorded
        .iter()
        .map(PathBuf::from)
        .chain(extra.iter().cloned());
    Some(all.filter_map(|p| p.canonicalize().ok()).collect())
}

/// Where to read an indexed `path` from: itself, or, within `roots`, its canonical
/// path if that lies inside one of them (a link swapped in after indexing may not
/// lead out of them).
pub fn confined(path: &Path, roots: Option<&[PathBuf]>) -> Result<PathBuf> {
    let Some(roots) = roots else {
        return Ok(path.to_path_buf());
    };
    let canonical = path.canonicalize().map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if roots.iter().any(|r| canonical.starts_with(r)) {
        Ok(canonical)
    } else {
        Err(Error::OutsideRoots {
            path: path.to_path_buf(),
        })
    }
}

/// The bytes of an indexed image, from the first of its paths that still holds them
/// (and, with `roots`, lies inside them: [`confined`]).
pub fn read_indexed(
    info: &qseek_index::ImageInfo,
    roots: Option<&[PathBuf]>,
) -> Result<(PathBuf, Vec<u8>)> {
    let mut last = None;
    for p in &info.paths {
        let read = confined(Path::new(&p.path), roots).and_then(|at| {
            std::fs::read(&at).map_err(|source| Error::Io {
                path: PathBuf::from(&p.path),
                source,
            })
        });
        match read {
            Ok(bytes) if content_hash(&bytes) == info.content_hash => {
                return Ok((PathBuf::from(&p.path), bytes))
            }
            Ok(_) => {}
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(Error::NotFound(NotFound::Image { id: info.image_id })))
}

fn image_to_images(
    c: &Collection,
    settings: &SearchSettings,
    query: &QueryImage,
    opts: &Options,
    notes: &mut Vec<String>,
) -> Result<Vec<Hit>> {
    let want = opts.want();
    let found: Vec<(Option<ImageId>, Vec<String>, f32)> = match &settings.engine {
        Some(engine) => {
            let m = c.index.manifest();
            let similar = similar_through_engine(
                engine.as_ref(),
                &query.vectors,
                m.dim,
                want,
                &query.content_hash,
                Some(&EngineFilter {
                    under: opts.under.clone(),
                    photo: opts.photo.clone(),
                }),
            )?;
            if !similar.exact {
                notes.push(format!(
                    "image → images through the engine: the best of {} candidates, not proven to be the exact top {want} (see the README)",
                    similar.scored
                ));
            }
            similar
                .hits
                .into_iter()
                .map(|(hash, paths, score)| {
                    let image_id = c.index.image_by_hash(&hash).map(|i| i.image_id);
                    (image_id, paths, score)
                })
                .collect()
        }
        None => {
            let params = opts.params(want, true);
            let hits = match query.image_id {
                Some(id) => c.index.similar_to_image(id, want, &params)?,
                None => c.index.similar_images(&query.vectors, want, &params)?,
            };
            hits.into_iter()
                .map(|h| (Some(h.image_id), h.paths, h.score))
                .collect()
        }
    };
    let mut found: Vec<_> = found
        .into_iter()
        .map(|(image_id, paths, score)| (PhotoFields::of(c, image_id), image_id, paths, score))
        .collect();
    if opts.sort == Sort::Date {
        sort_by_date(&mut found, |f| &f.0);
    }
    Ok(found
        .into_iter()
        .enumerate()
        .skip(opts.offset)
        .map(|(i, (fields, image_id, paths, score))| {
            let (path, copies) = split_paths(paths, opts.under.as_deref());
            fields.into_hit(Hit {
                rank: i + 1,
                image_id,
                path,
                copies,
                score,
                ..Hit::default()
            })
        })
        .collect())
}

fn image_to_texts(
    c: &Collection,
    model: &dyn ModelCalls,
    settings: &SearchSettings,
    query: &QueryImage,
    opts: &Options,
) -> Result<Vec<Hit>> {
    let want = opts.want().max(opts.rerank);
    let found: Vec<(String, Option<String>, f32)> = match &settings.engine {
        Some(engine) => engine
            .search_texts(&query.vectors, c.index.manifest().dim, want)?
            .into_iter()
            .map(|h| (h.text, h.external_id, h.itc))
            .collect(),
        None => {
            if c.index.stats().texts == 0 {
                return Err(BadRequest::NoTexts.into());
            }
            c.index
                .search_texts(&query.vectors, want, &opts.params(want, false))?
                .into_iter()
                .map(|h| (h.text, h.external_id, h.score))
                .collect()
        }
    };
    let mut candidates: Vec<Candidate> = found
        .into_iter()
        .map(|(text, id, itc)| Candidate {
            fields: PhotoFields::default(),
            image_id: None,
            path: None,
            copies: Vec::new(),
            text: Some(text),
            id,
            itc,
            itm: None,
            not_probs: None,
        })
        .collect();
    let n = opts.rerank.min(candidates.len());
    let texts: Vec<String> = candidates[..n]
        .iter()
        .map(|c| c.text.clone().unwrap_or_default())
        .collect();
    let vision = query.vision.squeeze(0)?;
    let pairs = c
        .embedder
        .tokenize(&texts)?
        .into_iter()
        .map(|ids| ItmPair {
            vision: vision.clone(),
            ids,
        })
        .collect();
    for (cand, score) in candidates.iter_mut().zip(model.itm(pairs)?) {
        cand.itm = Some(score.into());
    }
    Ok(rank(candidates, opts))
}
