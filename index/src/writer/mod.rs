//! Changing an index: the one writer, its commit, and compaction.
//!
//! - `index_writer.rs` — `IndexWriter`: pending changes, `commit`, `compact`.

mod index_writer;

pub use index_writer::IndexWriter;
