//! qseek: find photos from a sentence, sentences from a photo, and photos from a photo,
//! with BLIP-2's first-stage retrieval model (EVA ViT-g + Q-Former).
#![warn(missing_docs)]

pub mod error;
pub mod preprocess;

pub use error::{Error, Result};
