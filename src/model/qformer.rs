//! `qformer` and `embeddings`: the BERT-style Querying Transformer (`Blip2QFormerModel`).
//!
//! One stack runs three ways: queries alone, cross-attending to the image (image
//! features); text alone (text features); queries and text together, queries
//! cross-attending to the image (ITM). Queries and text share self-attention but have
//! their own feed-forward weights (`intermediate_query`/`output_query` vs
//! `intermediate`/`output`).

use candle_core::{Module, Result, Tensor};
use candle_nn::{layer_norm, Activation, Embedding, LayerNorm, VarBuilder};

use super::config::QFormerConfig;
use super::ops::{multi_head_attention, Linear};
use qseek_kernels::gemm::Kernel;

/// `embeddings`: word and absolute position embeddings (`Blip2TextEmbeddings`).
#[derive(Debug, Clone)]
pub struct TextEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
}

impl TextEmbeddings {
    /// Loads the weights under `embeddings.`.
    pub fn new(cfg: &QFormerConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            word_embeddings: candle_nn::embedding(cfg.vocab_size, h, vb.pp("word_embeddings"))?,
            position_embeddings: candle_nn::embedding(
                cfg.max_position_embeddings,
                h,
                vb.pp("position_embeddings"),
            )?,
        })
    }

    /// input_ids (batch, len) → (batch, len, hidden).
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (_, len) = input_ids.dims2()?;
        let positions = Tensor::arange(0u32, len as u32, input_ids.device())?;
        self.word_embeddings
            .forward(input_ids)?
            .broadcast_add(&self.position_embeddings.forward(&positions)?)
    }
}

/// `attention.attention` / `crossattention.attention`: the q, k and v projections and
/// the heads.
#[derive(Debug, Clone)]
pub struct MultiHeadAttention {
    projections: Projections,
    /// The kernel of the heads' two products (`None`: candle's).
    kernel: Option<Kernel>,
    num_heads: usize,
    scale: f64,
}

/// The checkpoint's `query`, `key` and `value` layers, stacked where they read the same
/// rows: one GEMM with three (or two) times the columns instead of three small ones
/// (fewer calls, each reading its input once: a one-sentence text pass took 5–8% less;
/// a batch of 16, no measurable change). With `qseek_kernels::gemm` each output
/// column is summed alone, so the numbers are the separate layers'.
#[derive(Debug, Clone)]
enum Projections {
    /// `attention.attention`: `query`, `key` and `value`, in that order, stacked into
    /// one (3 · hidden, hidden) layer: q, k and v all come from the layer's rows.
    SelfAttention { query_key_value: Linear },
    /// `crossattention.attention`: `query` over the queries; `key` and `value` stacked
    /// into one (2 · hidden, kv_dim) layer over the image's features.
    Cross { query: Linear, key_value: Linear },
}

impl MultiHeadAttention {
    fn new(
        cfg: &QFormerConfig,
        kv_dim: Option<usize>,
        vb: VarBuilder,
        f32: Option<Kernel>,
        attention: Option<Kernel>,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let projections = match kv_dim {
            None => Projections::SelfAttention {
                query_key_value: Linear::new_stacked(
                    h,
                    &[(h, vb.pp("query")), (h, vb.pp("key")), (h, vb.pp("value"))],
                )?
                .into_packed(f32),
            },
            Some(kv_dim) => Projections::Cross {
                query: Linear::new(h, h, vb.pp("query"))?.into_packed(f32),
                key_value: Linear::new_stacked(kv_dim, &[(h, vb.pp("key")), (h, vb.pp("value"))])?
                    .into_packed(f32),
            },
        };
        Ok(Self {
            projections,
            kernel: attention,
            num_heads: cfg.num_attention_heads,
            scale: ((h / cfg.num_attention_heads) as f64).powf(-0.5),
        })
    }

    /// q for `xs` and k, v for `kv`, each (batch, len, hidden). Self-attention projects
    /// `kv` alone, of which `xs` must be the first rows.
    fn project(&self, xs: &Tensor, kv: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (_, q_len, h) = xs.dims3()?;
        let part = |t: &Tensor, i: usize| t.narrow(2, i * h, h);
        match &self.projections {
            Projections::SelfAttention { query_key_value } => {
                let qkv = query_key_value.forward(kv)?;
                let q = part(&qkv, 0)?;
                let q = if q_len < q.dim(1)? {
                    q.narrow(1, 0, q_len)?
                } else {
                    q
                };
                Ok((q, part(&qkv, 1)?, part(&qkv, 2)?))
            }
            Projections::Cross { query, key_value } => {
                let kv = key_value.forward(kv)?;
                Ok((query.forward(xs)?, part(&kv, 0)?, part(&kv, 1)?))
            }
        }
    }

    /// xs (batch, q_len, hidden) attends to kv (batch, kv_len, kv_dim), or to kv
    /// (1, kv_len, kv_dim) shared by every row of the batch. In a self-attention, xs is
    /// kv or its first rows.
    ///
    /// A shared kv (ITM of one image with many texts) has its keys and values computed
    /// once: the batch's rows attend to them as one longer query. The softmax is per
    /// query row, so this is the same computation as repeating kv `batch` times, without
    /// the repeated key/value projections (for ViT-g, ~1.1 GFLOP per text and layer).
    fn forward(&self, xs: &Tensor, kv: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, q_len, h) = xs.dims3()?;
        if kv.dim(0)? == 1 && b > 1 {
            if mask.is_some() {
                candle_core::bail!("a shared key/value input takes no attention mask");
            }
            let rows = xs.reshape((1, b * q_len, h))?;
            return self.forward(&rows, kv, None)?.reshape((b, q_len, h));
        }
        let (q, k, v) = self.project(xs, kv)?;
        self.heads(&q, &k, &v, mask)
    }

    /// [`MultiHeadAttention::forward`] (a self-attention) over a [`Ragged`] batch: the
    /// rows of `xs` (1, tokens, hidden) attend to each other, or with `firsts_only` each
    /// text's first row attends to its text. The projections run on the rows without
    /// padding, the heads on the padded batch.
    fn forward_ragged(
        &self,
        xs: &Tensor,
        ragged: &Ragged,
        mask: &Tensor,
        firsts_only: bool,
    ) -> Result<Tensor> {
        let h = xs.dim(2)?;
        let (q, k, v) = self.project(xs, xs)?;
        let (k, v) = (ragged.pad(&k)?, ragged.pad(&v)?);
        if firsts_only {
            let q = ragged.firsts(&q)?.reshape((ragged.batch, 1, h))?;
            self.heads(&q, &k, &v, Some(mask))?
                .reshape((1, ragged.batch, h))
        } else {
            ragged.unpad(&self.heads(&ragged.pad(&q)?, &k, &v, Some(mask))?)
        }
    }

    /// Projected q (batch, q_len, hidden), k and v (batch, kv_len, hidden) → the heads'
    /// attention, merged (batch, q_len, hidden).
    fn heads(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        multi_head_attention(self.kernel, q, k, v, self.num_heads, self.scale, mask)
    }
}

/// A batch of texts stored without its padding: the rows of a (1, tokens, hidden)
/// tensor are the batch's real tokens, text after text.
///
/// Everything in a layer but attention works row by row (the linear layers, the
/// residuals, the layer norms, GELU), so it runs on these rows and skips the padding:
/// a batch of sentences of mixed lengths costs the sum of their lengths, not the
/// batch size times the longest. Attention pads its queries, keys and values again:
/// padded keys and values are zeros and masked, so each real row gets the numbers of
/// the padded pass (bit for bit with `qseek_kernels::gemm`, whose rows are summed alike for any
/// row count; candle's GEMM may block differently).
pub struct Ragged {
    batch: usize,
    len: usize,
    /// For each padded position (batch × len): its row, or `tokens` for padding (the
    /// index of an appended zero row).
    to_padded: Tensor,
    /// For each row: its padded position.
    to_rows: Tensor,
    /// Each text's row at position 0 (`[CLS]`/`[DEC]`).
    firsts: Tensor,
}

impl Ragged {
    /// The layout of a 0/1 attention mask (batch, len); every text must keep position 0.
    pub fn new(mask01: &Tensor) -> Result<Self> {
        let (batch, len) = mask01.dims2()?;
        let keep = mask01.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
        let tokens = keep.iter().flatten().filter(|&&m| m > 0.0).count();
        let (mut to_padded, mut to_rows, mut firsts) = (Vec::new(), Vec::new(), Vec::new());
        for (i, row) in keep.iter().enumerate() {
            if row[0] <= 0.0 {
                candle_core::bail!("text {i} of the batch masks its first token");
            }
            firsts.push(to_rows.len() as u32);
            for (j, &m) in row.iter().enumerate() {
                if m > 0.0 {
                    to_padded.push(to_rows.len() as u32);
                    to_rows.push((i * len + j) as u32);
                } else {
                    to_padded.push(tokens as u32);
                }
            }
        }
        let device = mask01.device();
        Ok(Self {
            batch,
            len,
            to_padded: Tensor::new(to_padded, device)?,
            to_rows: Tensor::new(to_rows, device)?,
            firsts: Tensor::new(firsts, device)?,
        })
    }

    /// (batch, len, hidden) → its real rows (1, tokens, hidden).
    pub fn unpad(&self, xs: &Tensor) -> Result<Tensor> {
        let h = xs.dim(2)?;
        xs.reshape((self.batch * self.len, h))?
            .index_select(&self.to_rows, 0)?
            .unsqueeze(0)
    }

    /// (1, tokens, hidden) → (batch, len, hidden), zeros at the padding.
    pub fn pad(&self, rows: &Tensor) -> Result<Tensor> {
        let (_, _, h) = rows.dims3()?;
        let zero = Tensor::zeros((1, h), rows.dtype(), rows.device())?;
        Tensor::cat(&[&rows.squeeze(0)?, &zero], 0)?
            .index_select(&self.to_padded, 0)?
            .reshape((self.batch, self.len, h))
    }

    /// (1, tokens, hidden) → each text's first row (1, batch, hidden).
    fn firsts(&self, rows: &Tensor) -> Result<Tensor> {
        rows.contiguous()?.index_select(&self.firsts, 1)
    }
}

/// `dense` → residual → `LayerNorm` (BERT's post-norm block ending).
#[derive(Debug, Clone)]
pub struct DenseNorm {
    dense: Linear,
    /// The checkpoint's `LayerNorm` (BERT's capitalised name).
    layer_norm: LayerNorm,
}

impl DenseNorm {
    fn new(
        in_dim: usize,
        cfg: &QFormerConfig,
        vb: VarBuilder,
        f32: Option<Kernel>,
    ) -> Result<Self> {
        Ok(Self {
            dense: Linear::new(in_dim, cfg.hidden_size, vb.pp("dense"))?.into_packed(f32),
            layer_norm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
        })
    }

    fn forward(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.dense
            .forward_residual(xs, residual)?
            .apply(&self.layer_norm)
    }
}

/// `attention` / `crossattention`: multi-head attention and its output block.
#[derive(Debug, Clone)]
pub struct QFormerAttention {
    attention: MultiHeadAttention,
    output: DenseNorm,
}

impl QFormerAttention {
    /// A self-attention (`kv_dim` `None`) or a cross-attention to inputs of `kv_dim`.
    fn new(
        cfg: &QFormerConfig,
        kv_dim: Option<usize>,
        vb: VarBuilder,
        f32: Option<Kernel>,
        attention: Option<Kernel>,
    ) -> Result<Self> {
        Ok(Self {
            attention: MultiHeadAttention::new(cfg, kv_dim, vb.pp("attention"), f32, attention)?,
            output: DenseNorm::new(cfg.hidden_size, cfg, vb.pp("output"), f32)?,
        })
    }

    fn forward(&self, xs: &Tensor, kv: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        self.output
            .forward(&self.attention.forward(xs, kv, mask)?, xs)
    }

    /// Self-attention of a [`Ragged`] batch (see [`MultiHeadAttention::forward_ragged`]):
    /// `rows` are `xs`, or with `firsts_only` each text's first row (the residual).
    fn forward_ragged(
        &self,
        rows: &Tensor,
        xs: &Tensor,
        ragged: &Ragged,
        mask: &Tensor,
        firsts_only: bool,
    ) -> Result<Tensor> {
        let attended = self
            .attention
            .forward_ragged(xs, ragged, mask, firsts_only)?;
        self.output.forward(&attended, rows)
    }
}

/// `intermediate` + `output` (or their `_query` twins): the feed-forward block.
#[derive(Debug, Clone)]
pub struct FeedForward {
    intermediate: Linear,
    activation: Activation,
    output: DenseNorm,
}

impl FeedForward {
    fn new(
        cfg: &QFormerConfig,
        vb: VarBuilder,
        f32: Option<Kernel>,
        intermediate: &str,
        output: &str,
    ) -> Result<Self> {
        Ok(Self {
            intermediate: Linear::new(
                cfg.hidden_size,
                cfg.intermediate_size,
                vb.pp(intermediate).pp("dense"),
            )?
            .into_packed(f32),
            activation: cfg.hidden_act,
            output: DenseNorm::new(cfg.intermediate_size, cfg, vb.pp(output), f32)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let hidden = self.intermediate.forward_activation(xs, self.activation)?;
        self.output.forward(&hidden, xs)
    }
}

/// `qformer.encoder.layer.{i}`.
#[derive(Debug, Clone)]
pub struct QFormerLayer {
    attention: QFormerAttention,
    crossattention: Option<QFormerAttention>,
    /// `intermediate` + `output`: text tokens' feed-forward (absent without text input).
    text_feed_forward: Option<FeedForward>,
    /// `intermediate_query` + `output_query`: query tokens' feed-forward.
    query_feed_forward: FeedForward,
}

impl QFormerLayer {
    fn new(
        cfg: &QFormerConfig,
        index: usize,
        vb: VarBuilder,
        f32: Option<Kernel>,
        attention: Option<Kernel>,
    ) -> Result<Self> {
        let crossattention = if index.is_multiple_of(cfg.cross_attention_frequency) {
            Some(QFormerAttention::new(
                cfg,
                Some(cfg.encoder_hidden_size),
                vb.pp("crossattention"),
                f32,
                attention,
            )?)
        } else {
            None
        };
        let text_feed_forward =
            if cfg.use_qformer_text_input || vb.contains_tensor("intermediate.dense.weight") {
                Some(FeedForward::new(
                    cfg,
                    vb.clone(),
                    f32,
                    "intermediate",
                    "output",
                )?)
            } else {
                None
            };
        Ok(Self {
            attention: QFormerAttention::new(cfg, None, vb.pp("attention"), f32, attention)?,
            crossattention,
            text_feed_forward,
            query_feed_forward: FeedForward::new(
                cfg,
                vb,
                f32,
                "intermediate_query",
                "output_query",
            )?,
        })
    }

    fn text_ff(&self, xs: &Tensor) -> Result<Tensor> {
        match &self.text_feed_forward {
            Some(ff) => ff.forward(xs),
            None => candle_core::bail!(
                "this checkpoint has no text feed-forward (qformer_config.use_qformer_text_input is false): it cannot embed text"
            ),
        }
    }

    /// A text-only layer over a [`Ragged`] batch xs (1, tokens, hidden); with
    /// `firsts_only`, only each text's first row comes out (1, batch, hidden).
    fn forward_text(
        &self,
        xs: &Tensor,
        ragged: &Ragged,
        mask: &Tensor,
        firsts_only: bool,
    ) -> Result<Tensor> {
        let rows = if firsts_only {
            ragged.firsts(xs)?
        } else {
            xs.clone()
        };
        let attended = self
            .attention
            .forward_ragged(&rows, xs, ragged, mask, firsts_only)?;
        self.text_ff(&attended)
    }

    /// xs (batch, query_len + text_len, hidden): the first `query_len` rows are queries.
    /// `keep` (at least `query_len`): only the first `keep` rows of the output are
    /// computed (every row still serves as a key and value); each row's result is the
    /// same as with all rows.
    fn forward(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
        image: Option<&Tensor>,
        query_len: usize,
        keep: Option<usize>,
    ) -> Result<Tensor> {
        let rows = match keep {
            Some(keep) if keep < xs.dim(1)? => xs.narrow(1, 0, keep)?,
            _ => xs.clone(),
        };
        let attended = self.attention.forward(&rows, xs, mask)?;
        if query_len == 0 {
            return self.text_ff(&attended);
        }
        let mut queries = attended.narrow(1, 0, query_len)?;
        if let Some(cross) = &self.crossattention {
            let image = image
                .ok_or_else(|| candle_core::Error::Msg("cross-attention needs the image".into()))?;
            queries = cross.forward(&queries, image, None)?;
        }
        let queries = self.query_feed_forward.forward(&queries)?;
        let total = attended.dim(1)?;
        if total == query_len {
            return Ok(queries);
        }
        let text = self.text_ff(&attended.narrow(1, query_len, total - query_len)?)?;
        Tensor::cat(&[&queries, &text], 1)
    }
}

/// `qformer`: input LayerNorm and the layer stack.
#[derive(Debug, Clone)]
pub struct QFormerModel {
    layernorm: LayerNorm,
    layer: Vec<QFormerLayer>,
}

impl QFormerModel {
    /// Loads the weights under `qformer.`; with a `linear` [`Kernel`] (on the CPU), its
    /// linear layers are packed for [`qseek_kernels::gemm`]; attention's products run on
    /// the `attention` kernel (an f32 one; `None`: candle's).
    pub fn new(
        cfg: &QFormerConfig,
        vb: VarBuilder,
        linear: Option<Kernel>,
        attention: Option<Kernel>,
    ) -> Result<Self> {
        let layers_vb = vb.pp("encoder").pp("layer");
        let layer = (0..cfg.num_hidden_layers)
            .map(|i| QFormerLayer::new(cfg, i, layers_vb.pp(i), linear, attention))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layernorm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("layernorm"))?,
            layer,
        })
    }

    /// Text only: embeds (batch, len, hidden) with their 0/1 mask (batch, len) → the
    /// last hidden state of each text's first token (batch, hidden), which is what a
    /// text embedding reads. The batch runs [`Ragged`] (no work on padding), and the
    /// last layer computes only the first rows (the others are its keys and values).
    /// With `qseek_kernels::gemm`, each text's numbers do not depend on the batch it came in.
    pub fn forward_text(&self, embeds: &Tensor, mask01: &Tensor) -> Result<Tensor> {
        let ragged = Ragged::new(mask01)?;
        let mask = super::ops::additive_mask(mask01, candle_core::DType::F32)?;
        let mut xs = ragged.unpad(embeds)?.apply(&self.layernorm)?;
        if self.layer.is_empty() {
            xs = ragged.firsts(&xs)?;
        }
        let last = self.layer.len().saturating_sub(1);
        for (i, layer) in self.layer.iter().enumerate() {
            xs = layer.forward_text(&xs, &ragged, &mask, i == last)?;
        }
        xs.squeeze(0)
    }

    /// embeds (batch, query_len + text_len, hidden) → last hidden state, (batch, keep,
    /// hidden): its first `keep` rows, all of them with `None`.
    ///
    /// `mask`: additive self-attention mask (batch, 1, 1, len) or none;
    /// `image`: the ViT output the queries cross-attend to (needed when `query_len > 0`),
    /// (batch, tokens, vision hidden), or (1, tokens, vision hidden) for one image that
    /// every row of the batch attends to (its keys and values are computed once).
    ///
    /// `keep`: the rows the caller reads, at least `query_len` (ITM reads the queries).
    /// The last layer computes only those: the other rows are keys and values of its
    /// self-attention and nothing else. Every operation is per row, so the kept rows are
    /// the same numbers as in the full pass. (Text embeddings go through
    /// [`QFormerModel::forward_text`], which does the same for `[CLS]`.)
    pub fn forward(
        &self,
        embeds: &Tensor,
        mask: Option<&Tensor>,
        image: Option<&Tensor>,
        query_len: usize,
        keep: Option<usize>,
    ) -> Result<Tensor> {
        let mut xs = embeds.apply(&self.layernorm)?;
        let last = self.layer.len().saturating_sub(1);
        for (i, layer) in self.layer.iter().enumerate() {
            xs = layer.forward(&xs, mask, image, query_len, keep.filter(|_| i == last))?;
        }
        match keep {
            Some(keep) if keep < xs.dim(1)? => xs.narrow(1, 0, keep),
            _ => Ok(xs),
        }
    }
}
