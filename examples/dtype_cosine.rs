//! Accuracy check (not a test): how far a `--dtype` moves each image's query vectors from
//! f32, as the cosine of every query vector to its f32 twin, printed as one JSON line.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release --example dtype_cosine -- \
//!     --model /work/models/full --dtype bf16,int8 --photos tests/fixtures/photos
//! ```
//!
//! The images are the first `--max-photos` photos in `--photos` by name (pre-processed as
//! `qseek index` does) and `--random` images of random pixel values. The f32 vectors are
//! computed once; each dtype of `--dtype` (comma-separated) is then loaded beside the f32
//! model, so memory is their sum, and prints its own line.

mod common;

use std::path::PathBuf;

use clap::Parser;
use common::{photo_paths, random_pixels};
use qseek::embedder::parse_dtype;
use qseek::model::ModelSource;
use qseek::preprocess::image::LoadOptions;
use qseek::{Embedder, ModelOptions};
use qseek_kernels::gemm::Kernels;

#[derive(Parser, Debug)]
struct Args {
    /// Checkpoint directory.
    #[arg(long)]
    model: PathBuf,
    /// The dtypes compared with f32 (f16, bf16, int8), comma-separated.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// A folder of photos to embed.
    #[arg(long)]
    photos: Option<PathBuf>,
    /// At most this many of its photos (the first by name).
    #[arg(long)]
    max_photos: Option<usize>,
    /// Images of random pixel values to embed too.
    #[arg(long, default_value_t = 2)]
    random: usize,
    /// Batch size.
    #[arg(long, default_value_t = 4)]
    batch: usize,
}

/// The query vectors of `images` (batch, Q, D) as rows of D floats.
fn query_vectors(
    embedder: &Embedder,
    images: &[Vec<f32>],
    batch: usize,
) -> qseek::Result<Vec<Vec<f32>>> {
    let mut out = Vec::new();
    for chunk in images.chunks(batch) {
        let (_, embeds) = embedder.embed_pixels(&embedder.pixel_batch(chunk)?)?;
        let d = embeds.dim(2)?;
        let flat = embeds.flatten_all()?.to_vec1::<f32>()?;
        out.extend(flat.chunks(d).map(<[f32]>::to_vec));
    }
    Ok(out)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn main() -> qseek::Result<()> {
    let args = Args::parse();
    let mut opts = ModelOptions::new(ModelSource::Local(args.model.clone()));
    let reference = Embedder::load(&opts)?;

    let mut images = Vec::new();
    if let Some(dir) = &args.photos {
        let mut paths = photo_paths(dir)?;
        paths.sort();
        paths.truncate(args.max_photos.unwrap_or(usize::MAX));
        for p in &paths {
            images.push(reference.pixel_values(p, &LoadOptions::default())?);
        }
    }
    let size = reference.config.vision_config.image_size;
    images.extend((0..args.random).map(|i| random_pixels(3 * size * size, i as u64 + 1)));

    let a = query_vectors(&reference, &images, args.batch)?;
    for dtype in args.dtype.split(',') {
        opts.dtype = parse_dtype(dtype)?;
        let other = Embedder::load(&opts)?;
        let b = query_vectors(&other, &images, args.batch)?;
        drop(other);
        let cosines: Vec<f64> = a.iter().zip(&b).map(|(x, y)| cosine(x, y)).collect();
        let min = cosines.iter().copied().fold(f64::INFINITY, f64::min);
        let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
        println!(
            "{}",
            serde_json::json!({"model": args.model, "dtype": dtype, "images": images.len(),
                "query_vectors": cosines.len(), "min_cosine": min, "mean_cosine": mean,
                "bf16_gemm": format!("{:?}", Kernels::chosen().bf16),
                "int8_gemm": format!("{:?}", Kernels::chosen().int8),
                "f32_gemm": format!("{:?}", Kernels::chosen().f32)})
        );
    }
    Ok(())
}
