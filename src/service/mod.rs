//! The application layer the command line and the server share: typed requests in,
//! typed (serde) responses out. Every policy lives here (the rerank default, which
//! search a query runs, the ITC-only note, remove-by-folder), so the CLI only parses
//! flags and prints, and the server only maps routes.
//!
//! - [`search`]: photos for a sentence, photos like a photo, sentences for a photo.
//! - [`query`]: the parts of a search request parsed the same way everywhere: the
//!   metadata filters and the sort.
//! - [`texts`]: adding and listing the sentences image → texts finds.
//! - [`dups`]: near-duplicate photos, grouped, best first.
//! - [`manage`]: what an index holds, removing files and folders.
//! - [`embeddings`]: the model alone: embeddings (`embed`) and ITC/ITM scores (`score`).
//! - [`explain`]: why a photo matches a sentence: the ITC query vector and the ITM
//!   Grad-CAM heat map.
//! - [`calls`]: [`calls::ModelCalls`], how a search reaches the model (directly, or
//!   through the server's batcher).

pub mod calls;
pub mod dups;
pub mod embeddings;
pub mod explain;
pub mod manage;
pub mod query;
pub mod search;
pub mod texts;
