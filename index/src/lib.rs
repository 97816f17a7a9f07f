//! qseek-index: the multi-vector index that holds a photo collection.
//!
//! BLIP-2 describes an image by `Q` query vectors of `D` dims and scores a text
//! against it by the maximum over those vectors. This crate stores every one of
//! those vectors (f32, f16 or int8), finds the best images for a query vector
//! with an HNSW graph plus exact re-scoring, keeps the metadata in sled and the
//! names and texts in tantivy, and commits atomically. See the workspace's
//! `ARCHITECTURE.md`.
#![warn(missing_docs)]

mod dups;
mod export;
mod graph;
mod index;
mod photo;
mod search;
mod state;
mod storage;
mod table;
mod verify;
mod writer;

pub use dups::{DupGroup, DupParams, DupReport};
pub use export::{ExportedImage, ExportedText, ImageExport, TextExport};
pub use graph::point_map::{PointMap, PointTarget};
pub use index::{ImageInfo, Index, IndexStats, PhotoStats, QueryTerm, TextInfo};
pub use photo::{civil_from_days, days_from_civil, Gps, Near, PhotoFilter, PhotoMeta, TakenAt};
pub use search::max_sim;
pub use search::{default_ef, Filter, ImageHit, SearchParams, TextHit};
pub use storage::manifest::{FeatureDtype, Manifest, ModelId, VectorDtype, FORMAT_VERSION};
pub use storage::metadata_store::{ImageId, ImageRecord, PathEntry, TextId};
pub use verify::VerifyReport;
pub use writer::IndexWriter;

use std::path::PathBuf;

/// The one error type of `qseek-index`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the index could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file of the index exists but its content is not what the index wrote.
    #[error("{path}: corrupt index file: {reason}")]
    Corrupt {
        /// The file (or directory, for sled and tantivy).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file of the index is shorter than the last commit recorded.
    #[error("{path}: truncated: the last commit needs {expected} bytes, the file has {actual}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the last commit recorded.
        expected: u64,
        /// Bytes on disk.
        actual: u64,
    },
    /// The index was written by a newer version of qseek-index.
    #[error("{path}: index format version {found} is newer than this build supports ({supported}); upgrade qseek")]
    NewerFormat {
        /// The manifest file.
        path: PathBuf,
        /// Version in the manifest.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// The index was built with another model than the one asked for.
    #[error("index at {path} was built with model {found}, not {expected}; re-index or open it with that model")]
    ModelMismatch {
        /// The index directory.
        path: PathBuf,
        /// Model (id and config hash) asked for.
        expected: String,
        /// Model (id and config hash) in the manifest.
        found: String,
    },
    /// `create` was called on a directory that already holds an index.
    #[error("{path}: an index already exists here")]
    AlreadyExists {
        /// The index directory.
        path: PathBuf,
    },
    /// `open` was called on a directory without an index.
    #[error("{path}: no index here (no manifest.json)")]
    NotFound {
        /// The index directory.
        path: PathBuf,
    },
    /// A vector (or set of vectors) has the wrong number of values.
    #[error("wrong vector dimension: expected {expected} values, received {received}")]
    WrongVectorDimension {
        /// Values expected (`D`, or `Q * D`).
        expected: usize,
        /// Values given.
        received: usize,
    },
    /// A manifest field has a value the index cannot work with.
    #[error("invalid manifest: {reason}")]
    InvalidManifest {
        /// What is wrong.
        reason: String,
    },
    /// Another process has the index open (one process at a time: the metadata
    /// database holds an exclusive lock).
    #[error("the index at {path} is in use by another process (a `qseek index` still running?); wait for it to finish")]
    InUse {
        /// The index directory.
        path: PathBuf,
    },
    /// A second writer was asked for while one is alive.
    #[error("the index already has a writer; drop it before asking for another")]
    WriterBusy,
    /// Vision features were given to an index created without them, or with the wrong size.
    #[error("vision features: {reason}")]
    VisionFeatures {
        /// What is wrong.
        reason: String,
    },
    /// A path was added for a content hash the index does not hold.
    #[error("no image with content hash {hash}; add it with its vectors")]
    UnknownHash {
        /// The content hash.
        hash: String,
    },
    /// The lexical filter query could not be parsed.
    #[error("filter query {query:?}: {reason}")]
    BadQuery {
        /// The query string.
        query: String,
        /// Tantivy's explanation.
        reason: String,
    },
    /// A combined query has no term with a positive weight: nothing to look for.
    #[error("a combined query needs a term with a positive weight")]
    NoPositiveTerm,
    /// The metadata database (sled) failed.
    #[error("{path}: metadata database: {source}")]
    Metadata {
        /// The sled directory.
        path: PathBuf,
        /// Sled's error.
        source: sled::Error,
    },
    /// The lexical index (tantivy) failed.
    #[error("{path}: lexical index: {source}")]
    Lexical {
        /// The tantivy directory.
        path: PathBuf,
        /// Tantivy's error.
        source: tantivy::TantivyError,
    },
}

/// `Result` with qseek-index's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a path to an I/O error.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
