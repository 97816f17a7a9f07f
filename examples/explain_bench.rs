//! The cost of one explanation (a benchmark, not a test): `qseek explain`'s service on
//! stored vision features (no ViT pass), as `GET /api/explain` runs it for an indexed
//! photo: the text embedding, the ITC parts from the stored query vectors, and the ITM
//! Grad-CAM (the differentiable Q-Former pass and its backward pass).
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release --example explain_bench -- \
//!     --model /work/full-vitg
//! ```
//!
//! Prints the first explanation (which reads the differentiable Q-Former's weights from
//! the checkpoint, once per process) and the median of the next `--reps`, in seconds,
//! as one JSON line.

mod common;

use std::time::Instant;

use candle_core::{Device, Tensor};
use clap::Parser;
use common::{median, Rng};
use qseek::model::ModelSource;
use qseek::service::calls::Direct;
use qseek::service::explain::{explain, ExplainImage, ExplainRequest};
use qseek::service::query::text_term;
use qseek::{Embedder, ModelOptions};

#[derive(Parser, Debug)]
struct Args {
    /// Checkpoint directory (the full ViT-g one for real numbers).
    #[arg(long)]
    model: std::path::PathBuf,
    /// The sentence.
    #[arg(long, default_value = "a dog running on the beach at sunset")]
    text: String,
    /// The Q-Former layer (default: the model's default).
    #[arg(long)]
    layer: Option<usize>,
    /// Timed explanations after the first (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
}

fn main() -> qseek::Result<()> {
    qseek::model::use_one_thread_pool();
    let args = Args::parse();
    let load = Instant::now();
    let embedder = Embedder::load(&ModelOptions::new(ModelSource::Local(args.model.clone())))?;
    let load_s = load.elapsed().as_secs_f64();
    let v = &embedder.config.vision_config;
    let tokens = 1 + v.grid() * v.grid();
    // Stored features stand-in: seeded pseudo-random (1, tokens, hidden), unit variance
    // as the ViT's post-layernorm output (uniform on ±√3).
    let mut rng = Rng(7);
    let values: Vec<f32> = (0..tokens * v.hidden_size)
        .map(|_| rng.next_f32() * 3f32.sqrt())
        .collect();
    let vision = Tensor::from_vec(values, (1, tokens, v.hidden_size), &Device::Cpu)?;
    // The stored query vectors, as the index holds them.
    let vectors = embedder
        .model()
        .image_embeds(&vision)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let image = ExplainImage {
        image_id: Some(0),
        vision,
        vectors: Some(vectors),
        stored_features: true,
        photo: None,
    };
    let req = ExplainRequest {
        terms: vec![text_term("--text", &args.text, false)?],
        layer: args.layer,
    };
    let model = Direct {
        embedder: &embedder,
        batch: 8,
    };
    let first = Instant::now();
    let e = explain(&embedder, &model, &image, &req)?;
    let first_s = first.elapsed().as_secs_f64();
    let mut times = Vec::new();
    for _ in 0..args.reps {
        let t = Instant::now();
        explain(&embedder, &model, &image, &req)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let line = serde_json::json!({
        "model": args.model.display().to_string(),
        "layer": e.layer,
        "grid": e.grid,
        "threads": rayon::current_num_threads(),
        "load_s": load_s,
        "first_explanation_s": first_s,
        "explanation_s_median": median(times.clone()),
        "explanation_s_all": times,
    });
    println!("{line}");
    Ok(())
}
