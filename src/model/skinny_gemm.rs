//! `y = x Wᵀ` when `x` has only a few rows (a text query's tokens): each weight row is
//! read once from memory and dotted with every row of `x` while it sits in L1.
//!
//! candle's GEMM packs the weight matrix into its own layout on every call. With a few
//! rows of `x` that packing is most of the work: a text query through the Q-Former
//! (~12 tokens, BERT-base sizes) is bound by reading the weights once, and the
//! (12 × 3072)·(3072 × 768) output projection took 13 ms in candle against 2.2 ms here
//! on the 2-core AVX-512 machine (`benches/README.md`). For many rows (images, ITM
//! batches) candle's packed GEMM is the faster one, so [`MAX_ROWS`] bounds the use.
//!
//! Kernels: AVX-512F and AVX2+FMA, chosen at run time, and a portable one. Each output
//! is one dot product summed in 16 (or 8) lanes, then across the lanes; the result is
//! within float rounding of candle's (a different summation order), not bit-identical.

use rayon::prelude::*;

/// Rows of `x` up to which [`matmul_wt`] beats candle's GEMM (on the Q-Former's shapes).
pub const MAX_ROWS: usize = 16;

/// Weight rows per parallel task: 64 rows of 3 072 floats are 768 KB of weights.
const ROWS_PER_TASK: usize = 64;

/// The instruction set a kernel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// 16-lane FMA (`avx512f`).
    Avx512,
    /// 8-lane FMA (`avx2` + `fma`).
    Avx2,
    /// Plain Rust, any CPU.
    Portable,
}

impl Kernel {
    /// The kernels this CPU runs, fastest first (the portable one always).
    pub fn available() -> Vec<Kernel> {
        let mut out = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                out.push(Kernel::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                out.push(Kernel::Avx2);
            }
        }
        out.push(Kernel::Portable);
        out
    }

    /// The kernel to use: the fastest this CPU runs, unless `QSEEK_SKINNY_GEMM` names
    /// another (`avx512`, `avx2`, `portable`; one the CPU lacks falls back to the
    /// fastest) or `off` (`None`: candle's GEMM for every shape), for benchmarks and for
    /// testing the fallbacks end to end.
    pub fn chosen() -> Option<Kernel> {
        static CHOSEN: std::sync::OnceLock<Option<Kernel>> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let available = Kernel::available();
            let wanted = match std::env::var("QSEEK_SKINNY_GEMM").as_deref() {
                Ok("off") => return None,
                Ok("avx512") => Some(Kernel::Avx512),
                Ok("avx2") => Some(Kernel::Avx2),
                Ok("portable") => Some(Kernel::Portable),
                _ => None,
            };
            Some(
                wanted
                    .filter(|k| available.contains(k))
                    .unwrap_or(available[0]),
            )
        })
    }
}

/// `x` (rows × k, row-major) times `w`ᵀ, `w` (n × k, row-major, as `nn.Linear` stores
/// its weight): (rows × n), row-major, with `kernel` (one of [`Kernel::available`]).
pub fn matmul_wt(kernel: Kernel, x: &[f32], w: &[f32], rows: usize, k: usize) -> Vec<f32> {
    assert_eq!(x.len(), rows * k, "x is not rows × k");
    assert!(k > 0 && w.len().is_multiple_of(k), "w is not n × k");
    let n = w.len() / k;
    // Computed column-major (each task writes whole columns), then transposed.
    let mut by_column = vec![0f32; n * rows];
    by_column
        .par_chunks_mut(ROWS_PER_TASK * rows)
        .zip(w.par_chunks(ROWS_PER_TASK * k))
        .for_each(|(out, w)| {
            for (column, w_row) in out.chunks_mut(rows).zip(w.chunks(k)) {
                dots(kernel, x, w_row, column);
            }
        });
    let mut y = vec![0f32; rows * n];
    for (j, column) in by_column.chunks(rows).enumerate() {
        for (i, v) in column.iter().enumerate() {
            y[i * n + j] = *v;
        }
    }
    y
}

/// `out[i] = x[i] · w_row` for every row `i` of `x`.
fn dots(kernel: Kernel, x: &[f32], w_row: &[f32], out: &mut [f32]) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Kernel::available` listed these only where the CPU has the features.
        Kernel::Avx512 => unsafe { x86::dots_avx512(x, w_row, out) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { x86::dots_avx2(x, w_row, out) },
        _ => dots_portable(x, w_row, out),
    }
}

/// The dot product of the elements from `split` on, which the kernels' lanes leave out.
fn tail_dot(x_row: &[f32], w_row: &[f32], split: usize) -> f32 {
    x_row[split..]
        .iter()
        .zip(&w_row[split..])
        .map(|(a, b)| a * b)
        .sum()
}

/// The reference the SIMD kernels are tested against: 16 lanes, like the AVX-512 one.
fn dots_portable(x: &[f32], w_row: &[f32], out: &mut [f32]) {
    let k = w_row.len();
    for (o, x_row) in out.iter_mut().zip(x.chunks(k)) {
        let mut lanes = [0f32; 16];
        let split = k - k % 16;
        for (a, b) in x_row[..split]
            .chunks_exact(16)
            .zip(w_row[..split].chunks_exact(16))
        {
            for t in 0..16 {
                lanes[t] += a[t] * b[t];
            }
        }
        *o = lanes.iter().sum::<f32>() + tail_dot(x_row, w_row, split);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Rows of `x` whose accumulators stay in registers while one weight chunk is loaded.
    const GROUP: usize = 8;

    /// Calls `$group::<R>` for the `R` rows of each group of `x`, `R` a constant (so
    /// that the accumulators live in registers, not in a stack array).
    macro_rules! by_groups {
        ($group:ident, $x:expr, $w_row:expr, $out:expr, $split:expr) => {{
            let k = $w_row.len();
            for (g, outs) in $out.chunks_mut(GROUP).enumerate() {
                let x = &$x[g * GROUP * k..];
                match outs.len() {
                    8 => $group::<8>(x, $w_row, outs, $split),
                    7 => $group::<7>(x, $w_row, outs, $split),
                    6 => $group::<6>(x, $w_row, outs, $split),
                    5 => $group::<5>(x, $w_row, outs, $split),
                    4 => $group::<4>(x, $w_row, outs, $split),
                    3 => $group::<3>(x, $w_row, outs, $split),
                    2 => $group::<2>(x, $w_row, outs, $split),
                    _ => $group::<1>(x, $w_row, outs, $split),
                }
            }
        }};
    }

    /// # Safety
    /// The CPU must have `avx512f`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dots_avx512(x: &[f32], w_row: &[f32], out: &mut [f32]) {
        let split = w_row.len() - w_row.len() % 16;
        by_groups!(group_avx512, x, w_row, out, split);
    }

    /// `R` rows of `x` (from its start) against `w_row`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn group_avx512<const R: usize>(
        x: &[f32],
        w_row: &[f32],
        out: &mut [f32],
        split: usize,
    ) {
        let k = w_row.len();
        assert!(x.len() >= R * k && out.len() >= R);
        let mut acc = [_mm512_setzero_ps(); R];
        let mut p = 0;
        while p < split {
            let wv = _mm512_loadu_ps(w_row.as_ptr().add(p));
            for (i, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_loadu_ps(x.as_ptr().add(i * k + p));
                *a = _mm512_fmadd_ps(xv, wv, *a);
            }
            p += 16;
        }
        for (i, o) in out.iter_mut().take(R).enumerate() {
            let tail = super::tail_dot(&x[i * k..(i + 1) * k], w_row, split);
            *o = _mm512_reduce_add_ps(acc[i]) + tail;
        }
    }

    /// # Safety
    /// The CPU must have `avx2` and `fma`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dots_avx2(x: &[f32], w_row: &[f32], out: &mut [f32]) {
        let split = w_row.len() - w_row.len() % 8;
        by_groups!(group_avx2, x, w_row, out, split);
    }

    /// `R` rows of `x` (from its start) against `w_row`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn group_avx2<const R: usize>(x: &[f32], w_row: &[f32], out: &mut [f32], split: usize) {
        let k = w_row.len();
        assert!(x.len() >= R * k && out.len() >= R);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut p = 0;
        while p < split {
            let wv = _mm256_loadu_ps(w_row.as_ptr().add(p));
            for (i, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.as_ptr().add(i * k + p));
                *a = _mm256_fmadd_ps(xv, wv, *a);
            }
            p += 8;
        }
        for (i, o) in out.iter_mut().take(R).enumerate() {
            let tail = super::tail_dot(&x[i * k..(i + 1) * k], w_row, split);
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[i]);
            *o = lanes.iter().sum::<f32>() + tail;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn every_kernel_matches_a_float64_reference() {
        // (rows, k, n): the Q-Former's shapes, and sizes that leave tails everywhere.
        let shapes = [
            (12, 768, 768),
            (12, 3072, 768),
            (1, 768, 3072),
            (16, 40, 70),
            (9, 23, 5),
            (3, 7, 130),
            (1, 1, 1),
        ];
        for kernel in Kernel::available() {
            for (rows, k, n) in shapes {
                let (x, w) = (values(rows * k, 1), values(n * k, 2));
                let y = matmul_wt(kernel, &x, &w, rows, k);
                assert_eq!(y.len(), rows * n);
                for i in 0..rows {
                    for j in 0..n {
                        let exact: f64 = (0..k)
                            .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                            .sum();
                        let got = y[i * n + j] as f64;
                        // f32 accumulation over k terms of size <= 1.
                        let tolerance = 1e-6 * k as f64;
                        assert!(
                            (got - exact).abs() <= tolerance,
                            "{kernel:?} {rows}x{k}x{n} [{i},{j}]: {got} vs {exact}"
                        );
                    }
                }
            }
        }
    }
}
