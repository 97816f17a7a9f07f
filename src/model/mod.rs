//! The BLIP-2 retrieval model (candle), one file per part of the checkpoint.
//!
//! `config` reads `config.json`; `vision` is `vision_model.*`; `qformer` is
//! `embeddings.*` and `qformer.*`; `retrieval` ties them with `query_tokens`, the
//! projections and `itm_head`; `checkpoint` finds and opens the files.

pub mod checkpoint;
pub mod config;
pub mod ops;
pub mod packed_gemm;
pub mod qformer;
pub mod retrieval;
pub mod vision;
pub mod weights;

pub use checkpoint::{Checkpoint, ModelSource};
pub use config::Blip2Config;
pub use retrieval::{itc_scores, Blip2ForImageTextRetrieval};
