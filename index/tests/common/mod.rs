//! Shared fixtures: a small manifest and seeded unit vectors.
#![allow(dead_code)]

use qseek_index::{ImageRecord, Index, Manifest, ModelId, VectorDtype};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub const Q: usize = 4;
pub const D: usize = 16;

pub fn model() -> ModelId {
    ModelId {
        model_id: "test/blip2".into(),
        config_hash: "cfg1".into(),
    }
}

pub fn manifest(dtype: VectorDtype) -> Manifest {
    let mut m = Manifest::new(&model(), Q, D);
    m.vector_dtype = dtype;
    m.graph_points_per_image = 2;
    m
}

pub fn create(dir: &std::path::Path) -> Index {
    Index::create(dir, manifest(VectorDtype::F32)).unwrap()
}

pub fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
}

/// `n` unit vectors of `D` dims, deterministic in `seed`.
pub fn unit_vectors(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n * D);
    for _ in 0..n {
        let mut v: Vec<f32> = (0..D).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        normalise(&mut v);
        out.extend(v);
    }
    out
}

pub fn record(path: &str, hash: &str) -> ImageRecord {
    ImageRecord {
        path: path.into(),
        size: 1000,
        mtime: 1_700_000_000,
        content_hash: hash.into(),
        width: 640,
        height: 480,
        photo: None,
    }
}
