//! Turning files and strings into model inputs, exactly as the reference does.

pub mod formats;
pub mod image;
pub mod metadata;
pub mod pil_resize;
pub mod text;
