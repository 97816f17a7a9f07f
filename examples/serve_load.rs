//! Load benchmark for `qseek serve` (not a test): 1, 4 and 16 concurrent clients send
//! text → image searches to the server, ITC only (`rerank=0`) and with `rerank=16` over
//! stored vision features; one JSON line per (rerank, clients): requests/s, p50 and p99
//! latency, errors, and the process's peak resident memory so far.
//!
//! ```text
//! cargo run --release --example serve_load -- --model /work/models/full --items 10000
//! ```
//!
//! As `search_latency`, the index holds synthetic vectors (seeded, clustered unit
//! vectors) under the checkpoint's identity, and, for the rerank runs, random vision
//! features of the model's shape (the ITM cost does not depend on their values; for
//! ViT-g they are 257 × 1408 f16 = 0.7 MB per image, so `--feature-images` limits how
//! many images get them: only those are reranked, all the same ITM work per query as
//! long as the top 16 hold that many). The server runs in this process on a free local
//! port; the clients are threads speaking plain HTTP/1.1. Each run is preceded by
//! `--warmup` seconds of the same load, not measured. For the ratio of 16 clients to
//! one, alternate them in one process (`--clients 1,16,1,16,1,16`) and take medians:
//! the machines here are noisy.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use common::{load_embedder, peak_rss_bytes, synthetic_record, temp_dir, Rng, SEARCH_CAPTIONS};
use qseek::pipeline::indexer::IndexOptions;
use qseek::pipeline::walk::WalkOptions;
use qseek::pipeline::{model_identity, Collection};
use qseek::preprocess::image::LoadOptions;
use qseek::server::{serve, ServeOptions};
use qseek_index::{FeatureDtype, Index, Manifest};

#[derive(Debug, Parser)]
struct Args {
    /// Checkpoint directory.
    #[arg(long)]
    model: PathBuf,
    /// Images in the synthetic index.
    #[arg(long, default_value_t = 10_000)]
    items: usize,
    /// Images that also get (random) stored vision features, spread over the clusters.
    #[arg(long, default_value_t = 10_000)]
    feature_images: usize,
    /// Seconds each (rerank, clients) run lasts.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Client counts to run.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    clients: Vec<usize>,
    /// Rerank depths to run.
    #[arg(long, value_delimiter = ',', default_value = "0,16")]
    rerank: Vec<usize>,
    /// Seconds of the same load, not measured, before each run (steady state: the
    /// server's first rounds at a new concurrency allocate).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
}

/// `clients` threads searching in a loop for `seconds`: the latencies (ms) of the
/// answered requests, and how many failed.
fn run_clients(addr: &str, clients: usize, rerank: usize, seconds: f64) -> (Vec<f64>, usize) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                let (mut ms, mut errors) = (Vec::new(), 0usize);
                let mut i = c;
                while Instant::now() < deadline {
                    let q = SEARCH_CAPTIONS[i % SEARCH_CAPTIONS.len()].replace(' ', "%20");
                    i += 1;
                    let t = Instant::now();
                    match get(&addr, &format!("/api/search?q={q}&k=10&rerank={rerank}")) {
                        Ok(200) => ms.push(t.elapsed().as_secs_f64() * 1e3),
                        _ => errors += 1,
                    }
                }
                (ms, errors)
            })
        })
        .collect();
    let (mut ms, mut errors) = (Vec::new(), 0);
    for t in threads {
        let (m, e) = t.join().expect("client thread");
        ms.extend(m);
        errors += e;
    }
    (ms, errors)
}

/// `VmHWM` (peak resident set) of this process, in MiB; 0 where it cannot be read.
fn peak_rss_mb() -> f64 {
    peak_rss_bytes() as f64 / (1024.0 * 1024.0)
}

fn get(addr: &str, path: &str) -> Result<u16, std::io::Error> {
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let head = String::from_utf8_lossy(&raw[..raw.len().min(16)]).to_string();
    Ok(head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> qseek::Result<()> {
    qseek::model::use_one_thread_pool();
    let args = Args::parse();
    let tmp = temp_dir()?;
    let dir = tmp.path().join("index");
    let (embedder, q, d) = load_embedder(&args.model)?;
    let v = &embedder.config.vision_config;
    let (tokens, hidden) = ((v.image_size / v.patch_size).pow(2) + 1, v.hidden_size);
    let start = Instant::now();
    {
        let mut manifest = Manifest::new(&model_identity(&embedder.checkpoint)?, q, d);
        manifest.store_vision_features = true;
        manifest.vision_feature_dtype = FeatureDtype::F16;
        let index = Index::create(&dir, manifest)?;
        let mut writer = index.writer()?;
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let centres = rng.units(64, d);
        let features: Vec<f32> = (0..tokens * hidden).map(|_| rng.next_f32()).collect();
        let every = (args.items / args.feature_images.max(1)).max(1);
        let shape = [tokens, hidden];
        for i in 0..args.items {
            let vectors = rng.clustered_image(&centres[i % centres.len()], q, d);
            let record = synthetic_record(format!("/photos/{}/{i}.jpg", i % 100), i);
            let f = (i % every == 0).then_some((features.as_slice(), &shape[..]));
            writer.add_image(record, &vectors, f)?;
            if i % 1000 == 999 {
                writer.commit()?;
            }
        }
        writer.commit()?;
    }
    eprintln!("index built in {:.1} s", start.elapsed().as_secs_f64());
    let collection = Collection {
        index: Index::open(&dir, None)?,
        embedder,
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|source| qseek::Error::Io {
            path: "127.0.0.1:0".into(),
            source,
        })?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let load = LoadOptions::default();
    let index = IndexOptions {
        walk: WalkOptions {
            hidden: false,
            confine: true,
        },
        load,
        batch: 8,
        commit_every: Duration::from_secs(10),
        progress: false,
    };
    let opts = ServeOptions {
        max_upload_bytes: 1 << 20,
        ..ServeOptions::new(addr.parse().expect("an address"), index, load, 32)
    };
    std::thread::spawn(move || serve(collection, opts));
    while get(&addr, "/api/health").is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &rerank in &args.rerank {
        // Warm up (the first ITM call allocates).
        get(&addr, &format!("/api/search?q=warm%20up&rerank={rerank}")).ok();
        for &clients in &args.clients {
            run_clients(&addr, clients, rerank, args.warmup);
            let t0 = Instant::now();
            let (mut ms, errors) = run_clients(&addr, clients, rerank, args.seconds);
            let wall = t0.elapsed().as_secs_f64();
            ms.sort_by(f64::total_cmp);
            println!(
                "{}",
                serde_json::json!({
                    "items": args.items,
                    "rerank": rerank,
                    "clients": clients,
                    "requests": ms.len(),
                    "requests_per_s": (ms.len() as f64 / wall * 100.0).round() / 100.0,
                    "p50_ms": (percentile(&ms, 0.5) * 10.0).round() / 10.0,
                    "p99_ms": (percentile(&ms, 0.99) * 10.0).round() / 10.0,
                    "errors": errors,
                    "peak_rss_mb": peak_rss_mb().round(),
                })
            );
        }
    }
    Ok(())
}
