//! ANN benchmark: builds an index of N synthetic images (Q = 32, D = 256,
//! clustered unit vectors, seeded), then measures search latency, recall@10
//! against exact brute-force max-over-slots on the original f32 vectors, and
//! resident memory of the reopened index. Prints one JSON line.
//!
//! ```text
//! cargo run --release -p qseek-index --example ann_bench -- --items 20000 --queries 200 --dtype int8
//! ```
//!
//! Options: `--graph-points R` (graph points per image, default 1), `--ef`
//! (default: `qseek_index::default_ef` of the graph's size),
//! `--candidates`, `--threads` (default 2), `--dir` (default: a temp dir),
//! `--exact` (score every image: the recall the stored dtype allows),
//! `--clusters C` (default: one per 100 images, at least 1 000),
//! `--filters` (below). The search half runs in a child process so that the
//! memory it reports is the loaded index's alone, not what the build freed;
//! `--dir D --search-only BUILD_S` searches an index built before in `D`.
//!
//! `--filters`: every image gets a date taken, image `i` on day `i % 100` of
//! 2023, so a one-day range keeps 1% of the images and a 50-day range 50%.
//! For the same queries, interleaved (each query starts with another side, so
//! machine noise hits all of them alike), it times an exact search without a
//! filter, exact searches with each date filter, and default (graph) searches
//! with each filter, whose recall@10 is against the exact search with the same
//! filter (on the stored vectors). The JSON line gets a `filters` object; a
//! summary goes to stderr. An index searched with `--filters` must have been
//! built with it.
//!
//! `--dups`: every tenth image `i` (`i % 10 == 7`) gets two near-copies, images
//! `i + 1` and `i + 2`: its vectors, each slot moved by noise of norm [`COPY_SPREAD`]
//! (a re-encoded or resized copy moves BLIP-2's vectors a little). The search half
//! then times `Index::near_duplicates` (threshold `--threshold`, default 0.95; the
//! graph with `--ef` (default `DupParams::DEFAULT_EF`) and `--neighbours`, or
//! `--exact`) and checks the groups against the planted ones: recall (planted groups
//! found whole), and pairs grouped that were not planted.
//!
//! ```text
//! cargo run --release -p qseek-index --example ann_bench -- --items 100000 --dtype int8 --dups
//! ```

use std::collections::BinaryHeap;
use std::time::Instant;

use qseek_index::{
    days_from_civil, default_ef, DupParams, Filter, ImageHit, ImageRecord, Index, Manifest,
    ModelId, PhotoFilter, PhotoMeta, SearchParams, TakenAt, VectorDtype,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

const Q: usize = 32;
const D: usize = 256;
const SEED: u64 = 42;
/// Default number of clusters: a collection that grows gets more subjects, not
/// only more look-alikes of the same ones. At least 1 000 (every measurement up
/// to 100 000 images used 1 000), then one per 100 images: with a fixed 1 000, a
/// million images are clusters of 1 000 look-alikes whose order only slot noise
/// decides, finer than int8 keeps (an exact int8 scan finds 0.989 of the top 10).
const MIN_CLUSTERS: u64 = 1000;
const IMAGES_PER_CLUSTER: u64 = 100;
const K: usize = 10;
/// Spread of an image around its cluster centre, of a slot around its image,
/// and of a query around the slot it was drawn from (norms of the noise).
const IMAGE_SPREAD: f32 = 0.6;
const SLOT_SPREAD: f32 = 0.8;
const QUERY_SPREAD: f32 = 0.8;
/// With `--filters`, image `i` was taken on day `i % DAYS` of 2023. Its cluster is
/// drawn from an RNG seeded by `i` ([`image_vectors`]), so its day says nothing of it.
const DAYS: u64 = 100;
/// The date filters `--filters` measures: the first this many days of 2023.
const FILTER_DAYS: [u64; 2] = [1, 50];
/// With `--dups`: how far a near-copy's slots move from the original's (norm of the
/// noise added to each unit slot vector).
const COPY_SPREAD: f32 = 0.15;

struct Args {
    items: usize,
    queries: usize,
    dtype: VectorDtype,
    graph_points: usize,
    ef: Option<usize>,
    candidates: usize,
    threads: usize,
    dir: Option<String>,
    search_only: Option<f64>,
    exact: bool,
    clusters: u64,
    filters: bool,
    dups: bool,
    threshold: f32,
    neighbours: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        items: 20_000,
        queries: 200,
        dtype: VectorDtype::F32,
        graph_points: 1,
        ef: None,
        candidates: SearchParams::default().candidates,
        threads: 2,
        dir: None,
        search_only: None,
        exact: false,
        clusters: 0,
        filters: false,
        dups: false,
        threshold: DupParams::default().threshold,
        neighbours: DupParams::default().neighbours,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--items" => a.items = v.parse().expect("--items N"),
            "--queries" => a.queries = v.parse().expect("--queries M"),
            "--dtype" => a.dtype = v.parse().expect("--dtype f32|f16|int8"),
            "--graph-points" => a.graph_points = v.parse().expect("--graph-points R"),
            "--ef" => a.ef = Some(v.parse().expect("--ef N")),
            "--candidates" => a.candidates = v.parse().expect("--candidates N"),
            "--clusters" => a.clusters = v.parse().expect("--clusters C"),
            "--threads" => a.threads = v.parse().expect("--threads N"),
            "--dir" => a.dir = Some(v),
            "--threshold" => a.threshold = v.parse().expect("--threshold T"),
            "--neighbours" => a.neighbours = v.parse().expect("--neighbours N"),
            "--exact" | "--filters" | "--dups" => {
                // Flags: take no value.
                a.exact |= argv[i] == "--exact";
                a.filters |= argv[i] == "--filters";
                a.dups |= argv[i] == "--dups";
                i += 1;
                continue;
            }
            "--search-only" => a.search_only = Some(v.parse().expect("--search-only BUILD_S")),
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    if a.clusters == 0 {
        a.clusters = (a.items as u64 / IMAGES_PER_CLUSTER).max(MIN_CLUSTERS);
    }
    a
}

fn gaussian_unit(rng: &mut SmallRng, scale: f32) -> Vec<f32> {
    // Sum of uniforms is close enough to Gaussian for direction sampling.
    (0..D)
        .map(|_| {
            (0..4).map(|_| rng.random_range(-1.0f32..1.0)).sum::<f32>()
                * scale
                * (3.0 / (4.0 * D as f32)).sqrt()
        })
        .collect()
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
}

fn centre(c: u64) -> Vec<f32> {
    let mut rng = SmallRng::seed_from_u64(SEED ^ (c << 20) ^ 0xC0FFEE);
    let mut v = gaussian_unit(&mut rng, 1.0);
    normalise(&mut v);
    v
}

/// The `Q × D` vectors of image `i`, a pure function of `i`.
fn image_vectors(i: u64, centres: &[Vec<f32>]) -> Vec<f32> {
    let mut rng = SmallRng::seed_from_u64(SEED.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i);
    let c = &centres[rng.random_range(0..centres.len() as u64) as usize];
    let noise = gaussian_unit(&mut rng, IMAGE_SPREAD);
    let mut base: Vec<f32> = c.iter().zip(&noise).map(|(a, b)| a + b).collect();
    normalise(&mut base);
    let mut out = Vec::with_capacity(Q * D);
    for _ in 0..Q {
        let noise = gaussian_unit(&mut rng, SLOT_SPREAD);
        let mut v: Vec<f32> = base.iter().zip(&noise).map(|(a, b)| a + b).collect();
        normalise(&mut v);
        out.extend(v);
    }
    out
}

/// The image `--dups` copies image `i` from, if it is a copy.
fn original_of(i: u64) -> Option<u64> {
    let r = i % 10;
    (r == 8 || r == 9).then(|| i - r + 7)
}

/// The vectors of image `i` as `build` stores them: with `--dups`, a copy is its
/// original's vectors moved by [`COPY_SPREAD`] (seeded by `i`).
fn stored_vectors(i: u64, centres: &[Vec<f32>], dups: bool) -> Vec<f32> {
    let Some(original) = original_of(i).filter(|_| dups) else {
        return image_vectors(i, centres);
    };
    let mut v = image_vectors(original, centres);
    let mut rng = SmallRng::seed_from_u64(SEED ^ 0xD0B5 ^ (i << 8));
    for slot in v.chunks_exact_mut(D) {
        let noise = gaussian_unit(&mut rng, COPY_SPREAD);
        slot.iter_mut().zip(&noise).for_each(|(x, n)| *x += n);
        normalise(slot);
    }
    v
}

fn queries(n: usize, items: usize, centres: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let mut rng = SmallRng::seed_from_u64(SEED + 1);
    (0..n)
        .map(|_| {
            let img = image_vectors(rng.random_range(0..items as u64), centres);
            let slot = rng.random_range(0..Q);
            let noise = gaussian_unit(&mut rng, QUERY_SPREAD);
            let mut q: Vec<f32> = img[slot * D..(slot + 1) * D]
                .iter()
                .zip(&noise)
                .map(|(a, b)| a + b)
                .collect();
            normalise(&mut q);
            q
        })
        .collect()
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Midnight (local time, no offset) of day `day` of 2023.
fn day_2023(day: u64) -> TakenAt {
    TakenAt {
        local: (days_from_civil(2023, 1, 1) + day as i64) * 86_400,
        nanos: 0,
        offset_minutes: None,
    }
}

/// What `--filters` records of image `i`: taken on day `i % DAYS`, at a time of
/// day that varies with `i`.
fn photo_of(i: u64) -> PhotoMeta {
    let midnight = day_2023(i % DAYS);
    PhotoMeta {
        taken: Some(TakenAt {
            local: midnight.local + (i.wrapping_mul(7919) % 86_400) as i64,
            ..midnight
        }),
        ..PhotoMeta::default()
    }
}

/// The item number of a hit: paths are `photos/{i % 100}/{i}.jpg`.
fn item_of(hit: &ImageHit) -> u64 {
    item_of_path(&hit.paths[0])
}

/// The item number of a path `photos/{i % 100}/{i}.jpg`.
fn item_of_path(path: &str) -> u64 {
    path.rsplit('/')
        .next()
        .unwrap()
        .trim_end_matches(".jpg")
        .parse::<u64>()
        .unwrap()
}

/// The value at quantile `p` of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// To three decimals, for the JSON.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn model() -> ModelId {
    ModelId {
        model_id: "bench/synthetic".into(),
        config_hash: "q32-d256".into(),
    }
}

fn build(args: &Args, dir: &std::path::Path, centres: &[Vec<f32>]) -> f64 {
    let mut manifest = Manifest::new(&model(), Q, D);
    manifest.vector_dtype = args.dtype;
    manifest.graph_points_per_image = args.graph_points;
    let start = Instant::now();
    let index = Index::create(dir, manifest).expect("create index");
    let mut writer = index.writer().expect("writer");
    const BATCH: usize = 2000;
    for chunk_start in (0..args.items).step_by(BATCH) {
        let end = (chunk_start + BATCH).min(args.items);
        let vectors: Vec<Vec<f32>> = (chunk_start..end)
            .into_par_iter()
            .map(|i| stored_vectors(i as u64, centres, args.dups))
            .collect();
        for (i, v) in (chunk_start..end).zip(&vectors) {
            let record = ImageRecord {
                path: format!("photos/{}/{i}.jpg", i % 100),
                size: 1,
                mtime: 0,
                content_hash: format!("{i:016x}"),
                width: 1,
                height: 1,
                photo: args.filters.then(|| photo_of(i as u64)),
            };
            writer.add_image(record, v, None).expect("add image");
        }
        writer.commit().expect("commit");
    }
    // Graphs are built lazily; count their construction in the build time.
    index.build_graphs();
    start.elapsed().as_secs_f64()
}

fn search(args: &Args, dir: &std::path::Path, build_s: f64, centres: &[Vec<f32>]) {
    if args.dups {
        dups_bench(args, dir, build_s);
        return;
    }
    let qs = queries(args.queries, args.items, centres);
    let rss_before = rss_bytes();
    let open_start = Instant::now();
    let index = Index::open(dir, Some(&model())).expect("open index");
    let rss_opened = rss_bytes();
    index.build_graphs();
    let open_s = open_start.elapsed().as_secs_f64();
    let rss_after = rss_bytes();
    let params = SearchParams {
        ef: args.ef,
        candidates: args.candidates,
        exact: args.exact,
        ..SearchParams::default()
    };
    let mut latencies = Vec::with_capacity(qs.len());
    let mut found = Vec::with_capacity(qs.len());
    for q in &qs {
        let t = Instant::now();
        let hits = index.search_images(q, K, &params).expect("search");
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        found.push(hits.iter().map(item_of).collect::<Vec<u64>>());
    }
    latencies.sort_by(|a, b| a.total_cmp(b));

    // Exact top-10 on the original f32 vectors, one pass over the images.
    let truth: Vec<Vec<u64>> = {
        let heaps = (0..args.items as u64)
            .into_par_iter()
            .fold(
                || vec![BinaryHeap::<(std::cmp::Reverse<u32>, u64)>::new(); qs.len()],
                |mut heaps, i| {
                    let v = image_vectors(i, centres);
                    for (h, q) in heaps.iter_mut().zip(&qs) {
                        let s = qseek_index::max_sim::max_sim(q, &v).0;
                        // f32 scores of unit vectors order like their bit patterns when ≥ 0; shift to keep negatives ordered.
                        let key = (s + 2.0).to_bits();
                        h.push((std::cmp::Reverse(key), i));
                        if h.len() > K {
                            h.pop();
                        }
                    }
                    heaps
                },
            )
            .reduce(
                || vec![BinaryHeap::new(); qs.len()],
                |mut a, b| {
                    for (ha, hb) in a.iter_mut().zip(b) {
                        for x in hb {
                            ha.push(x);
                            if ha.len() > K {
                                ha.pop();
                            }
                        }
                    }
                    a
                },
            );
        heaps
            .into_iter()
            .map(|h| h.into_iter().map(|(_, i)| i).collect())
            .collect()
    };
    let hits: usize = found
        .iter()
        .zip(&truth)
        .map(|(f, t)| f.iter().filter(|i| t.contains(i)).count())
        .sum();
    let recall = hits as f64 / (K * qs.len()) as f64;
    let stats = index.stats();
    let mut out = serde_json::json!({
        "items": args.items,
        "build_s": (build_s * 100.0).round() / 100.0,
        "p50_ms": round3(percentile(&latencies, 0.5)),
        "p99_ms": round3(percentile(&latencies, 0.99)),
        "recall_at_10": recall,
        "bytes_per_item": (rss_after.saturating_sub(rss_before)) / args.items as u64,
        "graph_bytes_per_item": (rss_after.saturating_sub(rss_opened)) / args.items as u64,
        "open_s": (open_s * 100.0).round() / 100.0,
        "dtype": format!("{:?}", args.dtype).to_lowercase(),
        "graph_points_per_image": stats.graph_points_per_image,
        "ef": args.ef.unwrap_or_else(|| default_ef(args.items * args.graph_points)),
        "candidates": args.candidates,
        "exact": args.exact,
        "threads": args.threads,
        "clusters": args.clusters,
        "vector_bytes_per_item": stats.vector_bytes / args.items as u64,
    });
    if args.filters {
        out["filters"] = filter_bench(args, &index, &qs);
    }
    println!("{out}");
}

/// `--dups`: times `Index::near_duplicates` on an index built with `--dups` and
/// checks its groups against the planted ones (see the module doc).
fn dups_bench(args: &Args, dir: &std::path::Path, build_s: f64) {
    let index = Index::open(dir, Some(&model())).expect("open index");
    let graph_start = Instant::now();
    if !args.exact {
        index.build_graphs();
    }
    let graph_s = graph_start.elapsed().as_secs_f64();
    let params = DupParams {
        threshold: args.threshold,
        neighbours: args.neighbours,
        ef: args.ef,
        exact: args.exact,
        ..DupParams::default()
    };
    let start = Instant::now();
    let report = index.near_duplicates(&params).expect("near duplicates");
    let dups_s = start.elapsed().as_secs_f64();
    let item = |id| {
        let info = index.image(id).expect("a group's image is live");
        item_of_path(&info.paths[0].path)
    };
    // Planted: {i, i + 1, i + 2} for i % 10 == 7 (the last one only if complete).
    let planted: usize = (0..args.items as u64)
        .filter(|i| i % 10 == 7 && i + 2 < args.items as u64)
        .count();
    let (mut whole, mut wrong_pairs, mut grouped_pairs) = (0, 0, 0);
    for group in &report.groups {
        let items: Vec<u64> = group.members.iter().map(|&id| item(id)).collect();
        let root = |i: u64| original_of(i).unwrap_or(i);
        for (x, &a) in items.iter().enumerate() {
            for &b in &items[x + 1..] {
                grouped_pairs += 1;
                wrong_pairs += usize::from(root(a) != root(b));
            }
        }
        let r = root(items[0]);
        if items.len() == 3 && items.iter().all(|&i| root(i) == r) {
            whole += 1;
        }
    }
    let out = serde_json::json!({
        "items": args.items,
        "build_s": (build_s * 100.0).round() / 100.0,
        "graph_load_s": (graph_s * 100.0).round() / 100.0,
        "dups_s": (dups_s * 100.0).round() / 100.0,
        "groups": report.groups.len(),
        "planted_groups": planted,
        "planted_groups_found_whole": whole,
        "recall": round3(whole as f64 / planted.max(1) as f64),
        "grouped_pairs": grouped_pairs,
        "wrong_pairs": wrong_pairs,
        "pairs_scored": report.pairs_scored,
        "exact": report.exact,
        "threshold": args.threshold,
        "neighbours": args.neighbours,
        "ef": args.ef.unwrap_or(DupParams::DEFAULT_EF),
        "dtype": format!("{:?}", args.dtype).to_lowercase(),
        "threads": args.threads,
        "clusters": args.clusters,
    });
    println!("{out}");
}

/// Latencies of one kind of search, in query order, and what it found.
struct Side {
    params: SearchParams,
    ms: Vec<f64>,
    hits: Vec<Vec<ImageHit>>,
}

impl Side {
    /// `(p50, mean)` in milliseconds.
    fn p50_mean(&self) -> (f64, f64) {
        let mut sorted = self.ms.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let mean = sorted.iter().sum::<f64>() / sorted.len() as f64;
        (percentile(&sorted, 0.5), mean)
    }
}

/// `--filters`: exact search without a filter against exact and graph searches
/// with each of [`FILTER_DAYS`], interleaved query by query (see the module doc).
fn filter_bench(args: &Args, index: &Index, qs: &[Vec<f32>]) -> serde_json::Value {
    let dated = index
        .image_by_path("photos/0/0.jpg")
        .is_some_and(|i| i.photo.is_some());
    assert!(dated, "--filters needs an index built with --filters");
    let ann = SearchParams {
        ef: args.ef,
        candidates: args.candidates,
        ..SearchParams::default()
    };
    let exact = SearchParams {
        exact: true,
        ..ann.clone()
    };
    let side = |params: SearchParams| Side {
        params,
        ms: Vec::with_capacity(qs.len()),
        hits: Vec::with_capacity(qs.len()),
    };
    // Side 0: exact without a filter; then per filter, exact and graph.
    let mut sides = vec![side(exact.clone())];
    for days in FILTER_DAYS {
        let filter = Filter {
            photo: PhotoFilter {
                taken_from: Some(day_2023(0)),
                taken_until: Some(day_2023(days)),
                ..PhotoFilter::default()
            },
            ..Filter::default()
        };
        for params in [&exact, &ann] {
            sides.push(side(SearchParams {
                filter: Some(filter.clone()),
                ..params.clone()
            }));
        }
    }
    // One untimed round warms the caches and the allocator.
    for s in &sides {
        index.search_images(&qs[0], K, &s.params).expect("search");
    }
    let n = sides.len();
    for (qi, q) in qs.iter().enumerate() {
        for j in 0..n {
            let s = &mut sides[(qi + j) % n];
            let t = Instant::now();
            let hits = index.search_images(q, K, &s.params).expect("search");
            s.ms.push(t.elapsed().as_secs_f64() * 1000.0);
            s.hits.push(hits);
        }
    }
    let (base_p50, base_mean) = sides[0].p50_mean();
    let mut summary = format!(
        "filters, {} queries: exact without a filter p50 {base_p50:.2} ms, mean {base_mean:.2} ms",
        qs.len()
    );
    let mut per_filter = Vec::new();
    for (days, pair) in FILTER_DAYS.iter().zip(sides[1..].chunks_exact(2)) {
        let (exact, ann) = (&pair[0], &pair[1]);
        // Every hit of the exact filtered search is in the range.
        for hit in exact.hits.iter().flatten() {
            assert!(
                item_of(hit) % DAYS < *days,
                "{} is outside the filter",
                hit.paths[0]
            );
        }
        let found: usize = ann
            .hits
            .iter()
            .zip(&exact.hits)
            .map(|(a, e)| {
                a.iter()
                    .filter(|h| e.iter().any(|t| t.image_id == h.image_id))
                    .count()
            })
            .sum();
        let recall = found as f64 / exact.hits.iter().map(Vec::len).sum::<usize>() as f64;
        let kept = (0..args.items as u64).filter(|i| i % DAYS < *days).count();
        let ((e50, emean), (a50, amean)) = (exact.p50_mean(), ann.p50_mean());
        summary += &format!(
            "\n  {days} day(s), {kept} images kept: exact p50 {e50:.2} ms ({:.3}×), mean {emean:.2} ms ({:.3}×); \
             graph p50 {a50:.2} ms, mean {amean:.2} ms, recall@10 {recall:.4}",
            e50 / base_p50,
            emean / base_mean,
        );
        per_filter.push(serde_json::json!({
            "days": days,
            "kept": kept,
            "exact_p50_ms": round3(e50),
            "exact_mean_ms": round3(emean),
            "exact_p50_ratio": round3(e50 / base_p50),
            "exact_mean_ratio": round3(emean / base_mean),
            "ann_p50_ms": round3(a50),
            "ann_mean_ms": round3(amean),
            "ann_recall_at_10": recall,
        }));
    }
    eprintln!("{summary}");
    serde_json::json!({
        "exact_p50_ms": round3(base_p50),
        "exact_mean_ms": round3(base_mean),
        "date": per_filter,
    })
}

fn main() {
    let args = parse_args();
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global()
        .expect("rayon pool");
    let centres: Vec<Vec<f32>> = (0..args.clusters).map(centre).collect();
    let tmp;
    let dir = match &args.dir {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir().expect("temp dir");
            tmp.path().join("index")
        }
    };
    if let Some(build_s) = args.search_only {
        search(&args, &dir, build_s, &centres);
        return;
    }
    let build_s = build(&args, &dir, &centres);
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    if args.dir.is_none() {
        argv.extend(["--dir".into(), dir.display().to_string()]);
    }
    argv.extend(["--search-only".into(), build_s.to_string()]);
    let status = std::process::Command::new(std::env::current_exe().expect("own path"))
        .args(&argv)
        .status()
        .expect("run the search half");
    std::process::exit(status.code().unwrap_or(1));
}
