//! Reading checkpoint tensors with positioned reads instead of a memory map.
//!
//! candle's loader maps the safetensors files and copies each tensor out of the map, so
//! while a model loads the process holds both the mapped file pages and the copies:
//! about twice the weights (9 GB for ViT-g in f32). Reading each tensor with `pread`
//! into the buffer it ends up in keeps the peak at the weights plus one tensor.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};

use crate::{Error, Result};

/// Where one tensor lies.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

/// The tensors of one checkpoint (one or more safetensors files), read on demand. A
/// clone shares the open files.
#[derive(Debug, Clone)]
pub struct SafetensorsFiles {
    files: Arc<Vec<(PathBuf, File)>>,
    entries: Arc<HashMap<String, Entry>>,
}

impl SafetensorsFiles {
    /// Opens the files and reads their headers; a truncated or malformed file is an
    /// error naming it.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut entries = HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            for (name, entry) in read_header(path, &file, index)? {
                entries.insert(name, entry);
            }
            files.push((path.clone(), file));
        }
        Ok(Self {
            files: Arc::new(files),
            entries: Arc::new(entries),
        })
    }

    /// A backend over the same headers that reads no data: each tensor it gives is a zero
    /// broadcast to the tensor's shape (no memory), after the same checks as `get`
    /// (present, of the asked shape). Building a module from it checks the checkpoint
    /// against the module, with the module's own errors, without reading it.
    pub fn shapes_only(&self) -> ShapesOnly {
        ShapesOnly(self.clone())
    }

    /// The entry of `name`.
    fn find(&self, name: &str) -> candle_core::Result<&Entry> {
        self.entries
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            })
    }

    /// The entry of `name`, checked to have `shape`.
    fn entry(&self, name: &str, shape: &Shape) -> candle_core::Result<&Entry> {
        let entry = self.find(name)?;
        if entry.shape.as_slice() != shape.dims() {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape.clone(),
                got: entry.shape.clone().into(),
            });
        }
        Ok(entry)
    }

    fn load(&self, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        let entry = self.find(name)?;
        let (path, file) = &self.files[entry.file];
        let read_error = |e: std::io::Error| {
            candle_core::Error::Msg(format!("{}: reading `{name}`: {e}", path.display()))
        };
        let len = (entry.end - entry.start) as usize;
        if entry.dtype == DType::F32 && len.is_multiple_of(4) {
            // Straight into the tensor's own buffer: one copy, not two.
            let mut values = vec![0f32; len / 4];
            // SAFETY: the slice covers exactly the initialised f32 values (len / 4 floats
            // are len bytes), u8 needs no alignment, `values` is not used while `bytes`
            // lives, and every bit pattern is a valid f32.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), len) };
            file.read_exact_at(bytes, entry.start).map_err(read_error)?;
            if cfg!(target_endian = "big") {
                values
                    .iter_mut()
                    .for_each(|v| *v = f32::from_bits(u32::from_le(v.to_bits())));
            }
            return Tensor::from_vec(values, entry.shape.as_slice(), device);
        }
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, entry.start)
            .map_err(read_error)?;
        Tensor::from_raw_buffer(&bytes, entry.dtype, &entry.shape, device)
    }
}

impl candle_nn::var_builder::SimpleBackend for SafetensorsFiles {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.entry(name, &shape)?;
        self.load(name, device)?.to_dtype(dtype)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load(name, device)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }
}

/// [`SafetensorsFiles::shapes_only`]: the checkpoint's names and shapes, no data.
pub struct ShapesOnly(SafetensorsFiles);

impl candle_nn::var_builder::SimpleBackend for ShapesOnly {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.entry(name, &shape)?;
        Tensor::zeros((), dtype, device)?.broadcast_as(shape)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let shape = self.0.find(name)?.shape.clone();
        Tensor::zeros((), dtype, device)?.broadcast_as(shape)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_tensor(name)
    }
}

/// Parses a safetensors header: u64 little-endian length, then JSON
/// `{name: {dtype, shape, data_offsets: [begin, end]}}` with offsets after the header.
fn read_header(path: &Path, file: &File, index: usize) -> Result<Vec<(String, Entry)>> {
    let bad = |reason: String| Error::Checkpoint {
        path: path.to_path_buf(),
        reason: format!("is not a readable safetensors file: {reason}"),
    };
    let file_len = file
        .metadata()
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let mut len_bytes = [0u8; 8];
    file.read_exact_at(&mut len_bytes, 0)
        .map_err(|_| bad(format!("only {file_len} bytes long")))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > file_len.saturating_sub(8) || header_len > 100 << 20 {
        return Err(bad(format!(
            "header of {header_len} bytes in a {file_len}-byte file (truncated?)"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact_at(&mut header, 8)
        .map_err(|e| bad(e.to_string()))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let data_start = 8 + header_len;
    let mut entries = Vec::new();
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype = match info["dtype"].as_str() {
            Some("F32") => DType::F32,
            Some("F16") => DType::F16,
            Some("BF16") => DType::BF16,
            Some("F64") => DType::F64,
            other => {
                return Err(bad(format!(
                    "tensor `{name}` has dtype {other:?}, which qseek does not read"
                )))
            }
        };
        let shape: Vec<usize> = info["shape"]
            .as_array()
            .and_then(|dims| {
                dims.iter()
                    .map(|d| d.as_u64().map(|d| d as usize))
                    .collect()
            })
            .ok_or_else(|| bad(format!("tensor `{name}` has no valid shape")))?;
        let offsets = info["data_offsets"]
            .as_array()
            .filter(|o| o.len() == 2)
            .and_then(|o| Some((o[0].as_u64()?, o[1].as_u64()?)))
            .ok_or_else(|| bad(format!("tensor `{name}` has no valid data_offsets")))?;
        let (start, end) = (data_start + offsets.0, data_start + offsets.1);
        let expected = shape.iter().product::<usize>() as u64 * dtype.size_in_bytes() as u64;
        if end < start || end - start != expected {
            return Err(bad(format!(
                "tensor `{name}` spans {} bytes, its shape needs {expected}",
                end.saturating_sub(start)
            )));
        }
        if end > file_len {
            return Err(bad(format!(
                "tensor `{name}` ends at byte {end} but the file has {file_len} (truncated?)"
            )));
        }
        entries.push((
            name,
            Entry {
                file: index,
                dtype,
                shape,
                start,
                end,
            },
        ));
    }
    Ok(entries)
}
