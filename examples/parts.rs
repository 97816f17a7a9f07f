//! Where the image encoder's time goes (a benchmark, not a test): each part of a ViT
//! layer timed alone on the checkpoint's shapes, the whole ViT and the Q-Former query
//! pass timed on the loaded model, with GFLOP/s next to the CPU's measured peak.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release --example parts -- \
//!     --model /work/models/full --batch 4 --dtype bf16
//! ```
//!
//! Parts (per batch, for all layers: one layer's time × `num_hidden_layers`):
//! * `linear qkv` / `linear proj` / `linear fc1+gelu` / `linear fc2`: the layer's GEMMs,
//!   through the same `Linear` the model uses (`qseek_kernels::gemm` in bf16 on AVX512-BF16, in
//!   f32 on AVX2/AVX-512; candle's GEMM otherwise), 2·m·k·n FLOP each;
//! * `attention`: softmax(q kᵀ / √d) v over the heads, 4·B·heads·T²·head_dim FLOP;
//! * `layer norms`: the two per layer (memory-bound: their FLOP count is nominal);
//! * `rest of the ViT`: the whole ViT minus the parts (residual adds, reshapes and
//!   copies, the patch embedding, thread-pool barriers);
//! * `qformer (image)`: the Q-Former query pass and `vision_projection`.
//!
//! Peaks (each the best of three runs, interleaved): a register-only loop of independent
//! FMAs (f32; 16 lanes with AVX-512, else 8), of `vdpbf16ps` (bf16, where the CPU has it)
//! and of int8's instructions (`vpdpbusd`; without VNNI `vpmaddubsw` + `vpmaddwd` +
//! `vpaddd`, or `vpmaddwd` + `vpaddd`) on every rayon thread: what the cores can do at
//! most. Under `--dtype int8` the header also gives int8's peak over f32's: the most the
//! int8 GEMMs can gain over `--dtype f32`'s on this CPU.
//! One JSON line per part, then a table on stderr.

mod common;

use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use clap::Parser;
use common::median;
use qseek::embedder::parse_dtype;
use qseek::model::ops::{multi_head_attention, Linear};
use qseek::model::{ModelSource, Precision};
use qseek::{Embedder, ModelOptions};
use qseek_kernels::gemm::{Format, Kernel, Kernels};
use rayon::prelude::*;

#[derive(Parser, Debug)]
struct Args {
    /// Checkpoint directory (the full ViT-g one for real numbers).
    #[arg(long)]
    model: std::path::PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// f32, bf16 or int8 (the ViT's precision, as `--dtype` of `qseek index`).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

/// Median seconds of `reps` runs of `f`, after one warm-up run.
fn seconds(
    reps: usize,
    mut f: impl FnMut() -> candle_core::Result<()>,
) -> candle_core::Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// GFLOP/s of independent FMA chains (or `vdpbf16ps`, or `vpdpbusd`: `kernel`'s
/// instruction) kept in registers, on every rayon thread; int8 counted as the f32
/// product it stands for.
fn peak_gflops(kernel: Kernel) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        // (FLOP per instruction: lanes × products per lane × 2; whether it runs here).
        let (per_op, runs) = match kernel {
            Kernel::Avx512Bf16 => (16.0 * 2.0 * 2.0, kernel.runs_here()),
            Kernel::Avx512Vnni => (16.0 * 4.0 * 2.0, kernel.runs_here()),
            Kernel::Avx512F32 => (16.0 * 2.0, kernel.runs_here()),
            Kernel::Avx2F32 => (8.0 * 2.0, kernel.runs_here()),
            // `vpmaddwd` and the `vpaddd` that adds it: 8 lanes × 2 products.
            Kernel::Avx2Madd => (8.0 * 2.0 * 2.0, kernel.runs_here()),
            // `vpmaddubsw`, the `vpmaddwd` by ones and the `vpaddd`: 8 lanes × 4 products.
            Kernel::Avx2Maddubs => (8.0 * 4.0 * 2.0, kernel.runs_here()),
            _ => (0.0, false),
        };
        if !runs {
            return None;
        }
        const ITERS: u64 = 50_000_000;
        let threads = rayon::current_num_threads();
        let t = Instant::now();
        let sink: f32 = (0..threads)
            .into_par_iter()
            // SAFETY: `kernel` is one of the SIMD kernels matched above (the others
            // returned), and the CPU runs it (`runs`, checked above): `peak::run`'s contract.
            .map(|i| unsafe { peak::run(kernel, ITERS, i as f32) })
            .sum();
        std::hint::black_box(sink);
        // 12 independent chains per iteration.
        let flop_per_iter = 12.0 * per_op;
        Some(flop_per_iter * ITERS as f64 * threads as f64 / t.elapsed().as_secs_f64() / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = kernel;
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;

    use qseek_kernels::gemm::Kernel;

    /// `iters` rounds of 12 independent FMAs (or `kernel`'s `vdpbf16ps`, `vpdpbusd` or
    /// `vpmaddwd` + `vpaddd`).
    ///
    /// # Safety
    /// The CPU must run `kernel` ([`Kernel::runs_here`]), one of the SIMD kernels matched
    /// here ([`Kernel::Avx2F32`] in the last arm, where any other kernel panics).
    pub unsafe fn run(kernel: Kernel, iters: u64, seed: f32) -> f32 {
        match kernel {
            // SAFETY: the CPU runs `kernel` (this fn's contract): AVX-512F and AVX512-BF16.
            Kernel::Avx512Bf16 => unsafe { dpbf16(iters, seed) },
            // SAFETY: as above: AVX-512F and AVX512-VNNI.
            Kernel::Avx512Vnni => unsafe { dpbusd(iters, seed) },
            // SAFETY: as above: AVX-512F.
            Kernel::Avx512F32 => unsafe { fma(iters, seed) },
            // SAFETY: as above: AVX2 (and FMA).
            Kernel::Avx2Madd => unsafe { madd(iters, seed, false) },
            // SAFETY: as above: AVX2 (and FMA).
            Kernel::Avx2Maddubs => unsafe { madd(iters, seed, true) },
            _ => {
                // Only `Avx2F32` has these chains; a portable kernel runs on any CPU.
                assert_eq!(kernel, Kernel::Avx2F32, "no peak for {kernel:?}");
                // SAFETY: the CPU runs `Avx2F32` (this fn's contract): AVX2 and FMA.
                unsafe { fma_ymm(iters, seed) }
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn dpbusd(iters: u64, seed: f32) -> f32 {
        let mut acc = [_mm512_set1_epi32(seed as i32); 12];
        let ab = _mm512_set1_epi32(0x0101_0101);
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_dpbusd_epi32(*x, ab, ab);
            }
        }
        acc.iter().map(|x| _mm512_reduce_add_epi32(*x) as f32).sum()
    }

    /// 8 chains (a chain waits only on `vpaddd`'s one cycle), 12 per round as the others;
    /// with `bytes`, each product a `vpmaddubsw` then a `vpmaddwd` by ones.
    #[target_feature(enable = "avx2")]
    unsafe fn madd(iters: u64, seed: f32, bytes: bool) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_set1_epi32(seed as i32); 8];
        // The products' operands are read from memory at each round, as the kernel's are
        // (volatile: the products cannot be hoisted out of the loop); eight distinct
        // pairs of the four (12 registers of the 16 with the sums).
        let ops = [_mm256_set1_epi32(0x0001_0001); 4];
        const PAIRS: [(usize, usize); 8] = [
            (0, 1),
            (1, 2),
            (2, 3),
            (3, 0),
            (0, 2),
            (1, 3),
            (0, 0),
            (1, 1),
        ];
        for _ in 0..iters * 3 / 2 {
            // SAFETY: `&ops[j]` is a reference (j < 4, checked): valid and aligned for
            // reading one `__m256i`, which holds any bits.
            let ab: [__m256i; 4] =
                std::array::from_fn(|j| unsafe { std::ptr::read_volatile(&ops[j]) });
            for (x, &(a, b)) in acc.iter_mut().zip(&PAIRS) {
                let product = if bytes {
                    _mm256_madd_epi16(_mm256_maddubs_epi16(ab[a], ab[b]), ones)
                } else {
                    _mm256_madd_epi16(ab[a], ab[b])
                };
                *x = _mm256_add_epi32(*x, product);
            }
        }
        let mut out = [0i32; 8];
        let sum = acc
            .iter()
            .fold(_mm256_setzero_si256(), |s, x| _mm256_add_epi32(s, *x));
        // SAFETY: AVX2 is there (this fn's contract); `out` is 8 i32, the 32 bytes an
        // unaligned store of one `__m256i` writes.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), sum) };
        out.iter().map(|&x| x as f32).sum()
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn fma(iters: u64, seed: f32) -> f32 {
        let mut acc = [_mm512_set1_ps(seed); 12];
        let (a, b) = (_mm512_set1_ps(0.999_9), _mm512_set1_ps(1e-7));
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        acc.iter().map(|x| _mm512_reduce_add_ps(*x)).sum()
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma_ymm(iters: u64, seed: f32) -> f32 {
        let mut acc = [_mm256_set1_ps(seed); 12];
        let (a, b) = (_mm256_set1_ps(0.999_9), _mm256_set1_ps(1e-7));
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let mut out = [0f32; 8];
        let sum = acc
            .iter()
            .fold(_mm256_setzero_ps(), |s, x| _mm256_add_ps(s, *x));
        // SAFETY: AVX is there (this fn's contract: AVX2); `out` is 8 floats, what an
        // unaligned store of one `__m256` writes.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
        out.iter().sum()
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn dpbf16(iters: u64, seed: f32) -> f32 {
        let mut acc = [_mm512_set1_ps(seed); 12];
        // SAFETY: a transmute of 64 bytes to 64 bytes (32 bf16: any bits are valid).
        let ab =
            unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3F80_3F80)) };
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_dpbf16_ps(*x, ab, ab);
            }
        }
        acc.iter().map(|x| _mm512_reduce_add_ps(*x)).sum()
    }
}

struct Part {
    name: &'static str,
    seconds: f64,
    gflop: f64,
    /// The instruction peak it is measured against.
    peak: Option<f64>,
}

fn main() -> qseek::Result<()> {
    qseek::model::use_one_thread_pool();
    let args = Args::parse();
    let precision = parse_dtype(&args.dtype)?;
    let dtype = precision.dtype();
    let mut opts = ModelOptions::new(ModelSource::Local(args.model.clone()));
    opts.dtype = precision;
    let embedder = Embedder::load(&opts)?;
    let v = embedder.config.vision_config.clone();
    let (b, t, h, i) = (
        args.batch,
        v.num_positions(),
        v.hidden_size,
        v.intermediate_size,
    );
    let heads = v.num_attention_heads;
    let layers = v.num_hidden_layers as f64;
    let m = b * t;
    let dev = Device::Cpu;
    // The kernel the model packs the ViT's linear layers for (as `retrieval.rs` picks it).
    let bf16 = (dtype == DType::BF16)
        .then(|| Kernels::chosen().bf16)
        .flatten();
    let f32 = (dtype == DType::F32)
        .then(|| Kernels::chosen().f32)
        .flatten();
    let packed = bf16.or(f32);
    // int8: the encoder layers' linear kernel.
    let int8 = (precision == Precision::Int8)
        .then(|| Kernels::chosen().int8)
        .flatten();
    let linear = int8.or(packed);
    // The ViT's activations: f32 where `qseek_kernels::gemm` computes its linear layers in bf16
    // or int8.
    let act = if bf16.is_some() || int8.is_some() {
        DType::F32
    } else {
        dtype
    };

    // The instruction peaks the parts are measured against: the main kernel's, and
    // int8's for int8's encoder-layer linear layers.
    let main_kernel = bf16.or_else(|| Kernels::chosen().f32);
    // Each the best of three runs, the two interleaved: on a noisy machine a slow moment
    // then lowers neither alone, and their ratio means something.
    let best = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let (mut peak, mut int8_peak) = (None, None);
    for _ in 0..3 {
        peak = best(peak, main_kernel.and_then(peak_gflops));
        int8_peak = best(int8_peak, int8.and_then(peak_gflops));
    }
    let peak_of = |kernel: Option<Kernel>| match kernel.map(Kernel::format) {
        Some(Format::Int8 | Format::Int8Pairs | Format::Int7) => int8_peak,
        _ => peak,
    };
    let mut parts = Vec::new();
    let x = Tensor::randn(0f32, 1.0, (m, h), &dev)?.to_dtype(act)?;
    let x_wide = Tensor::randn(0f32, 1.0, (m, i), &dev)?.to_dtype(act)?;
    for (name, k, n, input, gelu, kernel) in [
        ("linear qkv", h, 3 * h, &x, false, linear),
        ("linear proj", h, h, &x, false, linear),
        ("linear fc1+gelu", h, i, &x, true, linear),
        ("linear fc2", i, h, &x_wide, false, linear),
    ] {
        let w = (Tensor::randn(0f32, 1.0, (n, k), &dev)? / (k as f64).sqrt())?;
        let bias = Tensor::zeros(n, DType::F32, &dev)?;
        let layer =
            Linear::from_parts(w.to_dtype(act)?, Some(bias.to_dtype(act)?)).into_packed(kernel);
        let s = seconds(args.reps, || {
            if gelu {
                layer.forward_activation(input, candle_nn::Activation::Gelu)?;
            } else {
                layer.forward(input)?;
            }
            Ok(())
        })?;
        parts.push(Part {
            name,
            seconds: s * layers,
            gflop: 2.0 * (m * k * n) as f64 * layers / 1e9,
            peak: peak_of(kernel),
        });
    }
    let hd = h / heads;
    // q, k and v as the ViT has them: column ranges of the fused projection's output.
    let qkv = Tensor::randn(0f32, 1.0, (b, t, 3 * h), &dev)?.to_dtype(act)?;
    let (q, k, vv) = (
        qkv.narrow(2, 0, h)?,
        qkv.narrow(2, h, h)?,
        qkv.narrow(2, 2 * h, h)?,
    );
    let attention_kernel = packed.or_else(|| Kernels::chosen().f32);
    let s = seconds(args.reps, || {
        multi_head_attention(
            attention_kernel,
            &q,
            &k,
            &vv,
            heads,
            (hd as f64).powf(-0.5),
            None,
        )?;
        Ok(())
    })?;
    parts.push(Part {
        name: "attention",
        seconds: s * layers,
        gflop: 4.0 * (b * heads * t * t * hd) as f64 * layers / 1e9,
        peak,
    });
    let norm = candle_nn::LayerNorm::new(
        Tensor::ones(h, act, &dev)?,
        Tensor::zeros(h, act, &dev)?,
        v.layer_norm_eps,
    );
    let xn = Tensor::randn(0f32, 1.0, (b, t, h), &dev)?.to_dtype(act)?;
    let s = seconds(args.reps, || {
        norm.forward(&xn)?;
        Ok(())
    })?;
    parts.push(Part {
        name: "layer norms",
        seconds: 2.0 * s * layers,
        gflop: 2.0 * 8.0 * (m * h) as f64 * layers / 1e9,
        peak,
    });

    // The whole ViT and the Q-Former on the loaded model.
    let size = v.image_size;
    let pixels = Tensor::randn(0f32, 1.0, (b, 3, size, size), &dev)?;
    let model = embedder.model();
    let vit = seconds(args.reps, || {
        model.vision_features(&pixels)?;
        Ok(())
    })?;
    let features = model.vision_features(&pixels)?;
    let qformer = seconds(args.reps, || {
        model.image_embeds(&features)?;
        Ok(())
    })?;
    let counted: f64 = parts.iter().map(|p| p.seconds).sum();
    let vit_gflop: f64 = parts.iter().map(|p| p.gflop).sum();
    parts.push(Part {
        name: "rest of the ViT",
        seconds: (vit - counted).max(0.0),
        gflop: 0.0,
        peak: None,
    });
    parts.push(Part {
        name: "qformer (image)",
        seconds: qformer,
        gflop: 0.0,
        peak: None,
    });

    let total = vit + qformer;
    let mut table = format!(
        "{} images, {} threads, dtype {}: ViT {:.3} s ({:.1} GFLOP/s over its {:.0} GFLOP of parts), Q-Former {:.3} s; {:.3} images/s\npeak ({}): {}{}\n\n| part | s per batch | share | GFLOP | GFLOP/s | of peak |\n|---|---|---|---|---|---|\n",
        b,
        rayon::current_num_threads(),
        args.dtype,
        vit,
        vit_gflop / vit,
        vit_gflop,
        qformer,
        b as f64 / total,
        if bf16.is_some() { "vdpbf16ps" } else { "f32 FMA" },
        peak.map_or("not measured".into(), |p| format!("{p:.0} GFLOP/s")),
        int8_peak.map_or(String::new(), |p| format!(
            "; int8's layers against {}'s {p:.0} GFLOP/s (as the f32 products){}",
            match int8 {
                Some(Kernel::Avx2Madd) => "vpmaddwd + vpaddd",
                Some(Kernel::Avx2Maddubs) => "vpmaddubsw + vpmaddwd + vpaddd",
                _ => "vpdpbusd",
            },
            // Against f32's FMA peak: the most int8's GEMMs can gain over `--dtype f32`'s
            // on this CPU (the rest of the pass is the same work in both).
            match peak {
                Some(f32_peak) if bf16.is_none() => format!(
                    ", {:.2}× the f32 FMA peak: the most int8's GEMMs can gain over f32's here",
                    p / f32_peak
                ),
                _ => String::new(),
            }
        )),
    );
    for p in &parts {
        let rate = (p.gflop > 0.0).then(|| p.gflop / p.seconds);
        println!(
            "{}",
            serde_json::json!({"part": p.name, "seconds": p.seconds, "share": p.seconds / total,
                "gflop": p.gflop, "gflops": rate, "peak_gflops": p.peak})
        );
        table += &format!(
            "| {} | {:.3} | {:.1}% | {} | {} | {} |\n",
            p.name,
            p.seconds,
            100.0 * p.seconds / total,
            if p.gflop > 0.0 {
                format!("{:.0}", p.gflop)
            } else {
                "".into()
            },
            rate.map_or(String::new(), |r| format!("{r:.1}")),
            match (rate, p.peak) {
                (Some(r), Some(pk)) => format!("{:.0}%", 100.0 * r / pk),
                _ => String::new(),
            },
        );
    }
    eprintln!("{table}");
    Ok(())
}
