//! Probe (not a test): candle's f32 matmul on ViT-g's linear layers' shapes (514 rows:
//! two images of 257 tokens), with the weight as `w.t()` (a transposed view, as
//! `nn.Linear` multiplies) and made contiguous (k, n); the median of 5 timed runs after
//! one warm-up, in ms and GFLOP/s.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release --example mm_probe
//! ```

mod common;

use candle_core::{Device, Tensor};
use common::median;
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let d = Device::Cpu;
    for (m, k, n) in [
        (514usize, 1408usize, 4224usize),
        (514, 1408, 6144),
        (514, 6144, 1408),
    ] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &d)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &d)?;
        let wt = w.t()?.contiguous()?;
        for (name, rhs) in [("w.t() view", w.t()?), ("contiguous (k,n)", wt.clone())] {
            x.matmul(&rhs)?;
            let mut ts = vec![];
            for _ in 0..5 {
                let t = Instant::now();
                x.matmul(&rhs)?;
                ts.push(t.elapsed().as_secs_f64());
            }
            let t = median(ts);
            let gf = 2.0 * (m * k * n) as f64 / t / 1e9;
            println!("{m}x{k}x{n} {name}: {:.1} ms, {gf:.0} GFLOP/s", t * 1e3);
        }
    }
    Ok(())
}
