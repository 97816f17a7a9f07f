//! `vision_model`: the EVA ViT image encoder (`Blip2VisionModel`).

use candle_core::{Module, Result, Tensor};
use candle_nn::{layer_norm, Activation, LayerNorm, VarBuilder};

use super::config::VisionConfig;
use super::ops::{multi_head_attention, Linear, RowCoding};
use qseek_kernels::gemm::Kernel;

/// `vision_model.embeddings`: patches, `[CLS]` and learned positions.
#[derive(Debug, Clone)]
pub struct VisionEmbeddings {
    class_embedding: Tensor,
    /// The patch convolution's weight as a matrix (hidden, 3·p·p).
    patch_embedding: Linear,
    position_embedding: Tensor,
    patch_size: usize,
    grid: usize,
}

impl VisionEmbeddings {
    fn new(cfg: &VisionConfig, vb: VarBuilder, packed: Option<Kernel>) -> Result<Self> {
        let (h, p) = (cfg.hidden_size, cfg.patch_size);
        let class_embedding = vb.get((1, 1, h), "class_embedding")?;
        let conv = vb.pp("patch_embedding");
        let weight = conv.get((h, 3, p, p), "weight")?.reshape((h, 3 * p * p))?;
        let bias = conv.get(h, "bias")?;
        let position_embedding = vb.get((1, cfg.num_positions(), h), "position_embedding")?;
        Ok(Self {
            class_embedding,
            patch_embedding: Linear::from_parts(weight, Some(bias)).into_packed(packed),
            position_embedding,
            patch_size: p,
            grid: cfg.grid(),
        })
    }

    /// (batch, 3, S, S) → (batch, 1 + grid², hidden).
    fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, c, _, _) = pixel_values.dims4()?;
        let (g, p) = (self.grid, self.patch_size);
        // A convolution whose stride equals its kernel is a matmul over flattened patches;
        // like the convolution, it ignores pixels past the last whole patch.
        let patches = pixel_values
            .narrow(2, 0, g * p)?
            .narrow(3, 0, g * p)?
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, g * g, c * p * p))?;
        let patch_embeds = self.patch_embedding.forward(&patches)?;
        let class = self
            .class_embedding
            .broadcast_as((b, 1, self.class_embedding.dim(2)?))?;
        Tensor::cat(&[&class, &patch_embeds], 1)?.broadcast_add(&self.position_embedding)
    }
}

/// `self_attn`: multi-head self-attention with a fused qkv projection.
#[derive(Debug, Clone)]
pub struct Attention {
    qkv: Linear,
    projection: Linear,
    /// The kernel of attention's two products: the ViT's (bf16 under bf16, and under int8
    /// on a CPU with AVX512-BF16), or on the CPU in f32 the model's f32 one.
    kernel: Option<Kernel>,
    num_heads: usize,
    scale: f64,
}

impl Attention {
    /// `linear`: the kernel of `qkv` and `projection`; `packed`: of attention's products;
    /// `exact`: the inputs of `qkv` an int8 kernel multiplies in f32.
    fn new(
        cfg: &VisionConfig,
        vb: VarBuilder,
        packed: Option<Kernel>,
        linear: Option<Kernel>,
        exact: Vec<usize>,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let qkv_vb = vb.pp("qkv");
        let weight = qkv_vb.get((3 * h, h), "weight")?;
        let bias = if qkv_vb.contains_tensor("bias") {
            Some(qkv_vb.get(3 * h, "bias")?)
        } else if vb.contains_tensor("q_bias") || vb.contains_tensor("v_bias") {
            // The original LAVIS/EVA layout (and the hub checkpoints): separate q and v
            // biases, and no key bias at all.
            let q = vb.get(h, "q_bias")?;
            let v = vb.get(h, "v_bias")?;
            Some(Tensor::cat(&[&q, &q.zeros_like()?, &v], 0)?)
        } else if cfg.qkv_bias {
            // Neither naming present: report the standard name as missing.
            Some(qkv_vb.get(3 * h, "bias")?)
        } else {
            None
        };
        Ok(Self {
            qkv: Linear::from_parts(weight, bias)
                .into_packed_coded(linear, RowCoding { exact, fine: false }),
            // Its rows are the heads' outputs side by side: a sharp head's (one value
            // row) beside a diffuse one's (the mean of many), which one int8 step per
            // row would leave a few codes (measured in benches/README.md, "outliers").
            projection: Linear::new(h, h, vb.pp("projection"))?.into_packed_coded(
                linear,
                RowCoding {
                    exact: Vec::new(),
                    fine: true,
                },
            ),
            kernel: packed,
            num_heads: cfg.num_attention_heads,
            scale: ((h / cfg.num_attention_heads) as f64).powf(-0.5),
        })
    }

    /// `residual + self_attn(xs)`.
    fn forward(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let h = xs.dim(2)?;
        let qkv = self.qkv.forward(xs)?;
        let part = |i: usize| qkv.narrow(2, i * h, h);
        let out = multi_head_attention(
            self.kernel,
            &part(0)?,
            &part(1)?,
            &part(2)?,
            self.num_heads,
            self.scale,
            None,
        )?;
        self.projection.forward_residual(&out, residual)
    }
}

/// `mlp`: fc1 → activation → fc2.
#[derive(Debug, Clone)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
}

impl Mlp {
    /// `exact`: the inputs of `fc1` an int8 kernel multiplies in f32.
    fn new(
        cfg: &VisionConfig,
        vb: VarBuilder,
        packed: Option<Kernel>,
        exact: Vec<usize>,
    ) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            fc1: Linear::new(h, i, vb.pp("fc1"))?
                .into_packed_coded(packed, RowCoding { exact, fine: false }),
            fc2: Linear::new(i, h, vb.pp("fc2"))?.into_packed(packed),
            activation: cfg.hidden_act,
        })
    }

    /// `residual + mlp(xs)`.
    fn forward(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.fc2
            .forward_residual(&self.fc1.forward_activation(xs, self.activation)?, residual)
    }
}

/// `encoder.layers.{i}`: pre-norm transformer block.
#[derive(Debug, Clone)]
pub struct EncoderLayer {
    self_attn: Attention,
    layer_norm1: LayerNorm,
    mlp: Mlp,
    layer_norm2: LayerNorm,
}

impl EncoderLayer {
    fn new(
        cfg: &VisionConfig,
        vb: VarBuilder,
        packed: Option<Kernel>,
        linear: Option<Kernel>,
    ) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let layer_norm1 = layer_norm(h, eps, vb.pp("layer_norm1"))?;
        let layer_norm2 = layer_norm(h, eps, vb.pp("layer_norm2"))?;
        // An int8 kernel codes each row of qkv's and fc1's inputs (the layer norms'
        // outputs): the channels a norm's own weights make large go through f32.
        let codes = linear.is_some_and(|k| k.format().codes_rows());
        let exact = |norm: &LayerNorm| -> Result<Vec<usize>> {
            if codes {
                large_channels(norm)
            } else {
                Ok(Vec::new())
            }
        };
        Ok(Self {
            self_attn: Attention::new(
                cfg,
                vb.pp("self_attn"),
                packed,
                linear,
                exact(&layer_norm1)?,
            )?,
            mlp: Mlp::new(cfg, vb.pp("mlp"), linear, exact(&layer_norm2)?)?,
            layer_norm1,
            layer_norm2,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.self_attn.forward(&xs.apply(&self.layer_norm1)?, xs)?;
        self.mlp.forward(&xs.apply(&self.layer_norm2)?, &xs)
    }
}

/// A layer norm's output channels that its weight and bias make large in every row: those
/// whose `3·|weight| + |bias|` (the output of a value 3 σ from the row's mean) is over
/// [`LARGE_CHANNEL`] times the median channel's, at most [`MAX_LARGE_CHANNELS`] (the
/// largest). Trained ViTs and LLMs have a few such channels at 10–100× the rest, which
/// would otherwise set the step of every row an int8 kernel codes; a random checkpoint
/// (weights 1 ± 0.2) has none. A norm of zeros (a shapes-only check) has none.
pub fn large_channels(norm: &LayerNorm) -> Result<Vec<usize>> {
    let weight = norm
        .weight()
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?;
    let bias = match norm.bias() {
        Some(b) => b.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?,
        None => vec![0.0; weight.len()],
    };
    let size: Vec<f32> = weight
        .iter()
        .zip(&bias)
        .map(|(w, b)| 3.0 * w.abs() + b.abs())
        .collect();
    let mut sorted = size.clone();
    sorted.sort_by(f32::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    if median.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return Ok(Vec::new());
    }
    let mut large: Vec<usize> = (0..size.len())
        .filter(|&c| size[c] > LARGE_CHANNEL * median)
        .collect();
    large.sort_by(|&a, &b| size[b].total_cmp(&size[a]).then(a.cmp(&b)));
    large.truncate(MAX_LARGE_CHANNELS);
    large.sort_unstable();
    Ok(large)
}

/// See [`large_channels`]: a channel 6× the median's is one whose rows' step it would set
/// (it reaches 6·3 σ where the others reach 3 σ).
const LARGE_CHANNEL: f32 = 6.0;
/// See [`large_channels`]: their f32 weight columns cost 4·n bytes each.
const MAX_LARGE_CHANNELS: usize = 32;

/// `vision_model`: embeddings → encoder → `post_layernorm`.
#[derive(Debug, Clone)]
pub struct VisionModel {
    embeddings: VisionEmbeddings,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
}

impl VisionModel {
    /// Loads the weights under `vision_model.`, in `vb`'s dtype. With a `packed` kernel
    /// (and an f32 `vb`) every linear layer (the patch embedding, qkv, projection, fc1,
    /// fc2) is computed by [`qseek_kernels::gemm`] with that kernel, fc1's
    /// GELU fused: a bf16 kernel rounds weights and inputs to bf16 and sums in f32. The
    /// attention's two products run in the same kernel (a bf16 one rounds q, k, v and the
    /// probabilities); all else stays f32. `layers`, where given, is the kernel of the
    /// encoder layers' linear layers (qkv, projection, fc1, fc2; not the patch
    /// embedding) instead: int8 ([`Precision::Int8`](super::Precision::Int8)). Without a
    /// `packed` kernel, attention's products run on `f32` (where the ViT is f32 on the
    /// CPU; `None`: candle's).
    pub fn new(
        cfg: &VisionConfig,
        vb: VarBuilder,
        packed: Option<Kernel>,
        layers: Option<Kernel>,
        f32: Option<Kernel>,
    ) -> Result<Self> {
        let linear = layers.or(packed);
        let attention = packed.or(f32);
        let layers_vb = vb.pp("encoder").pp("layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(cfg, layers_vb.pp(i), attention, linear))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: VisionEmbeddings::new(cfg, vb.pp("embeddings"), packed)?,
            layers,
            post_layernorm: layer_norm(
                cfg.hidden_size,
                cfg.layer_norm_eps,
                vb.pp("post_layernorm"),
            )?,
        })
    }

    /// (batch, 3, S, S) → `last_hidden_state` (batch, 1 + grid², hidden), post-layernorm.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let mut xs = self.embeddings.forward(pixel_values)?;
        for layer in &self.layers {
            xs = layer.forward(&xs)?;
        }
        xs.apply(&self.post_layernorm)
    }
}
