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

mod combined;
mod files;
mod image;
mod rank;
mod text;

use combined::combined_to_images;
pub use files::{confined, read_indexed, read_roots};
use image::{image_to_images, image_to_texts, query_image, QueryImage};
use rank::{rank, rerank_vision, sort_by_date, split_paths, Candidate, PhotoFields, Reranked};
use text::text_to_images;

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

impl From<TermInput> for QueryInput {
    fn from(term: TermInput) -> Self {
        match term {
            TermInput::Text(text) => QueryInput::Text(text),
            TermInput::ImageFile(path) => QueryInput::ImageFile(path),
            TermInput::IndexedImage(id) => QueryInput::IndexedImage(id),
        }
    }
}

/// The query of a search given by photos alone (`--like`, `like=`): the first photo
/// term, taken out of `terms`, with its weight; `None` when there is no photo term.
pub fn first_photo(terms: &mut Vec<Term>) -> Option<(QueryInput, f32)> {
    let i = terms
        .iter()
        .position(|t| !matches!(t.input, TermInput::Text(_)))?;
    let term = terms.remove(i);
    Some((term.input.into(), term.weight))
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
        // Each sentence of a combined query is an ITM pass per reranked candidate: the
        // limit is on the pairs, so more sentences rerank fewer candidates.
        let sentences = usize::from(matches!(req.query, QueryInput::Text(_)))
            + req
                .terms
                .iter()
                .filter(|t| matches!(t.input, TermInput::Text(_)))
                .count();
        if rerank * sentences > limit {
            return Err(BadRequest::RerankPairsTooMany {
                rerank,
                sentences,
                limit,
            }
            .into());
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
