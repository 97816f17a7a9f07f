//! What the commands do with a model and an index: walk and index a photo
//! collection ([`indexer`]), embed it in shards on many machines ([`shard_embed`],
//! [`shard_file`]) and load those into an index ([`import`]), load texts ([`texts`]),
//! evaluate ([`eval`]), and open the pair consistently ([`Collection`]). Searching is in [`crate::service::search`].

pub mod embedding;
pub mod eval;
pub mod import;
pub mod indexer;
pub mod shard_embed;
pub mod shard_file;
pub mod texts;
pub mod walk;

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use qseek_index::{FeatureDtype, Index, Manifest, ModelId, VectorDtype};

use crate::embedder::{Embedder, ModelOptions};
use crate::error::BadRequest;
use crate::model::Precision;
use crate::model::{Checkpoint, ModelSource};
use crate::{Error, Result};

/// The default index directory: `$XDG_DATA_HOME/qseek/index` (`~/.local/share/...`
/// on Linux, the platform's data directory elsewhere).
pub fn default_index_dir() -> Result<PathBuf> {
    dirs::data_dir()
        .map(|d| d.join("qseek").join("index"))
        .ok_or_else(|| BadRequest::NoDataDirectory.into())
}

/// The identity an index records for a checkpoint: its id (hub id, or canonical
/// directory) and a hash of its `config.json`, so that an index is never searched
/// with vectors from another model.
pub fn model_identity(checkpoint: &Checkpoint) -> Result<ModelId> {
    let bytes = std::fs::read(&checkpoint.config).map_err(|source| Error::Io {
        path: checkpoint.config.clone(),
        source,
    })?;
    Ok(ModelId {
        model_id: checkpoint.id.clone(),
        config_hash: blake3::hash(&bytes).to_hex()[..16].to_string(),
    })
}

/// How to create an index that does not exist yet.
#[derive(Debug, Clone, Copy)]
pub struct CreateOptions {
    /// Encoding of the stored vectors.
    pub vector_dtype: VectorDtype,
    /// Store each image's vision-encoder output, so reranking need not decode it again.
    pub store_vision_features: bool,
    /// How to store them; `None`: [`default_feature_dtype`] of the compute dtype.
    pub feature_dtype: Option<FeatureDtype>,
}

/// How vision features are stored unless the user chooses: f32 when the vision model
/// computes in f32, so that reranking reads exactly what transformers would feed the
/// ITM head; f16 after a half-precision vision model, whose outputs f16 holds (bf16's
/// 8-bit mantissa fits in f16's 11) at half the disk.
pub fn default_feature_dtype(compute: Precision) -> FeatureDtype {
    match compute {
        Precision::F32 => FeatureDtype::F32,
        Precision::F16 | Precision::Bf16 | Precision::Int8 => FeatureDtype::F16,
    }
}

/// A model and the index built with it.
pub struct Collection {
    /// The model.
    pub embedder: Embedder,
    /// The index.
    pub index: Index,
}

/// Opens the index at `dir` without a model (for info, remove, compact, verify).
pub fn open_index(dir: &Path) -> Result<Index> {
    if !dir.join("manifest.json").exists() {
        return Err(no_index(dir));
    }
    Ok(Index::open(dir, None)?)
}

fn no_index(dir: &Path) -> Error {
    crate::error::NotFound::Index {
        path: dir.to_path_buf(),
    }
    .into()
}

impl Collection {
    /// Opens the index at `dir` with the model it was built with. `model`, when the
    /// user named one, must be that model.
    pub fn open(dir: &Path, model: Option<&str>, opts: &ModelOptions) -> Result<Self> {
        let index = open_index(dir)?;
        let recorded = index.manifest().model();
        let source = match model {
            Some(m) => ModelSource::parse(m),
            None => ModelSource::parse(&recorded.model_id),
        };
        let embedder = Embedder::load(&ModelOptions {
            source,
            ..opts.clone()
        })?;
        let actual = model_identity(&embedder.checkpoint)?;
        if actual != recorded {
            return Err(Error::Index(qseek_index::Error::ModelMismatch {
                path: dir.to_path_buf(),
                expected: format!("{} (config {})", actual.model_id, actual.config_hash),
                found: format!("{} (config {})", recorded.model_id, recorded.config_hash),
            }));
        }
        Ok(Self { embedder, index })
    }

    /// Opens the index at `dir`, or creates it with `model` (default: the default
    /// checkpoint) when there is none.
    pub fn open_or_create(
        dir: &Path,
        model: Option<&str>,
        opts: &ModelOptions,
        create: CreateOptions,
    ) -> Result<Self> {
        if dir.join("manifest.json").exists() {
            return Self::open(dir, model, opts);
        }
        let embedder = Embedder::load(&ModelOptions {
            source: ModelSource::parse(model.unwrap_or(crate::model::checkpoint::DEFAULT_MODEL)),
            ..opts.clone()
        })?;
        let id = model_identity(&embedder.checkpoint)?;
        let mut manifest = Manifest::new(
            &id,
            embedder.config.num_query_tokens,
            embedder.config.image_text_hidden_size,
        );
        manifest.vector_dtype = create.vector_dtype;
        manifest.store_vision_features = create.store_vision_features;
        manifest.vision_feature_dtype = create
            .feature_dtype
            .unwrap_or_else(|| default_feature_dtype(opts.dtype));
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let index = Index::create(dir, manifest)?;
        Ok(Self { embedder, index })
    }
}

/// A progress bar over `len` items called `unit` (images, texts, ITM pairs) with rate and
/// ETA; hidden when `show` is false or there is nothing to do.
pub(crate) fn progress_bar(len: u64, unit: &str, show: bool) -> ProgressBar {
    if !show || len == 0 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit}  {{per_sec}}  ETA {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Rows of a (n, a, b) tensor as n flat vectors.
pub(crate) fn rows3(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(t.to_vec3::<f32>()?
        .into_iter()
        .map(|m| m.into_iter().flatten().collect())
        .collect())
}
