//! Vision features: each image's ViT output, kept for ITM reranking, as one
//! record per image in an append-only file (`vision_features.g<N>.bin`).
//!
//! A record is the features' values, little-endian, in the manifest's
//! [`FeatureDtype`] (f16 or f32); where it starts and its shape are in the image's
//! metadata ([`FeatureRef`]), so the file has no framing of its own. Like the
//! vector files, the file only grows between compactions and bytes past the
//! committed length are an interrupted commit, cut off on open.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::storage::manifest::{FeatureDtype, Manifest};
use crate::storage::metadata_store::FeatureRef;
use crate::storage::vector_store::VectorFileWriter;
use crate::{io_err, Result};

/// The append side of the features file; owned by the writer.
pub(crate) struct FeatureStoreWriter {
    file: VectorFileWriter,
    dtype: FeatureDtype,
}

impl FeatureStoreWriter {
    /// Opens (or creates) `path` and cuts it to `committed_len` bytes.
    pub(crate) fn open(path: &Path, committed_len: u64, manifest: &Manifest) -> Result<Self> {
        Ok(FeatureStoreWriter {
            file: VectorFileWriter::open(path, committed_len, None)?,
            dtype: manifest.vision_feature_dtype,
        })
    }

    /// Bytes written, committed or about to be.
    pub(crate) fn len(&self) -> u64 {
        self.file.len()
    }

    /// Appends encoded records (see [`FeatureDtype::encode`]).
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
        let mut buf = vec![0u8; record_bytes(self.dtype, &fref.shape)];
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
    dtype: FeatureDtype,
}

impl FeatureStoreReader {
    pub(crate) fn open(path: &Path, manifest: &Manifest) -> Result<Self> {
        Ok(FeatureStoreReader {
            path: path.to_path_buf(),
            file: File::open(path).map_err(io_err(path))?,
            dtype: manifest.vision_feature_dtype,
        })
    }

    /// The record `fref` points at, decoded to f32.
    pub(crate) fn read(&self, fref: &FeatureRef) -> Result<Vec<f32>> {
        let mut bytes = vec![0u8; record_bytes(self.dtype, &fref.shape)];
        self.file
            .read_exact_at(&mut bytes, fref.offset)
            .map_err(io_err(&self.path))?;
        Ok(self.dtype.decode(&bytes))
    }

    /// The byte just past the record `fref` points at.
    pub(crate) fn end_of(&self, fref: &FeatureRef) -> u64 {
        fref.offset + record_bytes(self.dtype, &fref.shape) as u64
    }
}

/// Bytes of a record of this `shape`.
fn record_bytes(dtype: FeatureDtype, shape: &[usize]) -> usize {
    dtype.bytes(shape.iter().product())
}
