//! Shared by the examples (each example is a crate of its own and takes this module in
//! with `mod common;`; in a folder, Cargo does not take it for an example): seeded
//! pseudo-random numbers, medians, synthetic index entries, the captions the benchmarks
//! query with, the photos of a folder, loading a checkpoint, a temporary folder, and
//! the process's peak memory.
//!
//! Every example uses only some of it, hence `allow(dead_code)` (as in `tests/common`).
//! The generators are the ones the benchmarks' published numbers were measured with:
//! changing one changes what they measure.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use qseek::model::ModelSource;
use qseek::{Embedder, ModelOptions};
use qseek_index::ImageRecord;

/// xorshift64*: seeded, dependency-free.
pub struct Rng(pub u64);

impl Rng {
    /// The next value, in [-1, 1).
    pub fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (v >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// A unit vector of `dim` values: `centre` (none: zero) plus `spread` times
    /// [`next_f32`](Self::next_f32) in each dimension, normalised.
    pub fn unit(&mut self, centre: Option<&[f32]>, dim: usize, spread: f32) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim)
            .map(|i| centre.map_or(0.0, |c| c[i]) + spread * self.next_f32())
            .collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
    }

    /// `n` unit vectors of `dim` values, around nothing (spread 1): cluster centres.
    pub fn units(&mut self, n: usize, dim: usize) -> Vec<Vec<f32>> {
        (0..n).map(|_| self.unit(None, dim, 1.0)).collect()
    }

    /// One synthetic image's `q` query vectors (`q × dim` values, unit rows), shaped like
    /// a photo's in a collection of similar ones: a centre near `cluster` (spread 0.6),
    /// each vector near that centre (spread 0.4). `search_latency` and `serve_load`.
    pub fn clustered_image(&mut self, cluster: &[f32], q: usize, dim: usize) -> Vec<f32> {
        let centre = self.unit(Some(cluster), dim, 0.6);
        (0..q)
            .flat_map(|_| self.unit(Some(&centre), dim, 0.4))
            .collect()
    }
}

/// A temporary folder, removed when dropped.
pub fn temp_dir() -> qseek::Result<tempfile::TempDir> {
    tempfile::tempdir().map_err(|source| qseek::Error::Io {
        path: "tmp".into(),
        source,
    })
}

/// The checkpoint in the folder `model`, loaded with the default options: the embedder,
/// its query tokens per image (Q) and its embedding size (D).
pub fn load_embedder(model: &Path) -> qseek::Result<(Embedder, usize, usize)> {
    let embedder = Embedder::load(&ModelOptions::new(ModelSource::Local(model.to_path_buf())))?;
    let (q, d) = (
        embedder.config.num_query_tokens,
        embedder.config.image_text_hidden_size,
    );
    Ok((embedder, q, d))
}

/// The record of synthetic image number `i`, at `path`: its content hash is `i` in hex
/// (16 digits), its size, time and dimensions placeholders.
pub fn synthetic_record(path: String, i: usize) -> ImageRecord {
    ImageRecord {
        path,
        size: 1,
        mtime: 0,
        content_hash: format!("{i:016x}"),
        width: 1,
        height: 1,
        photo: None,
    }
}

/// `len` seeded pseudo-random values in [0, 1), multiples of 2⁻²⁴ (xorshift64, shifts
/// 13, 7, 17, from a state made of `seed`).
fn unit_interval(len: usize, seed: u64) -> impl Iterator<Item = f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len).map(move |_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    })
}

/// Deterministic pseudo-random pixel values in [-2, 2), roughly what normalised photos
/// look like.
pub fn random_pixels(len: usize, seed: u64) -> Vec<f32> {
    unit_interval(len, seed).map(|x| x * 4.0 - 2.0).collect()
}

/// Deterministic pseudo-random values in [-1, 1): the same stream as [`random_pixels`],
/// at half the scale (the same values as the `values` of `packed_gemm`'s own tests).
pub fn random_values(len: usize, seed: u64) -> Vec<f32> {
    unit_interval(len, seed).map(|x| x * 2.0 - 1.0).collect()
}

fn sorted(mut xs: Vec<f64>) -> Vec<f64> {
    xs.sort_by(f64::total_cmp);
    xs
}

/// The median of `xs`; of an even count, the upper of the two middle values.
pub fn median(xs: Vec<f64>) -> f64 {
    let xs = sorted(xs);
    xs[xs.len() / 2]
}

/// The median of `xs`; of an even count, the mean of the two middle values (as
/// `throughput` reports it, like numpy's `median`).
pub fn median_midpoint(xs: Vec<f64>) -> f64 {
    let xs = sorted(xs);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// COCO-style captions of 10 to 14 tokens (special tokens included). `throughput` cycles
/// through all of them; `benches/compare_pytorch.py` uses the same list.
pub const CAPTIONS: [&str; 16] = [
    "a cat lying on a bed next to a pillow",
    "a cup of coffee on a saucer with a spoon",
    "a rocket standing on the launch pad at night",
    "a man holding a camera on a tripod in a field",
    "stars and galaxies in the deep dark space",
    "a close up of the retina of an eye",
    "a pile of old coins on a wooden table",
    "two dogs playing with a red ball in the park",
    "a woman riding a bicycle down a busy city street",
    "a plate of pasta with tomato sauce and basil",
    "a train passing over a bridge near the mountains",
    "a group of people standing around a kitchen table",
    "a small boat floating on a calm blue lake",
    "a child flying a kite on a sunny beach",
    "a bowl of fresh fruit on a marble counter",
    "an old red car parked in front of a house",
];

/// The eight of [`CAPTIONS`] the search benchmarks (`search_latency`, `serve_load`)
/// cycle through, in this order.
pub const SEARCH_CAPTIONS: [&str; 8] = [
    CAPTIONS[0],
    CAPTIONS[1],
    CAPTIONS[2],
    CAPTIONS[3],
    CAPTIONS[4],
    CAPTIONS[7],
    CAPTIONS[8],
    CAPTIONS[12],
];

/// The files (not folders) directly in `dir`, sorted.
pub fn photo_paths(dir: &Path) -> qseek::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| qseek::Error::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    Ok(paths)
}

/// `VmHWM` (peak resident set) of this process, in bytes; 0 where it cannot be read.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
