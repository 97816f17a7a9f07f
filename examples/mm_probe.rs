use candle_core::{Device, Tensor};
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
            ts.sort_by(f64::total_cmp);
            let gf = 2.0 * (m * k * n) as f64 / ts[2] / 1e9;
            println!("{m}x{k}x{n} {name}: {:.1} ms, {gf:.0} GFLOP/s", ts[2] * 1e3);
        }
    }
    Ok(())
}
