//! Search over a small synthetic index (2 000 images, Q = 32, D = 256): ANN
//! with exact re-scoring against brute force.

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

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let model = ModelId {
        model_id: "bench".into(),
        config_hash: "0".into(),
    };
    let mut manifest = Manifest::new(&model, Q, D);
    manifest.vector_dtype = VectorDtype::Int8;
    let index = Index::create(dir.path(), manifest).unwrap();
    let mut rng = SmallRng::seed_from_u64(SEED);
    let mut w = index.writer().unwrap();
    for i in 0..ITEMS {
        let record = ImageRecord {
            path: format!("{i}.jpg"),
            size: 0,
            mtime: 0,
            content_hash: i.to_string(),
            width: 0,
            height: 0,
        };
        w.add_image(record, &unit(&mut rng, Q), None).unwrap();
    }
    w.commit().unwrap();
    drop(w);
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
