//! The photos themselves, served by image id only: the full file, and a JPEG thumbnail
//! made once and cached beside the index, keyed by content hash (a changed file is a
//! new hash, so a new thumbnail). A path from a request is never used to read a file:
//! the path comes from the index, and the bytes must still hash to what was indexed.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use qseek_index::ImageId;

use crate::error::NotFound;
use crate::pipeline::Collection;
use crate::preprocess::image::{decode_rgb, LoadOptions};
use crate::service::search::read_indexed;
use crate::{Error, Result};

/// Longest side of a thumbnail, in pixels.
pub const THUMBNAIL_SIZE: u32 = 320;

/// The folder of the thumbnail cache for an index.
pub fn thumbnail_dir(index_dir: &Path) -> PathBuf {
    index_dir.join("thumbnails")
}

/// An indexed image's bytes and their MIME type.
pub fn full_image(c: &Collection, id: ImageId) -> Result<(Vec<u8>, &'static str)> {
    let info = c.index.image(id).ok_or(NotFound::Image { id })?;
    let (_, bytes) = read_indexed(&info)?;
    let mime = match image::guess_format(&bytes) {
        Ok(image::ImageFormat::Jpeg) => "image/jpeg",
        Ok(image::ImageFormat::Png) => "image/png",
        Ok(image::ImageFormat::WebP) => "image/webp",
        Ok(image::ImageFormat::Gif) => "image/gif",
        Ok(image::ImageFormat::Bmp) => "image/bmp",
        Ok(image::ImageFormat::Tiff) => "image/tiff",
        _ => "application/octet-stream",
    };
    Ok((bytes, mime))
}

/// An indexed image's JPEG thumbnail, from the cache or made (and cached) now.
pub fn thumbnail(c: &Collection, dir: &Path, id: ImageId, load: &LoadOptions) -> Result<Vec<u8>> {
    let info = c.index.image(id).ok_or(NotFound::Image { id })?;
    // The hash is hex from the index, never from the request.
    let file = dir.join(format!("{}-{THUMBNAIL_SIZE}.jpg", info.content_hash));
    if let Ok(bytes) = std::fs::read(&file) {
        return Ok(bytes);
    }
    let (path, bytes) = read_indexed(&info)?;
    let rgb = decode_rgb(&bytes, &path, load)?;
    let (w, h) = scaled(rgb.width(), rgb.height());
    let small = image::imageops::thumbnail(&rgb, w, h);
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(Cursor::new(&mut jpeg), 82)
        .encode_image(&small)
        .map_err(|e| Error::Internal(format!("JPEG encoding: {e}")))?;
    let io = |source| Error::Io {
        path: file.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    // Temporary file + rename: a concurrent reader never sees half a thumbnail.
    let tmp = dir.join(format!(
        "{}.{}.tmp",
        info.content_hash,
        std::process::id() as u64 * 1_000_003 + id
    ));
    std::fs::write(&tmp, &jpeg)
        .and_then(|()| std::fs::rename(&tmp, &file))
        .map_err(io)?;
    Ok(jpeg)
}

/// Width and height scaled so the longer side is at most [`THUMBNAIL_SIZE`].
fn scaled(w: u32, h: u32) -> (u32, u32) {
    let long = w.max(h).max(1);
    if long <= THUMBNAIL_SIZE {
        return (w.max(1), h.max(1));
    }
    let f = THUMBNAIL_SIZE as f64 / long as f64;
    (
        ((w as f64 * f).round() as u32).max(1),
        ((h as f64 * f).round() as u32).max(1),
    )
}
