//! Looking after an index: what it holds, and removing files or folders from it.

use std::path::{Path, PathBuf};

use qseek_index::Index;
use serde::{Deserialize, Serialize};

use crate::pipeline::walk::{absolute, is_under};
use crate::{Error, Result};

/// What an index holds (`qseek info --json`, `GET /api/info`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Info {
    /// The index directory.
    pub index: String,
    /// The model it was built with.
    pub model: String,
    /// Hash of that model's `config.json`.
    pub config_hash: String,
    /// On-disk format version.
    pub format_version: u32,
    /// `Q`.
    pub num_query_tokens: usize,
    /// `D`.
    pub dim: usize,
    /// How vectors are stored.
    pub vector_dtype: String,
    /// Distinct images.
    pub images: usize,
    /// Paths (copies count).
    pub paths: usize,
    /// Texts.
    pub texts: usize,
    /// Rows of removed items not yet compacted away.
    pub dead_rows: usize,
    /// Whether vision features are stored (cheap reranking).
    pub store_vision_features: bool,
    /// f32 or f16: what ITM reranking reads back.
    pub vision_feature_dtype: String,
    /// Their size.
    pub vision_features_bytes: u64,
    /// Size of the vector files.
    pub vector_bytes: u64,
    /// Size of the metadata.
    pub metadata_bytes: u64,
    /// Size of the whole directory.
    pub bytes_on_disk: u64,
    /// Photos with a date taken.
    pub photos_dated: usize,
    /// Photos with a camera.
    pub photos_with_camera: usize,
    /// Photos with a place.
    pub photos_with_place: usize,
    /// Photos whose metadata was never read (`qseek index` reads it, without the model).
    pub photos_metadata_unread: usize,
    /// The earliest date taken (RFC 3339, or local time without an offset).
    pub taken_first: Option<String>,
    /// The latest date taken.
    pub taken_last: Option<String>,
}

fn dir_size(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// What the index at `dir` holds.
pub fn info(index: &Index, dir: &Path) -> Info {
    let m = index.manifest();
    let s = index.stats();
    let photos = index.photo_stats();
    Info {
        index: dir.display().to_string(),
        model: m.model_id.clone(),
        config_hash: m.config_hash.clone(),
        format_version: m.format_version,
        num_query_tokens: m.num_query_tokens,
        dim: m.dim,
        vector_dtype: format!("{:?}", m.vector_dtype).to_lowercase(),
        images: s.images,
        paths: s.paths,
        texts: s.texts,
        dead_rows: s.dead_image_rows + s.dead_text_rows,
        store_vision_features: s.store_vision_features,
        vision_feature_dtype: format!("{:?}", m.vision_feature_dtype).to_lowercase(),
        vision_features_bytes: s.vision_features_bytes,
        vector_bytes: s.vector_bytes,
        metadata_bytes: s.metadata_bytes,
        bytes_on_disk: dir_size(dir),
        photos_dated: photos.dated,
        photos_with_camera: photos.with_camera,
        photos_with_place: photos.with_place,
        photos_metadata_unread: photos.unread,
        taken_first: photos.first.map(|t| t.to_rfc3339()),
        taken_last: photos.last.map(|t| t.to_rfc3339()),
    }
}

/// What a removal did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveSummary {
    /// Paths removed.
    pub removed: usize,
    /// Given paths that matched nothing indexed.
    pub not_in_index: Vec<PathBuf>,
    /// Images left.
    pub images_in_index: usize,
}

/// Removes files, and everything indexed under folders, in one commit.
pub fn remove(index: &Index, paths: &[PathBuf]) -> Result<RemoveSummary> {
    let indexed = index.paths();
    let mut writer = index.writer()?;
    let mut removed = 0;
    let mut not_in_index = Vec::new();
    for p in paths {
        let abs = absolute(p).map_err(|source| Error::Io {
            path: p.clone(),
            source,
        })?;
        let key = abs.to_string_lossy().into_owned();
        let matching: Vec<&String> = indexed.iter().filter(|i| is_under(i, &key)).collect();
        if matching.is_empty() {
            not_in_index.push(p.clone());
        }
        for m in matching {
            if writer.remove_path(m)? {
                removed += 1;
            }
        }
    }
    writer.commit()?;
    Ok(RemoveSummary {
        removed,
        not_in_index,
        images_in_index: index.stats().images,
    })
}
