//! The shard file: embedded images in one Parquet file, written by `qseek shard-embed`
//! ([`ShardFileWriter`]) and read by `qseek import` ([`ShardFileReader`]).
//!
//! One row per image file:
//!
//! | column            | Arrow type                              | what                                  |
//! |-------------------|-----------------------------------------|---------------------------------------|
//! | `path`            | Utf8                                    | absolute path, as the index stores it |
//! | `content_hash`    | Utf8                                    | blake3 of the bytes, 64 hex digits    |
//! | `size`            | UInt64                                  | bytes                                 |
//! | `mtime`           | Int64                                   | seconds since the Unix epoch          |
//! | `width`, `height` | UInt32                                  | pixels, as decoded (before EXIF)      |
//! | `vectors`         | FixedSizeList(Float32, Q·D)             | Q L2-normalised rows of D, row-major  |
//! | `vision_features` | FixedSizeList(Float32 or Float16, T·H)  | only with features: the ViT output    |
//!
//! The file's key-value metadata (keys `qseek.*`, [`ShardMeta`]) names the model as an
//! index's manifest does (id and config hash), Q, D, the dtypes and the shard, so that
//! a shard of another model is refused before any row is read. Parquet pages are not
//! compressed (the vectors are incompressible floats) and not dictionary-encoded.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Float16Builder, Float32Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{
    Array, ArrayRef, FixedSizeListArray, Int64Array, RecordBatch, StringArray, UInt32Array,
    UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use half::f16;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use qseek_index::{FeatureDtype, ImageRecord, ModelId};

use crate::error::BadRequest;
use crate::{Error, Result};

/// Version of the layout above, `qseek.format` in the metadata.
pub const SHARD_FORMAT: u32 = 1;

/// Which part of the input a shard is: `index` of `count` (0-based, `I/N` on the
/// command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    /// This shard, `0..count`.
    pub index: u32,
    /// How many shards the input is split into.
    pub count: u32,
}

impl ShardSpec {
    /// Whether the file whose key (its path relative to the input) is `key` belongs to
    /// this shard: the first 8 bytes of blake3(key), mod `count`. The key, not a
    /// position in a listing, so that a file keeps its shard when others are added or
    /// removed between two runs, and on every machine whatever the input's mount point.
    pub fn owns(&self, key: &str) -> bool {
        let hash = blake3::hash(key.as_bytes());
        let first = u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
        first % u64::from(self.count) == u64::from(self.index)
    }
}

impl std::fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for ShardSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{s:?} is not I/N with 0 <= I < N (e.g. 0/4 ... 3/4)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(ShardSpec { index, count })
    }
}

/// How a shard stores vision features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardFeatures {
    /// Encoding of the values.
    pub dtype: FeatureDtype,
    /// Tokens per image (patches + `[CLS]`).
    pub tokens: usize,
    /// Values per token.
    pub hidden: usize,
}

/// What a shard file says about itself: enough to refuse it before reading a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMeta {
    /// The model, as an index's manifest records it.
    pub model: ModelId,
    /// Q.
    pub num_query_tokens: usize,
    /// D.
    pub dim: usize,
    /// Compute precision of the vision model (`f32`, `f16`, `bf16`, `int8`): vectors
    /// computed in another differ slightly, so shards of one index should share it.
    pub compute_dtype: String,
    /// Vision features, when stored.
    pub features: Option<ShardFeatures>,
    /// Which shard.
    pub shard: ShardSpec,
    /// Whether each row carries its photo's metadata (date, camera, place) as JSON, in a
    /// nullable `photo` column (`qseek.photo = json`); shards made before qseek read
    /// metadata have none, and their photos get it at the next `qseek index`.
    pub photo: bool,
}

fn feature_dtype_name(d: FeatureDtype) -> &'static str {
    match d {
        FeatureDtype::F32 => "f32",
        FeatureDtype::F16 => "f16",
    }
}

impl ShardMeta {
    /// Bytes one row's vectors and features take in memory (as f32).
    pub fn row_bytes(&self) -> usize {
        let features = self.features.map_or(0, |f| f.tokens * f.hidden);
        (self.num_query_tokens * self.dim + features) * 4
    }

    /// Rows per batch that keep a batch within [`BATCH_BYTES`] (1 to 1 024).
    pub fn batch_rows(&self) -> usize {
        (BATCH_BYTES / self.row_bytes().max(1)).clamp(1, 1024)
    }

    fn key_values(&self) -> Vec<KeyValue> {
        let mut kv = vec![
            ("qseek.format", SHARD_FORMAT.to_string()),
            ("qseek.model_id", self.model.model_id.clone()),
            ("qseek.config_hash", self.model.config_hash.clone()),
            ("qseek.num_query_tokens", self.num_query_tokens.to_string()),
            ("qseek.dim", self.dim.to_string()),
            ("qseek.vector_dtype", "f32".to_string()),
            ("qseek.compute_dtype", self.compute_dtype.clone()),
            ("qseek.shard", self.shard.to_string()),
        ];
        if self.photo {
            kv.push(("qseek.photo", "json".into()));
        }
        if let Some(f) = self.features {
            kv.push(("qseek.feature_dtype", feature_dtype_name(f.dtype).into()));
            kv.push(("qseek.feature_shape", format!("{},{}", f.tokens, f.hidden)));
        }
        kv.into_iter()
            .map(|(k, v)| KeyValue::new(k.to_string(), v))
            .collect()
    }

    fn from_key_values(kv: &HashMap<String, String>) -> std::result::Result<Self, String> {
        let get = |k: &str| {
            kv.get(k)
                .cloned()
                .ok_or_else(|| format!("no `{k}` in its metadata"))
        };
        let number = |k: &str| -> std::result::Result<usize, String> {
            get(k)?
                .parse()
                .map_err(|_| format!("`{k}` is not a number"))
        };
        let format = number("qseek.format")?;
        if format != SHARD_FORMAT as usize {
            return Err(format!(
                "shard format {format}, this qseek reads {SHARD_FORMAT}"
            ));
        }
        if get("qseek.vector_dtype")? != "f32" {
            return Err("its vectors are not f32".into());
        }
        let features = match kv.get("qseek.feature_dtype") {
            None => None,
            Some(d) => {
                let dtype = d.parse::<FeatureDtype>()?;
                let shape = get("qseek.feature_shape")?;
                let (t, h) = shape
                    .split_once(',')
                    .and_then(|(t, h)| Some((t.parse().ok()?, h.parse().ok()?)))
                    .ok_or_else(|| format!("bad qseek.feature_shape {shape:?}"))?;
                Some(ShardFeatures {
                    dtype,
                    tokens: t,
                    hidden: h,
                })
            }
        };
        Ok(ShardMeta {
            model: ModelId {
                model_id: get("qseek.model_id")?,
                config_hash: get("qseek.config_hash")?,
            },
            num_query_tokens: number("qseek.num_query_tokens")?,
            dim: number("qseek.dim")?,
            compute_dtype: get("qseek.compute_dtype")?,
            features,
            shard: get("qseek.shard")?.parse()?,
            photo: kv.get("qseek.photo").is_some_and(|v| v == "json"),
        })
    }

    /// The Arrow schema of a shard with this metadata.
    fn schema(&self) -> SchemaRef {
        let list = |item: DataType, len: usize| {
            DataType::FixedSizeList(
                Arc::new(Field::new("item", item, false)),
                i32::try_from(len).expect("a list length that fits i32"),
            )
        };
        let mut fields = vec![
            Field::new("path", DataType::Utf8, false),
            Field::new("content_hash", DataType::Utf8, false),
            Field::new("size", DataType::UInt64, false),
            Field::new("mtime", DataType::Int64, false),
            Field::new("width", DataType::UInt32, false),
            Field::new("height", DataType::UInt32, false),
            Field::new(
                "vectors",
                list(DataType::Float32, self.num_query_tokens * self.dim),
                false,
            ),
        ];
        if let Some(f) = self.features {
            let item = match f.dtype {
                FeatureDtype::F32 => DataType::Float32,
                FeatureDtype::F16 => DataType::Float16,
            };
            fields.push(Field::new(
                "vision_features",
                list(item, f.tokens * f.hidden),
                false,
            ));
        }
        if self.photo {
            fields.push(Field::new("photo", DataType::Utf8, true));
        }
        Arc::new(Schema::new(fields))
    }

    /// What differs between a shard's metadata (`self`) and `other`'s, as a sentence
    /// ending in what to do; `None` when their rows can go in one index. Only the shard
    /// number may differ.
    pub fn conflict_with(&self, other: &ShardMeta, other_name: &str) -> Option<String> {
        if self.model != other.model {
            return Some(format!(
                "made with model {}, but {other_name} holds vectors of {}: use shards of one model",
                self.model, other.model
            ));
        }
        if (self.num_query_tokens, self.dim) != (other.num_query_tokens, other.dim) {
            return Some(format!(
                "holds {}x{} vectors per image, but {other_name} {}x{}: use shards of one model",
                self.num_query_tokens, self.dim, other.num_query_tokens, other.dim
            ));
        }
        if self.compute_dtype != other.compute_dtype {
            return Some(format!(
                "was computed in {}, but {other_name} in {}: use one compute dtype for every shard",
                self.compute_dtype, other.compute_dtype
            ));
        }
        None
    }
}

/// One image of a shard.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardRow {
    /// Path, hash, size, mtime and dimensions, as the index takes them.
    pub record: ImageRecord,
    /// `Q × D` values.
    pub vectors: Vec<f32>,
    /// `T × H` values, when the shard stores features.
    pub features: Option<Vec<f32>>,
}

fn parquet_error(path: &Path) -> impl Fn(parquet::errors::ParquetError) -> Error + '_ {
    move |e| Error::Parquet {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn arrow_error(path: &Path) -> impl Fn(arrow_schema::ArrowError) -> Error + '_ {
    move |e| Error::Parquet {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Bytes of rows a shard's writer or reader holds in memory at a time: a row group
/// when writing, a batch when reading or merging (with ViT-g features one row is
/// 1.4 MB, without them 32 KB).
pub const BATCH_BYTES: usize = 64 << 20;

/// Writes a shard file: rows go to `<path>.tmp`; [`finish`](Self::finish) closes it,
/// fsyncs it and renames it to `path`, so `path` is complete or absent.
pub struct ShardFileWriter {
    path: PathBuf,
    tmp: PathBuf,
    meta: ShardMeta,
    schema: SchemaRef,
    writer: ArrowWriter<File>,
    rows: usize,
}

impl ShardFileWriter {
    /// Starts a shard file with `meta`.
    pub fn create(path: &Path, meta: &ShardMeta) -> Result<Self> {
        let tmp = tmp_path(path);
        let file = File::create(&tmp).map_err(io_error(&tmp))?;
        let schema = meta.schema();
        let props = WriterProperties::builder()
            .set_key_value_metadata(Some(meta.key_values()))
            .set_dictionary_enabled(false)
            // A row group is buffered in memory until written.
            .set_max_row_group_bytes(Some(BATCH_BYTES))
            .build();
        let writer =
            ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(parquet_error(&tmp))?;
        Ok(ShardFileWriter {
            path: path.to_path_buf(),
            tmp,
            meta: meta.clone(),
            schema,
            writer,
            rows: 0,
        })
    }

    /// Appends rows.
    pub fn write(&mut self, rows: &[ShardRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let batch = self.record_batch(rows)?;
        self.write_batch(&batch)
    }

    /// Appends an Arrow batch read from a shard with the same metadata.
    fn write_batch(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer.write(batch).map_err(parquet_error(&self.tmp))?;
        self.rows += batch.num_rows();
        Ok(())
    }

    fn record_batch(&self, rows: &[ShardRow]) -> Result<RecordBatch> {
        let m = &self.meta;
        let records = || rows.iter().map(|r| &r.record);
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(records().map(|r| &r.path))),
            Arc::new(StringArray::from_iter_values(
                records().map(|r| &r.content_hash),
            )),
            Arc::new(UInt64Array::from_iter_values(records().map(|r| r.size))),
            Arc::new(Int64Array::from_iter_values(records().map(|r| r.mtime))),
            Arc::new(UInt32Array::from_iter_values(records().map(|r| r.width))),
            Arc::new(UInt32Array::from_iter_values(records().map(|r| r.height))),
        ];
        let qd = m.num_query_tokens * m.dim;
        let mut vectors = FixedSizeListBuilder::with_capacity(
            Float32Builder::with_capacity(rows.len() * qd),
            qd as i32,
            rows.len(),
        )
        .with_field(Arc::new(Field::new("item", DataType::Float32, false)));
        for r in rows {
            if r.vectors.len() != qd {
                return Err(Error::Internal(format!(
                    "{}: {} vector values, the shard holds {qd}",
                    r.record.path,
                    r.vectors.len()
                )));
            }
            vectors.values().append_slice(&r.vectors);
            vectors.append(true);
        }
        columns.push(Arc::new(vectors.finish()));
        if let Some(f) = m.features {
            let n = f.tokens * f.hidden;
            let values = |r: &ShardRow| -> Result<Vec<f32>> {
                match &r.features {
                    Some(v) if v.len() == n => Ok(v.clone()),
                    _ => Err(Error::Internal(format!(
                        "{}: vision features missing or not {n} values",
                        r.record.path
                    ))),
                }
            };
            let array: ArrayRef = match f.dtype {
                FeatureDtype::F32 => {
                    let mut b = FixedSizeListBuilder::with_capacity(
                        Float32Builder::with_capacity(rows.len() * n),
                        n as i32,
                        rows.len(),
                    )
                    .with_field(Arc::new(Field::new(
                        "item",
                        DataType::Float32,
                        false,
                    )));
                    for r in rows {
                        b.values().append_slice(&values(r)?);
                        b.append(true);
                    }
                    Arc::new(b.finish())
                }
                FeatureDtype::F16 => {
                    let mut b = FixedSizeListBuilder::with_capacity(
                        Float16Builder::with_capacity(rows.len() * n),
                        n as i32,
                        rows.len(),
                    )
                    .with_field(Arc::new(Field::new(
                        "item",
                        DataType::Float16,
                        false,
                    )));
                    for r in rows {
                        let v: Vec<f16> = values(r)?.into_iter().map(f16::from_f32).collect();
                        b.values().append_slice(&v);
                        b.append(true);
                    }
                    Arc::new(b.finish())
                }
            };
            columns.push(array);
        }
        if m.photo {
            let json = |r: &ImageRecord| {
                r.photo
                    .as_ref()
                    .map(|p| serde_json::to_string(p).expect("metadata serialises"))
            };
            columns.push(Arc::new(StringArray::from_iter(records().map(json))));
        }
        RecordBatch::try_new(self.schema.clone(), columns).map_err(arrow_error(&self.tmp))
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Closes the file, fsyncs it and renames it to its path.
    pub fn finish(self) -> Result<usize> {
        let file = self.writer.into_inner().map_err(parquet_error(&self.tmp))?;
        file.sync_all().map_err(io_error(&self.tmp))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(io_error(&self.path))?;
        if let Some(dir) = self.path.parent() {
            // Make the rename itself durable (best effort: not every filesystem lets a
            // directory be opened for fsync).
            if let Ok(d) = File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }) {
                let _ = d.sync_all();
            }
        }
        Ok(self.rows)
    }
}

/// Where [`ShardFileWriter`] writes before its rename.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Reads a shard file: its metadata at once (checked against its columns), its rows
/// in batches.
pub struct ShardFileReader {
    path: PathBuf,
    meta: ShardMeta,
    rows: usize,
}

impl ShardFileReader {
    /// Opens `path` and checks that it is a shard: Parquet, with qseek's metadata and
    /// the columns that metadata implies.
    pub fn open(path: &Path) -> Result<Self> {
        let not_a_shard = |reason: String| -> Error {
            BadRequest::NotAShard {
                path: path.to_path_buf(),
                reason,
            }
            .into()
        };
        let builder = Self::builder(path).map_err(|e| match e {
            Error::Parquet { reason, .. } => not_a_shard(reason),
            other => other,
        })?;
        let file_meta = builder.metadata().file_metadata();
        let kv: HashMap<String, String> = file_meta
            .key_value_metadata()
            .map(|kv| {
                kv.iter()
                    .filter_map(|e| Some((e.key.clone(), e.value.clone()?)))
                    .collect()
            })
            .unwrap_or_default();
        let meta = ShardMeta::from_key_values(&kv).map_err(not_a_shard)?;
        let expected = meta.schema();
        let found = builder.schema();
        if expected.fields() != found.fields() {
            return Err(not_a_shard(format!(
                "its columns do not match its metadata (expected {:?}, found {:?})",
                expected
                    .fields()
                    .iter()
                    .map(|f| format!("{}: {}", f.name(), f.data_type()))
                    .collect::<Vec<_>>(),
                found
                    .fields()
                    .iter()
                    .map(|f| format!("{}: {}", f.name(), f.data_type()))
                    .collect::<Vec<_>>(),
            )));
        }
        let rows = usize::try_from(file_meta.num_rows()).unwrap_or(0);
        Ok(ShardFileReader {
            path: path.to_path_buf(),
            meta,
            rows,
        })
    }

    fn builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>> {
        let file = File::open(path).map_err(io_error(path))?;
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_error(path))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its metadata.
    pub fn meta(&self) -> &ShardMeta {
        &self.meta
    }

    /// Rows in the file.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Every path in the file (reads that column only).
    pub fn paths(&self) -> Result<Vec<String>> {
        let builder = Self::builder(&self.path)?;
        let mask = ProjectionMask::columns(builder.parquet_schema(), ["path"]);
        let reader = builder
            .with_projection(mask)
            .build()
            .map_err(parquet_error(&self.path))?;
        let mut out = Vec::with_capacity(self.rows);
        for batch in reader {
            let batch = batch.map_err(arrow_error(&self.path))?;
            let column = batch.column(0).as_string::<i32>();
            out.extend(column.iter().map(|p| p.unwrap_or_default().to_string()));
        }
        Ok(out)
    }

    /// The file's Arrow batches of at most `rows` rows each, as stored.
    fn record_batches(&self, rows: usize) -> Result<ParquetRecordBatchReader> {
        Self::builder(&self.path)?
            .with_batch_size(rows.max(1))
            .build()
            .map_err(parquet_error(&self.path))
    }

    /// The rows, in batches of [`ShardMeta::batch_rows`].
    pub fn batches(&self) -> Result<impl Iterator<Item = Result<Vec<ShardRow>>> + '_> {
        self.batches_of(self.meta.batch_rows())
    }

    fn batches_of(&self, rows: usize) -> Result<impl Iterator<Item = Result<Vec<ShardRow>>> + '_> {
        let reader = self.record_batches(rows)?;
        Ok(reader.map(move |batch| {
            let batch = batch.map_err(arrow_error(&self.path))?;
            Ok(self.decode(&batch))
        }))
    }

    fn decode(&self, batch: &RecordBatch) -> Vec<ShardRow> {
        // `open` checked the schema, so the casts below hold.
        let strings = |i: usize| batch.column(i).as_string::<i32>().clone();
        let (paths, hashes) = (strings(0), strings(1));
        let size = batch.column(2).as_primitive::<UInt64Type>();
        let mtime = batch.column(3).as_primitive::<Int64Type>();
        let width = batch.column(4).as_primitive::<UInt32Type>();
        let height = batch.column(5).as_primitive::<UInt32Type>();
        let vectors = batch.column(6).as_fixed_size_list();
        let features = batch
            .column_by_name("vision_features")
            .map(|c| c.as_fixed_size_list());
        // A row whose JSON does not parse (a damaged file) loses its metadata, not itself:
        // the next `qseek index` of its folder reads it again.
        let photos = batch.column_by_name("photo").map(|c| c.as_string::<i32>());
        let photo = |i: usize| {
            let json = photos.filter(|p| p.is_valid(i))?.value(i);
            serde_json::from_str(json).ok()
        };
        (0..batch.num_rows())
            .map(|i| ShardRow {
                record: ImageRecord {
                    path: paths.value(i).to_string(),
                    content_hash: hashes.value(i).to_string(),
                    size: size.value(i),
                    mtime: mtime.value(i),
                    width: width.value(i),
                    height: height.value(i),
                    photo: photo(i),
                },
                vectors: f32_values(vectors, i),
                features: features.map(|f| f32_values(f, i)),
            })
            .collect()
    }
}

/// Row `i` of a list of Float32 or Float16, as f32.
fn f32_values(list: &FixedSizeListArray, i: usize) -> Vec<f32> {
    let values = list.value(i);
    match values.data_type() {
        DataType::Float16 => values
            .as_primitive::<Float16Type>()
            .values()
            .iter()
            .map(|v| v.to_f32())
            .collect(),
        _ => values.as_primitive::<Float32Type>().values().to_vec(),
    }
}

/// Writes the rows of `parts` (shards with `meta`, in order) into one shard file at
/// `path` (through its temporary file and a rename). Returns the rows written.
pub fn merge(parts: &[ShardFileReader], meta: &ShardMeta, path: &Path) -> Result<usize> {
    let mut writer = ShardFileWriter::create(path, meta)?;
    for part in parts {
        debug_assert_eq!(part.meta(), meta);
        for batch in part.record_batches(meta.batch_rows())? {
            let batch = batch.map_err(arrow_error(part.path()))?;
            writer.write_batch(&batch)?;
        }
    }
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(features: Option<FeatureDtype>) -> ShardMeta {
        ShardMeta {
            model: ModelId {
                model_id: "m".into(),
                config_hash: "c".into(),
            },
            num_query_tokens: 2,
            dim: 3,
            compute_dtype: "f32".into(),
            features: features.map(|dtype| ShardFeatures {
                dtype,
                tokens: 2,
                hidden: 2,
            }),
            shard: ShardSpec { index: 1, count: 3 },
            photo: true,
        }
    }

    fn row(i: u32, features: bool) -> ShardRow {
        ShardRow {
            record: ImageRecord {
                path: format!("/p/{i}.jpg"),
                content_hash: format!("{i:064}"),
                size: 10 + u64::from(i),
                mtime: -5 + i64::from(i),
                width: i,
                height: 2 * i,
                // Some rows with metadata, some read with none, some never read.
                photo: match i % 3 {
                    0 => Some(qseek_index::PhotoMeta {
                        make: Some("Canon".into()),
                        gps: Some(qseek_index::Gps {
                            lat: 48.8584,
                            lon: 2.2945,
                            alt: Some(-3.5),
                        }),
                        ..Default::default()
                    }),
                    1 => Some(qseek_index::PhotoMeta::default()),
                    _ => None,
                },
            },
            vectors: (0..6).map(|k| k as f32 * 0.1 + i as f32).collect(),
            features: features.then(|| vec![0.5, -1.25, 3.0, i as f32]),
        }
    }

    #[test]
    fn rows_and_metadata_round_trip_through_a_file() {
        for features in [None, Some(FeatureDtype::F32), Some(FeatureDtype::F16)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s.parquet");
            let meta = meta(features);
            let rows: Vec<ShardRow> = (0..5).map(|i| row(i, features.is_some())).collect();
            let mut w = ShardFileWriter::create(&path, &meta).unwrap();
            w.write(&rows[..2]).unwrap();
            w.write(&rows[2..]).unwrap();
            assert!(!path.exists(), "visible before finish");
            assert_eq!(w.finish().unwrap(), 5);
            assert!(!tmp_path(&path).exists());

            let r = ShardFileReader::open(&path).unwrap();
            assert_eq!(r.meta(), &meta);
            assert_eq!(r.rows(), 5);
            assert_eq!(r.paths().unwrap().len(), 5);
            let back: Vec<ShardRow> = r.batches_of(2).unwrap().flat_map(Result::unwrap).collect();
            // The feature values above are exact in f16 too.
            assert_eq!(back, rows, "{features:?}");
        }
    }

    #[test]
    fn a_shard_made_before_metadata_reads_with_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.parquet");
        let old = ShardMeta {
            photo: false,
            ..meta(Some(FeatureDtype::F16))
        };
        let rows: Vec<ShardRow> = (0..3).map(|i| row(i, true)).collect();
        let mut w = ShardFileWriter::create(&path, &old).unwrap();
        w.write(&rows).unwrap();
        w.finish().unwrap();
        let r = ShardFileReader::open(&path).unwrap();
        assert!(!r.meta().photo);
        let back: Vec<ShardRow> = r.batches().unwrap().flat_map(Result::unwrap).collect();
        assert!(back.iter().all(|row| row.record.photo.is_none()));
        assert_eq!(back[2], rows[2]);
        // It still goes into an index of the same model.
        assert_eq!(old.conflict_with(&meta(None), "x"), None);
    }

    #[test]
    fn shard_specs_parse_and_split_keys_among_them() {
        for bad in ["", "1", "3/3", "-1/2", "0/0", "a/b"] {
            assert!(bad.parse::<ShardSpec>().is_err(), "{bad}");
        }
        let specs: Vec<ShardSpec> = (0..4).map(|i| format!("{i}/4").parse().unwrap()).collect();
        for k in 0..200 {
            let key = format!("dir/{k}.jpg");
            assert_eq!(specs.iter().filter(|s| s.owns(&key)).count(), 1, "{key}");
        }
    }

    #[test]
    fn shards_of_another_model_shape_or_compute_dtype_conflict() {
        let base = meta(None);
        let other_shard = ShardMeta {
            shard: ShardSpec { index: 0, count: 5 },
            features: Some(ShardFeatures {
                dtype: FeatureDtype::F16,
                tokens: 2,
                hidden: 2,
            }),
            ..base.clone()
        };
        assert_eq!(base.conflict_with(&other_shard, "x"), None);
        let cases: [(ShardMeta, &str); 4] = [
            (
                ShardMeta {
                    model: ModelId {
                        model_id: "m2".into(),
                        config_hash: "c".into(),
                    },
                    ..base.clone()
                },
                "made with model m2 (config c), but x holds vectors of m (config c)",
            ),
            (
                ShardMeta {
                    model: ModelId {
                        model_id: "m".into(),
                        config_hash: "c2".into(),
                    },
                    ..base.clone()
                },
                "made with model m (config c2)",
            ),
            (
                ShardMeta {
                    dim: 4,
                    ..base.clone()
                },
                "holds 2x4 vectors per image, but x 2x3",
            ),
            (
                ShardMeta {
                    compute_dtype: "bf16".into(),
                    ..base.clone()
                },
                "was computed in bf16, but x in f32",
            ),
        ];
        for (other, expected) in cases {
            let reason = other.conflict_with(&base, "x").expect("a conflict");
            assert!(reason.starts_with(expected), "{reason}");
        }
    }

    #[test]
    fn a_parquet_file_without_the_metadata_is_not_a_shard() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        std::fs::write(&path, b"PAR1 not really").unwrap();
        let err = ShardFileReader::open(&path).err().unwrap();
        assert!(
            matches!(err, Error::BadRequest(BadRequest::NotAShard { .. })),
            "{err}"
        );
    }
}
