//! The model without an index: embeddings (`qseek embed`) and ITC/ITM scores of
//! (image, text) pairs (`qseek score`).

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::BadRequest;
use crate::model::itc_scores;
use crate::preprocess::image::LoadOptions;
use crate::preprocess::text::pre_caption;
use crate::rerank::{itm_scores, ItmPair};
use crate::{Embedder, Result};

/// One image's embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageEmbedding {
    /// The file.
    pub path: String,
    /// Q L2-normalised vectors.
    pub embeds: Vec<Vec<f32>>,
}

/// One text's embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextEmbedding {
    /// The text.
    pub text: String,
    /// Its token ids.
    pub input_ids: Vec<u32>,
    /// One L2-normalised vector.
    pub embed: Vec<f32>,
}

/// Embeds image files in one model call (decoding in parallel); a file that cannot be
/// read or decoded gets its error, the others their embedding, in order.
pub fn embed_images(
    embedder: &Embedder,
    files: &[PathBuf],
    load: &LoadOptions,
) -> Result<Vec<Result<ImageEmbedding>>> {
    let decoded: Vec<Result<Vec<f32>>> = files
        .par_iter()
        .map(|p| embedder.pixel_values(p, load))
        .collect();
    let pixels: Vec<Vec<f32>> = decoded
        .iter()
        .filter_map(|r| r.as_ref().ok().cloned())
        .collect();
    let mut embeds = if pixels.is_empty() {
        Vec::new()
    } else {
        let (_, embeds) = embedder.embed_pixels(&embedder.pixel_batch(&pixels)?)?;
        embeds.to_vec3::<f32>()?
    }
    .into_iter();
    Ok(files
        .iter()
        .zip(decoded)
        .map(|(path, result)| {
            result.map(|_| ImageEmbedding {
                path: path.to_string_lossy().into_owned(),
                embeds: embeds.next().expect("one embedding per decoded image"),
            })
        })
        .collect())
}

/// Embeds texts in one model call.
pub fn embed_texts(embedder: &Embedder, texts: &[String]) -> Result<Vec<TextEmbedding>> {
    let ids = embedder.tokenize(texts)?;
    let embeds: Vec<Vec<f32>> = embedder.embed_token_ids(&ids)?.to_vec2()?;
    Ok(texts
        .iter()
        .zip(ids)
        .zip(embeds)
        .map(|((text, input_ids), embed)| TextEmbedding {
            text: text.clone(),
            input_ids,
            embed,
        })
        .collect())
}

/// The scores of one (image, text) pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairScore {
    /// The image file.
    pub path: String,
    /// The text.
    pub text: String,
    /// Max over the query vectors of the cosine with the text embedding.
    pub itc: f32,
    /// `[no match, match]`.
    pub itm_logits: [f32; 2],
    /// softmax(itm_logits)[1].
    pub itm_prob: f32,
}

/// Texts embedded once, to score images against.
pub struct ScoreTexts {
    texts: Vec<String>,
    ids: Vec<Vec<u32>>,
    embeds: Tensor,
}

impl ScoreTexts {
    /// Checks that no text is empty once normalised (before any model is loaded).
    pub fn check(texts: &[String]) -> Result<()> {
        match texts.iter().find(|t| pre_caption(t).is_empty()) {
            Some(empty) => Err(BadRequest::EmptyText {
                text: empty.clone(),
            }
            .into()),
            None => Ok(()),
        }
    }

    /// Checks and embeds the texts.
    pub fn new(embedder: &Embedder, texts: &[String]) -> Result<Self> {
        Self::check(texts)?;
        let ids = embedder.tokenize(texts)?;
        let embeds = embedder.embed_token_ids(&ids)?;
        Ok(Self {
            texts: texts.to_vec(),
            ids,
            embeds,
        })
    }

    /// ITC and ITM of the image file against every text, `batch` pairs per ITM call.
    pub fn score_image(
        &self,
        embedder: &Embedder,
        path: &Path,
        load: &LoadOptions,
        batch: usize,
    ) -> Result<Vec<PairScore>> {
        let pixels = embedder.pixel_values(path, load)?;
        let (vision, embeds) = embedder.embed_pixels(&embedder.pixel_batch(&[pixels])?)?;
        let itc: Vec<f32> = itc_scores(&embeds, &self.embeds)?.squeeze(0)?.to_vec1()?;
        let vision = vision.squeeze(0)?;
        let pairs: Vec<ItmPair> = self
            .ids
            .iter()
            .map(|ids| ItmPair {
                vision: vision.clone(),
                ids: ids.clone(),
            })
            .collect();
        let itm = itm_scores(embedder, &pairs, batch)?;
        Ok(self
            .texts
            .iter()
            .zip(itc)
            .zip(itm)
            .map(|((text, itc), itm)| PairScore {
                path: path.to_string_lossy().into_owned(),
                text: text.clone(),
                itc,
                itm_logits: [itm.no, itm.yes],
                itm_prob: itm.probability(),
            })
            .collect())
    }
}
