//! The photos themselves, served by image id only: the full file, and a JPEG thumbnail
//! made once and cached beside the index, keyed by content hash (a changed file is a
//! new hash, so a new thumbnail). A path from a request is never used to read a file:
//! the path comes from the index, it must still lead inside the collection's roots
//! (`roots`, see [`crate::service::search::read_roots`]), and the bytes must still hash
//! to what was indexed.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use image::codecs::jpeg::JpegEncoder;
use qseek_index::ImageId;

use crate::error::NotFound;
use crate::pipeline::Collection;
use crate::preprocess::formats;
use crate::preprocess::image::{decode_rgb, LoadOptions};
use crate::service::search::{confined, read_indexed};
use crate::{Error, Result};

/// Longest side of a thumbnail, in pixels.
pub const THUMBNAIL_SIZE: u32 = 320;

/// The folder of the thumbnail cache for an index.
pub fn thumbnail_dir(index_dir: &Path) -> PathBuf {
    index_dir.join("thumbnails")
}

/// An indexed image's bytes and their MIME type.
pub fn full_image(
    c: &Collection,
    id: ImageId,
    roots: Option<&[PathBuf]>,
) -> Result<(Vec<u8>, &'static str)> {
    let info = c.index.image(id).ok_or(NotFound::Image { id })?;
    let (_, bytes) = read_indexed(&info, roots)?;
    let mime = image::guess_format(&bytes)
        .ok()
        .and_then(formats::by_format)
        .map_or("application/octet-stream", |f| f.mime);
    Ok((bytes, mime))
}

/// An indexed image's JPEG thumbnail from the cache, if it is there (`None`: make it
/// with [`thumbnail`]). A cached thumbnail is served only while one of the image's
/// paths still lies inside `roots`.
pub fn cached_thumbnail(
    c: &Collection,
    dir: &Path,
    id: ImageId,
    roots: Option<&[PathBuf]>,
) -> Result<Option<Vec<u8>>> {
    let info = c.index.image(id).ok_or(NotFound::Image { id })?;
    let Ok(bytes) = std::fs::read(thumbnail_file(dir, &info.content_hash)) else {
        return Ok(None);
    };
    let mut last = None;
    for p in &info.paths {
        match confined(Path::new(&p.path), roots) {
            Ok(_) => return Ok(Some(bytes)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(Error::NotFound(NotFound::Image { id })))
}

/// The cache file of a content hash (hex from the index, never from the request).
fn thumbnail_file(dir: &Path, content_hash: &str) -> PathBuf {
    dir.join(format!("{content_hash}-{THUMBNAIL_SIZE}.jpg"))
}

/// An indexed image's JPEG thumbnail, made (and cached) now: decoded from its file.
pub fn thumbnail(
    c: &Collection,
    dir: &Path,
    id: ImageId,
    load: &LoadOptions,
    roots: Option<&[PathBuf]>,
) -> Result<Vec<u8>> {
    let info = c.index.image(id).ok_or(NotFound::Image { id })?;
    let file = thumbnail_file(dir, &info.content_hash);
    let (path, bytes) = read_indexed(&info, roots)?;
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
    // A temporary file of this call's own + rename: a concurrent reader never sees half
    // a thumbnail, and concurrent makers of the same one never share a file.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        "{}.{}.{}.tmp",
        info.content_hash,
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::write(&tmp, &jpeg).and_then(|()| std::fs::rename(&tmp, &file));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        // Another request made the same thumbnail meanwhile: it is there, all is well.
        if !file.is_file() {
            return Err(io(e));
        }
    }
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
