//! Turning files and strings into model inputs, exactly as the reference does.

pub mod image;
pub mod pil_resize;
pub mod text;
