//! What is on disk, one file kind per module, each with its writer and reader.
//!
//! For: bytes in and out, durability, cutting back to the last commit. Not
//! for: deciding what a commit holds (see `writer/`) or searching.
//!
//! - `manifest.rs` — `manifest.json`: what an index holds, format version.
//! - `metadata_store.rs` — sled, the truth and the commit point.
//! - `vector_store.rs` — the vector files (`VectorFileWriter`) and their
//!   decoded rows in memory (`VectorStoreReader`).
//! - `feature_store.rs` — the vision-features file (`FeatureStoreWriter`,
//!   `FeatureStoreReader`).
//! - `lexical_index.rs` — tantivy over names, path components and texts.

pub(crate) mod feature_store;
pub(crate) mod lexical_index;
pub(crate) mod manifest;
pub(crate) mod metadata_store;
pub(crate) mod vector_store;
