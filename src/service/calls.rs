//! [`ModelCalls`], the seam between the services and the model: where a search gets
//! its text embeddings and ITM scores. [`Direct`] calls the model (the command line);
//! the server's batcher (`crate::server::batcher`) merges concurrent requests into one
//! model call. Both compute the same numbers.

use qseek_index::{ImageHit, Index, SearchParams};

use crate::embedder::Embedder;
use crate::rerank::{itm_scores, ItmPair, ItmScore};
use crate::Result;

/// Where a service gets its text embeddings and ITM scores: straight from the model (the
/// CLI), or through a batcher that merges concurrent requests into one model call (the
/// server). Both compute the same numbers.
pub trait ModelCalls: Sync {
    /// The L2-normalised embedding of one text, and its token ids.
    fn embed_text(&self, text: &str) -> Result<(Vec<f32>, Vec<u32>)>;
    /// ITM logits of the pairs, in order.
    fn itm(&self, pairs: Vec<ItmPair>) -> Result<Vec<ItmScore>>;
    /// The text's token ids and the top `k` images of `index` for its embedding, as
    /// [`Index::search_images`] finds them. A batching implementation embeds
    /// concurrent texts together and scans the index once for all of them.
    fn search_text(
        &self,
        index: &Index,
        text: &str,
        k: usize,
        params: &SearchParams,
    ) -> Result<(Vec<u32>, Vec<ImageHit>)> {
        let (embed, ids) = self.embed_text(text)?;
        Ok((ids, index.search_images(&embed, k, params)?))
    }
}

/// [`ModelCalls`] straight on a model, `batch` pairs per ITM call.
pub struct Direct<'a> {
    /// The model.
    pub embedder: &'a Embedder,
    /// Pairs per ITM call.
    pub batch: usize,
}

impl ModelCalls for Direct<'_> {
    fn embed_text(&self, text: &str) -> Result<(Vec<f32>, Vec<u32>)> {
        let ids = self.embedder.tokenize(&[text.to_string()])?;
        let embed = self.embedder.embed_token_ids(&ids)?.to_vec2::<f32>()?;
        let ids = ids.into_iter().next().unwrap_or_default();
        Ok((embed.into_iter().next().unwrap_or_default(), ids))
    }

    fn itm(&self, pairs: Vec<ItmPair>) -> Result<Vec<ItmScore>> {
        itm_scores(self.embedder, &pairs, self.batch)
    }
}
