//! Iterating over every committed item, for export (to another index, a file,
//! another tool).
//!
//! An export is a snapshot of one commit: it copies the entries when it is
//! made and shares the vector rows (chunks a commit never changes), so it holds
//! no lock while it is read and commits made meanwhile do not show in it.

use std::vec;

use crate::photo::PhotoMeta;
use crate::state::State;
use crate::storage::metadata_store::{ImageEntry, ImageId, PathEntry, TextEntry, TextId};
use crate::storage::vector_store::VectorStoreReader;

/// One committed image, as [`ImageExport`] yields it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedImage {
    /// The image.
    pub image_id: ImageId,
    /// Hash of its bytes.
    pub content_hash: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Every path with these bytes, as stored.
    pub paths: Vec<PathEntry>,
    /// Its `Q × D` vectors as stored, decoded to f32.
    pub vectors: Vec<f32>,
    /// What its metadata says (`None`: never read), as the index's photo filters see it.
    pub photo: Option<PhotoMeta>,
}

/// One committed text, as [`TextExport`] yields it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedText {
    /// The text.
    pub text_id: TextId,
    /// Its string.
    pub text: String,
    /// The caller's id for it.
    pub external_id: Option<String>,
    /// Its `D` values as stored, decoded to f32.
    pub vector: Vec<f32>,
}

/// Every image of one commit, in id order (from [`Index::export_images`](crate::Index::export_images)).
pub struct ImageExport {
    entries: vec::IntoIter<(ImageId, ImageEntry)>,
    vectors: VectorStoreReader,
}

impl ImageExport {
    pub(crate) fn new(state: &State) -> Self {
        ImageExport {
            entries: sorted(state.images.entries.iter()),
            vectors: state.images.rows.vectors.clone(),
        }
    }
}

impl Iterator for ImageExport {
    type Item = ExportedImage;

    fn next(&mut self) -> Option<ExportedImage> {
        let (image_id, e) = self.entries.next()?;
        Some(ExportedImage {
            image_id,
            vectors: self.vectors.row_f32(e.row as usize),
            content_hash: e.content_hash,
            width: e.width,
            height: e.height,
            paths: e.paths,
            photo: e.photo,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

impl ExactSizeIterator for ImageExport {}

/// Every text of one commit, in id order (from [`Index::export_texts`](crate::Index::export_texts)).
pub struct TextExport {
    entries: vec::IntoIter<(TextId, TextEntry)>,
    vectors: VectorStoreReader,
}

impl TextExport {
    pub(crate) fn new(state: &State) -> Self {
        TextExport {
            entries: sorted(state.texts.entries.iter()),
            vectors: state.texts.rows.vectors.clone(),
        }
    }
}

impl Iterator for TextExport {
    type Item = ExportedText;

    fn next(&mut self) -> Option<ExportedText> {
        let (text_id, e) = self.entries.next()?;
        Some(ExportedText {
            text_id,
            vector: self.vectors.row_f32(e.row as usize),
            text: e.text,
            external_id: e.external_id,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

impl ExactSizeIterator for TextExport {}

fn sorted<'a, E: Clone + 'a>(
    entries: impl Iterator<Item = (&'a u64, &'a E)>,
) -> vec::IntoIter<(u64, E)> {
    let mut out: Vec<(u64, E)> = entries.map(|(id, e)| (*id, e.clone())).collect();
    out.sort_unstable_by_key(|(id, _)| *id);
    out.into_iter()
}
