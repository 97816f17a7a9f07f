//! `config.json` of a `Blip2ForImageTextRetrieval` checkpoint.
//!
//! Hub checkpoints are written by `save_pretrained`, which stores only the keys that
//! differ from transformers' defaults (the real `Salesforce/blip2-itm-vit-g` config
//! leaves out nearly every size, since the defaults *are* ViT-g). So a missing key takes
//! transformers' default, exactly as `from_pretrained` would, and is remembered in
//! [`Blip2Config::defaulted`]: when a tensor then has the wrong shape, the error can
//! say which missing key was the likely cause.

use std::path::{Path, PathBuf};

use candle_nn::Activation;
use serde_json::{Map, Value};

use crate::{Error, Result};

/// `vision_config`: the EVA ViT (defaults are ViT-g/14 at 224 px).
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    /// Width of the ViT (1408 for ViT-g).
    pub hidden_size: usize,
    /// MLP width (6144 for ViT-g).
    pub intermediate_size: usize,
    /// Number of encoder layers (39 for ViT-g as used by BLIP-2).
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Input side in pixels (224, or 364 for the `-coco` checkpoint).
    pub image_size: usize,
    /// Patch side in pixels.
    pub patch_size: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Whether the fused qkv projection has a bias.
    pub qkv_bias: bool,
}

impl VisionConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens the ViT outputs per image: patches plus `[CLS]` (257 for ViT-g at 224 px).
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

/// `qformer_config`: the BERT-style Querying Transformer.
#[derive(Debug, Clone, PartialEq)]
pub struct QFormerConfig {
    /// Vocabulary size (30523 for BLIP-2: bert-base-uncased plus `[DEC]`).
    pub vocab_size: usize,
    /// Width of the Q-Former (768).
    pub hidden_size: usize,
    /// Number of layers (12).
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Feed-forward activation.
    pub hidden_act: Activation,
    /// Longest text the position embeddings cover.
    pub max_position_embeddings: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Id of `[PAD]`.
    pub pad_token_id: u32,
    /// Layer `i` cross-attends to the image when `i % cross_attention_frequency == 0`.
    pub cross_attention_frequency: usize,
    /// Width of the vision features the cross-attention reads.
    pub encoder_hidden_size: usize,
    /// Whether the layers have the text feed-forward (`intermediate`/`output`).
    pub use_qformer_text_input: bool,
}

/// The whole `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Blip2Config {
    /// The image encoder.
    pub vision_config: VisionConfig,
    /// The Q-Former.
    pub qformer_config: QFormerConfig,
    /// Learned queries per image (32).
    pub num_query_tokens: usize,
    /// Width of the ITC embedding space (256).
    pub image_text_hidden_size: usize,
    /// Keys absent from the file, for which transformers' default was used
    /// (dotted paths such as `vision_config.image_size`).
    pub defaulted: Vec<String>,
}

impl Blip2Config {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    /// Parses the text of `config.json`; `path` is only used in error messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: format!("not valid JSON: {e}"),
        })?;
        let mut r = Reader {
            path: path.to_path_buf(),
            defaulted: Vec::new(),
        };
        let top = r.object(&value, "")?;
        if let Some(Value::Number(_)) = top.get("image_token_index") {
            return Err(r.error(
                "image_token_index",
                "is set: this is a generation checkpoint (Blip2ForConditionalGeneration), not an image-text retrieval one",
            ));
        }
        let empty = Value::Object(Map::new());
        let vision = r.object(top.get("vision_config").unwrap_or(&empty), "vision_config")?;
        let qformer = r.object(
            top.get("qformer_config").unwrap_or(&empty),
            "qformer_config",
        )?;

        let v = "vision_config.";
        let vision_config = VisionConfig {
            hidden_size: r.usize(vision, v, "hidden_size", 1408)?,
            intermediate_size: r.usize(vision, v, "intermediate_size", 6144)?,
            num_hidden_layers: r.usize(vision, v, "num_hidden_layers", 39)?,
            num_attention_heads: r.usize(vision, v, "num_attention_heads", 16)?,
            image_size: r.usize(vision, v, "image_size", 224)?,
            patch_size: r.usize(vision, v, "patch_size", 14)?,
            hidden_act: r.activation(vision, v, "hidden_act")?,
            layer_norm_eps: r.f64(vision, v, "layer_norm_eps", 1e-6)?,
            qkv_bias: r.bool(vision, v, "qkv_bias", true)?,
        };
        let q = "qformer_config.";
        let qformer_config = QFormerConfig {
            vocab_size: r.usize(qformer, q, "vocab_size", 30522)?,
            hidden_size: r.usize(qformer, q, "hidden_size", 768)?,
            num_hidden_layers: r.usize(qformer, q, "num_hidden_layers", 12)?,
            num_attention_heads: r.usize(qformer, q, "num_attention_heads", 12)?,
            intermediate_size: r.usize(qformer, q, "intermediate_size", 3072)?,
            hidden_act: r.activation(qformer, q, "hidden_act")?,
            max_position_embeddings: r.usize(qformer, q, "max_position_embeddings", 512)?,
            layer_norm_eps: r.f64(qformer, q, "layer_norm_eps", 1e-12)?,
            pad_token_id: r.usize(qformer, q, "pad_token_id", 0)? as u32,
            cross_attention_frequency: r.usize(qformer, q, "cross_attention_frequency", 2)?,
            encoder_hidden_size: r.usize(qformer, q, "encoder_hidden_size", 1408)?,
            use_qformer_text_input: r.bool(qformer, q, "use_qformer_text_input", false)?,
        };
        let config = Blip2Config {
            num_query_tokens: r.usize(top, "", "num_query_tokens", 32)?,
            image_text_hidden_size: r.usize(top, "", "image_text_hidden_size", 256)?,
            vision_config,
            qformer_config,
            defaulted: Vec::new(),
        };
        let config = Blip2Config {
            defaulted: r.defaulted.clone(),
            ..config
        };
        config.validate(&r)?;
        Ok(config)
    }

    fn validate(&self, r: &Reader) -> Result<()> {
        let (v, q) = (&self.vision_config, &self.qformer_config);
        let positive = [
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.num_hidden_layers", v.num_hidden_layers),
            ("vision_config.patch_size", v.patch_size),
            ("vision_config.image_size", v.image_size),
            ("qformer_config.hidden_size", q.hidden_size),
            ("qformer_config.num_attention_heads", q.num_attention_heads),
            (
                "qformer_config.cross_attention_frequency",
                q.cross_attention_frequency,
            ),
            ("num_query_tokens", self.num_query_tokens),
            ("image_text_hidden_size", self.image_text_hidden_size),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(r.error(key, "must be positive"));
            }
        }
        if v.hidden_size % v.num_attention_heads != 0 {
            return Err(r.error(
                "vision_config.num_attention_heads",
                &format!(
                    "{} does not divide hidden_size {}",
                    v.num_attention_heads, v.hidden_size
                ),
            ));
        }
        if q.hidden_size % q.num_attention_heads != 0 {
            return Err(r.error(
                "qformer_config.num_attention_heads",
                &format!(
                    "{} does not divide hidden_size {}",
                    q.num_attention_heads, q.hidden_size
                ),
            ));
        }
        if v.patch_size > v.image_size {
            return Err(r.error(
                "vision_config.patch_size",
                &format!(
                    "{} is larger than image_size {}",
                    v.patch_size, v.image_size
                ),
            ));
        }
        if q.encoder_hidden_size != v.hidden_size {
            return Err(r.error(
                "qformer_config.encoder_hidden_size",
                &format!(
                    "{} differs from vision_config.hidden_size {}",
                    q.encoder_hidden_size, v.hidden_size
                ),
            ));
        }
        Ok(())
    }

    /// A note for tensor-shape errors: which sizes came from defaults, not the file.
    pub fn defaulted_note(&self) -> String {
        if self.defaulted.is_empty() {
            String::new()
        } else {
            format!(
                " (config.json does not set {}; transformers' defaults were used)",
                self.defaulted.join(", ")
            )
        }
    }
}

/// Reads typed keys, remembering the ones that fall back to a default.
struct Reader {
    path: PathBuf,
    defaulted: Vec<String>,
}

impl Reader {
    fn error(&self, key: &str, reason: &str) -> Error {
        Error::Config {
            path: self.path.clone(),
            reason: format!("key `{key}` {reason}"),
        }
    }

    fn object<'a>(&self, value: &'a Value, key: &str) -> Result<&'a Map<String, Value>> {
        value.as_object().ok_or_else(|| {
            if key.is_empty() {
                Error::Config {
                    path: self.path.clone(),
                    reason: "is not a JSON object".into(),
                }
            } else {
                self.error(key, "is not a JSON object")
            }
        })
    }

    fn get<'a>(
        &mut self,
        obj: &'a Map<String, Value>,
        prefix: &str,
        key: &str,
    ) -> Option<&'a Value> {
        match obj.get(key) {
            None | Some(Value::Null) => {
                self.defaulted.push(format!("{prefix}{key}"));
                None
            }
            some => some,
        }
    }

    fn usize(
        &mut self,
        obj: &Map<String, Value>,
        prefix: &str,
        key: &str,
        default: usize,
    ) -> Result<usize> {
        match self.get(obj, prefix, key) {
            None => Ok(default),
            Some(v) => v.as_u64().map(|x| x as usize).ok_or_else(|| {
                self.error(
                    &format!("{prefix}{key}"),
                    &format!("should be a non-negative integer, found {v}"),
                )
            }),
        }
    }

    fn f64(
        &mut self,
        obj: &Map<String, Value>,
        prefix: &str,
        key: &str,
        default: f64,
    ) -> Result<f64> {
        match self.get(obj, prefix, key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| {
                self.error(
                    &format!("{prefix}{key}"),
                    &format!("should be a number, found {v}"),
                )
            }),
        }
    }

    fn bool(
        &mut self,
        obj: &Map<String, Value>,
        prefix: &str,
        key: &str,
        default: bool,
    ) -> Result<bool> {
        match self.get(obj, prefix, key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| {
                self.error(
                    &format!("{prefix}{key}"),
                    &format!("should be true or false, found {v}"),
                )
            }),
        }
    }

    fn activation(
        &mut self,
        obj: &Map<String, Value>,
        prefix: &str,
        key: &str,
    ) -> Result<Activation> {
        match self.get(obj, prefix, key) {
            None => Ok(Activation::Gelu),
            Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
                self.error(
                    &format!("{prefix}{key}"),
                    &format!("names an activation qseek does not know: {v}"),
                )
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Blip2Config> {
        Blip2Config::from_json(json, Path::new("config.json"))
    }

    #[test]
    fn empty_config_is_vit_g() {
        let c = parse("{}").unwrap();
        assert_eq!(c.vision_config.hidden_size, 1408);
        assert_eq!(c.vision_config.num_positions(), 257);
        assert_eq!(c.num_query_tokens, 32);
        assert!(c
            .defaulted
            .contains(&"vision_config.image_size".to_string()));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (r#"{"num_query_tokens": "x"}"#, "num_query_tokens"),
            (
                r#"{"vision_config": {"image_size": -3}}"#,
                "vision_config.image_size",
            ),
            (
                r#"{"vision_config": {"hidden_act": "wobble"}}"#,
                "vision_config.hidden_act",
            ),
            (
                r#"{"qformer_config": {"hidden_size": 10, "num_attention_heads": 3}}"#,
                "qformer_config.num_attention_heads",
            ),
            (r#"{"qformer_config": 5}"#, "qformer_config"),
            (r#"{"image_token_index": 3}"#, "image_token_index"),
            ("[1]", "not a JSON object"),
            ("{", "not valid JSON"),
        ];
        for (json, needle) in cases {
            let err = parse(json).unwrap_err().to_string();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
}
