//! ITM reranking, the one place BLIP-2's formula lives: the ITM head's logits for (image,
//! text) pairs, batched; the rerank score (ITM match logit + ITC, as LAVIS's
//! `compute_sim_matrix` ranks); the match probability. Search, score and eval all use it.

use candle_core::Tensor;
use serde::Serialize;

use crate::{Embedder, Result};

/// The ITM head's two logits for one (image, text) pair.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ItmScore {
    /// "No match" logit.
    pub no: f32,
    /// "Match" logit.
    pub yes: f32,
}

impl ItmScore {
    /// Softmax probability of "match".
    pub fn probability(&self) -> f32 {
        match_probability(self.no, self.yes)
    }

    /// The score a reranked candidate is ranked by: ITM match logit + ITC.
    pub fn rerank_score(&self, itc: f32) -> f32 {
        self.yes + itc
    }
}

/// Softmax probability of "match" for ITM logits `[no, yes]`.
pub fn match_probability(no: f32, yes: f32) -> f32 {
    1.0 / (1.0 + (no - yes).exp())
}

/// One (image, text) pair for the ITM head.
#[derive(Debug, Clone)]
pub struct ItmPair {
    /// The image's vision-encoder output, (tokens, hidden).
    pub vision: Tensor,
    /// The text's token ids.
    pub ids: Vec<u32>,
}

/// ITM logits of every pair, `batch` pairs per model call, in order. A chunk whose
/// pairs all hold the same vision tensor (one image with many texts) passes it once, so
/// the model computes its cross-attention keys and values once.
pub fn itm_scores(embedder: &Embedder, pairs: &[ItmPair], batch: usize) -> Result<Vec<ItmScore>> {
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch.max(1)) {
        let first = chunk[0].vision.id();
        let vision = if chunk.iter().all(|p| p.vision.id() == first) {
            chunk[0].vision.unsqueeze(0)?
        } else {
            Tensor::stack(&chunk.iter().map(|p| &p.vision).collect::<Vec<_>>(), 0)?
        };
        let ids: Vec<Vec<u32>> = chunk.iter().map(|p| p.ids.clone()).collect();
        let logits = embedder.itm_logits(&vision, &ids)?.to_vec2::<f32>()?;
        out.extend(logits.into_iter().map(|l| ItmScore {
            no: l[0],
            yes: l[1],
        }));
    }
    Ok(out)
}
