//! `Blip2ForImageTextRetrieval`: the first-stage BLIP-2 model, ITC and ITM heads.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::config::Blip2Config;
use super::gradcam::{GradCam, ItmGradCam};
use super::lazy::Lazy;
use super::on_compute_pool;
use super::ops::{additive_mask, l2_normalize, Linear};
use super::qformer::{QFormerModel, TextEmbeddings};
use super::vision::VisionModel;
use super::Precision;
use qseek_kernels::gemm::Kernels;

/// The whole retrieval model, its fields named as the checkpoint's top-level keys.
///
/// The vision model runs in the chosen dtype; everything after it (query tokens, text
/// `embeddings`, `qformer`, the two projections and `itm_head`) runs in f32, so that
/// f16/bf16 only approximate the expensive part (bf16 on an AVX512-BF16 CPU also runs
/// ITM's Q-Former in bf16: below).
///
/// This is not what transformers' half mode computes. Loaded with `dtype=float16` (or
/// bf16), transformers keeps only `query_tokens` and `qformer` in f32
/// (`_keep_in_fp32_modules`) and rounds the rest to half precision: the text
/// `embeddings` (word/position embeddings and their layer norm), `vision_projection`,
/// `text_projection` and `itm_head`. qseek keeps those in f32 as well: they cost nothing
/// next to the ViT, and in f32 the only difference from the f32 reference is the ViT's.
/// qseek's half modes are therefore closer to f32 than transformers' half mode is.
///
/// bf16 on a CPU with AVX512-BF16 goes further ([`qseek_kernels::gemm`]): only
/// the ViT's linear layers and its attention's two products round their inputs
/// (weights, activations, q, k, v and the probabilities) to bf16, with exact products
/// summed in f32; the ViT's activations, layer norms, softmax and GELU stay f32.
/// `QSEEK_BF16_GEMM=off` (or a CPU without AVX512-BF16) gives candle's bf16, where the
/// whole ViT computes in bf16.
///
/// There, ITM ([`itm_logits`](Self::itm_logits)) also runs the Q-Former's linear layers
/// in bf16 the same way (a second copy of the Q-Former, read at the first ITM call):
/// ITM is a query's cost, and its rerank score is a logit, not a stored vector. The image query pass and the text pass stay f32, so a text
/// embedding is f32's exactly, and a stored query vector differs from f32's only
/// through the ViT.
///
/// int8 ([`Precision::Int8`]) computes the ViT encoder layers' linear layers (qkv,
/// projection, fc1, fc2: all its linear work but the patch embedding) through
/// `qseek_kernels::gemm`'s int8 formats on a CPU with VNNI (AVX512-VNNI, or AVX-VNNI beside AVX2),
/// or with AVX2 alone (the codes widened to i16, `vpmaddwd`): weights rounded to int8 per
/// output channel, each token's activations to int8 per token, the products of the codes
/// summed exactly in i32. The rest is bf16's where the
/// CPU has AVX512-BF16 (ITM included), else f32's: the patch embedding, attention's
/// products and ITM in f32, through `qseek_kernels::gemm`'s f32 kernel. The patch embedding is
/// never int8: with it in int8 too, one ITM rank of the eval fixture moved.
///
/// On a CPU with AVX2 or AVX-512, every linear layer after the ViT (the Q-Former's, the
/// projections, `itm_head`), and the ViT's own in f32, compute in f32 through
/// [`qseek_kernels::gemm`] over weights packed once, at each layer's first
/// call (`QSEEK_F32_GEMM=off` gives candle's GEMM).
#[derive(Debug, Clone)]
pub struct Blip2ForImageTextRetrieval {
    /// Read from the checkpoint at the first image (checked against it at load): a
    /// text search never reads the ViT's ~4 GB.
    vision_model: Arc<Lazy<VisionModel>>,
    /// (1, num_query_tokens, qformer hidden).
    query_tokens: Tensor,
    embeddings: TextEmbeddings,
    qformer: QFormerModel,
    vision_projection: Linear,
    text_projection: Linear,
    itm_head: Linear,
    /// The Q-Former that [`itm_logits`](Self::itm_logits) runs in bf16 mode on a CPU
    /// with a bf16 [`Kernel`](qseek_kernels::gemm::Kernel): the checkpoint's again, every linear layer packed in
    /// bf16, read at the first ITM call, so a process that never reranks never holds
    /// it (~2 bytes per Q-Former weight). `None` elsewhere (ITM then runs `qformer`).
    itm_qformer: Option<Arc<Lazy<QFormerModel>>>,
    /// The ITM pass again in ops with a backward pass, for
    /// [`itm_gradcam`](Self::itm_gradcam): read from the checkpoint (f32) at the first
    /// explanation, so a process that never explains never holds it.
    itm_gradcam: Arc<Lazy<ItmGradCam>>,
    /// The precision asked for.
    precision: Precision,
    /// The dtype of the ViT's activations: `dtype`, or f32 where `qseek_kernels::gemm` computes
    /// the linear layers.
    vision_dtype: DType,
    num_query_tokens: usize,
    /// D, the width of a text embedding.
    image_text_hidden: usize,
}

impl Blip2ForImageTextRetrieval {
    /// Builds the model from `vb` (rooted at the checkpoint's top level); the vision
    /// model's weights are converted to `dtype`, the rest to f32. bf16 on the CPU with a
    /// bf16 [`Kernel`](qseek_kernels::gemm::Kernel) packs the ViT's linear weights in bf16 and keeps the rest of the
    /// ViT in f32; on the CPU with an f32 [`Kernel`](qseek_kernels::gemm::Kernel) the linear layers after the ViT (and
    /// the ViT's, in f32) are packed in f32.
    ///
    /// The ViT is checked now against `shapes` (the same checkpoint's names and shapes,
    /// without data: [`SafetensorsFiles::shapes_only`](super::weights::SafetensorsFiles::shapes_only)),
    /// so a broken checkpoint fails here with the same error, and read from `vb` at its
    /// first use.
    ///
    /// `kernels`: the CPU's kernel of each format ([`Kernels::chosen`] by default; a kernel
    /// this CPU lacks, or of another format, is refused).
    pub fn new(
        cfg: &Blip2Config,
        vb: VarBuilder<'static>,
        shapes: VarBuilder<'static>,
        precision: Precision,
        kernels: Kernels,
    ) -> Result<Self> {
        if let Err(why) = kernels.check() {
            candle_core::bail!("{why}");
        }
        let dtype = precision.dtype();
        let q = &cfg.qformer_config;
        let f32_vb = vb.clone().set_dtype(DType::F32);
        let cpu = vb.device().is_cpu();
        let bf16 = kernels.bf16.filter(|_| dtype == DType::BF16 && cpu);
        let f32 = kernels.f32.filter(|_| cpu);
        let proj = |name: &str, out: usize| {
            Linear::new(q.hidden_size, out, f32_vb.pp(name)).map(|l| l.into_packed(f32))
        };
        // int8: the encoder layers' linear kernel, on a CPU that has it; the rest as bf16
        // with a bf16 kernel, else as f32.
        let layers_kernel = match precision {
            Precision::Int8 if !precision.runs_with(vb.device(), &kernels) => {
                candle_core::bail!("int8 runs on a CPU with an int8 kernel of qseek_kernels::gemm")
            }
            Precision::Int8 => kernels.int8,
            _ => None,
        };
        let vision_dtype = if bf16.is_some() || layers_kernel.is_some() {
            DType::F32
        } else {
            dtype
        };
        // The ViT's linear layers: bf16-packed for bf16, f32-packed for f32 (its GELU
        // then fused into fc1) and for int8 without bf16, candle's for f16 and on a GPU.
        let vision_kernel = bf16.or(f32.filter(|_| vision_dtype == DType::F32));
        let vision_cfg = cfg.vision_config.clone();
        VisionModel::new(
            &vision_cfg,
            shapes.set_dtype(vision_dtype).pp("vision_model"),
            vision_kernel,
            layers_kernel,
            f32,
        )?;
        let vision_vb = vb.set_dtype(vision_dtype).pp("vision_model");
        let vision_model = Lazy::new("vision_model", move || {
            VisionModel::new(
                &vision_cfg,
                vision_vb.clone(),
                vision_kernel,
                layers_kernel,
                f32,
            )
        });
        Ok(Self {
            vision_model: Arc::new(vision_model),
            query_tokens: f32_vb.get((1, cfg.num_query_tokens, q.hidden_size), "query_tokens")?,
            embeddings: TextEmbeddings::new(q, f32_vb.pp("embeddings"))?,
            qformer: QFormerModel::new(q, f32_vb.pp("qformer"), f32, f32)?,
            vision_projection: proj("vision_projection", cfg.image_text_hidden_size)?,
            text_projection: proj("text_projection", cfg.image_text_hidden_size)?,
            itm_head: proj("itm_head", 2)?,
            itm_qformer: bf16.map(|kernel| {
                let (q, vb) = (q.clone(), f32_vb.pp("qformer"));
                Arc::new(Lazy::new("itm_qformer", move || {
                    QFormerModel::new(&q, vb.clone(), Some(kernel), f32)
                }))
            }),
            itm_gradcam: {
                let (cfg, vb) = (cfg.clone(), f32_vb.clone());
                Arc::new(Lazy::new("itm_gradcam", move || {
                    ItmGradCam::new(&cfg, vb.clone())
                }))
            },
            precision,
            vision_dtype,
            num_query_tokens: cfg.num_query_tokens,
            image_text_hidden: cfg.image_text_hidden_size,
        })
    }

    /// The precision asked for (`--dtype`).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.query_tokens.device()
    }

    /// pixel_values (batch, 3, S, S), any float dtype → the ViT's `last_hidden_state`
    /// (batch, 1 + grid², vision hidden), post-layernorm, in f32. ITM needs it later.
    pub fn vision_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.on_compute_pool(|| {
            self.vision_model
                .get()?
                .forward(&pixel_values.to_dtype(self.vision_dtype)?)?
                .to_dtype(DType::F32)
        })
    }

    /// Reads the vision model now if it is not yet (it is read at the first image
    /// otherwise): a server does it at start, in the background, so that its first
    /// image search does not wait for it.
    pub fn load_vision(&self) -> Result<()> {
        self.vision_model.get().map(|_| ())
    }

    /// Whether the vision model has been read.
    pub fn vision_is_loaded(&self) -> bool {
        self.vision_model.is_built()
    }

    /// Runs a forward pass `op` on the compute pool as one job ([`on_compute_pool`]),
    /// on the CPU; elsewhere on this thread (a GPU's work is queued from here).
    fn on_compute_pool<R: Send>(&self, op: impl FnOnce() -> Result<R> + Send) -> Result<R> {
        if self.device().is_cpu() {
            on_compute_pool(op)
        } else {
            op()
        }
    }

    fn queries(&self, batch: usize) -> Result<Tensor> {
        let (_, q, h) = self.query_tokens.dims3()?;
        self.query_tokens.broadcast_as((batch, q, h))
    }

    /// vision features (batch, tokens, vision hidden) → the image's query vectors
    /// (batch, num_query_tokens, image_text_hidden_size), L2-normalised.
    pub fn image_embeds(&self, vision: &Tensor) -> Result<Tensor> {
        self.on_compute_pool(|| {
            let vision = vision.to_dtype(DType::F32)?;
            let queries = self.queries(vision.dim(0)?)?;
            let out =
                self.qformer
                    .forward(&queries, None, Some(&vision), self.num_query_tokens, None)?;
            l2_normalize(&self.vision_projection.forward(&out)?)
        })
    }

    /// input_ids (batch, len) u32 and attention_mask (batch, len) 0/1 → the `[CLS]`
    /// text embeddings (batch, image_text_hidden_size), L2-normalised.
    pub fn text_embeds(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        if input_ids.dim(0)? == 0 {
            return Tensor::zeros((0, self.image_text_hidden), DType::F32, self.device());
        }
        self.on_compute_pool(|| {
            let embeds = self.embeddings.forward(input_ids)?;
            let cls = self.qformer.forward_text(&embeds, attention_mask)?;
            l2_normalize(&self.text_projection.forward(&cls)?)
        })
    }

    /// ITM logits `[no match, match]` (batch, 2) for pairs: vision features
    /// (batch, tokens, vision hidden) with input_ids/attention_mask (batch, len). Vision
    /// features (1, tokens, vision hidden) pair one image with every text: its
    /// cross-attention keys and values are then computed once, not once per text.
    pub fn itm_logits(
        &self,
        vision: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        if input_ids.dim(0)? == 0 {
            return Tensor::zeros((0, 2), DType::F32, self.device());
        }
        self.on_compute_pool(|| {
            let vision = vision.to_dtype(DType::F32)?;
            let batch = input_ids.dim(0)?;
            if vision.dim(0)? != batch && vision.dim(0)? != 1 {
                candle_core::bail!(
                    "ITM of {} images with {batch} texts: give one image, or one per text",
                    vision.dim(0)?
                );
            }
            let queries = self.queries(batch)?;
            let text = self.embeddings.forward(input_ids)?;
            let embeds = Tensor::cat(&[&queries, &text], 1)?;
            let query_mask = Tensor::ones(
                (batch, self.num_query_tokens),
                attention_mask.dtype(),
                attention_mask.device(),
            )?;
            let mask = additive_mask(&Tensor::cat(&[&query_mask, attention_mask], 1)?, DType::F32)?;
            let qformer = match &self.itm_qformer {
                Some(itm) => itm.get()?,
                None => &self.qformer,
            };
            let out = qformer.forward(
                &embeds,
                Some(&mask),
                Some(&vision),
                self.num_query_tokens,
                Some(self.num_query_tokens),
            )?;
            let logits = self.itm_head.forward(&out)?;
            logits.mean(1)
        })
    }
}

impl Blip2ForImageTextRetrieval {
    /// The ITM Grad-CAM (see [`super::gradcam`]) of one image's vision features
    /// (1, 1 + grid², vision hidden) with one text's token ids, at the cross-attention
    /// layer `layer` (`qformer.encoder.layer.{layer}`; [`super::gradcam::default_layer`]
    /// is the default). Runs in f32 through candle's ops and autograd, not the packed
    /// kernels: seconds for the full model, where an ITM score takes milliseconds.
    pub fn itm_gradcam(&self, vision: &Tensor, ids: &[u32], layer: usize) -> Result<GradCam> {
        self.on_compute_pool(|| self.itm_gradcam.get()?.forward(vision, ids, layer))
    }
}

/// ITC similarity: for image query vectors (images, Q, D) and text embeddings
/// (texts, D), the max over the Q queries of the cosine → (images, texts).
pub fn itc_scores(image_embeds: &Tensor, text_embeds: &Tensor) -> Result<Tensor> {
    let (n, q, d) = image_embeds.dims3()?;
    let sims = image_embeds
        .reshape((n * q, d))?
        .matmul(&text_embeds.t()?)?;
    sims.reshape((n, q, text_embeds.dim(0)?))?.max(D::Minus2)
}
