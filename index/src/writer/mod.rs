//! Changing an index: the one writer, its commit, and compaction.
//!
//! - `index_writer.rs` — `IndexWriter`: pending changes, `commit`.
//! - `compaction.rs` — `IndexWriter::compact`: rewriting the data files
//!   without dead rows.

pub(crate) mod compaction;
mod index_writer;

pub use index_writer::IndexWriter;
