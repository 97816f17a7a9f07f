//! Finding a checkpoint's files (local directory or Hugging Face hub) and opening them.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use qseek_kernels::gemm::Kernels;

use super::weights::SafetensorsFiles;
use super::{Blip2Config, Blip2ForImageTextRetrieval, Precision};
use crate::{Error, Result};

/// The hub id used when the user names no model.
pub const DEFAULT_MODEL: &str = "Salesforce/blip2-itm-vit-g";

const CONFIG: &str = "config.json";
const SINGLE_WEIGHTS: &str = "model.safetensors";
const SHARDED_INDEX: &str = "model.safetensors.index.json";
const TOKENIZER: &str = "tokenizer.json";
const VOCAB: &str = "vocab.txt";
const PREPROCESSOR: &str = "preprocessor_config.json";

/// Where a model comes from, as the user wrote it in `--model`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A directory holding the files.
    Local(PathBuf),
    /// A hub repository id such as `Salesforce/blip2-itm-vit-g`.
    Hub(String),
}

impl ModelSource {
    /// An existing path, or anything that looks like one (`./x`, `/x`, `~/x`), is a
    /// local directory; anything else is a hub id.
    pub fn parse(spec: &str) -> Self {
        let path = Path::new(spec);
        let looks_like_path = spec.starts_with('.')
            || spec.starts_with('/')
            || spec.starts_with('~')
            || spec.contains('\\');
        if path.exists() || looks_like_path || spec.split('/').count() > 2 {
            Self::Local(path.to_path_buf())
        } else {
            Self::Hub(spec.to_string())
        }
    }
}

/// The files of one checkpoint, all on local disk.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// How the user named it (hub id or directory), used as the model's identity.
    pub id: String,
    /// `config.json`.
    pub config: PathBuf,
    /// The safetensors files (one, or the shards named by the index).
    pub weights: Vec<PathBuf>,
    /// `tokenizer.json`, when the checkpoint has one.
    pub tokenizer: Option<PathBuf>,
    /// `vocab.txt`, used when there is no `tokenizer.json`.
    pub vocab: Option<PathBuf>,
    /// `preprocessor_config.json`.
    pub preprocessor: PathBuf,
}

impl Checkpoint {
    /// Finds every file of `source`, downloading missing ones from the hub (into the
    /// standard HF cache: `HF_HOME`, `HF_HUB_CACHE`; nothing is fetched when
    /// `HF_HUB_OFFLINE` is set). `progress` shows download progress bars.
    pub fn resolve(source: &ModelSource, progress: bool) -> Result<Self> {
        match source {
            ModelSource::Local(dir) => Self::from_dir(dir),
            ModelSource::Hub(id) => Self::from_hub(id, progress),
        }
    }

    /// A checkpoint in a local directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                reason: "is not a directory (give a checkpoint directory or a hub id such as Salesforce/blip2-itm-vit-g)".into(),
            });
        }
        let id = dir
            .canonicalize()
            .unwrap_or_else(|_| dir.to_path_buf())
            .display()
            .to_string();
        Self::locate(&id, dir.display().to_string(), |name| {
            let p = dir.join(name);
            Ok(p.is_file().then_some(p))
        })
    }

    fn from_hub(id: &str, progress: bool) -> Result<Self> {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| !v.is_empty() && v != "0" && v.to_lowercase() != "false");
        let cache = match std::env::var_os("HF_HUB_CACHE") {
            Some(dir) => hf_hub::Cache::new(dir.into()),
            None => hf_hub::Cache::from_env(),
        };
        let cache_dir = cache.path().display().to_string();
        let cached = cache.model(id.to_string());
        let api = if offline {
            None
        } else {
            let mut builder =
                hf_hub::api::sync::ApiBuilder::from_cache(cache.clone()).with_progress(progress);
            if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
                builder = builder.with_endpoint(endpoint);
            }
            Some(
                builder
                    .build()
                    .map_err(|e| Error::Hub(format!("cannot set up the hub client: {e}")))?,
            )
        };
        let repo = api.as_ref().map(|api| api.model(id.to_string()));
        Self::locate(id, format!("{id} (hub cache {cache_dir})"), |name| {
            if let Some(path) = cached.get(name) {
                return Ok(Some(path));
            }
            let Some(repo) = &repo else {
                return Ok(None);
            };
            match repo.get(name) {
                Ok(path) => Ok(Some(path)),
                // A 404 only means this checkpoint lays out its files the other way.
                Err(hf_hub::api::sync::ApiError::RequestError(e)) if matches!(*e, ureq::Error::Status(404, _)) => Ok(None),
                Err(e) => Err(Error::Hub(format!(
                    "cannot download `{name}` of {id} from the hub: {e}. Check the network, or pass --model DIR with a local copy of the checkpoint"
                ))),
            }
        })
        .map_err(|e| match e {
            Error::Checkpoint { reason, .. } if offline => Error::Hub(format!(
                "{id} is not in the hub cache ({cache_dir}): it {reason}, and HF_HUB_OFFLINE is set. Unset HF_HUB_OFFLINE to download it, or pass --model DIR with a local copy"
            )),
            e => e,
        })
    }

    /// Shared by both sources: `fetch(name)` gives a file's local path, or `None` when
    /// the checkpoint does not have it.
    fn locate(
        id: &str,
        place: String,
        mut fetch: impl FnMut(&str) -> Result<Option<PathBuf>>,
    ) -> Result<Self> {
        let missing = |what: &str| Error::Checkpoint {
            path: PathBuf::from(&place),
            reason: format!("has no {what}"),
        };
        let config = fetch(CONFIG)?.ok_or_else(|| missing(CONFIG))?;
        let weights =
            match fetch(SINGLE_WEIGHTS)? {
                Some(p) => vec![p],
                None => {
                    let index = fetch(SHARDED_INDEX)?
                        .ok_or_else(|| missing(&format!("{SINGLE_WEIGHTS} nor {SHARDED_INDEX}")))?;
                    let mut files = Vec::new();
                    for shard in shard_names(&index)? {
                        files.push(fetch(&shard)?.ok_or_else(|| {
                            missing(&format!("{shard} (named by {SHARDED_INDEX})"))
                        })?);
                    }
                    files
                }
            };
        let tokenizer = fetch(TOKENIZER)?;
        let vocab = if tokenizer.is_none() {
            fetch(VOCAB)?
        } else {
            None
        };
        if tokenizer.is_none() && vocab.is_none() {
            return Err(missing(&format!("{TOKENIZER} nor {VOCAB}")));
        }
        let preprocessor = fetch(PREPROCESSOR)?.ok_or_else(|| missing(PREPROCESSOR))?;
        Ok(Self {
            id: id.to_string(),
            config,
            weights,
            tokenizer,
            vocab,
            preprocessor,
        })
    }

    /// Reads `config.json`.
    pub fn read_config(&self) -> Result<Blip2Config> {
        Blip2Config::from_file(&self.config)
    }

    /// Reads the weights (see [`SafetensorsFiles`]) and builds the model; the vision model in
    /// `dtype`, the rest in f32. Errors name the tensor, expected and found shape. The
    /// vision model's weights are checked now and read at its first use. The linear layers
    /// on the CPU run on `kernels`.
    pub fn load_model(
        &self,
        config: &Blip2Config,
        precision: Precision,
        device: &Device,
        kernels: Kernels,
    ) -> Result<Blip2ForImageTextRetrieval> {
        let files = SafetensorsFiles::open(&self.weights)?;
        let shapes =
            VarBuilder::from_backend(Box::new(files.shapes_only()), DType::F32, device.clone());
        let vb = VarBuilder::from_backend(Box::new(files), DType::F32, device.clone());
        Blip2ForImageTextRetrieval::new(config, vb, shapes, precision, kernels).map_err(|e| {
            Error::Checkpoint {
                path: self.config.parent().unwrap_or(Path::new(".")).to_path_buf(),
                reason: format!("{}{}", root_message(&e), config.defaulted_note()),
            }
        })
    }
}

/// The distinct shard files named by a `model.safetensors.index.json`, in order.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|source| Error::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| Error::Checkpoint {
        path: index.to_path_buf(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("is not valid JSON: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("has no `weight_map` object".into()))?;
    let mut names: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("maps `{tensor}` to a non-string")))?;
        if file.contains('/') || file.contains("..") {
            return Err(bad(format!(
                "maps `{tensor}` to `{file}`, outside the checkpoint"
            )));
        }
        if !names.iter().any(|n| n == file) {
            names.push(file.to_string());
        }
    }
    if names.is_empty() {
        return Err(bad("`weight_map` is empty".into()));
    }
    Ok(names)
}

/// candle wraps errors in context and backtraces; users need the innermost sentence.
fn root_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => root_message(inner),
        candle_core::Error::Context { inner, context } => {
            format!("{context}: {}", root_message(inner))
        }
        other => other.to_string(),
    }
}
