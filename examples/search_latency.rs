//! Search latency benchmark (not a test): a text query against an index of `--items`
//! images (default 10 000), ITC only and with ITM reranking, printed as one JSON line.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release --example search_latency -- \
//!     --model /work/models/full --items 10000 --queries 20
//! ```
//!
//! Embedding 10 000 photos with ViT-g takes a day on a 2-core CPU, so the index holds
//! synthetic vectors (clustered unit vectors, seeded; Q and D from the checkpoint's
//! config) under the checkpoint's identity. Everything after that is what `qseek search`
//! runs:
//!
//! * `itc_ms`: [`text_to_images`] with `--rerank 0` as `qseek search` runs it — tokenise,
//!   Q-Former text pass, max-over-slots score of every image (exact scan).
//! * `itc_ann_ms`: the same with `--ann` — HNSW candidates, then exact rescoring.
//! * `text_ms`: the text embedding alone (the part of both that is not the index).
//! * `itm16_ms`: the ITM pass for 16 (vision features, text) pairs, the extra work of
//!   `--rerank 16` when the index stores vision features (their read, 16 × 257×1408
//!   f16 values, is not included). Random features of the model's shape: the cost does
//!   not depend on their values.
//! * `rerank16_ms` = `itc_ms` + `itm16_ms`.
//!
//! Medians over `--queries` queries (cycling through 8 captions), each mode after one
//! warm-up query; the `--ann` warm-up builds the HNSW graph (`graph_build_s`).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use clap::Parser;
use common::{load_embedder, median, synthetic_record, temp_dir, Rng, SEARCH_CAPTIONS};
use qseek::pipeline::{model_identity, Collection};
use qseek::preprocess::image::LoadOptions;
use qseek::service::calls::Direct;
use qseek::service::search::{search, QueryInput, SearchRequest, SearchSettings};
use qseek_index::{Index, Manifest, VectorDtype};

#[derive(Debug, Parser)]
struct Args {
    /// Checkpoint directory.
    #[arg(long)]
    model: PathBuf,
    /// Images in the synthetic index.
    #[arg(long, default_value_t = 10_000)]
    items: usize,
    /// Timed queries.
    #[arg(long, default_value_t = 20)]
    queries: usize,
    /// Where to build the index (default: a temporary directory).
    #[arg(long)]
    index: Option<PathBuf>,
    /// Stored vector encoding: f32, f16 or int8.
    #[arg(long, default_value = "f32")]
    vectors: String,
}

fn main() -> qseek::Result<()> {
    qseek::model::use_one_thread_pool();
    let args = Args::parse();
    let tmp = temp_dir()?;
    let dir = args
        .index
        .clone()
        .unwrap_or_else(|| tmp.path().join("index"));
    let (embedder, q, d) = load_embedder(&args.model)?;
    let start = Instant::now();
    {
        let mut manifest = Manifest::new(&model_identity(&embedder.checkpoint)?, q, d);
        manifest.vector_dtype = match args.vectors.as_str() {
            "f16" => VectorDtype::F16,
            "int8" => VectorDtype::Int8,
            _ => VectorDtype::F32,
        };
        let index = Index::create(&dir, manifest)?;
        let mut writer = index.writer()?;
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let centres = rng.units(64, d);
        for i in 0..args.items {
            let vectors = rng.clustered_image(&centres[i % centres.len()], q, d);
            let record = synthetic_record(format!("/photos/{}/{i}.jpg", i % 100), i);
            writer.add_image(record, &vectors, None)?;
        }
        writer.commit()?;
    }
    let build_s = start.elapsed().as_secs_f64();
    let collection = Collection {
        index: Index::open(&dir, None)?,
        embedder,
    };
    let model = Direct {
        embedder: &collection.embedder,
        batch: 16,
    };
    let settings = SearchSettings::new(LoadOptions::default());
    let request = |text: &str, ann: bool| SearchRequest {
        rerank: Some(0),
        ann,
        ..SearchRequest::new(QueryInput::Text(text.to_string()))
    };
    // Query i's text: the captions in turn.
    let caption = |i: usize| SEARCH_CAPTIONS[i % SEARCH_CAPTIONS.len()];
    let time_queries = |ann: bool| -> qseek::Result<f64> {
        let mut ms = Vec::new();
        for i in 0..args.queries {
            let t = Instant::now();
            let r = search(&collection, &model, &settings, &request(caption(i), ann))?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(r.results.len(), 10);
        }
        Ok(median(ms))
    };
    search(&collection, &model, &settings, &request("warm up", false))?;
    let itc_exact_ms = time_queries(false)?;
    let t = Instant::now();
    search(&collection, &model, &settings, &request("warm up", true))?;
    let graph_build_s = t.elapsed().as_secs_f64();
    let itc_ann_ms = time_queries(true)?;
    let mut text = Vec::new();
    for i in 0..args.queries {
        let t = Instant::now();
        let ids = collection.embedder.tokenize(&[caption(i).to_string()])?;
        collection.embedder.embed_token_ids(&ids)?;
        text.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let v = &collection.embedder.config.vision_config;
    let tokens = (v.image_size / v.patch_size).pow(2) + 1;
    let vision = Tensor::randn(0f32, 1.0, (16, tokens, v.hidden_size), &Device::Cpu)?;
    let mut itm = Vec::new();
    for i in 0..args.queries.clamp(1, 5) {
        let ids = collection
            .embedder
            .tokenize(&vec![caption(i).to_string(); 16])?;
        let t = Instant::now();
        collection.embedder.itm_logits(&vision, &ids)?;
        itm.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (text_ms, itm16_ms) = (median(text), median(itm));
    println!(
        "{}",
        serde_json::json!({
            "items": args.items,
            "queries": args.queries,
            "build_s": (build_s * 100.0).round() / 100.0,
            "graph_build_s": (graph_build_s * 100.0).round() / 100.0,
            "vectors": args.vectors,
            "text_ms": (text_ms * 10.0).round() / 10.0,
            "itc_ms": (itc_exact_ms * 10.0).round() / 10.0,
            "itc_ann_ms": (itc_ann_ms * 10.0).round() / 10.0,
            "itm16_ms": (itm16_ms * 10.0).round() / 10.0,
            "rerank16_ms": ((itc_exact_ms + itm16_ms) * 10.0).round() / 10.0,
        })
    );
    Ok(())
}
