//! The activations the GEMM's callers need beside it: GELU (fused into a tile's epilogue
//! or applied alone) and the rows' softmax of attention, with `exp` for both. Each is one
//! plain body, which the kernel's instruction set compiles (the `x86` builds below, under
//! `#[target_feature]`), so every kernel gives the same bits.

use crate::cpu::Features;
use crate::gemm::Kernel;

/// A build of the activations: the same plain bodies compiled for an instruction set,
/// which a [`Kernel`]'s table entry names (so that a kernel's epilogue runs at its width).
pub(crate) struct Vectors {
    /// Whether a CPU with these features runs this build (each kernel's entry needs at
    /// least as much: a test checks it).
    pub(crate) needs: fn(&Features) -> bool,
    gelu: unsafe fn(&mut [f32]),
    softmax: unsafe fn(&mut [f32], usize, f32, Option<&[f32]>),
}

/// Compiled for AVX-512F.
pub(crate) static AVX512: Vectors = Vectors {
    needs: |f| f.avx512f,
    gelu: x86::gelu_in_place_avx512,
    softmax: x86::softmax_rows_avx512,
};

/// Compiled for AVX2 + FMA.
pub(crate) static AVX2: Vectors = Vectors {
    needs: |f| f.avx2 && f.fma,
    gelu: x86::gelu_in_place_avx2,
    softmax: x86::softmax_rows_avx2,
};

/// The build's baseline: the portable kernels'.
pub(crate) static BASELINE: Vectors = Vectors {
    needs: |_| true,
    gelu: gelu_in_place_body,
    softmax: softmax_rows_body,
};

/// The build of `kernel`'s entry where this CPU runs the kernel, else the baseline.
fn vectors(kernel: Kernel) -> &'static Vectors {
    let info = kernel.info();
    if info.runs_here() {
        debug_assert!((info.vectors.needs)(Features::get()), "{kernel:?}");
        info.vectors
    } else {
        &BASELINE
    }
}

/// GELU in place, erf form: `0.5 x (1 + erf(x / √2))`, with erf from Abramowitz & Stegun
/// 7.1.26 (absolute error ≤ 1.5e-7, the formula of PyTorch's vectorised erf) and exp from
/// a degree-7 polynomial: within ~2e-7 · max(1, |x|) of the exact GELU. Plain code, which
/// the compiler vectorises for the kernel's instruction set.
pub fn gelu_in_place(kernel: Kernel, xs: &mut [f32]) {
    // SAFETY: `vectors` gives the build of a kernel this CPU runs, whose features include
    // the build's (`needs`, tested), or the baseline; `gelu` takes a slice.
    unsafe { (vectors(kernel).gelu)(xs) }
}

fn gelu_in_place_body(xs: &mut [f32]) {
    xs.iter_mut().for_each(|x| *x = gelu(*x));
}

/// Each row (of `len` values) of `xs` becomes `softmax(x · scale + mask)`, the mask (the
/// same size as `xs`, additive) where given: attention's probabilities. As candle's
/// `softmax_last_dim`: the row's maximum is subtracted, then `e^x` (here
/// [`exp_nonpositive`], 0 below -87), each divided by their sum. Value `j` of a row is
/// summed in lane `j mod 16`, the lanes then in order, so a longer row whose extra values
/// are masked (its padding) gives its other values the same bits.
pub fn softmax_rows(kernel: Kernel, xs: &mut [f32], len: usize, scale: f32, mask: Option<&[f32]>) {
    assert!(
        len > 0 && xs.len().is_multiple_of(len),
        "xs is not rows × len"
    );
    if let Some(mask) = mask {
        assert_eq!(mask.len(), xs.len(), "the mask is not rows × len");
    }
    // By the kernel's vectors, as `gelu_in_place`: every kernel of a width gets its build.
    // SAFETY: as in `gelu_in_place`; `softmax` takes slices, whose lengths it checks.
    unsafe { (vectors(kernel).softmax)(xs, len, scale, mask) }
}

/// The body of [`softmax_rows`], which each build compiles.
#[inline(always)]
pub(crate) fn softmax_rows_body(xs: &mut [f32], len: usize, scale: f32, mask: Option<&[f32]>) {
    const LANES: usize = 16;
    for (i, row) in xs.chunks_exact_mut(len).enumerate() {
        match mask {
            Some(mask) => {
                for (x, m) in row.iter_mut().zip(&mask[i * len..(i + 1) * len]) {
                    *x = *x * scale + m;
                }
            }
            None => row.iter_mut().for_each(|x| *x *= scale),
        }
        let max = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
        let exp = |x: f32| {
            let d = x - max;
            if d < -87.0 {
                0.0
            } else {
                exp_nonpositive(d)
            }
        };
        let mut lanes = [0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for chunk in chunks.by_ref() {
            for (x, lane) in chunk.iter_mut().zip(&mut lanes) {
                *x = exp(*x);
                *lane += *x;
            }
        }
        for (x, lane) in chunks.into_remainder().iter_mut().zip(&mut lanes) {
            *x = exp(*x);
            *lane += *x;
        }
        let sum: f32 = lanes.iter().sum();
        row.iter_mut().for_each(|x| *x /= sum);
    }
}

#[inline(always)]
fn gelu(x: f32) -> f32 {
    let z = (x * std::f32::consts::FRAC_1_SQRT_2).abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_7) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    let erf = (1.0 - poly * exp_nonpositive(-z * z)).copysign(x);
    0.5 * x * (1.0 + erf)
}

/// `e^x` for `x ≤ 0` (relative error ~1e-7; 0 below -87).
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Rounds to the nearest integer for |v| < 2^22 without a call to `round`.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // SAFETY: n is an integer in [-126, 0] (x was clamped to [-87, 0]; a NaN x became
    // -87 through `max`), which i32 holds. (`as` would check and saturate, which the
    // compiler does not vectorise: GELU was scalar.)
    let n = unsafe { n.to_int_unchecked::<i32>() };
    p * f32::from_bits(((n + 127) as u32) << 23)
}

/// The builds for x86-64: the bodies above under `#[target_feature]`.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{gelu, softmax_rows_body};

    /// [`super::gelu_in_place`], compiled for AVX-512.
    #[target_feature(enable = "avx512f")]
    pub(super) fn gelu_in_place_avx512(xs: &mut [f32]) {
        for x in xs {
            *x = gelu(*x);
        }
    }

    /// [`super::softmax_rows`], compiled for AVX-512.
    #[target_feature(enable = "avx512f")]
    pub(super) fn softmax_rows_avx512(
        xs: &mut [f32],
        len: usize,
        scale: f32,
        mask: Option<&[f32]>,
    ) {
        softmax_rows_body(xs, len, scale, mask)
    }

    /// [`super::gelu_in_place`], compiled for AVX2 + FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn gelu_in_place_avx2(xs: &mut [f32]) {
        for x in xs {
            *x = gelu(*x);
        }
    }

    /// [`super::softmax_rows`], compiled for AVX2 + FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn softmax_rows_avx2(xs: &mut [f32], len: usize, scale: f32, mask: Option<&[f32]>) {
        softmax_rows_body(xs, len, scale, mask)
    }
}

/// Off x86-64 only the baseline runs (no [`Features`] there): these stand in for the x86
/// builds and are never called.
#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    pub(super) use super::gelu_in_place_body as gelu_in_place_avx512;
    pub(super) use super::gelu_in_place_body as gelu_in_place_avx2;
    pub(super) use super::softmax_rows_body as softmax_rows_avx512;
    pub(super) use super::softmax_rows_body as softmax_rows_avx2;
}
