//! From image files to vectors, the part `qseek index` and `qseek shard-embed` share.
//!
//! Each file is read and hashed (blake3); bytes the caller already holds are not
//! decoded; the rest are decoded and pre-processed in parallel (rayon) on a producer
//! thread, a batch ahead of the model, which runs on the caller's thread. A file that
//! cannot be read or decoded becomes a [`Prepared::Failed`] with its reason: it never
//! stops the run. Each file's metadata (date taken, camera, place: EXIF) is read from
//! the same bytes; a broken field is left out with a note, never failing the file.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;

use qseek_index::{ImageRecord, PhotoMeta};
use rayon::prelude::*;
use serde::Serialize;

use super::rows3;
use super::walk::FoundFile;
use crate::embedder::Embedder;
use crate::preprocess::image::{decode_rgb, LoadOptions};
use crate::preprocess::metadata::read_photo_meta;
use crate::{Error, Result};

/// A file and why it was not indexed (or embedded).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileNote {
    /// The file.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// The width and height of the image a content hash names, when the caller holds it
/// already (so its file need not be decoded).
pub(crate) type KnownHash<'a> = &'a (dyn Fn(&str) -> Option<(u32, u32)> + Sync);

/// A file read and hashed by the producer.
pub(crate) enum Prepared {
    /// New bytes: pixel values for the model.
    Decoded {
        record: ImageRecord,
        pixels: Vec<f32>,
        notes: Vec<String>,
    },
    /// Bytes the caller already holds.
    Known {
        record: ImageRecord,
        notes: Vec<String>,
    },
    /// Could not be read (`io`) or decoded.
    Failed {
        path: PathBuf,
        error: Error,
        io: bool,
    },
}

/// A batch of [`Prepared`] files, sorted by what to do with them.
#[derive(Default)]
pub(crate) struct SortedBatch {
    /// Bytes to embed, each once: the first file with them.
    pub new: Vec<(ImageRecord, Vec<f32>)>,
    /// Bytes the caller holds, or that `new` holds already (the same bytes twice in
    /// one batch).
    pub known: Vec<ImageRecord>,
    /// Files that could not be read (`io`) or decoded.
    pub failed: Vec<(PathBuf, Error, bool)>,
    /// Fields of the files' metadata that were broken and left out.
    pub metadata_notes: Vec<FileNote>,
}

impl SortedBatch {
    /// Sorts `batch`; `held` tells the bytes (content hash) the caller got earlier in
    /// this run, which need no model either.
    pub(crate) fn new(batch: Vec<Prepared>, held: impl Fn(&str) -> bool) -> Self {
        let mut out = SortedBatch::default();
        let mut seen = HashSet::new();
        for item in batch {
            let (path, notes) = match &item {
                Prepared::Decoded { record, notes, .. } | Prepared::Known { record, notes } => {
                    (record.path.as_str(), notes.as_slice())
                }
                Prepared::Failed { .. } => ("", &[][..]),
            };
            out.metadata_notes
                .extend(notes.iter().map(|reason| FileNote {
                    path: path.to_string(),
                    reason: reason.clone(),
                }));
            match item {
                Prepared::Decoded { record, pixels, .. } => {
                    if held(&record.content_hash) || !seen.insert(record.content_hash.clone()) {
                        out.known.push(record);
                    } else {
                        out.new.push((record, pixels));
                    }
                }
                Prepared::Known { record, .. } => out.known.push(record),
                Prepared::Failed { path, error, io } => out.failed.push((path, error, io)),
            }
        }
        out
    }
}

/// The model's output for a batch of images.
pub(crate) struct Embedded {
    /// Each image's `Q × D` values, L2-normalised rows.
    pub vectors: Vec<Vec<f32>>,
    /// Each image's vision features and their shape (tokens, hidden), when asked for.
    pub features: Option<(Vec<Vec<f32>>, [usize; 2])>,
}

/// Runs the model on pre-processed images.
pub(crate) fn embed_batch(
    embedder: &Embedder,
    pixels: &[Vec<f32>],
    features: bool,
) -> Result<Embedded> {
    let (vision, embeds) = embedder.embed_pixels(&embedder.pixel_batch(pixels)?)?;
    let vectors = rows3(&embeds)?;
    let features = if features {
        let (_, tokens, hidden) = vision.dims3()?;
        Some((rows3(&vision)?, [tokens, hidden]))
    } else {
        None
    };
    Ok(Embedded { vectors, features })
}

/// Content hash of a file's bytes, as stored in the index.
pub fn content_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

fn record_of(
    file: &FoundFile,
    hash: String,
    width: u32,
    height: u32,
    photo: PhotoMeta,
) -> ImageRecord {
    ImageRecord {
        path: file.path.to_string_lossy().into_owned(),
        size: file.size,
        mtime: file.mtime,
        content_hash: hash,
        width,
        height,
        photo: Some(photo),
    }
}

fn prepare(
    file: &FoundFile,
    embedder: &Embedder,
    known: KnownHash<'_>,
    load: &LoadOptions,
) -> Prepared {
    let bytes = match std::fs::read(&file.path) {
        Ok(b) => b,
        Err(source) => {
            return Prepared::Failed {
                path: file.path.clone(),
                error: Error::Io {
                    path: file.path.clone(),
                    source,
                },
                io: true,
            }
        }
    };
    // The size may have changed since the walk; record what was hashed.
    let file = FoundFile {
        size: bytes.len() as u64,
        ..file.clone()
    };
    let hash = content_hash(&bytes);
    let metadata = read_photo_meta(&bytes);
    if let Some((width, height)) = known(&hash) {
        return Prepared::Known {
            record: record_of(&file, hash, width, height, metadata.meta),
            notes: metadata.notes,
        };
    }
    match decode_rgb(&bytes, &file.path, load) {
        Ok(img) => {
            let (w, h) = img.dimensions();
            Prepared::Decoded {
                record: record_of(&file, hash, w, h, metadata.meta),
                pixels: embedder.image_preprocessor().pixel_values(&img),
                notes: metadata.notes,
            }
        }
        Err(error) => Prepared::Failed {
            path: file.path.clone(),
            error,
            io: false,
        },
    }
}

/// Reads, hashes and decodes `files` in batches of `batch` on a producer thread (rayon
/// within a batch, at most two batches ahead) and hands each batch to `consume` on
/// this thread. `stop` is polled between batches; returns whether it stopped the run
/// (some files then were not handed over). Returning drops the receiver, so the
/// producer's next send fails and it stops.
pub(crate) fn for_each_batch(
    embedder: &Embedder,
    files: &[FoundFile],
    batch: usize,
    load: &LoadOptions,
    known: KnownHash<'_>,
    stop: &AtomicBool,
    mut consume: impl FnMut(Vec<Prepared>) -> Result<()>,
) -> Result<bool> {
    std::thread::scope(|scope| -> Result<bool> {
        let (tx, rx) = sync_channel::<Vec<Prepared>>(2);
        scope.spawn(move || {
            for chunk in files.chunks(batch.max(1)) {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let prepared: Vec<Prepared> = chunk
                    .par_iter()
                    .map(|f| prepare(f, embedder, known, load))
                    .collect();
                if tx.send(prepared).is_err() {
                    break;
                }
            }
        });
        for prepared in rx {
            consume(prepared)?;
            if stop.load(Ordering::Relaxed) {
                return Ok(true);
            }
        }
        // The producer may have seen `stop` first and left the last batches unread.
        Ok(stop.load(Ordering::Relaxed))
    })
}

/// Notes for (path, reason) pairs.
pub(crate) fn notes(list: Vec<(PathBuf, String)>) -> Vec<FileNote> {
    list.into_iter()
        .map(|(p, reason)| FileNote {
            path: p.to_string_lossy().into_owned(),
            reason,
        })
        .collect()
}

/// The note for a file that failed: the error's message without the path (the note
/// names the file already).
pub(crate) fn failure_note(path: &Path, error: &Error) -> FileNote {
    let message = error.to_string();
    let prefix = format!("{}: ", path.display());
    FileNote {
        path: path.to_string_lossy().into_owned(),
        reason: message
            .strip_prefix(&prefix)
            .unwrap_or(&message)
            .to_string(),
    }
}
