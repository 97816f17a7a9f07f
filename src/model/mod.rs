//! The BLIP-2 retrieval model (candle), one file per part of the checkpoint.
//!
//! `config` reads `config.json`; `vision` is `vision_model.*`; `qformer` is
//! `embeddings.*` and `qformer.*`; `retrieval` ties them with `query_tokens`, the
//! projections and `itm_head`; `checkpoint` finds and opens the files.

pub mod bf16_gemm;
pub mod checkpoint;
pub mod config;
pub mod ops;
pub mod qformer;
pub mod retrieval;
pub mod skinny_gemm;
pub mod vision;
pub mod weights;

pub use checkpoint::{Checkpoint, ModelSource};
pub use config::Blip2Config;
pub use retrieval::{itc_scores, Blip2ForImageTextRetrieval};
