//! The manifest: what an index holds and which model wrote it.
//!
//! Written once by `Index::create` (temp file, fsync, rename) and never changed,
//! so it needs no generation of its own.

use std::fs;
use std::io::Write;
use std::path::Path;

use half::f16;
use serde::{Deserialize, Serialize};

use crate::{io_err, Error, Result};

/// The newest on-disk format this build reads and the one it writes.
///
/// 1: first release. 2: int8 image rows store residuals around the row's f16
/// mean (see `vector_store`); version-1 indexes are still read as they are.
/// 3: vision features may be stored in f32 ([`Manifest::vision_feature_dtype`]); a
/// manifest without that field (versions 1 and 2) stored them in f16.
pub const FORMAT_VERSION: u32 = 3;

/// File name of the manifest inside the index directory.
pub(crate) const MANIFEST_FILE: &str = "manifest.json";

/// How the exact vectors are stored on disk and in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VectorDtype {
    /// 4 bytes per value, exact.
    F32,
    /// 2 bytes per value; relative error ~1e-3.
    F16,
    /// 1 byte per value plus one f32 scale per vector (symmetric scalar
    /// quantisation, scale = max |x| / 127); score error ~1e-3 on unit vectors.
    Int8,
}

impl VectorDtype {
    /// Bytes one vector of `dim` values takes.
    pub fn bytes_per_vector(self, dim: usize) -> usize {
        match self {
            VectorDtype::F32 => dim * 4,
            VectorDtype::F16 => dim * 2,
            VectorDtype::Int8 => dim + 4,
        }
    }
}

impl std::str::FromStr for VectorDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(VectorDtype::F32),
            "f16" => Ok(VectorDtype::F16),
            "int8" => Ok(VectorDtype::Int8),
            other => Err(format!(
                "unknown vector dtype {other:?}; use f32, f16 or int8"
            )),
        }
    }
}

/// How the stored vision features (each image's ViT output, read back for ITM
/// reranking) are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureDtype {
    /// 4 bytes per value: the reranker sees exactly what the vision model computed.
    F32,
    /// 2 bytes per value, half the disk; the ITM logits move by ~5e-5 on the fixture
    /// models (see the README).
    F16,
}

impl FeatureDtype {
    /// Bytes `values` values take.
    pub fn bytes(self, values: usize) -> usize {
        match self {
            FeatureDtype::F32 => values * 4,
            FeatureDtype::F16 => values * 2,
        }
    }

    /// Appends `values`, encoded, to `out` (little-endian).
    pub(crate) fn encode(self, values: &[f32], out: &mut Vec<u8>) {
        match self {
            FeatureDtype::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
            FeatureDtype::F16 => {
                out.extend(values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()))
            }
        }
    }

    /// The values `bytes` encode.
    pub(crate) fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            FeatureDtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            FeatureDtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        }
    }
}

impl std::str::FromStr for FeatureDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(FeatureDtype::F32),
            "f16" => Ok(FeatureDtype::F16),
            other => Err(format!(
                "unknown vision feature dtype {other:?}; use f32 or f16"
            )),
        }
    }
}

/// Indexes before format version 3 stored their vision features in f16.
fn legacy_feature_dtype() -> FeatureDtype {
    FeatureDtype::F16
}

/// Identifies the model whose vectors an index holds: its id and a hash of its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelId {
    /// Model id, e.g. `Salesforce/blip2-itm-vit-g`.
    pub model_id: String,
    /// Hash of the model's config (any stable string).
    pub config_hash: String,
}

impl std::fmt::Display for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (config {})", self.model_id, self.config_hash)
    }
}

/// One centroid per image: on the synthetic benchmark (20 000 images, int8)
/// 1 and 2 points give the same recall@10 (0.996) and 1 takes 25% less memory
/// and half the build time. Raise it if a recall audit on real data asks for it.
fn default_graph_points() -> usize {
    1
}

/// What an index holds; fixed when the index is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// On-disk format version ([`FORMAT_VERSION`] when created by this build).
    pub format_version: u32,
    /// Model id, e.g. `Salesforce/blip2-itm-vit-g`.
    pub model_id: String,
    /// Hash of the model's config.
    pub config_hash: String,
    /// `Q`: query vectors per image (32 for the real checkpoints).
    pub num_query_tokens: usize,
    /// `D`: dims of every vector.
    pub dim: usize,
    /// How exact vectors are stored.
    pub vector_dtype: VectorDtype,
    /// Whether the vision encoder's output is kept per image for ITM reranking.
    pub store_vision_features: bool,
    /// How the vision features are stored (f16 in indexes older than format 3).
    #[serde(default = "legacy_feature_dtype")]
    pub vision_feature_dtype: FeatureDtype,
    /// Graph points per image (1..=Q): the image's Q vectors are clustered into
    /// this many unit centroids and only those go into the HNSW graph; exact
    /// scores always use all Q stored vectors. `Q` puts every vector in the graph.
    #[serde(default = "default_graph_points")]
    pub graph_points_per_image: usize,
}

impl Manifest {
    /// A manifest with the defaults: f32 vectors, no vision features (f32 when
    /// stored), 1 graph point per image.
    pub fn new(model: &ModelId, num_query_tokens: usize, dim: usize) -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            model_id: model.model_id.clone(),
            config_hash: model.config_hash.clone(),
            num_query_tokens,
            dim,
            vector_dtype: VectorDtype::F32,
            store_vision_features: false,
            vision_feature_dtype: FeatureDtype::F32,
            graph_points_per_image: default_graph_points().min(num_query_tokens),
        }
    }

    /// The model this manifest names.
    pub fn model(&self) -> ModelId {
        ModelId {
            model_id: self.model_id.clone(),
            config_hash: self.config_hash.clone(),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |reason: &str| {
            Err(Error::InvalidManifest {
                reason: reason.to_string(),
            })
        };
        if self.num_query_tokens == 0 || self.num_query_tokens > u16::MAX as usize {
            return bad("num_query_tokens must be in 1..=65535");
        }
        if self.dim == 0 {
            return bad("dim must be > 0");
        }
        if self.graph_points_per_image == 0 || self.graph_points_per_image > self.num_query_tokens {
            return bad("graph_points_per_image must be in 1..=num_query_tokens");
        }
        Ok(())
    }

    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let tmp = dir.join("manifest.json.tmp");
        let json = serde_json::to_vec_pretty(self).expect("manifest serialises");
        let mut file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(&json).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(dir)
    }

    pub(crate) fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    path: dir.to_path_buf(),
                })
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        // Read the version first so that a newer format with new fields fails with
        // "newer format", not with a parse error.
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let version: Version = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if version.format_version > FORMAT_VERSION {
            return Err(Error::NewerFormat {
                path,
                found: version.format_version,
                supported: FORMAT_VERSION,
            });
        }
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        manifest.validate().map_err(|e| Error::Corrupt {
            path,
            reason: e.to_string(),
        })?;
        Ok(manifest)
    }
}

/// Makes a rename or file creation in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_before_format_3_stored_its_vision_features_in_f16() {
        let json = r#"{"format_version": 2, "model_id": "m", "config_hash": "c",
            "num_query_tokens": 4, "dim": 8, "vector_dtype": "f32",
            "store_vision_features": true}"#;
        let m: Manifest = serde_json::from_str(json).unwrap();
        assert_eq!(m.vision_feature_dtype, FeatureDtype::F16);
        let model = ModelId {
            model_id: "m".into(),
            config_hash: "c".into(),
        };
        assert_eq!(
            Manifest::new(&model, 4, 8).vision_feature_dtype,
            FeatureDtype::F32
        );
    }

    #[test]
    fn feature_values_encode_and_decode_in_their_dtype() {
        let values = [0.5f32, -2.0, 1.0e-3, 300.25];
        for (dtype, bytes) in [(FeatureDtype::F32, 16), (FeatureDtype::F16, 8)] {
            let mut out = Vec::new();
            dtype.encode(&values, &mut out);
            assert_eq!(out.len(), bytes);
            assert_eq!(dtype.bytes(values.len()), bytes);
            let back = dtype.decode(&out);
            for (a, b) in back.iter().zip(&values) {
                assert!((a - b).abs() <= b.abs() * 1e-3, "{dtype:?}: {a} vs {b}");
            }
        }
    }
}
