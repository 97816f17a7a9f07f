//! `qseek index`: bring an index up to date with folders of photos, doing the least
//! work that gets there.
//!
//! 1. Walk the folders ([`super::walk`]). A file whose path is indexed with the same
//!    size and mtime is unchanged: not even read.
//! 2. Every other file is read and hashed (blake3). Bytes the index already holds (a
//!    moved, copied or touched file) get the new path without running the model.
//! 3. The rest are decoded and pre-processed in parallel (rayon) on a producer thread,
//!    a batch ahead of the model, which embeds them on this thread ([`super::embedding`],
//!    which `qseek shard-embed` shares).
//! 4. The writer commits every few seconds and at the end, so an interruption (Ctrl-C,
//!    SIGKILL, a crash) loses at most the last few seconds of work, never the index.
//! 5. Indexed paths under the walked folders that no longer exist are removed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use qseek_index::{ImageRecord, Index, IndexWriter};
use serde::Serialize;

pub use super::embedding::{content_hash, FileNote};
use rayon::prelude::*;

use super::embedding::{embed_batch, failure_note, for_each_batch, notes, Prepared, SortedBatch};
use super::walk::{absolute, is_under, walk, FoundFile, Walk, WalkOptions};
use super::{progress_bar, Collection};
use crate::embedder::Embedder;
use crate::preprocess::image::LoadOptions;
use crate::preprocess::metadata::read_photo_meta;
use crate::{Error, Result};

/// How to index.
#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// What to walk.
    pub walk: WalkOptions,
    /// Decoding limits.
    pub load: LoadOptions,
    /// Images per model call.
    pub batch: usize,
    /// Commit at least this often.
    pub commit_every: Duration,
    /// Show a progress bar.
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Default, Serialize)]
pub struct IndexSummary {
    /// Images run through the model (new or changed bytes).
    pub embedded: usize,
    /// Paths added or updated without the model: their bytes were already indexed
    /// (moved, copied, or touched files).
    pub reused: usize,
    /// Paths already indexed with the same size and mtime.
    pub unchanged: usize,
    /// Indexed paths that no longer exist, removed.
    pub removed: usize,
    /// Files that are not images qseek reads.
    pub skipped: Vec<FileNote>,
    /// Image files that could not be read or decoded.
    pub failed: Vec<FileNote>,
    /// Indexed photos whose metadata (date, camera, place) was read without running the
    /// model: an index made before qseek read it.
    pub metadata_read: usize,
    /// Fields of photos' metadata that were broken or absurd and left out (the photo is
    /// indexed all the same).
    pub metadata_notes: Vec<FileNote>,
    /// Stopped early (Ctrl-C); what was done is committed.
    pub interrupted: bool,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Images in the index after the run.
    pub images_in_index: usize,
}

/// Live counts of a run, for whoever reports its progress (the server's indexing status).
#[derive(Debug, Default)]
pub struct IndexProgress {
    /// Files to read (known once the walk is done).
    pub total: AtomicUsize,
    /// Files handled so far.
    pub done: AtomicUsize,
    /// Files that could not be read or decoded so far.
    pub failed: AtomicUsize,
}

/// Indexes `roots` into the collection. `stop` is polled between batches (Ctrl-C).
pub fn index_folders(
    collection: &Collection,
    roots: &[PathBuf],
    opts: &IndexOptions,
    stop: &AtomicBool,
) -> Result<IndexSummary> {
    index_folders_observed(collection, roots, opts, stop, &IndexProgress::default())
}

/// [`index_folders`], counting its progress in `progress` as it goes.
pub fn index_folders_observed(
    collection: &Collection,
    roots: &[PathBuf],
    opts: &IndexOptions,
    stop: &AtomicBool,
    progress: &IndexProgress,
) -> Result<IndexSummary> {
    let found = walk(roots, opts.walk);
    index_found(collection, found, Some(roots), opts, stop, progress)
}

/// Indexes the given files (absolute paths); nothing is removed.
pub fn index_files(
    collection: &Collection,
    files: &[PathBuf],
    opts: &IndexOptions,
    stop: &AtomicBool,
) -> Result<IndexSummary> {
    let mut found = Walk::default();
    for path in files {
        match std::fs::metadata(path) {
            Ok(meta) => found.images.push(FoundFile {
                path: path.clone(),
                size: meta.len(),
                mtime: super::walk::mtime_secs(&meta),
            }),
            Err(e) => found.errors.push((path.clone(), e.to_string())),
        }
    }
    found.images.sort_by(|a, b| a.path.cmp(&b.path));
    found.images.dedup_by(|a, b| a.path == b.path);
    index_found(
        collection,
        found,
        None,
        opts,
        stop,
        &IndexProgress::default(),
    )
}

/// Indexes what a walk found; with `roots`, also removes indexed paths under them that
/// no longer exist.
fn index_found(
    collection: &Collection,
    found: Walk,
    roots: Option<&[PathBuf]>,
    opts: &IndexOptions,
    stop: &AtomicBool,
    progress: &IndexProgress,
) -> Result<IndexSummary> {
    let start = Instant::now();
    let (embedder, index) = (&collection.embedder, &collection.index);
    // The roots go with the first commit: the folders (or files) given, and where
    // links inside them lead out of them.
    let given: Option<Vec<String>> = roots.map(|roots| {
        roots
            .iter()
            .filter_map(|r| absolute(r).ok())
            .map(|r| r.to_string_lossy().into_owned())
            .collect()
    });
    let mut new_roots = given.clone().unwrap_or_default();
    if given.is_some() {
        let targets = found.link_targets.iter();
        new_roots.extend(targets.map(|t| t.to_string_lossy().into_owned()));
    }
    let mut summary = IndexSummary {
        skipped: notes(found.skipped),
        failed: notes(found.errors),
        ..IndexSummary::default()
    };

    let mut todo = Vec::new();
    // Unchanged files of images whose metadata was never read (an index made before
    // qseek read it): read it now, without the model.
    let mut unread = Vec::new();
    for file in found.images {
        let key = file.path.to_string_lossy();
        let info = index.image_by_path(&key);
        let same = info.as_ref().is_some_and(|info| {
            info.paths
                .iter()
                .any(|p| p.path == key && p.size == file.size && p.mtime == file.mtime)
        });
        match info {
            Some(info) if same => {
                summary.unchanged += 1;
                if info.photo.is_none() {
                    unread.push((info.image_id, info.content_hash, file));
                }
            }
            _ => todo.push(file),
        }
    }

    let mut writer = index.writer()?;
    writer.add_roots(&new_roots);
    read_unread_metadata(&mut writer, unread, &mut summary)?;
    progress.total.store(todo.len(), Ordering::Relaxed);
    progress
        .failed
        .store(summary.failed.len(), Ordering::Relaxed);
    let bar = progress_bar(todo.len() as u64, "images", opts.progress);
    let mut last_commit = Instant::now();
    let store_features = index.manifest().store_vision_features;
    let known = |hash: &str| index.image_by_hash(hash).map(|i| (i.width, i.height));
    let interrupted = for_each_batch(
        embedder,
        &todo,
        opts.batch,
        &opts.load,
        &known,
        stop,
        |batch| {
            let n = batch.len() as u64;
            apply_batch(
                embedder,
                &mut writer,
                batch,
                store_features,
                &opts.load,
                &mut summary,
            )?;
            bar.inc(n);
            progress.done.fetch_add(n as usize, Ordering::Relaxed);
            progress
                .failed
                .store(summary.failed.len(), Ordering::Relaxed);
            if last_commit.elapsed() >= opts.commit_every {
                writer.commit()?;
                last_commit = Instant::now();
            }
            Ok(())
        },
    )?;
    summary.interrupted = interrupted;
    bar.finish_and_clear();

    if let (false, Some(roots)) = (summary.interrupted, &given) {
        summary.removed = remove_gone(index, &mut writer, roots)?;
    }
    writer.commit()?;
    summary.failed.sort_by(|a, b| a.path.cmp(&b.path));
    summary.seconds = start.elapsed().as_secs_f64();
    summary.images_in_index = index.stats().images;
    Ok(summary)
}

/// Embeds the decoded images of one batch and hands everything to the writer.
fn apply_batch(
    embedder: &Embedder,
    writer: &mut IndexWriter,
    batch: Vec<Prepared>,
    store_features: bool,
    load: &LoadOptions,
    summary: &mut IndexSummary,
) -> Result<()> {
    let sorted = SortedBatch::new(batch, |hash| writer.image_id_by_hash(hash).is_some());
    summary.metadata_notes.extend(sorted.metadata_notes);
    for (path, error, io) in sorted.failed {
        // The bytes the index holds for this path are gone (it now fails to decode):
        // drop the stale entry. A read error may be passing: keep it.
        if !io {
            writer.remove_path(&path.to_string_lossy())?;
        }
        summary.failed.push(failure_note(&path, &error));
    }
    if !sorted.new.is_empty() {
        let (records, pixels): (Vec<ImageRecord>, Vec<Vec<f32>>) = sorted.new.into_iter().unzip();
        embed_and_add(embedder, writer, records, &pixels, store_features)?;
        summary.embedded += pixels.len();
    }
    for record in sorted.known {
        match writer.add_path(record.clone()) {
            Ok(_) => summary.reused += 1,
            // The bytes left the index during this run (their last path changed
            // content): embed them after all.
            Err(qseek_index::Error::UnknownHash { .. }) => {
                match embedder.pixel_values(Path::new(&record.path), load) {
                    Ok(pixels) => {
                        embed_and_add(embedder, writer, vec![record], &[pixels], store_features)?;
                        summary.embedded += 1;
                    }
                    Err(e) => summary
                        .failed
                        .push(failure_note(Path::new(&record.path), &e)),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads the metadata of indexed images that lack it, from their unchanged files (in
/// parallel), and sets it. A file whose bytes are no longer the indexed ones (changed
/// within the same second and size) is left for the next run; one that cannot be read
/// is counted as failed, as any unreadable file is.
fn read_unread_metadata(
    writer: &mut IndexWriter,
    unread: Vec<(qseek_index::ImageId, String, FoundFile)>,
    summary: &mut IndexSummary,
) -> Result<()> {
    let read: Vec<_> = unread
        .into_par_iter()
        .map(|(id, hash, file)| {
            let read = std::fs::read(&file.path)
                .map(|bytes| (content_hash(&bytes) == hash).then(|| read_photo_meta(&bytes)));
            (id, file.path, read)
        })
        .collect();
    for (id, path, read) in read {
        match read {
            Ok(Some(metadata)) => {
                writer.set_photo(id, Some(metadata.meta));
                summary.metadata_read += 1;
                let path = path.to_string_lossy();
                summary
                    .metadata_notes
                    .extend(metadata.notes.into_iter().map(|reason| FileNote {
                        path: path.to_string(),
                        reason,
                    }));
            }
            Ok(None) => {}
            Err(source) => {
                let error = Error::Io {
                    path: path.clone(),
                    source,
                };
                summary.failed.push(failure_note(&path, &error));
            }
        }
    }
    Ok(())
}

fn embed_and_add(
    embedder: &Embedder,
    writer: &mut IndexWriter,
    records: Vec<ImageRecord>,
    pixels: &[Vec<f32>],
    store_features: bool,
) -> Result<()> {
    let embedded = embed_batch(embedder, pixels, store_features)?;
    for (i, record) in records.into_iter().enumerate() {
        let f = embedded
            .features
            .as_ref()
            .map(|(rows, shape)| (rows[i].as_slice(), &shape[..]));
        writer.add_image(record, &embedded.vectors[i], f)?;
    }
    Ok(())
}

/// Removes indexed paths under `roots` (absolute) that no longer exist. A path that exists but
/// was not walked (a hidden folder, say) stays.
fn remove_gone(index: &Index, writer: &mut IndexWriter, roots: &[String]) -> Result<usize> {
    let mut removed = 0;
    for path in index.paths() {
        if !roots.iter().any(|r| is_under(&path, r)) {
            continue;
        }
        let gone =
            matches!(std::fs::metadata(&path), Err(e) if e.kind() == std::io::ErrorKind::NotFound);
        if gone && writer.remove_path(&path)? {
            removed += 1;
        }
    }
    Ok(removed)
}
