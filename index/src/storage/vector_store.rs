//! Exact vectors, one fixed-size row per item, in an append-only file.
//!
//! A row holds `per_row` vectors of `dim` values (`Q` for an image, 1 for a
//! text) in the index's [`VectorDtype`]. The file only grows between
//! compactions; how many rows are committed is recorded in sled, in the same
//! batch as the metadata that points at them, so bytes past that length are an
//! interrupted commit and are cut off on open.
//!
//! Row layout on disk (little-endian): f32 and f16 store the `per_row * dim`
//! values; int8 stores `per_row` f32 scales, then `per_row * dim` i8 codes.
//!
//! Residual int8 (format version ≥ 2, rows of more than one vector): the row
//! starts with the f16 mean of its vectors, and the codes quantise each
//! vector's difference from that mean. An image's 32 query vectors share much
//! of their direction, so the differences are shorter than the vectors, the
//! per-vector scale is finer, and a score `<q, mean> + scale·<q, codes>` is
//! several times closer to the f32 score than plain int8 (recall@10 against
//! f32 at 100 000 images: see ARCHITECTURE.md) for 2·D more bytes per row.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::f16;

use crate::search::max_sim::{self, prefetch};
use crate::storage::manifest::VectorDtype;
use crate::{io_err, Error, Result};

/// Rows per chunk of a [`VectorStoreReader`]: a snapshot shares every full
/// chunk and copies at most this many rows when the next commit appends to
/// the last one (~9 MB of residual-int8 rows at Q = 32, D = 256).
const CHUNK_ROWS: usize = 1024;

/// Rows per read when a file is loaded (~280 KB of residual-int8 rows at Q = 32).
const READ_ROWS: usize = 32;

/// Up to [`CHUNK_ROWS`] rows in memory, in the index's dtype.
#[derive(Clone)]
enum RowData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    /// `means` is empty unless the layout is residual.
    Int8 {
        codes: Vec<i8>,
        scales: Vec<f32>,
        means: Vec<f16>,
    },
}

/// The `n` values of the row after `row` in `values`, or none past the last.
fn next_row<T>(values: &[T], row: usize, n: usize) -> &[T] {
    values.get((row + 1) * n..(row + 2) * n).unwrap_or(&[])
}

/// Per-thread buffers of [`VectorStoreReader::max_sim_many`].
#[derive(Default)]
pub(crate) struct ManyScratch {
    /// A row decoded to f32.
    rows: Vec<f32>,
    /// Query × vector dot products.
    dots: Vec<f32>,
    /// A decoded mean.
    one: Vec<f32>,
}

/// The in-memory copy of a vector file: decoded rows, scored without touching disk.
///
/// Rows are held in shared chunks, so a clone is a cheap snapshot: a graph
/// build reads one without holding the index's lock while commits go on
/// appending to the original.
#[derive(Clone)]
pub(crate) struct VectorStoreReader {
    dtype: VectorDtype,
    dim: usize,
    per_row: usize,
    /// Int8 rows store residuals around an f16 mean (see the module docs).
    residual: bool,
    rows: usize,
    chunks: Vec<Arc<RowData>>,
}

impl VectorStoreReader {
    /// A reader for rows of `per_row` vectors of `dim` values. `residual_int8`:
    /// whether int8 rows of several vectors use the residual layout (indexes of
    /// format version ≥ 2).
    pub(crate) fn new(dtype: VectorDtype, dim: usize, per_row: usize, residual_int8: bool) -> Self {
        VectorStoreReader {
            dtype,
            dim,
            per_row,
            residual: dtype == VectorDtype::Int8 && per_row > 1 && residual_int8,
            rows: 0,
            chunks: Vec::new(),
        }
    }

    /// An empty chunk with room for [`CHUNK_ROWS`] rows.
    fn new_chunk(&self) -> RowData {
        let values = CHUNK_ROWS * self.per_row * self.dim;
        match self.dtype {
            VectorDtype::F32 => RowData::F32(Vec::with_capacity(values)),
            VectorDtype::F16 => RowData::F16(Vec::with_capacity(values)),
            VectorDtype::Int8 => RowData::Int8 {
                codes: Vec::with_capacity(values),
                scales: Vec::with_capacity(CHUNK_ROWS * self.per_row),
                means: Vec::with_capacity(if self.residual {
                    CHUNK_ROWS * self.dim
                } else {
                    0
                }),
            },
        }
    }

    /// The chunk that holds `row`, and the row's index in it.
    fn locate(&self, row: usize) -> (&RowData, usize) {
        (&self.chunks[row / CHUNK_ROWS], row % CHUNK_ROWS)
    }

    /// Values per vector.
    pub(crate) fn dim(&self) -> usize {
        self.dim
    }

    /// Bytes of one row on disk.
    pub(crate) fn row_bytes(&self) -> usize {
        self.per_row * self.dtype.bytes_per_vector(self.dim) + self.mean_bytes()
    }

    fn mean_bytes(&self) -> usize {
        if self.residual {
            2 * self.dim
        } else {
            0
        }
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes the rows take in memory.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.rows * self.row_bytes()
    }

    /// Encodes one row (`per_row * dim` f32 values) into its on-disk bytes.
    pub(crate) fn encode_row(&self, values: &[f32]) -> Vec<u8> {
        debug_assert_eq!(values.len(), self.per_row * self.dim);
        let mut out = Vec::with_capacity(self.row_bytes());
        match self.dtype {
            VectorDtype::F32 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
            VectorDtype::F16 => values
                .iter()
                .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
            VectorDtype::Int8 => {
                let mut residuals;
                let mut values = values;
                if self.residual {
                    let mut mean = vec![0f32; self.dim];
                    for v in values.chunks_exact(self.dim) {
                        mean.iter_mut().zip(v).for_each(|(m, x)| *m += x);
                    }
                    // Residuals from the mean as stored (f16), so that decoding adds back exactly it.
                    let mean: Vec<f16> = mean
                        .iter()
                        .map(|m| f16::from_f32(m / self.per_row as f32))
                        .collect();
                    mean.iter()
                        .for_each(|m| out.extend_from_slice(&m.to_le_bytes()));
                    residuals = values.to_vec();
                    for v in residuals.chunks_exact_mut(self.dim) {
                        v.iter_mut().zip(&mean).for_each(|(x, m)| *x -= m.to_f32());
                    }
                    values = &residuals;
                }
                let scales: Vec<f32> = values
                    .chunks_exact(self.dim)
                    .map(|v| v.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0)
                    .collect();
                scales
                    .iter()
                    .for_each(|s| out.extend_from_slice(&s.to_le_bytes()));
                for (v, scale) in values.chunks_exact(self.dim).zip(&scales) {
                    let inv = if *scale > 0.0 { 1.0 / scale } else { 0.0 };
                    out.extend(
                        v.iter()
                            .map(|x| (x * inv).round().clamp(-127.0, 127.0) as i8 as u8),
                    );
                }
            }
        }
        out
    }

    /// Loads the rows of the first `len` bytes of `file` (whole rows) into this
    /// empty reader.
    ///
    /// Each chunk is read and decoded by its own task, in parallel: on a large index
    /// opening is mostly the kernel handing out (and zeroing) the pages of the decoded
    /// rows, which one thread did at ~1 GB/s. A task reads [`READ_ROWS`] rows at a time:
    /// the file is never in memory twice, and the small buffers are not kept by the
    /// allocator afterwards (whole-chunk buffers, 9 MB each, stayed resident).
    fn load(&mut self, file: &File, len: u64) -> std::io::Result<()> {
        use rayon::prelude::*;
        use std::os::unix::fs::FileExt;
        assert_eq!(self.rows, 0, "loading into a reader that has rows");
        let row_bytes = self.row_bytes();
        let rows = (len / row_bytes as u64) as usize;
        let starts: Vec<usize> = (0..rows).step_by(CHUNK_ROWS).collect();
        // Each task fills a copy of this (still empty) reader with one chunk.
        let empty = self.clone();
        self.chunks = starts
            .into_par_iter()
            .map_init(Vec::new, |buf, first| {
                let mut part = empty.clone();
                let end = rows.min(first + CHUNK_ROWS);
                for block in (first..end).step_by(READ_ROWS) {
                    buf.resize(READ_ROWS.min(end - block) * row_bytes, 0);
                    file.read_exact_at(buf, (block * row_bytes) as u64)?;
                    buf.chunks_exact(row_bytes)
                        .for_each(|row| part.push_encoded(row));
                }
                Ok(part.chunks.pop().expect("a chunk of rows"))
            })
            .collect::<std::io::Result<_>>()?;
        self.rows = rows;
        Ok(())
    }

    /// Appends one encoded row.
    pub(crate) fn push_encoded(&mut self, bytes: &[u8]) {
        debug_assert_eq!(bytes.len(), self.row_bytes());
        let mean_bytes = self.mean_bytes();
        if self.rows.is_multiple_of(CHUNK_ROWS) {
            let chunk = self.new_chunk();
            self.chunks.push(Arc::new(chunk));
        }
        let per_row = self.per_row;
        // Copies the last chunk only if a snapshot still shares it.
        let chunk = Arc::make_mut(self.chunks.last_mut().expect("a chunk was pushed"));
        match chunk {
            RowData::F32(v) => v.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap())),
            ),
            RowData::F16(v) => v.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes(b.try_into().unwrap())),
            ),
            RowData::Int8 {
                codes,
                scales,
                means,
            } => {
                let (m, bytes) = bytes.split_at(mean_bytes);
                means.extend(
                    m.chunks_exact(2)
                        .map(|b| f16::from_le_bytes(b.try_into().unwrap())),
                );
                let (s, c) = bytes.split_at(per_row * 4);
                scales.extend(
                    s.chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap())),
                );
                codes.extend(c.iter().map(|&b| b as i8));
            }
        }
        self.rows += 1;
    }

    /// Max over the row's vectors of `<query, vector>`, with the slot that reached it.
    /// `scratch` must hold `dim` values (used by f16 and residual int8).
    pub(crate) fn max_sim(&self, row: usize, query: &[f32], scratch: &mut [f32]) -> (f32, usize) {
        let n = self.per_row * self.dim;
        let (data, row) = self.locate(row);
        match data {
            RowData::F32(v) => max_sim::max_sim(query, &v[row * n..(row + 1) * n]),
            RowData::F16(v) => max_sim::max_sim_f16(query, &v[row * n..(row + 1) * n], scratch),
            RowData::Int8 {
                codes,
                scales,
                means,
            } => {
                let base = self.residual_base(means, row, query, scratch);
                let (score, slot) = max_sim::max_sim_i8(
                    query,
                    &codes[row * n..(row + 1) * n],
                    &scales[row * self.per_row..(row + 1) * self.per_row],
                );
                (base + score, slot)
            }
        }
    }

    /// `<query, mean>` of a residual int8 row (its vectors are the mean plus the
    /// codes), else 0. `row` is within its chunk; `scratch` holds `dim` values.
    fn residual_base(&self, means: &[f16], row: usize, query: &[f32], scratch: &mut [f32]) -> f32 {
        if self.residual {
            max_sim::dot_f16(query, &means[row * self.dim..(row + 1) * self.dim], scratch)
        } else {
            0.0
        }
    }

    /// [`VectorStoreReader::max_sim`] of several queries against one row, bit for
    /// bit, through [`max_sim::dots_many`]: `out[q]` for `queries[q]`. Meanwhile the
    /// next row is brought into cache: a scan in row order reads it next.
    pub(crate) fn max_sim_many(
        &self,
        row: usize,
        queries: &[&[f32]],
        scratch: &mut ManyScratch,
        out: &mut [(f32, usize)],
    ) {
        let n = self.per_row * self.dim;
        let (data, row) = self.locate(row);
        let ManyScratch { rows, dots, one } = scratch;
        match data {
            RowData::F32(v) => {
                let next = next_row(v, row, n);
                max_sim::max_sim_many(queries, &v[row * n..(row + 1) * n], next, dots, out)
            }
            RowData::F16(v) => {
                use half::slice::HalfFloatSliceExt;
                prefetch(next_row(v, row, n));
                rows.resize(n, 0.0);
                v[row * n..(row + 1) * n].convert_to_f32_slice(rows);
                max_sim::max_sim_many(queries, rows, &[], dots, out)
            }
            RowData::Int8 {
                codes,
                scales,
                means,
            } => {
                prefetch(next_row(codes, row, n));
                rows.clear();
                rows.extend(codes[row * n..(row + 1) * n].iter().map(|&c| c as f32));
                dots.resize(queries.len() * self.per_row, 0.0);
                max_sim::dots_many(queries, rows, dots);
                let scales = &scales[row * self.per_row..(row + 1) * self.per_row];
                one.resize(self.dim, 0.0);
                for ((best, query), dots) in out
                    .iter_mut()
                    .zip(queries)
                    .zip(dots.chunks_exact(self.per_row))
                {
                    let base = self.residual_base(means, row, query, one);
                    let (score, slot) =
                        max_sim::first_max(dots.iter().zip(scales).map(|(d, s)| d * s));
                    *best = (base + score, slot);
                }
            }
        }
    }

    /// The row decoded to f32 (`per_row * dim` values).
    pub(crate) fn row_f32(&self, row: usize) -> Vec<f32> {
        let n = self.per_row * self.dim;
        let (data, row) = self.locate(row);
        match data {
            RowData::F32(v) => v[row * n..(row + 1) * n].to_vec(),
            RowData::F16(v) => v[row * n..(row + 1) * n]
                .iter()
                .map(|x| x.to_f32())
                .collect(),
            RowData::Int8 {
                codes,
                scales,
                means,
            } => {
                let mean: &[f16] = if self.residual {
                    &means[row * self.dim..(row + 1) * self.dim]
                } else {
                    &[]
                };
                codes[row * n..(row + 1) * n]
                    .chunks_exact(self.dim)
                    .zip(&scales[row * self.per_row..])
                    .flat_map(|(c, s)| {
                        c.iter().enumerate().map(move |(i, &x)| {
                            x as f32 * s + mean.get(i).map_or(0.0, |m| m.to_f32())
                        })
                    })
                    .collect()
            }
        }
    }
}

/// The append side of a vector file. Owned by the writer; `append` then `sync`
/// before the commit that records the new length.
pub(crate) struct VectorFileWriter {
    path: PathBuf,
    file: File,
    len: u64,
}

impl VectorFileWriter {
    /// Opens (or creates) `path`, cuts it to `committed_len` bytes (dropping
    /// any interrupted commit) and loads its rows into `reader`.
    pub(crate) fn open(
        path: &Path,
        committed_len: u64,
        reader: Option<&mut VectorStoreReader>,
    ) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err(path))?;
        let actual = file.metadata().map_err(io_err(path))?.len();
        if actual < committed_len {
            return Err(Error::Truncated {
                path: path.to_path_buf(),
                expected: committed_len,
                actual,
            });
        }
        if actual > committed_len {
            file.set_len(committed_len).map_err(io_err(path))?;
            file.sync_all().map_err(io_err(path))?;
        }
        let Some(reader) = reader else {
            return Ok(VectorFileWriter {
                path: path.to_path_buf(),
                file,
                len: committed_len,
            });
        };
        let row_bytes = reader.row_bytes() as u64;
        if !committed_len.is_multiple_of(row_bytes) {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                reason: format!("committed length {committed_len} is not a multiple of the row size {row_bytes}"),
            });
        }
        reader.load(&file, committed_len).map_err(io_err(path))?;
        Ok(VectorFileWriter {
            path: path.to_path_buf(),
            file,
            len: committed_len,
        })
    }

    pub(crate) fn append(&mut self, bytes: &[u8]) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        self.file
            .seek(SeekFrom::Start(self.len))
            .map_err(io_err(&self.path))?;
        self.file.write_all(bytes).map_err(io_err(&self.path))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Makes the appended bytes durable.
    pub(crate) fn sync(&mut self) -> Result<()> {
        self.file.sync_data().map_err(io_err(&self.path))
    }

    /// Reads `buf.len()` committed bytes at `offset` (compaction copies rows this way).
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file
            .read_exact_at(buf, offset)
            .map_err(io_err(&self.path))
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Forgets bytes appended since `len` (a commit that failed before it was recorded).
    pub(crate) fn rollback(&mut self, len: u64) -> Result<()> {
        self.file.set_len(len).map_err(io_err(&self.path))?;
        self.len = len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(dim: usize, seed: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dim).map(|i| ((i + seed) as f32 * 0.7).sin()).collect();
        let n = max_sim::norm(&v);
        v.into_iter().map(|x| x / n).collect()
    }

    #[test]
    fn every_dtype_round_trips_within_its_precision() {
        let (dim, per_row) = (40, 3);
        let row: Vec<f32> = (0..per_row).flat_map(|s| unit(dim, s)).collect();
        for (dtype, residual, tolerance) in [
            (VectorDtype::F32, true, 1e-6),
            (VectorDtype::F16, true, 2e-3),
            (VectorDtype::Int8, false, 1e-2),
            (VectorDtype::Int8, true, 1e-2),
        ] {
            let mut store = VectorStoreReader::new(dtype, dim, per_row, residual);
            let bytes = store.encode_row(&row);
            assert_eq!(bytes.len(), store.row_bytes());
            store.push_encoded(&bytes);
            let back = store.row_f32(0);
            let err = row
                .iter()
                .zip(&back)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err < tolerance, "{dtype:?} {residual}: max error {err}");
            let mut scratch = vec![0.0; dim];
            let (score, slot) = store.max_sim(0, &row[dim..2 * dim], &mut scratch);
            assert_eq!(slot, 1, "{dtype:?}");
            assert!((score - 1.0).abs() < 10.0 * tolerance, "{dtype:?}: {score}");
        }
    }

    #[test]
    fn a_clone_is_a_snapshot_across_chunks() {
        let dim = 8;
        let mut store = VectorStoreReader::new(VectorDtype::Int8, dim, 2, true);
        let row = |i: usize| -> Vec<f32> { (0..2).flat_map(|s| unit(dim, 2 * i + s)).collect() };
        for i in 0..CHUNK_ROWS + 3 {
            store.push_encoded(&store.encode_row(&row(i)));
        }
        let snapshot = store.clone();
        store.push_encoded(&store.encode_row(&row(9999)));
        assert_eq!(snapshot.rows(), CHUNK_ROWS + 3);
        assert_eq!(store.rows(), CHUNK_ROWS + 4);
        for i in [0, CHUNK_ROWS - 1, CHUNK_ROWS, CHUNK_ROWS + 2] {
            assert_eq!(snapshot.row_f32(i), store.row_f32(i), "row {i}");
        }
        let last = store.row_f32(CHUNK_ROWS + 3);
        assert!(last
            .iter()
            .zip(row(9999))
            .all(|(a, b)| (a - b).abs() < 1e-2));
    }

    #[test]
    fn opening_a_file_loads_every_row_as_pushed() {
        let dim = 8;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.bin");
        for (dtype, per_row) in [(VectorDtype::Int8, 2), (VectorDtype::F16, 1)] {
            let mut pushed = VectorStoreReader::new(dtype, dim, per_row, true);
            let mut writer = VectorFileWriter::open(&path, 0, None).unwrap();
            // Two full chunks and part of a third.
            let n = 2 * CHUNK_ROWS + 5;
            for i in 0..n {
                let row: Vec<f32> = (0..per_row).flat_map(|s| unit(dim, 3 * i + s)).collect();
                let bytes = pushed.encode_row(&row);
                writer.append(&bytes).unwrap();
                pushed.push_encoded(&bytes);
            }
            writer.sync().unwrap();
            let len = writer.len();
            drop(writer);
            let mut loaded = VectorStoreReader::new(dtype, dim, per_row, true);
            VectorFileWriter::open(&path, len, Some(&mut loaded)).unwrap();
            assert_eq!(loaded.rows(), n, "{dtype:?}");
            for i in [0, 1, CHUNK_ROWS - 1, CHUNK_ROWS, 2 * CHUNK_ROWS, n - 1] {
                assert_eq!(loaded.row_f32(i), pushed.row_f32(i), "{dtype:?} row {i}");
            }
            std::fs::remove_file(&path).unwrap();
        }
    }
}
