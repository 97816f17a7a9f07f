//! Search over a small synthetic index (2 000 images, Q = 32, D = 256): ANN
//! with exact re-scoring against brute force. And a server's case: the exact scan of
//! 10 000 f32 images for one text and for a batch of 16 (`search_images_many`).

use criterion::{criterion_group, criterion_main, Criterion};
use qseek_index::{ImageRecord, Index, Manifest, ModelId, SearchParams, VectorDtype};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const Q: usize = 32;
const D: usize = 256;
const ITEMS: usize = 2_000;
const SEED: u64 = 11;

fn unit(rng: &mut SmallRng, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * D);
    for _ in 0..n {
        let v: Vec<f32> = (0..D).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        out.extend(v.iter().map(|x| x / norm));
    }
    out
}

/// An index of `items` random images in `dtype`, in `dir`.
fn synthetic(dir: &std::path::Path, items: usize, dtype: VectorDtype, rng: &mut SmallRng) -> Index {
    let model = ModelId {
        model_id: "bench".into(),
        config_hash: "0".into(),
    };
    let mut manifest = Manifest::new(&model, Q, D);
    manifest.vector_dtype = dtype;
    let index = Index::create(dir, manifest).unwrap();
    let mut w = index.writer().unwrap();
    for i in 0..items {
        let record = ImageRecord {
            path: format!("{i}.jpg"),
            size: 0,
            mtime: 0,
            content_hash: i.to_string(),
            width: 0,
            height: 0,
            photo: None,
        };
        w.add_image(record, &unit(rng, Q), None).unwrap();
    }
    w.commit().unwrap();
    drop(w);
    index
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = SmallRng::seed_from_u64(SEED);
    let index = synthetic(dir.path(), ITEMS, VectorDtype::Int8, &mut rng);
    let query = unit(&mut rng, 1);
    let ann = SearchParams {
        exact_below: 0,
        ..SearchParams::default()
    };
    let exact = SearchParams {
        exact: true,
        ..SearchParams::default()
    };
    c.bench_function("search_images_ann_top10", |b| {
        b.iter(|| index.search_images(&query, 10, &ann).unwrap())
    });
    c.bench_function("search_images_exact_top10", |b| {
        b.iter(|| index.search_images(&query, 10, &exact).unwrap())
    });

    let dir = tempfile::tempdir().unwrap();
    let index = synthetic(dir.path(), 10_000, VectorDtype::F32, &mut rng);
    let queries = unit(&mut rng, 16);
    let queries: Vec<&[f32]> = queries.chunks_exact(D).collect();
    let mut group = c.benchmark_group("exact_scan_10k_f32_top10");
    group.sample_size(20);
    group.bench_function("one_text", |b| {
        b.iter(|| index.search_images(queries[0], 10, &exact).unwrap())
    });
    group.bench_function("16_texts", |b| {
        b.iter(|| index.search_images_many(&queries, 10, &exact).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
