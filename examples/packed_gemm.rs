//! GEMM benchmark (not a test): GFLOP/s of the ViT-g and Q-Former linear layers' shapes
//! through `qseek_kernels::gemm` (each kernel this CPU runs but the portable ones) and through
//! candle's f32 GEMM, one JSON line per (shape, path).
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release --example packed_gemm -- --rows 1028
//! RAYON_NUM_THREADS=2 cargo run --release --example packed_gemm -- --rows 1028 --f32
//! RAYON_NUM_THREADS=2 cargo run --release --example packed_gemm -- --qformer --rows 192
//! RAYON_NUM_THREADS=2 cargo run --release --example packed_gemm -- --rows 1028 --int8
//! ```

mod common;

use std::time::Instant;

use candle_core::{Device, Tensor};
use clap::Parser;
use common::random_values;
use qseek_kernels::gemm::{matmul_wt, Epilogue, Format, Kernel, PackedWeight};

#[derive(Parser, Debug)]
struct Args {
    /// Rows of x: 257 tokens per image (1028 is a batch of 4).
    #[arg(long, default_value_t = 1028)]
    rows: usize,
    /// Timed repetitions per shape (the best is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// The Q-Former's shapes (BERT-base: 768 and 3072) in f32, instead of ViT-g's.
    #[arg(long)]
    qformer: bool,
    /// ViT-g's shapes in f32 instead of bf16.
    #[arg(long)]
    f32: bool,
    /// ViT-g's shapes in int8, both layouts (then bf16 too, to compare in the same run).
    #[arg(long)]
    int8: bool,
}

fn best_seconds(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() -> candle_core::Result<()> {
    let args = Args::parse();
    // (name, k, n): ViT-g's qkv, projection, fc1, fc2, or the Q-Former's attention
    // projections, intermediate and output.
    let (formats, shapes) = if args.qformer {
        (
            vec![Format::F32],
            [
                ("qkv", 768, 768),
                ("intermediate", 768, 3072),
                ("output", 3072, 768),
            ]
            .as_slice(),
        )
    } else {
        (
            if args.f32 {
                vec![Format::F32]
            } else if args.int8 {
                vec![Format::Bf16, Format::Int8, Format::Int8Pairs, Format::Int7]
            } else {
                vec![Format::Bf16]
            },
            [
                ("qkv", 1408, 4224),
                ("proj", 1408, 1408),
                ("fc1", 1408, 6144),
                ("fc2", 6144, 1408),
            ]
            .as_slice(),
        )
    };
    for &(name, k, n) in shapes {
        let m = args.rows;
        let (x, w) = (random_values(m * k, 1), random_values(n * k, 2));
        let flop = 2.0 * (m * k * n) as f64;
        for &format in &formats {
            let packed = PackedWeight::new(format, &w, None, k);
            for kernel in Kernel::available(format) {
                if kernel.is_portable() {
                    continue;
                }
                let s = best_seconds(args.reps, || {
                    std::hint::black_box(matmul_wt(kernel, &x, m, &packed, Epilogue::None));
                });
                let path = format!("{kernel:?}");
                println!(
                    "{}",
                    serde_json::json!({"shape": name, "m": m, "k": k, "n": n, "path": path,
                        "ms": s * 1e3, "gflops": flop / s / 1e9})
                );
            }
        }
        let xt = Tensor::from_vec(x, (m, k), &Device::Cpu)?;
        let wt = Tensor::from_vec(w, (n, k), &Device::Cpu)?;
        let s = best_seconds(args.reps, || {
            std::hint::black_box(xt.matmul(&wt.t().unwrap()).unwrap());
        });
        println!(
            "{}",
            serde_json::json!({"shape": name, "m": m, "k": k, "n": n, "path": "candle f32",
                "ms": s * 1e3, "gflops": flop / s / 1e9})
        );
    }
    Ok(())
}
