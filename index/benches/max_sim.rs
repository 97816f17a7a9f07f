//! The max-over-slots kernel for each stored dtype (Q = 32, D = 256), for 16
//! queries at once, and the Chamfer score of two images.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use half::f16;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const Q: usize = 32;
const D: usize = 256;
const SEED: u64 = 7;

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
    let mut rng = SmallRng::seed_from_u64(SEED);
    let query = unit(&mut rng, 1);
    let rows = unit(&mut rng, Q);
    let rows_f16: Vec<f16> = rows.iter().map(|x| f16::from_f32(*x)).collect();
    let scales: Vec<f32> = rows
        .chunks_exact(D)
        .map(|v| v.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0)
        .collect();
    let codes: Vec<i8> = rows
        .chunks_exact(D)
        .zip(&scales)
        .flat_map(|(v, s)| v.iter().map(move |x| (x / s).round() as i8))
        .collect();
    let mut group = c.benchmark_group("max_sim_q32_d256");
    group.bench_function(BenchmarkId::new("dtype", "f32"), |b| {
        b.iter(|| qseek_index::max_sim::max_sim(std::hint::black_box(&query), &rows))
    });
    let mut scratch = vec![0f32; D];
    group.bench_function(BenchmarkId::new("dtype", "f16"), |b| {
        b.iter(|| {
            qseek_index::max_sim::max_sim_f16(std::hint::black_box(&query), &rows_f16, &mut scratch)
        })
    });
    group.bench_function(BenchmarkId::new("dtype", "int8"), |b| {
        b.iter(|| qseek_index::max_sim::max_sim_i8(std::hint::black_box(&query), &codes, &scales))
    });
    group.finish();

    // Image → images: the Chamfer score of two images (32 × 32 dot products).
    let other = unit(&mut rng, Q);
    c.bench_function("chamfer_q32_d256", |b| {
        b.iter(|| qseek_index::max_sim::chamfer(std::hint::black_box(&rows), &other, D))
    });

    // A server's batch of 16 text searches against one image: one call per query,
    // or `max_sim_many` (the same bits, 4 queries × 4 rows at a time).
    let queries = unit(&mut rng, 16);
    let queries: Vec<&[f32]> = queries.chunks_exact(D).collect();
    let mut group = c.benchmark_group("max_sim_16_queries_q32_d256_f32");
    group.bench_function("one_by_one", |b| {
        b.iter(|| {
            for q in &queries {
                std::hint::black_box(qseek_index::max_sim::max_sim(q, &rows));
            }
        })
    });
    let mut dots = Vec::new();
    let mut out = vec![(0f32, 0); queries.len()];
    group.bench_function("many", |b| {
        b.iter(|| {
            qseek_index::max_sim::max_sim_many(
                std::hint::black_box(&queries),
                &rows,
                &[],
                &mut dots,
                &mut out,
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
