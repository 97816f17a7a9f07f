//! The ANN graph over a table's rows: what it is made of and how it is kept.
//!
//! For: proposing candidates fast. Not for: scores (every candidate is
//! re-scored exactly from its stored vectors, see `table.rs`) or truth (the
//! graph is a cache, rebuilt from the vector files whenever in doubt).
//!
//! - `ann_graph.rs` — `AnnGraph`: a frozen graph plus a live hnsw_rs graph
//!   for points added since, and the per-image graph vectors.
//! - `frozen_graph.rs` — `FrozenGraph`: hnsw_rs's graph in flat arrays, its
//!   search and its file.
//! - `point_map.rs` — `PointMap`: graph point → (vector row, slot).
//! - `graph_cache.rs` — loading the saved graph or building a new one from a
//!   snapshot of a table's rows, without any lock.

pub(crate) mod ann_graph;
pub(crate) mod frozen_graph;
pub(crate) mod graph_cache;
pub(crate) mod point_map;
