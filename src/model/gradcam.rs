//! ITM Grad-CAM: where the ITM head looked in the image.
//!
//! The ITM pass again (query tokens ⧺ text through `qformer`, the queries cross-attending
//! to the image, `itm_head`, averaged over queries), written in candle ops that have a
//! backward pass, so that candle's autograd gives the gradient of the match logit with
//! respect to one cross-attention layer's attention probabilities. The fast path
//! (`qformer.rs`, packed GEMMs with no autograd) is not touched: this is a separate,
//! slower pass, read from the checkpoint at the first explanation (f32, ~4 bytes per
//! Q-Former weight: ~430 MB for BLIP-2's BERT-base Q-Former).
//!
//! The map is LAVIS's `compute_gradcam` (BLIP): for the chosen layer's probabilities
//! `A` (heads, queries, 1 + grid²) and their gradient `∂ logit_match / ∂A`, the map is
//! `mean over heads and queries of max(∂/∂A, 0) · A`, without the `[CLS]` token, as a
//! grid² patch grid. In BLIP-2 only the query tokens cross-attend, so "tokens" are the Q
//! learned queries (BLIP averages over its text tokens instead).
//!
//! The gradient with respect to the probabilities is taken by making them a leaf: the
//! chosen layer's probabilities are detached into a [`Var`] and the pass goes on from
//! it; everything after depends on them through ops with a backward pass (matmul,
//! broadcast arithmetic, `exp`/`sum` softmax, GELU (erf), layer norm from basic ops,
//! reshapes). Nothing before the chosen layer records a graph: no input there is a
//! variable.
//!
//! Every struct is named as its weights, as in `qformer.rs`.

use candle_core::{DType, Result, Tensor, Var, D};
use candle_nn::{Activation, VarBuilder};

use super::config::Blip2Config;
use super::ops::additive_mask;
use super::qformer::TextEmbeddings;

/// `nn.Linear` as plain candle ops: `x Wᵀ + b` over flattened rows.
#[derive(Debug, Clone)]
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get((out_dim, in_dim), "weight")?,
            bias: vb.get(out_dim, "bias")?,
        })
    }

    /// (..., in) → (..., out).
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = xs.elem_count() / in_dim.max(1);
        let ys = xs
            .reshape((rows, in_dim))?
            .matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)?;
        let mut out = dims.to_vec();
        *out.last_mut().expect("rank >= 1") = self.weight.dim(0)?;
        ys.reshape(out)
    }
}

/// `nn.LayerNorm` from basic ops (candle-nn's fused layer norm has no backward pass).
#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let centred = xs.broadcast_sub(&xs.mean_keepdim(D::Minus1)?)?;
        let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred
            .broadcast_div(&(variance + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// `attention.attention` / `crossattention.attention`: q, k, v and the heads.
#[derive(Debug, Clone)]
struct MultiHeadAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    num_heads: usize,
}

impl MultiHeadAttention {
    fn new(h: usize, kv_dim: usize, num_heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            query: Linear::new(h, h, vb.pp("query"))?,
            key: Linear::new(kv_dim, h, vb.pp("key"))?,
            value: Linear::new(kv_dim, h, vb.pp("value"))?,
            num_heads,
        })
    }

    /// (batch, len, heads · d) → (batch, heads, len, d).
    fn split(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, l, w) = xs.dims3()?;
        xs.reshape((b, l, self.num_heads, w / self.num_heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// xs (batch, q_len, hidden) attends to kv (batch, kv_len, kv_dim). With `probe`,
    /// the probabilities (batch, heads, q_len, kv_len) become a [`Var`], returned, that
    /// the rest of the pass reads.
    fn forward(
        &self,
        xs: &Tensor,
        kv: &Tensor,
        mask: Option<&Tensor>,
        probe: bool,
    ) -> Result<(Tensor, Option<Var>)> {
        let (b, l, w) = xs.dims3()?;
        let q = self.split(&self.query.forward(xs)?)?;
        let k = self.split(&self.key.forward(kv)?)?;
        let v = self.split(&self.value.forward(kv)?)?;
        let scale = ((w / self.num_heads) as f64).powf(-0.5);
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = softmax(&scores)?;
        let (probs, var) = if probe {
            let var = Var::from_tensor(&probs.detach())?;
            (var.as_tensor().clone(), Some(var))
        } else {
            (probs, None)
        };
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, w))?;
        Ok((out, var))
    }
}

/// The softmax over the last dimension, shifted by the row's max as a constant: the
/// softmax does not depend on the shift, so its gradient through the shift is zero, and
/// leaving it out of the graph keeps that zero exact.
fn softmax(xs: &Tensor) -> Result<Tensor> {
    let num = xs
        .broadcast_sub(&xs.max_keepdim(D::Minus1)?.detach())?
        .exp()?;
    num.broadcast_div(&num.sum_keepdim(D::Minus1)?)
}

/// `dense` → residual → `LayerNorm`.
#[derive(Debug, Clone)]
struct DenseNorm {
    dense: Linear,
    layer_norm: LayerNorm,
}

impl DenseNorm {
    fn new(in_dim: usize, h: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            dense: Linear::new(in_dim, h, vb.pp("dense"))?,
            layer_norm: LayerNorm::new(h, eps, vb.pp("LayerNorm"))?,
        })
    }

    fn forward(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.layer_norm
            .forward(&(self.dense.forward(xs)? + residual)?)
    }
}

/// `attention` / `crossattention`.
#[derive(Debug, Clone)]
struct QFormerAttention {
    attention: MultiHeadAttention,
    output: DenseNorm,
}

impl QFormerAttention {
    fn new(h: usize, kv_dim: usize, heads: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            attention: MultiHeadAttention::new(h, kv_dim, heads, vb.pp("attention"))?,
            output: DenseNorm::new(h, h, eps, vb.pp("output"))?,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        kv: &Tensor,
        mask: Option<&Tensor>,
        probe: bool,
    ) -> Result<(Tensor, Option<Var>)> {
        let (attended, var) = self.attention.forward(xs, kv, mask, probe)?;
        Ok((self.output.forward(&attended, xs)?, var))
    }
}

/// `intermediate` + `output`, or `intermediate_query` + `output_query`.
#[derive(Debug, Clone)]
struct FeedForward {
    intermediate: Linear,
    activation: Activation,
    output: DenseNorm,
}

impl FeedForward {
    fn new(
        cfg: &super::config::QFormerConfig,
        vb: &VarBuilder,
        intermediate: &str,
        output: &str,
    ) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            intermediate: Linear::new(h, i, vb.pp(intermediate).pp("dense"))?,
            activation: cfg.hidden_act,
            output: DenseNorm::new(i, h, cfg.layer_norm_eps, vb.pp(output))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let hidden = self.intermediate.forward(xs)?.apply(&self.activation)?;
        self.output.forward(&hidden, xs)
    }
}

/// `qformer.encoder.layer.{i}`, as ITM runs it: queries and text.
#[derive(Debug, Clone)]
struct QFormerLayer {
    attention: QFormerAttention,
    crossattention: Option<QFormerAttention>,
    /// `intermediate` + `output`.
    text_feed_forward: FeedForward,
    /// `intermediate_query` + `output_query`.
    query_feed_forward: FeedForward,
}

impl QFormerLayer {
    /// xs (1, queries + text, hidden) → the same rows, or with `queries_only` (the last
    /// layer: ITM reads the queries) the queries alone; with `probe`, the
    /// cross-attention's probabilities as a [`Var`].
    fn forward(
        &self,
        xs: &Tensor,
        mask: &Tensor,
        vision: &Tensor,
        query_len: usize,
        probe: bool,
        queries_only: bool,
    ) -> Result<(Tensor, Option<Var>)> {
        let (attended, _) = self.attention.forward(xs, xs, Some(mask), false)?;
        let mut queries = attended.narrow(1, 0, query_len)?;
        let mut var = None;
        if let Some(cross) = &self.crossattention {
            (queries, var) = cross.forward(&queries, vision, None, probe)?;
        }
        let queries = self.query_feed_forward.forward(&queries)?;
        if queries_only {
            return Ok((queries, var));
        }
        let total = attended.dim(1)?;
        let text =
            self.text_feed_forward
                .forward(&attended.narrow(1, query_len, total - query_len)?)?;
        Ok((Tensor::cat(&[&queries, &text], 1)?, var))
    }
}

/// The ITM pass with a backward pass: `query_tokens`, `embeddings`, `qformer` and
/// `itm_head`, as plain candle tensors in f32.
#[derive(Debug, Clone)]
pub struct ItmGradCam {
    /// (1, num_query_tokens, hidden).
    query_tokens: Tensor,
    embeddings: TextEmbeddings,
    /// `qformer.layernorm`.
    layernorm: LayerNorm,
    /// `qformer.encoder.layer`.
    layer: Vec<QFormerLayer>,
    itm_head: Linear,
}

/// One ITM Grad-CAM.
#[derive(Debug, Clone, PartialEq)]
pub struct GradCam {
    /// The ITM logits `[no match, match]` of the pass.
    pub logits: [f32; 2],
    /// The cross-attention layer (`qformer.encoder.layer.{layer}`).
    pub layer: usize,
    /// The patch grid's side (16 for 224 px and patch 14).
    pub grid: usize,
    /// grid × grid values, row-major (the image's top row first), each ≥ 0.
    pub map: Vec<f32>,
}

impl ItmGradCam {
    /// Reads the weights under `query_tokens`, `embeddings`, `qformer` and `itm_head`
    /// from `vb` (f32).
    pub fn new(cfg: &Blip2Config, vb: VarBuilder) -> Result<Self> {
        let q = &cfg.qformer_config;
        let (h, eps) = (q.hidden_size, q.layer_norm_eps);
        let layers_vb = vb.pp("qformer").pp("encoder").pp("layer");
        let layer = (0..q.num_hidden_layers)
            .map(|i| {
                let vb = layers_vb.pp(i);
                let heads = q.num_attention_heads;
                let crossattention = if cross_attends(cfg, i) {
                    Some(QFormerAttention::new(
                        h,
                        q.encoder_hidden_size,
                        heads,
                        eps,
                        vb.pp("crossattention"),
                    )?)
                } else {
                    None
                };
                Ok(QFormerLayer {
                    attention: QFormerAttention::new(h, h, heads, eps, vb.pp("attention"))?,
                    crossattention,
                    text_feed_forward: FeedForward::new(q, &vb, "intermediate", "output")?,
                    query_feed_forward: FeedForward::new(
                        q,
                        &vb,
                        "intermediate_query",
                        "output_query",
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            query_tokens: vb.get((1, cfg.num_query_tokens, h), "query_tokens")?,
            embeddings: TextEmbeddings::new(q, vb.pp("embeddings"))?,
            layernorm: LayerNorm::new(h, eps, vb.pp("qformer").pp("layernorm"))?,
            layer,
            itm_head: Linear::new(h, 2, vb.pp("itm_head"))?,
        })
    }

    /// The Grad-CAM of the match logit at cross-attention layer `layer`, for one image's
    /// vision features (1, 1 + grid², vision hidden) and one text's token ids.
    pub fn forward(&self, vision: &Tensor, ids: &[u32], layer: usize) -> Result<GradCam> {
        match self.layer.get(layer) {
            Some(l) if l.crossattention.is_some() => {}
            _ => candle_core::bail!("qformer layer {layer} has no cross-attention"),
        }
        let vision = vision.to_dtype(DType::F32)?;
        let (_, tokens, _) = vision.dims3()?;
        let grid = (tokens.saturating_sub(1) as f64).sqrt().round() as usize;
        if grid * grid + 1 != tokens {
            candle_core::bail!("{tokens} vision tokens are not [CLS] and a square grid");
        }
        let device = vision.device();
        let input_ids = Tensor::new(ids, device)?.unsqueeze(0)?;
        let query_len = self.query_tokens.dim(1)?;
        let embeds = Tensor::cat(
            &[&self.query_tokens, &self.embeddings.forward(&input_ids)?],
            1,
        )?;
        let mask = additive_mask(
            &Tensor::ones((1, query_len + ids.len()), DType::F32, device)?,
            DType::F32,
        )?;
        let mut xs = self.layernorm.forward(&embeds)?;
        let mut probs = None;
        let last = self.layer.len() - 1;
        for (i, l) in self.layer.iter().enumerate() {
            let (out, var) = l.forward(&xs, &mask, &vision, query_len, i == layer, i == last)?;
            xs = out;
            probs = probs.or(var);
        }
        let probs = probs.expect("the chosen layer cross-attends");
        let logits = self
            .itm_head
            .forward(&xs.narrow(1, 0, query_len)?)?
            .mean(1)?
            .squeeze(0)?;
        let grads = logits.get(1)?.backward()?;
        let grad = match grads.get(probs.as_tensor()) {
            Some(g) => g.clone(),
            // The match logit does not depend on these probabilities.
            None => probs.zeros_like()?,
        };
        // (1, heads, queries, 1 + grid²) → the patches, clamped gradient × probability,
        // averaged over heads and queries.
        let patches = |t: &Tensor| t.squeeze(0)?.narrow(2, 1, grid * grid);
        let cam = (patches(&grad)?.relu()? * patches(probs.as_tensor())?)?;
        let map = cam.mean(0)?.mean(0)?.to_vec1::<f32>()?;
        let logits = logits.to_vec1::<f32>()?;
        Ok(GradCam {
            logits: [logits[0], logits[1]],
            layer,
            grid,
            map,
        })
    }
}

/// Whether `qformer.encoder.layer.{layer}` has a cross-attention (every
/// `cross_attention_frequency`-th layer from 0).
pub fn cross_attends(cfg: &Blip2Config, layer: usize) -> bool {
    let q = &cfg.qformer_config;
    layer < q.num_hidden_layers && layer.is_multiple_of(q.cross_attention_frequency)
}

/// The default layer of a Grad-CAM: the cross-attention layer nearest the middle of the
/// Q-Former, the later one of two as near. For BLIP-2's 12 layers with a cross-attention
/// every 2, that is layer 6, the layer LAVIS's `compute_gradcam` reads by default
/// (`block_num=6`, for BLIP's 12-layer text encoder): the middle of the stack, where the
/// queries have mixed with the text (the first cross-attention layer has seen only the
/// learned queries, no text) but the map still follows the image's layout (the last
/// layers attend more diffusely, after the queries have pooled the image). Every
/// cross-attention layer can be asked for instead.
pub fn default_layer(cfg: &Blip2Config) -> usize {
    let n = cfg.qformer_config.num_hidden_layers;
    let middle = n / 2;
    (0..n)
        .filter(|&i| cross_attends(cfg, i))
        .min_by_key(|&i| (i.abs_diff(middle), std::cmp::Reverse(i)))
        .unwrap_or(0)
}
