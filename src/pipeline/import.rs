//! `qseek import`: build or extend an index from shard files, without the model.
//!
//! Every shard is opened and checked first (one model, one compute dtype, the index's
//! model and shapes, features when the index stores them), so a wrong shard is refused
//! before anything is written. Rows then go through the index writer as `qseek index`
//! adds files: bytes the index holds get the path without new vectors (the index keeps
//! one image per content hash), a path already indexed with the same bytes, size and
//! mtime is left alone, so importing a shard twice changes nothing. Commits every few
//! seconds and at the end; Ctrl-C stops between batches with what was done committed.
//! Nothing is removed: a shard says what exists, not what vanished.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use qseek_index::{FeatureDtype, Index, Manifest};
use serde::Serialize;

use super::progress_bar;
use super::shard_file::{ShardFeatures, ShardFileReader, ShardMeta};
use crate::error::BadRequest;
use crate::{Error, Result};

/// How to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// How a new index stores vectors.
    pub vector_dtype: qseek_index::VectorDtype,
    /// Commit at least this often.
    pub commit_every: Duration,
    /// Show a progress bar.
    pub progress: bool,
}

/// What an import did.
#[derive(Debug, Default, Serialize)]
pub struct ImportSummary {
    /// Shard files read.
    pub shards: usize,
    /// Rows in them.
    pub rows: usize,
    /// Images added with their vectors (bytes the index did not hold).
    pub added: usize,
    /// Paths added or updated for bytes the index held (copies, or rows seen before).
    pub reused: usize,
    /// Paths already indexed with the same bytes, size and mtime.
    pub unchanged: usize,
    /// The index was created by this import.
    pub created: bool,
    /// Stopped early (Ctrl-C); what was done is committed.
    pub interrupted: bool,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Images in the index after the import.
    pub images_in_index: usize,
}

fn mismatch(path: &Path, reason: String) -> Error {
    BadRequest::ShardMismatch {
        path: path.to_path_buf(),
        reason,
    }
    .into()
}

/// The shards, opened and checked against each other.
fn open_shards(files: &[PathBuf]) -> Result<Vec<ShardFileReader>> {
    let shards = files
        .iter()
        .map(|f| ShardFileReader::open(f))
        .collect::<Result<Vec<_>>>()?;
    if let Some(first) = shards.first() {
        let name = first.path().display().to_string();
        for s in &shards[1..] {
            if let Some(reason) = s.meta().conflict_with(first.meta(), &name) {
                return Err(mismatch(s.path(), reason));
            }
        }
    }
    Ok(shards)
}

/// Whether the index's manifest takes a shard's rows: its model, Q and D, and, when
/// it stores vision features, features of the same shape no coarser than its own.
fn check_against_index(shard: &ShardFileReader, manifest: &Manifest, dir: &Path) -> Result<()> {
    let index_meta = ShardMeta {
        model: manifest.model(),
        num_query_tokens: manifest.num_query_tokens,
        dim: manifest.dim,
        compute_dtype: shard.meta().compute_dtype.clone(),
        features: None,
        shard: shard.meta().shard,
        photo: shard.meta().photo,
    };
    let name = format!("the index at {}", dir.display());
    if let Some(reason) = shard.meta().conflict_with(&index_meta, &name) {
        return Err(mismatch(shard.path(), reason));
    }
    if !manifest.store_vision_features {
        return Ok(());
    }
    let coarser = |f: ShardFeatures| {
        f.dtype == FeatureDtype::F16 && manifest.vision_feature_dtype == FeatureDtype::F32
    };
    let reason = match shard.meta().features {
        None => format!(
            "has no vision features, but {name} stores them: \
             embed the shards with vision features"
        ),
        Some(f) if coarser(f) => format!(
            "holds f16 vision features, but {name} stores f32: \
             embed the shards with f32 vision features"
        ),
        Some(_) => return Ok(()),
    };
    Err(mismatch(shard.path(), reason))
}

/// Opens the index at `dir`, or creates it for the shards' model: with vision features
/// when every shard has them (in the coarsest dtype among them).
fn open_or_create(
    dir: &Path,
    shards: &[ShardFileReader],
    opts: &ImportOptions,
) -> Result<(Index, bool)> {
    if dir.join("manifest.json").exists() {
        return Ok((Index::open(dir, None)?, false));
    }
    let first = shards.first().expect("at least one shard").meta();
    let mut manifest = Manifest::new(&first.model, first.num_query_tokens, first.dim);
    manifest.vector_dtype = opts.vector_dtype;
    let features: Option<Vec<FeatureDtype>> = shards
        .iter()
        .map(|s| s.meta().features.map(|f| f.dtype))
        .collect();
    if let Some(dtypes) = features {
        manifest.store_vision_features = true;
        manifest.vision_feature_dtype = if dtypes.contains(&FeatureDtype::F16) {
            FeatureDtype::F16
        } else {
            FeatureDtype::F32
        };
    }
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok((Index::create(dir, manifest)?, true))
}

/// Imports `files` (shard files) into the index at `dir`, creating it if needed.
pub fn import_shards(
    dir: &Path,
    files: &[PathBuf],
    opts: &ImportOptions,
    stop: &AtomicBool,
) -> Result<ImportSummary> {
    let start = Instant::now();
    let shards = open_shards(files)?;
    if shards.is_empty() {
        return Ok(ImportSummary::default());
    }
    let (index, created) = open_or_create(dir, &shards, opts)?;
    for shard in &shards {
        check_against_index(shard, index.manifest(), dir)?;
    }
    let mut summary = ImportSummary {
        shards: shards.len(),
        created,
        ..ImportSummary::default()
    };
    let store_features = index.manifest().store_vision_features;
    let mut writer = index.writer()?;
    let total: usize = shards.iter().map(ShardFileReader::rows).sum();
    let bar = progress_bar(total as u64, "images", opts.progress);
    let mut last_commit = Instant::now();
    'shards: for shard in &shards {
        let shape = shard.meta().features.map(|f| [f.tokens, f.hidden]);
        for batch in shard.batches()? {
            for row in batch? {
                summary.rows += 1;
                let record = row.record;
                let unchanged = index.image_by_path(&record.path).is_some_and(|info| {
                    info.content_hash == record.content_hash
                        && info.paths.iter().any(|p| {
                            p.path == record.path
                                && p.size == record.size
                                && p.mtime == record.mtime
                        })
                });
                if unchanged {
                    summary.unchanged += 1;
                } else if writer.image_id_by_hash(&record.content_hash).is_some() {
                    writer.add_path(record)?;
                    summary.reused += 1;
                } else {
                    let features = match (store_features, &row.features, &shape) {
                        (true, Some(values), Some(shape)) => Some((values.as_slice(), &shape[..])),
                        _ => None,
                    };
                    writer.add_image(record, &row.vectors, features)?;
                    summary.added += 1;
                }
                bar.inc(1);
            }
            if stop.load(Ordering::Relaxed) {
                summary.interrupted = true;
                break 'shards;
            }
            if last_commit.elapsed() >= opts.commit_every {
                writer.commit()?;
                last_commit = Instant::now();
            }
        }
    }
    bar.finish_and_clear();
    writer.commit()?;
    summary.seconds = start.elapsed().as_secs_f64();
    summary.images_in_index = index.stats().images;
    Ok(summary)
}
