//! Why this photo? For a photo and the text terms of a query, what BLIP-2's two heads
//! saw: the ITC part (which of the Q query vectors gave the max cosine, its
//! similarity, and the runner-up) and the ITM part, a Grad-CAM heat map over the ViT's
//! patch grid ([`crate::model::gradcam`]: LAVIS's `compute_gradcam` at one
//! cross-attention layer of the Q-Former).
//!
//! Policy decided here: an indexed photo's stored vision features are used when the
//! index holds them (no ViT pass), else its file is decoded and encoded; an indexed
//! photo's ITC uses its stored query vectors, so the numbers are the search's; each
//! text term (the query, `also`, `not`) gets its own map; photo terms have no map
//! (refused); the layer defaults to [`default_layer`]. The overlay (a PNG of the
//! photo with the map blended over it) is [`overlay`].

use std::path::Path;

use candle_core::Tensor;
use image::RgbImage;
use qseek_index::ImageId;
use serde::{Deserialize, Serialize};

use crate::embedder::Embedder;
use crate::error::{BadRequest, NotFound};
use crate::model::gradcam::{cross_attends, default_layer};
use crate::pipeline::Collection;
use crate::preprocess::image::{decode_rgb, LoadOptions};
use crate::rerank::match_probability;
use crate::service::calls::ModelCalls;
use crate::service::query::{Term, TermInput};
use crate::service::search::{read_indexed, read_roots, SearchSettings};
use crate::Result;

pub mod overlay;

/// What to explain a photo against.
#[derive(Debug, Clone)]
pub struct ExplainRequest {
    /// The text terms, each explained on its own (a photo term is refused).
    pub terms: Vec<Term>,
    /// The Q-Former layer whose cross-attention the map reads (`None`:
    /// [`default_layer`]).
    pub layer: Option<usize>,
}

/// A photo ready to explain: its vision features and, when known, its query vectors.
pub struct ExplainImage {
    /// The index's id, when the photo is indexed.
    pub image_id: Option<ImageId>,
    /// The ViT's output (1, 1 + grid², vision hidden).
    pub vision: Tensor,
    /// The stored query vectors (Q × D, flat), for an indexed photo.
    pub vectors: Option<Vec<f32>>,
    /// Whether `vision` came from the index (no ViT pass).
    pub stored_features: bool,
    /// The decoded photo, when it was read (the overlay draws on it).
    pub photo: Option<RgbImage>,
}

impl ExplainImage {
    /// A photo file: decoded and encoded by the ViT.
    pub fn from_file(embedder: &Embedder, path: &Path, load: &LoadOptions) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| crate::Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(embedder, &bytes, path, load)
    }

    /// A photo's bytes: decoded and encoded by the ViT.
    pub fn from_bytes(
        embedder: &Embedder,
        bytes: &[u8],
        path: &Path,
        load: &LoadOptions,
    ) -> Result<Self> {
        let photo = decode_rgb(bytes, path, load)?;
        let pixels = embedder.image_preprocessor().pixel_values(&photo);
        let vision = embedder
            .model()
            .vision_features(&embedder.pixel_batch(&[pixels])?)?;
        Ok(Self {
            image_id: None,
            vision,
            vectors: None,
            stored_features: false,
            photo: Some(photo),
        })
    }

    /// An indexed photo: its stored vision features when the index holds them (the
    /// file is then read only with `photo`, for the overlay), else its file, read from
    /// its indexed path only ([`read_indexed`]), decoded and encoded.
    pub fn indexed(
        c: &Collection,
        settings: &SearchSettings,
        id: ImageId,
        photo: bool,
    ) -> Result<Self> {
        let info = c.index.image(id).ok_or(NotFound::Image { id })?;
        let vectors = c.index.image_vectors(id);
        let read = || -> Result<RgbImage> {
            let (path, bytes) = read_indexed(&info, read_roots(c, settings).as_deref())?;
            decode_rgb(&bytes, &path, &settings.load)
        };
        let image = match c.index.vision_features(id)? {
            Some((values, shape)) => Self {
                image_id: Some(id),
                vision: Tensor::from_vec(values, shape, c.embedder.model().device())?
                    .unsqueeze(0)?,
                vectors,
                stored_features: true,
                photo: if photo { Some(read()?) } else { None },
            },
            None => {
                let decoded = read()?;
                let pixels = c.embedder.image_preprocessor().pixel_values(&decoded);
                let vision = c
                    .embedder
                    .model()
                    .vision_features(&c.embedder.pixel_batch(&[pixels])?)?;
                Self {
                    image_id: Some(id),
                    vision,
                    vectors,
                    stored_features: false,
                    photo: Some(decoded),
                }
            }
        };
        Ok(image)
    }
}

/// One query vector's cosine with the text.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueryVectorMatch {
    /// Which of the Q query vectors (0-based).
    pub query: usize,
    /// Its cosine with the text's embedding.
    pub similarity: f32,
}

/// The ITC part: the max over the Q query vectors, and the runner-up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ItcExplanation {
    /// The query vector that gave the max: its cosine is the ITC score.
    pub best: QueryVectorMatch,
    /// The second best (absent with one query vector).
    pub runner_up: Option<QueryVectorMatch>,
}

/// One text term explained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TermExplanation {
    /// The sentence.
    pub text: String,
    /// Its weight in the query (negative: a `not` term).
    pub weight: f32,
    /// The ITC part.
    pub itc: ItcExplanation,
    /// The ITM "match" logit.
    pub itm_logit: f32,
    /// The ITM match probability.
    pub itm_prob: f32,
    /// The Grad-CAM heat map, `grid` rows of `grid` values (top row first), each ≥ 0.
    pub heat: Vec<Vec<f32>>,
    /// The map's largest value (0: the match logit does not depend on this layer's
    /// attention here).
    pub heat_max: f32,
    /// The patch (row, column) where the map is largest.
    pub hottest: [usize; 2],
}

/// The answer: the document `qseek explain --json` prints and `GET /api/explain`
/// answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Explanation {
    /// The photo's id, when it is indexed.
    pub image_id: Option<ImageId>,
    /// The Q-Former layer whose cross-attention the maps read.
    pub layer: usize,
    /// The patch grid's side (16 for 224 px and patch 14): each map is grid × grid.
    pub grid: usize,
    /// Whether the photo's vision features came from the index (no ViT pass).
    pub stored_features: bool,
    /// One per text term, in the query's order.
    pub terms: Vec<TermExplanation>,
}

/// The layer a request asks for, checked: a layer with a cross-attention.
pub fn layer(embedder: &Embedder, asked: Option<usize>) -> Result<usize> {
    let cfg = &embedder.config;
    let Some(layer) = asked else {
        return Ok(default_layer(cfg));
    };
    if cross_attends(cfg, layer) {
        return Ok(layer);
    }
    let layers: Vec<String> = (0..cfg.qformer_config.num_hidden_layers)
        .filter(|&l| cross_attends(cfg, l))
        .map(|l| l.to_string())
        .collect();
    Err(BadRequest::Filter {
        param: "layer",
        value: layer.to_string(),
        reason: format!(
            "is not a Q-Former layer with cross-attention: use one of {}",
            layers.join(", ")
        ),
    }
    .into())
}

/// Explains `image` against every text term of `req`.
pub fn explain(
    embedder: &Embedder,
    model: &dyn ModelCalls,
    image: &ExplainImage,
    req: &ExplainRequest,
) -> Result<Explanation> {
    let layer = layer(embedder, req.layer)?;
    if req.terms.is_empty() {
        return Err(BadRequest::EmptyQuery.into());
    }
    let vectors = match &image.vectors {
        Some(v) => v.clone(),
        None => embedder
            .model()
            .image_embeds(&image.vision)?
            .flatten_all()?
            .to_vec1::<f32>()?,
    };
    let mut terms = Vec::with_capacity(req.terms.len());
    let mut grid = 0;
    for term in &req.terms {
        let TermInput::Text(text) = &term.input else {
            return Err(BadRequest::Filter {
                param: "like",
                value: String::new(),
                reason: "a photo term has no heat map: explain a photo against sentences".into(),
            }
            .into());
        };
        let (embed, ids) = model.embed_text(text)?;
        if ids.len() <= 2 {
            return Err(BadRequest::EmptyText { text: text.clone() }.into());
        }
        let itc = itc_parts(&vectors, &embed);
        let cam = embedder.model().itm_gradcam(&image.vision, &ids, layer)?;
        grid = cam.grid;
        let (hot, heat_max) =
            cam.map
                .iter()
                .copied()
                .enumerate()
                .fold(
                    (0, 0f32),
                    |best, (i, v)| if v > best.1 { (i, v) } else { best },
                );
        terms.push(TermExplanation {
            text: text.clone(),
            weight: term.weight,
            itc,
            itm_logit: cam.logits[1],
            itm_prob: match_probability(cam.logits[0], cam.logits[1]),
            heat: cam.map.chunks(cam.grid).map(<[f32]>::to_vec).collect(),
            heat_max,
            hottest: [hot / cam.grid, hot % cam.grid],
        });
    }
    Ok(Explanation {
        image_id: image.image_id,
        layer,
        grid,
        stored_features: image.stored_features,
        terms,
    })
}

/// The best and second-best of the query vectors (Q × D, flat) by cosine with `text`
/// (both L2-normalised).
pub fn itc_parts(vectors: &[f32], text: &[f32]) -> ItcExplanation {
    let mut sims: Vec<QueryVectorMatch> = vectors
        .chunks(text.len().max(1))
        .enumerate()
        .map(|(query, v)| QueryVectorMatch {
            query,
            similarity: v.iter().zip(text).map(|(a, b)| a * b).sum(),
        })
        .collect();
    // Stable: of equal cosines, the first query vector is the max (as `max` reads).
    sims.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
    ItcExplanation {
        best: sims[0],
        runner_up: sims.get(1).copied(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn itc_parts_names_the_max_and_the_runner_up() {
        let vectors = [0.0, 1.0, 0.6, 0.8, 1.0, 0.0];
        let itc = itc_parts(&vectors, &[0.0, 1.0]);
        assert_eq!(
            itc.best,
            QueryVectorMatch {
                query: 0,
                similarity: 1.0
            }
        );
        assert_eq!(itc.runner_up.unwrap().query, 1);
        assert!((itc.runner_up.unwrap().similarity - 0.8).abs() < 1e-6);
        assert!(itc_parts(&[1.0, 0.0], &[1.0, 0.0]).runner_up.is_none());
    }
}
