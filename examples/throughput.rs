//! Throughput benchmark (not a test): image embeddings/s, text embeddings/s and ITM
//! pairs/s of a checkpoint, with its load time and peak memory, printed as one JSON line.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release --example throughput -- \
//!     --model /work/models/full --images 4 --texts 64 --pairs 16 --batch 4 --dtype f32
//! ```
//!
//! Every timed phase is repeated `--reps` times after one warm-up batch of each kind;
//! the rates are computed from the median repetition. Pixel pre-processing is not part
//! of `images_per_s`; with `--photos DIR` it is measured on its own
//! (`preprocess_ms_per_image`), and so is reading each photo's EXIF metadata from its
//! bytes (`metadata_ms_per_image`, what indexing adds per photo). `benches/compare_pytorch.py` runs this next to
//! transformers and prints the ratios.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use clap::Parser;
use common::{median_midpoint, peak_rss_bytes, photo_paths, random_pixels, CAPTIONS};
use qseek::embedder::{parse_device, parse_dtype};
use qseek::model::ModelSource;
use qseek::preprocess::image::LoadOptions;
use qseek::preprocess::metadata::read_photo_meta;
use qseek::{Embedder, ModelOptions};

#[derive(Parser, Debug)]
#[command(about = "qseek throughput: images/s, texts/s, ITM pairs/s, load time, peak RSS")]
struct Args {
    /// Checkpoint directory (e.g. one written by `make_fixtures.py --full DIR`).
    #[arg(long)]
    model: PathBuf,
    /// Images per repetition (random pixel values).
    #[arg(long, default_value_t = 4)]
    images: usize,
    /// Texts per repetition.
    #[arg(long, default_value_t = 64)]
    texts: usize,
    /// ITM (image, text) pairs per repetition.
    #[arg(long, default_value_t = 16)]
    pairs: usize,
    /// Batch size of every phase.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Compute dtype of the vision model (f32, f16, bf16).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Timed repetitions of each phase (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Optional directory of photos whose decoding + pre-processing is timed separately.
    #[arg(long)]
    photos: Option<PathBuf>,
    /// Where to run: cpu, cuda, cuda:N (a cuda build). Each timed repetition ends with
    /// a device synchronisation, so that GPU work is inside the timing.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Batch sizes that make `total` items in batches of at most `batch`.
fn chunks(total: usize, batch: usize) -> Vec<usize> {
    let mut out = vec![batch; total / batch];
    if !total.is_multiple_of(batch) {
        out.push(total % batch);
    }
    out
}

/// Runs `f` `reps` times, each followed by a synchronisation of `device`, returning
/// the median duration in seconds.
fn time_median(
    reps: usize,
    device: &Device,
    mut f: impl FnMut() -> qseek::Result<()>,
) -> qseek::Result<f64> {
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        device.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median_midpoint(times))
}

fn main() -> qseek::Result<()> {
    qseek::model::use_one_thread_pool();
    let args = Args::parse();
    assert!(
        args.batch > 0 && args.reps > 0 && args.images > 0,
        "--batch, --reps and --images must be positive"
    );
    let mut opts = ModelOptions::new(ModelSource::Local(args.model.clone()));
    opts.dtype = parse_dtype(&args.dtype)?;
    opts.device = parse_device(&args.device)?;
    let device = opts.device.clone();

    let t = Instant::now();
    let embedder = Embedder::load(&opts)?;
    // The vision model is read at its first image: count it in the load, as PyTorch's.
    embedder.model().load_vision()?;
    let load_s = t.elapsed().as_secs_f64();
    let rss_after_load = peak_rss_bytes();
    let weights_bytes: u64 = embedder
        .checkpoint
        .weights
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    let model = embedder.model();
    let size = embedder.config.vision_config.image_size;
    let pixel_len = 3 * size * size;

    // Pixel batches (pre-processing excluded), built once.
    let image_batches: Vec<Tensor> = chunks(args.images, args.batch)
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let imgs: Vec<Vec<f32>> = (0..n)
                .map(|j| random_pixels(pixel_len, (i * args.batch + j) as u64 + 1))
                .collect();
            embedder.pixel_batch(&imgs)
        })
        .collect::<qseek::Result<_>>()?;

    let texts: Vec<String> = (0..args.texts.max(args.pairs))
        .map(|i| CAPTIONS[i % CAPTIONS.len()].to_string())
        .collect();
    let ids = embedder.tokenize(&texts)?;
    let mean_tokens = ids.iter().map(Vec::len).sum::<usize>() as f64 / ids.len().max(1) as f64;

    // Warm-up: one batch of each kind. Its vision features feed the ITM pairs.
    let (warm_vision, _) = embedder.embed_pixels(&image_batches[0])?;
    embedder.embed_token_ids(&ids[..args.batch.min(ids.len())])?;
    let n_warm = warm_vision.dim(0)?;
    if args.pairs > 0 {
        embedder.itm_logits(&warm_vision.narrow(0, 0, 1)?, &ids[..1])?;
    }

    // Image embeddings: the ViT then the Q-Former query pass, split to see where the
    // time goes.
    let mut vision_s = Vec::new();
    let mut qformer_s = Vec::new();
    let image_s = time_median(args.reps, &device, || {
        let (mut v, mut q) = (0.0, 0.0);
        for pixels in &image_batches {
            let t = Instant::now();
            let vision = model.vision_features(pixels)?;
            device.synchronize()?;
            let t1 = Instant::now();
            model.image_embeds(&vision)?;
            device.synchronize()?;
            v += (t1 - t).as_secs_f64();
            q += t1.elapsed().as_secs_f64();
        }
        vision_s.push(v);
        qformer_s.push(q);
        Ok(())
    })?;

    // Text embeddings.
    let text_ids = &ids[..args.texts];
    let text_s = time_median(args.reps, &device, || {
        for chunk in text_ids.chunks(args.batch) {
            embedder.embed_token_ids(chunk)?;
        }
        Ok(())
    })?;

    // ITM pairs: pair k is (warm-up image k mod n, caption k), vision features
    // precomputed, so that only the Q-Former ITM pass is timed.
    let pair_ids = &ids[..args.pairs];
    let pair_vision: Vec<Tensor> = chunks(args.pairs, args.batch)
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let idx: Vec<u32> = (0..n)
                .map(|j| ((i * args.batch + j) % n_warm) as u32)
                .collect();
            let idx = Tensor::new(idx.as_slice(), warm_vision.device())?;
            Ok(warm_vision.index_select(&idx, 0)?)
        })
        .collect::<qseek::Result<_>>()?;
    let itm_s = if args.pairs > 0 {
        time_median(args.reps, &device, || {
            for (vision, chunk) in pair_vision.iter().zip(pair_ids.chunks(args.batch)) {
                embedder.itm_logits(vision, chunk)?;
            }
            Ok(())
        })?
    } else {
        f64::NAN
    };
    // ITM of one image with many texts (what eval and image -> texts do): the image's
    // cross-attention keys and values are computed once per batch, not once per pair.
    let one_image = warm_vision.narrow(0, 0, 1)?;
    let itm_shared_s = if args.pairs > 0 {
        time_median(args.reps, &device, || {
            for chunk in pair_ids.chunks(args.batch) {
                embedder.itm_logits(&one_image, chunk)?;
            }
            Ok(())
        })?
    } else {
        f64::NAN
    };

    // Optional: decoding + pre-processing of real photos, per image; and reading their
    // metadata from bytes already in memory (as indexing does), per image.
    let (preprocess_ms, metadata_ms) = match &args.photos {
        Some(dir) => {
            let paths = photo_paths(dir)?;
            let lo = LoadOptions::default();
            let bytes = paths
                .iter()
                .map(|p| {
                    std::fs::read(p).map_err(|source| qseek::Error::Io {
                        path: p.clone(),
                        source,
                    })
                })
                .collect::<qseek::Result<Vec<Vec<u8>>>>()?;
            let n = paths.len().max(1) as f64;
            let (mut per_image, mut metadata) = (Vec::new(), Vec::new());
            for _ in 0..args.reps {
                let t = Instant::now();
                for p in &paths {
                    embedder.pixel_values(p, &lo)?;
                }
                per_image.push(t.elapsed().as_secs_f64() * 1e3 / n);
                let t = Instant::now();
                for b in &bytes {
                    std::hint::black_box(read_photo_meta(b));
                }
                metadata.push(t.elapsed().as_secs_f64() * 1e3 / n);
            }
            (
                Some(median_midpoint(per_image)),
                Some(median_midpoint(metadata)),
            )
        }
        None => (None, None),
    };

    let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { f64::NAN };
    let json = serde_json::json!({
        "load_s": load_s,
        "images_per_s": rate(args.images, image_s),
        "texts_per_s": rate(args.texts, text_s),
        "itm_pairs_per_s": rate(args.pairs, itm_s),
        "itm_shared_pairs_per_s": rate(args.pairs, itm_shared_s),
        "peak_rss_bytes": peak_rss_bytes(),
        "weights_bytes": weights_bytes,
        "rss_after_load_bytes": rss_after_load,
        "vision_s_per_image": median_midpoint(vision_s) / args.images as f64,
        "qformer_s_per_image": median_midpoint(qformer_s) / args.images as f64,
        "preprocess_ms_per_image": preprocess_ms,
        "metadata_ms_per_image": metadata_ms,
        "mean_text_tokens": mean_tokens,
        "threads": candle_core::utils::get_num_threads(),
        "dtype": args.dtype,
        "device": args.device,
        "batch": args.batch,
        "images": args.images,
        "texts": args.texts,
        "pairs": args.pairs,
        "reps": args.reps,
    });
    println!("{json}");
    Ok(())
}
