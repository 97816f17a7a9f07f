//! Export and query throughput of the Milvus engine backend against qseek's own index on
//! the same data (not a test), printed as one JSON line.
//!
//! ```text
//! LD_LIBRARY_PATH=$QSEEK_MILVUS_LITE $QSEEK_MILVUS_LITE/milvus /tmp/m/bench.db 127.0.0.1:19530 ERROR &
//! cargo run --release --example engine_bench -- milvus://127.0.0.1:19530/bench --items 20000
//! ```
//!
//! The index (in a temporary folder) holds `--items` synthetic images: Q 32 × D 256 f32
//! unit vectors, seeded, each image's vectors near one random direction.
//!
//! * `build_s`: writing that index (qseek's own ingestion, for scale).
//! * `export_s`, `export_images_per_s`, `export_mb_per_s`: `qseek export` (`--replace`) of
//!   every image (Q rows each) into a new FLAT collection, flush included.
//! * `engine_ms` / `local_ms`: median time of one text → images top-`k` query (the query
//!   vector is an indexed image's slot vector), through the engine (group-by over the
//!   image rows, FLAT: exact) and through the index's exact scan.
//! * `same_top_k`: queries whose top-k images are the same set; `max_score_diff`: the
//!   largest difference between the two ITC scores of one image.
//!
//! With `--similar`, image → images instead (`engine::similar::similar_through_engine`
//! against the index's exact Chamfer scan, each query an indexed image, itself left
//! out), over images shaped more like BLIP-2's: `--clusters C` groups of images whose
//! slots lie near the group's direction, and `--shared-slots S` slots of every image
//! near one direction all images share (BLIP-2's generic slots). Printed: `engine_ms`,
//! `local_ms` (medians), `exact` (answers the bound proved exact), `same_top_k`,
//! `max_score_diff`, and the median and largest `scored` (images whose vectors were
//! fetched) and `rounds`.

mod common;

use std::collections::HashMap;
use std::time::Instant;

use common::{median, synthetic_record, Rng};
use qseek::engine::similar::similar_through_engine;
use qseek::engine::{self, EngineUri, ExportMode, VectorEngine};
use qseek_index::{Index, Manifest, ModelId, SearchParams, VectorDtype};

const Q: usize = 32;
const D: usize = 256;

/// How `--similar` shapes the images: groups, and slots every image shares.
#[derive(Clone, Copy)]
struct Shape {
    clusters: usize,
    shared_slots: usize,
}

fn synthetic_index(dir: &std::path::Path, items: usize, shape: Option<Shape>) -> Index {
    let model = ModelId {
        model_id: "bench/synthetic".into(),
        config_hash: "q32-d256".into(),
    };
    let mut manifest = Manifest::new(&model, Q, D);
    manifest.vector_dtype = VectorDtype::F32;
    let index = Index::create(dir, manifest).expect("create index");
    let mut writer = index.writer().expect("writer");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let centres = rng.units(shape.map_or(0, |s| s.clusters), D);
    let shared = rng.unit(None, D, 1.0);
    for i in 0..items {
        let vectors: Vec<f32> = match shape {
            None => {
                let base = rng.unit(None, D, 1.0);
                (0..Q)
                    .flat_map(|_| rng.unit(Some(&base), D, 0.05))
                    .collect()
            }
            Some(s) => {
                let base = rng.unit(Some(&centres[i % s.clusters]), D, 0.08);
                (0..Q)
                    .flat_map(|slot| {
                        let around = if slot < s.shared_slots {
                            &shared
                        } else {
                            &base
                        };
                        rng.unit(Some(around), D, 0.05)
                    })
                    .collect()
            }
        };
        let record = synthetic_record(format!("photos/{}/{i}.jpg", i % 100), i);
        writer.add_image(record, &vectors, None).expect("add image");
        if i % 5000 == 4999 {
            writer.commit().expect("commit");
        }
    }
    writer.commit().expect("commit");
    index
}

/// Image → images for `queries` indexed images, through the engine and exactly.
fn similar_images(
    engine: &dyn VectorEngine,
    index: &Index,
    queries: usize,
    k: usize,
) -> serde_json::Value {
    let d = index.manifest().dim;
    let step = (index.stats().images / queries).max(1);
    let params = SearchParams {
        exact: true,
        ..SearchParams::default()
    };
    let (mut engine_ms, mut local_ms, mut scored, mut rounds) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut exact, mut same, mut worst, mut n) = (0, 0, 0f32, 0);
    for image in index.export_images().step_by(step).take(queries) {
        let t = Instant::now();
        let e = similar_through_engine(engine, &image.vectors, d, k, &image.content_hash, None)
            .expect("engine search");
        engine_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let l = index
            .similar_to_image(image.image_id, k, &params)
            .expect("local search");
        local_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let local: HashMap<String, f32> = l
            .iter()
            .map(|h| {
                (
                    index.image(h.image_id).expect("an image").content_hash,
                    h.score,
                )
            })
            .collect();
        if e.hits.len() == l.len() && e.hits.iter().all(|h| local.contains_key(&h.0)) {
            same += 1;
        }
        for h in &e.hits {
            if let Some(s) = local.get(&h.0) {
                worst = worst.max((s - h.2).abs());
            }
        }
        exact += usize::from(e.exact);
        scored.push(e.scored as f64);
        rounds.push(e.rounds as f64);
        n += 1;
    }
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    serde_json::json!({
        "queries": n,
        "engine_ms": median(engine_ms),
        "local_ms": median(local_ms),
        "exact": exact,
        "same_top_k": same,
        "max_score_diff": worst,
        "scored_median": median(scored.clone()),
        "scored_max": max(&scored),
        "rounds_median": median(rounds.clone()),
        "rounds_max": max(&rounds),
    })
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: engine_bench milvus://HOST:PORT/COLL [--items N] [--queries N] [--k K] [--similar [--clusters C] [--shared-slots S]]";
    let uri = argv.first().expect(usage).clone();
    let flag = |name: &str, default: usize| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1))
            .map_or(default, |v| v.parse().expect(usage))
    };
    let (items, queries, k) = (
        flag("--items", 20_000),
        flag("--queries", 100),
        flag("--k", 10),
    );
    let shape = argv.iter().any(|a| a == "--similar").then(|| Shape {
        clusters: flag("--clusters", 50),
        shared_slots: flag("--shared-slots", 8),
    });
    let tmp = tempfile::tempdir().expect("temporary folder");
    let start = Instant::now();
    let index = synthetic_index(tmp.path(), items, shape);
    let build_s = start.elapsed().as_secs_f64();
    let uri = EngineUri::parse(&uri).expect("engine URI");
    let engine = engine::connect(&uri).expect("connect");

    let report = engine.export(&index, ExportMode::Replace).expect("export");
    if let Some(shape) = shape {
        let similar = similar_images(engine.as_ref(), &index, queries, k);
        println!(
            "{}",
            serde_json::json!({
                "mode": "image_to_images",
                "images": report.images,
                "clusters": shape.clusters,
                "shared_slots": shape.shared_slots,
                "export_s": report.seconds,
                "k": k,
                "results": similar,
            })
        );
        return;
    }

    let (q, d) = (index.manifest().num_query_tokens, index.manifest().dim);
    let images = index.stats().images;
    let step = (images / queries).max(1);
    let vectors: Vec<Vec<f32>> = index
        .export_images()
        .step_by(step)
        .take(queries)
        .enumerate()
        .map(|(i, img)| img.vectors[(i % q) * d..(i % q + 1) * d].to_vec())
        .collect();
    let hashes: HashMap<u64, String> = index
        .export_images()
        .map(|i| (i.image_id, i.content_hash))
        .collect();
    let params = SearchParams {
        exact: true,
        ..SearchParams::default()
    };
    let (mut engine_ms, mut local_ms) = (Vec::new(), Vec::new());
    let (mut same, mut worst) = (0, 0f32);
    for v in &vectors {
        let t = Instant::now();
        let e = engine.search_images(v, k, None).expect("engine search");
        engine_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let l = index.search_images(v, k, &params).expect("local search");
        local_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let local: HashMap<&str, f32> = l
            .iter()
            .map(|h| (hashes[&h.image_id].as_str(), h.score))
            .collect();
        if e.len() == l.len()
            && e.iter()
                .all(|h| local.contains_key(h.content_hash.as_str()))
        {
            same += 1;
        }
        for h in &e {
            if let Some(s) = local.get(h.content_hash.as_str()) {
                worst = worst.max((s - h.itc).abs());
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "images": report.images,
            "build_s": build_s,
            "rows": report.image_rows,
            "export_s": report.seconds,
            "export_images_per_s": report.images as f64 / report.seconds,
            "export_mb_per_s": report.bytes_sent as f64 / 1e6 / report.seconds,
            "queries": vectors.len(),
            "k": k,
            "engine_ms": median(engine_ms),
            "local_ms": median(local_ms),
            "same_top_k": same,
            "max_score_diff": worst,
        })
    );
}
