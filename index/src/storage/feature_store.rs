//! Vision features: each image's ViT output, kept for ITM reranking, as one
//! record per image in an append-only file (`vision_features.g<N>.bin`).
//!
//! A record is the features' values, little-endian, in the store's
//! [`FeatureEncoding`]; where it starts and its shape are in the image's
//! metadata ([`FeatureRef`]), so the file has no framing of its own. Like the
//! vector files, the file only grows between compactions and bytes past the
//! committed length are an interrupted commit, cut off on open.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use half::f16;

use crate::storage::manifest::Manifest;
use crate::storage::metadata_store::FeatureRef;
use crate::storage::vector_store::VectorFileWriter;
use crate::{io_err, Result};

/// How feature values are stored: f16, 2 bytes per value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FeatureEncoding;

impl FeatureEncoding {
    /// The encoding of an index's features.
    pub(crate) fn of(_manifest: &Manifest) -> Self {
        FeatureEncoding
    }

    /// Bytes of a record of this `shape`.
    pub(crate) fn byte_len(self, shape: &[usize]) -> u64 {
        2 * shape.iter().product::<usize>() as u64
    }

    /// Appends the encoded `values` to `out`.
    pub(crate) fn encode(self, values: &[f32], out: &mut Vec<u8>) {
        out.extend(values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()));
    }

    fn decode(self, bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()
    }
}

/// The append side of the features file; owned by the writer.
pub(crate) struct FeatureStoreWriter {
    file: VectorFileWriter,
    encoding: FeatureEncoding,
}

impl FeatureStoreWriter {
    /// Opens (or creates) `path` and cuts it to `committed_len` bytes.
    pub(crate) fn open(path: &Path, committed_len: u64, manifest: &Manifest) -> Result<Self> {
        Ok(FeatureStoreWriter {
            file: VectorFileWriter::open(path, committed_len, None)?,
            encoding: FeatureEncoding::of(manifest),
        })
    }

    /// Bytes written, committed or about to be.
    pub(crate) fn len(&self) -> u64 {
        self.file.len()
    }

    /// Appends encoded records (see [`FeatureEncoding::encode`]).
    pub(crate) fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.append(bytes)
    }

    /// Appends the record `fref` points at in `from` (compaction) and returns
    /// where it now starts.
    pub(crate) fn copy_from(
        &mut self,
        from: &FeatureStoreWriter,
        fref: &FeatureRef,
    ) -> Result<u64> {
        let mut buf = vec![0u8; self.encoding.byte_len(&fref.shape) as usize];
        from.file.read_at(&mut buf, fref.offset)?;
        let offset = self.len();
        self.file.append(&buf)?;
        Ok(offset)
    }

    /// Makes the appended bytes durable.
    pub(crate) fn sync(&mut self) -> Result<()> {
        self.file.sync()
    }

    /// Forgets bytes appended since `len` (a commit that failed before it was recorded).
    pub(crate) fn rollback(&mut self, len: u64) -> Result<()> {
        self.file.rollback(len)
    }
}

/// The read side of the features file: one record at a time, from disk.
pub(crate) struct FeatureStoreReader {
    path: PathBuf,
    file: File,
    encoding: FeatureEncoding,
}

impl FeatureStoreReader {
    pub(crate) fn open(path: &Path, manifest: &Manifest) -> Result<Self> {
        Ok(FeatureStoreReader {
            path: path.to_path_buf(),
            file: File::open(path).map_err(io_err(path))?,
            encoding: FeatureEncoding::of(manifest),
        })
    }

    /// The record `fref` points at, decoded to f32.
    pub(crate) fn read(&self, fref: &FeatureRef) -> Result<Vec<f32>> {
        let mut bytes = vec![0u8; self.encoding.byte_len(&fref.shape) as usize];
        self.file
            .read_exact_at(&mut bytes, fref.offset)
            .map_err(io_err(&self.path))?;
        Ok(self.encoding.decode(&bytes))
    }

    /// The byte just past the record `fref` points at.
    pub(crate) fn end_of(&self, fref: &FeatureRef) -> u64 {
        fref.offset + self.encoding.byte_len(&fref.shape)
    }
}
