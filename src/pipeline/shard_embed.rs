//! `qseek shard-embed`: embed one shard of a collection into a Parquet file
//! ([`super::shard_file`]), on any machine, for `qseek import` to load later.
//!
//! 1. The input is a folder (walked as `qseek index` walks) or a file list (a
//!    regular file: one path per line, relative ones taken from the list's folder).
//!    Each file has a key, its path relative to the folder or as the list writes it,
//!    and belongs to the shard [`ShardSpec::owns`] names: a hash of the key, so the
//!    split does not move when files come or go and any scheduler can run the N
//!    shards anywhere.
//! 2. The files are read, hashed, decoded and embedded as `qseek index` does
//!    ([`super::embedding`]); unreadable and undecodable files are reported and skipped.
//! 3. Rows go into part files in `<out>.partial/`, each complete (temporary file,
//!    fsync, rename) and written every few seconds, or sooner when the rows held
//!    reach [`super::shard_file::BATCH_BYTES`]. A new run over the same shard
//!    skips the paths the parts hold: a crash loses at most the last few seconds.
//! 4. When every file is done the parts are merged into `<out>` (temporary file,
//!    fsync, rename) and removed. A run whose `<out>` exists, made with the same
//!    model and settings, does nothing.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use qseek_index::{FeatureDtype, ImageRecord};
use serde::Serialize;

use super::embedding::{embed_batch, failure_note, for_each_batch, notes, FileNote, SortedBatch};
use super::shard_file::{
    merge, ShardFeatures, ShardFileReader, ShardFileWriter, ShardMeta, ShardRow, ShardSpec,
};
use super::walk::{self, absolute, walk, FoundFile, Walk, WalkOptions};
use super::{default_feature_dtype, model_identity, progress_bar};
use crate::embedder::{Embedder, ModelOptions};
use crate::error::{BadRequest, NotFound};
use crate::model::Checkpoint;
use crate::model::Precision;
use crate::preprocess::image::LoadOptions;
use crate::{Error, Result};

/// How to embed a shard.
#[derive(Debug, Clone)]
pub struct ShardEmbedOptions {
    /// Which shard.
    pub shard: ShardSpec,
    /// What to walk (for a folder input).
    pub walk: WalkOptions,
    /// Decoding limits.
    pub load: LoadOptions,
    /// Images per model call.
    pub batch: usize,
    /// Store the vision features too; `Some(None)`: in the default dtype of the
    /// compute dtype (as `qseek index --store-vision-features`).
    pub features: Option<Option<FeatureDtype>>,
    /// Write a part file at least this often.
    pub part_every: Duration,
    /// Show a progress bar.
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Default, Serialize)]
pub struct ShardEmbedSummary {
    /// The shard, `I/N`.
    pub shard: String,
    /// The shard file.
    pub out: String,
    /// `out` existed, complete and made with the same model and settings: nothing done.
    pub already_complete: bool,
    /// Image files of the input in this shard.
    pub files: usize,
    /// Images run through the model by this run.
    pub embedded: usize,
    /// Files whose bytes another file of the same batch has: embedded once, written twice.
    pub duplicates: usize,
    /// Files an earlier, interrupted run had embedded (its part files): not redone.
    pub resumed: usize,
    /// Files of this shard that are not images qseek reads.
    pub skipped: Vec<FileNote>,
    /// Image files of this shard that could not be read or decoded.
    pub failed: Vec<FileNote>,
    /// Stopped early (Ctrl-C); the part files keep what was done.
    pub interrupted: bool,
    /// Rows in the shard file (or in the parts so far, when interrupted).
    pub rows: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// The metadata of the shard `opts` describes, made with `checkpoint` in `compute`
/// dtype (without loading its weights).
fn shard_meta(
    checkpoint: &Checkpoint,
    compute: Precision,
    opts: &ShardEmbedOptions,
) -> Result<ShardMeta> {
    let config = checkpoint.read_config()?;
    Ok(ShardMeta {
        model: model_identity(checkpoint)?,
        num_query_tokens: config.num_query_tokens,
        dim: config.image_text_hidden_size,
        compute_dtype: compute.name().to_string(),
        features: opts.features.map(|dtype| ShardFeatures {
            dtype: dtype.unwrap_or_else(|| default_feature_dtype(compute)),
            tokens: config.vision_config.num_positions(),
            hidden: config.vision_config.hidden_size,
        }),
        shard: opts.shard,
        photo: true,
    })
}

/// `<out>.partial`: the folder of part files of an unfinished run.
pub fn partial_dir(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// The shard's files of `input` (a folder, or a file listing paths).
fn shard_files(input: &Path, shard: ShardSpec, walk_opts: WalkOptions) -> Result<Walk> {
    let meta = std::fs::metadata(input).map_err(|_| NotFound::Path {
        path: input.to_path_buf(),
    })?;
    if meta.is_dir() {
        let root = absolute(input).map_err(|source| Error::Io {
            path: input.to_path_buf(),
            source,
        })?;
        let key = |p: &Path| {
            p.strip_prefix(&root)
                .unwrap_or(p)
                .to_string_lossy()
                .into_owned()
        };
        let mut found = walk(std::slice::from_ref(&root), walk_opts);
        found.images.retain(|f| shard.owns(&key(&f.path)));
        found.skipped.retain(|(p, _)| shard.owns(&key(p)));
        found.errors.retain(|(p, _)| shard.owns(&key(p)));
        return Ok(found);
    }
    let text = std::fs::read_to_string(input).map_err(|source| Error::Io {
        path: input.to_path_buf(),
        source,
    })?;
    let base = input.parent().unwrap_or(Path::new("."));
    let paths: Vec<PathBuf> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty() && shard.owns(l))
        .map(|l| base.join(l))
        .collect();
    Ok(walk::classify(paths))
}

/// Embeds shard `opts.shard` of `input` into `out` (see the module's doc).
pub fn shard_embed(
    model: &ModelOptions,
    input: &Path,
    out: &Path,
    opts: &ShardEmbedOptions,
    stop: &AtomicBool,
) -> Result<ShardEmbedSummary> {
    let start = Instant::now();
    let checkpoint = Checkpoint::resolve(&model.source, model.progress)?;
    let meta = shard_meta(&checkpoint, model.dtype, opts)?;
    let mut summary = ShardEmbedSummary {
        shard: opts.shard.to_string(),
        out: out.display().to_string(),
        ..ShardEmbedSummary::default()
    };
    let partial = partial_dir(out);
    if out.exists() {
        let done = ShardFileReader::open(out)?;
        if done.meta() != &meta {
            return Err(BadRequest::ShardMismatch {
                path: out.to_path_buf(),
                reason: "exists, made with another model, shard or settings: choose another output file or delete it".into(),
            }
            .into());
        }
        // A crash between the final rename and the clean-up leaves the parts behind.
        remove_partial(&partial)?;
        summary.already_complete = true;
        summary.rows = done.rows();
        summary.seconds = start.elapsed().as_secs_f64();
        return Ok(summary);
    }

    let mut parts = open_parts(&partial, &meta)?;
    let done: HashSet<String> = parts
        .iter()
        .map(ShardFileReader::paths)
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    let found = shard_files(input, opts.shard, opts.walk)?;
    summary.skipped = notes(found.skipped);
    summary.failed = notes(found.errors);
    summary.files = found.images.len();
    let todo: Vec<FoundFile> = found
        .images
        .into_iter()
        .filter(|f| !done.contains(&*f.path.to_string_lossy()))
        .collect();
    summary.resumed = summary.files - todo.len();

    if !todo.is_empty() {
        let embedder = Embedder::load(model)?;
        std::fs::create_dir_all(&partial).map_err(|source| Error::Io {
            path: partial.clone(),
            source,
        })?;
        let bar = progress_bar(todo.len() as u64, "images", opts.progress);
        let mut pending: Vec<ShardRow> = Vec::new();
        let mut last_part = Instant::now();
        let mut next_part = parts.len();
        let no_known = |_: &str| None;
        let interrupted = for_each_batch(
            &embedder,
            &todo,
            opts.batch,
            &opts.load,
            &no_known,
            stop,
            |batch| {
                let n = batch.len() as u64;
                embed_rows(&embedder, batch, &meta, &mut pending, &mut summary)?;
                bar.inc(n);
                let due =
                    last_part.elapsed() >= opts.part_every || pending.len() >= meta.batch_rows();
                if due && !pending.is_empty() {
                    parts.push(write_part(&partial, &mut next_part, &meta, &pending)?);
                    pending.clear();
                    last_part = Instant::now();
                }
                Ok(())
            },
        )?;
        bar.finish_and_clear();
        if !pending.is_empty() {
            parts.push(write_part(&partial, &mut next_part, &meta, &pending)?);
        }
        if interrupted {
            summary.interrupted = true;
            summary.rows = parts.iter().map(ShardFileReader::rows).sum();
            summary.seconds = start.elapsed().as_secs_f64();
            return Ok(summary);
        }
    }
    summary.rows = merge(&parts, &meta, out)?;
    remove_partial(&partial)?;
    summary.failed.sort_by(|a, b| a.path.cmp(&b.path));
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// Embeds one batch into rows (the same bytes twice in a batch: embedded once).
fn embed_rows(
    embedder: &Embedder,
    batch: Vec<super::embedding::Prepared>,
    meta: &ShardMeta,
    rows: &mut Vec<ShardRow>,
    summary: &mut ShardEmbedSummary,
) -> Result<()> {
    let sorted = SortedBatch::new(batch, |_| false);
    for (path, error, _) in &sorted.failed {
        summary.failed.push(failure_note(path, error));
    }
    if sorted.new.is_empty() {
        return Ok(());
    }
    let (records, pixels): (Vec<ImageRecord>, Vec<Vec<f32>>) = sorted.new.into_iter().unzip();
    let embedded = embed_batch(embedder, &pixels, meta.features.is_some())?;
    summary.embedded += pixels.len();
    let mut by_hash: HashMap<String, usize> = HashMap::new();
    for (i, record) in records.into_iter().enumerate() {
        by_hash.insert(record.content_hash.clone(), i);
        rows.push(ShardRow {
            record,
            vectors: embedded.vectors[i].clone(),
            features: embedded.features.as_ref().map(|(f, _)| f[i].clone()),
        });
    }
    for record in sorted.known {
        let i = by_hash[record.content_hash.as_str()];
        summary.duplicates += 1;
        rows.push(ShardRow {
            record,
            vectors: embedded.vectors[i].clone(),
            features: embedded.features.as_ref().map(|(f, _)| f[i].clone()),
        });
    }
    Ok(())
}

/// The complete part files of an earlier run, in order; leftovers of a part being
/// written when it stopped are deleted.
fn open_parts(partial: &Path, meta: &ShardMeta) -> Result<Vec<ShardFileReader>> {
    let entries = match std::fs::read_dir(partial) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::Io {
                path: partial.to_path_buf(),
                source,
            })
        }
    };
    let io = |source| Error::Io {
        path: partial.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in entries {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "parquet") {
            names.push(path);
        } else {
            std::fs::remove_file(&path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        }
    }
    names.sort();
    let mut parts = Vec::with_capacity(names.len());
    for path in names {
        let part = ShardFileReader::open(&path)?;
        if part.meta() != meta {
            return Err(BadRequest::ShardMismatch {
                path: partial.to_path_buf(),
                reason: "holds an unfinished run with another model, shard or settings: delete it, or rerun with those".into(),
            }
            .into());
        }
        parts.push(part);
    }
    Ok(parts)
}

fn write_part(
    partial: &Path,
    next: &mut usize,
    meta: &ShardMeta,
    rows: &[ShardRow],
) -> Result<ShardFileReader> {
    // Numbered after the parts there (never over one: its rows count as done).
    let mut path = partial.join(format!("part-{:06}.parquet", *next));
    while path.exists() {
        *next += 1;
        path = partial.join(format!("part-{:06}.parquet", *next));
    }
    *next += 1;
    let mut writer = ShardFileWriter::create(&path, meta)?;
    writer.write(rows)?;
    writer.finish()?;
    ShardFileReader::open(&path)
}

fn remove_partial(partial: &Path) -> Result<()> {
    match std::fs::remove_dir_all(partial) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io {
            path: partial.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}
