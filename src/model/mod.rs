//! The BLIP-2 retrieval model (candle), one file per part of the checkpoint.
//!
//! `config` reads `config.json`; `vision` is `vision_model.*`; `qformer` is
//! `embeddings.*` and `qformer.*`; `retrieval` ties them with `query_tokens`, the
//! projections and `itm_head`; `gradcam` is the ITM pass again with a backward pass, for
//! explanations; `checkpoint` finds and opens the files.

pub mod checkpoint;
pub mod config;
pub mod gradcam;
mod lazy;
pub mod ops;
mod precision;
pub mod qformer;
pub mod retrieval;
pub mod vision;
pub mod weights;

pub use checkpoint::{Checkpoint, ModelSource};
pub use config::Blip2Config;
pub use precision::Precision;
pub use retrieval::{itc_scores, Blip2ForImageTextRetrieval};

/// One pool of compute threads for the process: call first thing in `main`, before any
/// other thread starts (it may set an environment variable).
///
/// qseek's GEMMs (`qseek_kernels::gemm`) and index scans run on rayon's threads, one per core.
/// candle 0.11 runs large element-wise ops (residual adds, scaling: 64 Ki values or more)
/// on a second pool of its own, of one thread fewer, whose threads spin for a while
/// after each op before they sleep; on a machine with few cores they take the cores
/// from the GEMM that follows. qseek's element-wise ops are a small part of its time, so
/// they run on the calling thread instead: `CANDLE_NUM_THREADS=1` (that pool's size),
/// unless the user set it. Measured on 2 cores: `qseek serve` answers 16 concurrent
/// text searches ~15% faster (benches/README).
pub fn use_one_thread_pool() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Runs `op`, a forward pass on the CPU, on the compute pool (rayon's) as one job, and
/// waits for it.
///
/// A forward pass is several hundred short parallel steps: each GEMM, each packing of
/// its rows. From a thread outside the pool (`main`, the server's model worker) every
/// step is handed to the pool while the caller sleeps until it is done: a thread
/// wake-up each way per step, each a system call, and in a virtual machine an
/// interrupt between cores. On one of the pool's threads the steps fork and join in
/// place, and the other threads take their halves without waking anyone who sleeps.
/// The numbers are the same: only which thread runs each step changes. Measured on 2
/// cores (a loop of `Embedder::embed_token_ids`, min of 40): 16 sentences' text pass
/// 167 → 162 ms, one sentence 18.8 → 16.5 ms; `serve_load` (benches/README) 16 clients
/// 76.9 → 79.6 requests/s.
pub fn on_compute_pool<R: Send>(op: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| op())
}
