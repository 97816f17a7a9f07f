//! Shared by the integration tests: fixture paths and reference outputs, the `qseek`
//! binary, a fixture collection ([`collection`]) and a running server ([`server`]).
//! Every test file uses only some of it, hence `allow(dead_code)`.
#![allow(dead_code)]

pub mod collection;
pub mod exif;
pub mod kernels;
pub mod server;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::{Device, Tensor};
use serde_json::Value;

/// The committed fixture models.
pub const MODELS: [&str; 2] = ["tiny", "odd"];

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

/// The tiny fixture model's folder, as a command-line argument.
pub fn tiny() -> String {
    arg(&model_dir("tiny"))
}

/// A path as a command-line argument.
pub fn arg(path: &Path) -> String {
    path.display().to_string()
}

/// The fixture photos (`tests/fixtures/photos`), sorted.
pub fn fixture_photos() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixtures().join("photos"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// What `make_fixtures.py` recorded for one model.
pub struct Reference {
    pub tensors: HashMap<String, Tensor>,
    pub photos: Vec<PathBuf>,
    pub captions: Vec<String>,
    pub input_ids: Vec<Vec<u32>>,
}

impl Reference {
    pub fn load(model: &str) -> Self {
        let dir = model_dir(model);
        let tensors =
            candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
                .unwrap();
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let strings = |key: &str| -> Vec<String> {
            meta[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        let photos = strings("photos")
            .iter()
            .map(|p| fixtures().join("photos").join(p))
            .collect();
        let input_ids = json_rows(&meta["input_ids"], |x| x.as_u64().unwrap() as u32);
        Self {
            tensors,
            photos,
            captions: strings("captions"),
            input_ids,
        }
    }

    pub fn get(&self, name: &str) -> &Tensor {
        &self.tensors[name]
    }
}

/// A JSON array of arrays, each value read by `item`.
pub fn json_rows<T>(v: &Value, item: impl Fn(&Value) -> T) -> Vec<Vec<T>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(&item).collect())
        .collect()
}

/// A JSON array of numbers, as f32.
pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The dot product of two vectors.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = flat(a);
    let b = flat(b);
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Smallest cosine between matching rows (last dimension) of two tensors.
pub fn min_row_cosine(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let d = *a.dims().last().unwrap();
    let a = flat(a);
    let b = flat(b);
    a.chunks(d)
        .zip(b.chunks(d))
        .map(|(x, y)| {
            let dot: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            let nx: f32 = x.iter().map(|p| p * p).sum::<f32>().sqrt();
            let ny: f32 = y.iter().map(|q| q * q).sum::<f32>().sqrt();
            dot / (nx * ny)
        })
        .fold(1.0, f32::min)
}

/// All values of a tensor, as f32, in row-major order.
fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// Runs the `qseek` binary with `args`, without the user's QSEEK_* settings.
pub fn qseek(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_qseek"))
        .args(args)
        .env_remove("QSEEK_MODEL")
        .env_remove("QSEEK_INDEX")
        .output()
        .expect("run qseek")
}

/// A command's stderr, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A command's stdout as one JSON document (a panic showing both outputs if it is not).
pub fn json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "not one JSON document ({e}):\n{text}\nstderr: {}",
            stderr(out)
        )
    })
}

/// Runs `qseek ARGS`, which must exit with `status`: the JSON document it prints.
pub fn qseek_json(args: &[&str], status: i32) -> Value {
    let out = qseek(args);
    assert_eq!(
        out.status.code(),
        Some(status),
        "{args:?}: {}",
        stderr(&out)
    );
    json(&out)
}

/// Copies the fixture photos into `dir` (made if missing); how many.
pub fn copy_photos(dir: &Path) -> usize {
    std::fs::create_dir_all(dir).unwrap();
    let photos = fixture_photos();
    for p in &photos {
        std::fs::copy(p, dir.join(p.file_name().unwrap())).unwrap();
    }
    photos.len()
}

/// `variants` copies of each fixture photo in `dir` (made if missing), named
/// `{variant}-{name}`, whose bytes differ (a trailing byte pattern the decoders ignore)
/// so that each is a distinct image for the index; how many.
pub fn many_photos(dir: &Path, variants: usize) -> usize {
    std::fs::create_dir_all(dir).unwrap();
    let mut n = 0;
    for p in fixture_photos() {
        let bytes = std::fs::read(&p).unwrap();
        for v in 0..variants {
            let mut b = bytes.clone();
            b.extend(format!("variant {v}").as_bytes());
            let name = format!("{v}-{}", p.file_name().unwrap().to_str().unwrap());
            std::fs::write(dir.join(name), b).unwrap();
            n += 1;
        }
    }
    n
}
