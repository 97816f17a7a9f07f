//! qseek: find photos from a sentence, sentences from a photo, and photos from a photo,
//! with BLIP-2's first-stage retrieval model (EVA ViT-g + Q-Former).
#![warn(missing_docs)]

pub mod cli;
pub mod embedder;
pub mod engine;
pub mod error;
pub mod model;
pub mod pipeline;
pub mod preprocess;
pub mod rerank;
pub mod server;
pub mod service;

pub use embedder::{Embedder, ModelOptions};
pub use error::{Error, Result};
