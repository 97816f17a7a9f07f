//! The model, its tokenizer and its image pre-processing, loaded together: what every
//! command needs to turn photos and sentences into vectors and scores.

use std::path::Path;

use candle_core::{Device, Tensor};
use qseek_kernels::gemm::Kernels;

use crate::model::{Blip2Config, Blip2ForImageTextRetrieval, Checkpoint, ModelSource, Precision};
use crate::preprocess::image::{ImagePreprocessor, LoadOptions};
use crate::preprocess::text::{TextTokenizer, DEFAULT_MAX_TOKENS};
use crate::{Error, Result};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Where the checkpoint is.
    pub source: ModelSource,
    /// The precision of the vision model (`--dtype`).
    pub dtype: Precision,
    /// Where to run.
    pub device: Device,
    /// Text truncation length, special tokens included.
    pub max_tokens: usize,
    /// Show download progress bars.
    pub progress: bool,
    /// The CPU's GEMM kernel of each format: [`Kernels::chosen`] (the fastest this CPU
    /// runs, or what the `QSEEK_*_GEMM` variables force); tests give others.
    pub kernels: Kernels,
}

impl ModelOptions {
    /// f32 on CPU, 35 tokens, as the reference.
    pub fn new(source: ModelSource) -> Self {
        Self {
            source,
            dtype: Precision::F32,
            device: Device::Cpu,
            max_tokens: DEFAULT_MAX_TOKENS,
            progress: false,
            kernels: Kernels::chosen(),
        }
    }
}

/// Parses `--dtype`.
pub fn parse_dtype(name: &str) -> Result<Precision> {
    Precision::parse(name).ok_or_else(|| {
        Error::Usage(format!(
            "unknown dtype `{name}`: use f32, f16, bf16 or int8"
        ))
    })
}

/// Parses `--device`: `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        _ if name == "cuda" || name.starts_with("cuda:") => {
            let ordinal = match name.strip_prefix("cuda:") {
                Some(n) => n.parse::<usize>().map_err(|_| {
                    Error::Usage(format!(
                        "bad device `{name}`: use cuda:N with N a GPU number"
                    ))
                })?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::Usage(
                    "this qseek was built without CUDA support: rebuild it with `cargo build --release --features cuda`".into(),
                ));
            }
            Device::new_cuda(ordinal)
                .map_err(|e| Error::Usage(format!("cannot use GPU {ordinal}: {e}")))
        }
        other => Err(Error::Usage(format!(
            "unknown device `{other}`: use cpu, cuda or cuda:N"
        ))),
    }
}

/// One image's features.
#[derive(Debug, Clone)]
pub struct ImageEmbedding {
    /// The query vectors, Q rows of D, each L2-normalised.
    pub embeds: Vec<Vec<f32>>,
}

/// A loaded model with its tokenizer and pre-processing.
#[derive(Debug)]
pub struct Embedder {
    /// The checkpoint's files and identity.
    pub checkpoint: Checkpoint,
    /// Its configuration.
    pub config: Blip2Config,
    model: Blip2ForImageTextRetrieval,
    tokenizer: TextTokenizer,
    images: ImagePreprocessor,
}

impl Embedder {
    /// Resolves, checks and loads everything.
    pub fn load(opts: &ModelOptions) -> Result<Self> {
        opts.kernels.check().map_err(Error::Usage)?;
        if !opts.dtype.runs_with(&opts.device, &opts.kernels) {
            // Only int8 fails to run somewhere.
            let why = if !opts.device.is_cpu() {
                ", not a GPU"
            } else if std::env::var("QSEEK_INT8_GEMM").as_deref() == Ok("off") {
                " (QSEEK_INT8_GEMM is off)"
            } else {
                ", which this one lacks"
            };
            return Err(Error::Usage(format!(
                "--dtype {} needs an x86-64 CPU with AVX2 (Intel from Haswell on, AMD from Zen on), fastest with int8 dot products (AVX512-VNNI or AVX-VNNI){why}: use bf16 or f32",
                opts.dtype
            )));
        }
        let checkpoint = Checkpoint::resolve(&opts.source, opts.progress)?;
        let config = checkpoint.read_config()?;
        let images = ImagePreprocessor::from_file(&checkpoint.preprocessor)?;
        let s = config.vision_config.image_size as u32;
        if images.image_size() != (s, s) {
            let (h, w) = images.image_size();
            return Err(Error::Checkpoint {
                path: checkpoint.preprocessor.clone(),
                reason: format!(
                    "resizes to {w}x{h} but config.json's vision_config.image_size is {s}"
                ),
            });
        }
        let tokenizer = match (&checkpoint.tokenizer, &checkpoint.vocab) {
            (Some(t), _) => TextTokenizer::from_file(t, opts.max_tokens)?,
            (None, Some(v)) => TextTokenizer::from_vocab(v, opts.max_tokens)?,
            (None, None) => unreachable!("Checkpoint::resolve requires one of them"),
        };
        let vocab = config.qformer_config.vocab_size;
        if tokenizer.vocab_size() > vocab {
            return Err(Error::Checkpoint {
                path: checkpoint
                    .tokenizer
                    .clone()
                    .or(checkpoint.vocab.clone())
                    .unwrap_or_default(),
                reason: format!(
                    "has {} tokens but the model's qformer_config.vocab_size is {vocab}",
                    tokenizer.vocab_size()
                ),
            });
        }
        if opts.max_tokens > config.qformer_config.max_position_embeddings {
            return Err(crate::error::BadRequest::TooManyTokens {
                asked: opts.max_tokens,
                positions: config.qformer_config.max_position_embeddings,
            }
            .into());
        }
        let model = checkpoint.load_model(&config, opts.dtype, &opts.device, opts.kernels)?;
        Ok(Self {
            checkpoint,
            config,
            model,
            tokenizer,
            images,
        })
    }

    /// The model itself, for callers that batch their own tensors.
    pub fn model(&self) -> &Blip2ForImageTextRetrieval {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The image pre-processing.
    pub fn image_preprocessor(&self) -> &ImagePreprocessor {
        &self.images
    }

    /// Decodes and pre-processes one image file: CHW pixel values.
    pub fn pixel_values(&self, path: &Path, opts: &LoadOptions) -> Result<Vec<f32>> {
        self.images.load(path, opts)
    }

    /// Stacks pre-processed images into a (batch, 3, S, S) tensor on the model's device.
    pub fn pixel_batch(&self, images: &[Vec<f32>]) -> Result<Tensor> {
        let s = self.config.vision_config.image_size;
        let flat: Vec<f32> = images.iter().flatten().copied().collect();
        Ok(Tensor::from_vec(
            flat,
            (images.len(), 3, s, s),
            self.model.device(),
        )?)
    }

    /// pixel batch → (vision features (batch, tokens, hidden) f32, query vectors
    /// (batch, Q, D) L2-normalised).
    pub fn embed_pixels(&self, pixel_values: &Tensor) -> Result<(Tensor, Tensor)> {
        let vision = self.model.vision_features(pixel_values)?;
        let embeds = self.model.image_embeds(&vision)?;
        Ok((vision, embeds))
    }

    /// Token ids of each text (after LAVIS's caption normalisation).
    pub fn tokenize(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        texts.iter().map(|t| self.tokenizer.encode(t)).collect()
    }

    /// Text embeddings (texts, D), L2-normalised.
    pub fn embed_token_ids(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let (input_ids, mask) = self.tokenizer.batch(ids, self.model.device())?;
        Ok(self.model.text_embeds(&input_ids, &mask)?)
    }

    /// ITM logits (pairs, 2) for vision features (pairs, tokens, hidden) and one id
    /// list per pair; or for one image's features (1, tokens, hidden) with every id list
    /// (its cross-attention keys and values computed once: give one image many texts
    /// this way, not repeated).
    pub fn itm_logits(&self, vision: &Tensor, ids: &[Vec<u32>]) -> Result<Tensor> {
        let (input_ids, mask) = self.tokenizer.batch(ids, self.model.device())?;
        Ok(self.model.itm_logits(vision, &input_ids, &mask)?)
    }
}
