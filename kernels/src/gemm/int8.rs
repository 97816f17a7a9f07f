//! The int8 formats ([`Format::Int8`](super::Format::Int8),
//! [`Format::Int8Pairs`](super::Format::Int8Pairs) and
//! [`Format::Int7`](super::Format::Int7)): weights rounded to int8 (or 7 bits) with one
//! scale per output column, each row of `x` rounded to int8 with one scale per row at each
//! call, the products of the codes summed exactly in i32, then scaled back to f32.
//!
//! Int8's codes come in two layouts ([`Unit`]): [`Quad`]s of four bytes for `vpdpbusd`
//! (VNNI: four u8 × i8 products per lane), and [`Pair`]s of two codes widened to i16 for
//! `vpmaddwd` (AVX2 without VNNI: two i16 × i16 products per lane, exact). AVX2's byte
//! product, `vpmaddubsw`, sums two u8 × i8 products in i16, which int8's codes can
//! saturate (2 · 255 · 127 > 2¹⁵); [`Format::Int7`](super::Format::Int7) is the quads'
//! layout with the weights' codes in [-64, 64] ([`WEIGHT_LEVELS_INT7`]: twice the step),
//! whose two products sum to at most 2 · 255 · 64 < 2¹⁵, so that its sums are exact too.
//!
//! `vpdpbusd` multiplies unsigned bytes by signed ones, so a row's codes `q ∈ [-127, 127]`
//! are stored as `q + 128` (in every layout, which then sum the same integers); the extra
//! `128 · Σ_k w_q` of each column is subtracted afterwards ([`Packed::offsets`]). The sums
//! are exact (a block of 1024 units sums at most 4096 products of 255 × 127 < 2³¹); only
//! the two roundings give precision up.

use rayon::prelude::*;

use super::drive::{drive, Element};
use super::pack::{pack_rows, padded_bias, PackedWeight};
use super::{Epilogue, Kernel, Rows, NR};

/// Four int8 values of k (a weight column's codes, or a row's codes + 128 as u8), low
/// byte first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(transparent)]
pub(crate) struct Quad(pub(crate) u32);

/// Two int8 values of k widened to i16 (a weight column's codes, sign-extended, or a
/// row's codes + 128), the lower k in the low half.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(transparent)]
pub(crate) struct Pair(pub(crate) u32);

/// A unit of k of an int8 format: how its codes are laid out.
pub(crate) trait Unit: Element {
    /// Values of k per unit.
    const K: usize;
    /// The unit of a weight column's codes (`K` of them).
    fn weights(codes: &[i8]) -> Self;
    /// A row's units: `out[p]` holds `code(row[K·p + j]) + 128` for each `j` (128, a
    /// zero, past the row's end).
    fn row(row: &[f32], inv_step: f32, out: &mut [Self]);
}

impl Unit for Quad {
    const K: usize = 4;

    fn weights(codes: &[i8]) -> Self {
        Quad(u32::from_le_bytes(std::array::from_fn(|j| codes[j] as u8)))
    }

    fn row(row: &[f32], inv: f32, out: &mut [Self]) {
        let byte = |x: f32| (code(x, inv) + 128) as u32;
        let whole = row.len() / 4;
        for (q, x) in out.iter_mut().zip(row.chunks_exact(4)) {
            *q = Quad(byte(x[0]) | byte(x[1]) << 8 | byte(x[2]) << 16 | byte(x[3]) << 24);
        }
        // The last values, then zeros (codes of 128).
        for (p, q) in out.iter_mut().enumerate().skip(whole) {
            *q = Quad(u32::from_le_bytes(std::array::from_fn(|j| {
                row.get(4 * p + j).map_or(128, |&x| byte(x) as u8)
            })));
        }
    }
}

impl Unit for Pair {
    const K: usize = 2;

    fn weights(codes: &[i8]) -> Self {
        Pair(u32::from(codes[0] as u16) | u32::from(codes[1] as u16) << 16)
    }

    fn row(row: &[f32], inv: f32, out: &mut [Self]) {
        let half = |x: f32| (code(x, inv) + 128) as u32;
        let whole = row.len() / 2;
        for (q, x) in out.iter_mut().zip(row.chunks_exact(2)) {
            *q = Pair(half(x[0]) | half(x[1]) << 16);
        }
        if let Some(q) = out.get_mut(whole) {
            *q = Pair(row.get(2 * whole).map_or(128, |&x| half(x)) | 128 << 16);
        }
    }
}

/// A weight in an int8 format, beside its panels of units.
pub(crate) struct Packed<E> {
    pub(crate) units: Vec<E>,
    /// Per column (padded to whole panels): the weight's scale.
    scales: Vec<f32>,
    /// Per column: `128 · Σ_k w_q`, what the +128 of the row codes adds to its sums.
    offsets: Vec<f32>,
    /// Per column: the bias (zero without one).
    bias: Vec<f32>,
}

/// The largest weight code of [`Format::Int8`](super::Format::Int8) and
/// [`Format::Int8Pairs`](super::Format::Int8Pairs), and of every row's codes.
pub(crate) const LEVELS: f32 = 127.0;
/// The largest weight code of [`Format::Int7`](super::Format::Int7).
pub(crate) const WEIGHT_LEVELS_INT7: f32 = 64.0;

/// `|x|`'s maximum over `levels`: the step of a row (or column) of codes in
/// [-`levels`, `levels`]; 1 for a zero row, whose codes are then all 0.
fn scale(xs: &[f32], levels: f32) -> f32 {
    // 16 running maxima, then theirs: the same maximum, in a loop that vectorises.
    let mut lanes = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(x.abs());
        }
    }
    let max = tail.iter().chain(&lanes).fold(0f32, |m, x| m.max(x.abs()));
    if max > 0.0 {
        max / levels
    } else {
        1.0
    }
}

/// `x / step` rounded to the nearest integer (ties to even) in [-127, 127] (a NaN gives
/// -127). The magic constant rounds without a libm call, so that the loops over it
/// vectorise.
#[inline(always)]
fn code(x: f32, inv_step: f32) -> i32 {
    // 1.5 · 2²³: adding it rounds to an integer.
    const MAGIC: f32 = 12_582_912.0;
    // `max` and `min` return the other operand for a NaN, so `v` is a number in range
    // (`clamp` would keep the NaN).
    #[allow(clippy::manual_clamp)]
    let v = (x * inv_step).max(-127.0).min(127.0);
    // SAFETY: `v` is a number in [-127, 127] (not NaN: see above), so `v + MAGIC - MAGIC`
    // is an integer in [-127, 127]: finite, and within i32's range.
    unsafe { ((v + MAGIC) - MAGIC).to_int_unchecked::<i32>() }
}

/// Packs the weight (`w`'s rows are its n output columns) and `bias` in the layout of
/// `E`, each column's codes in [-`levels`, `levels`] ([`LEVELS`] or
/// [`WEIGHT_LEVELS_INT7`]).
pub(crate) fn pack_weight<E: Unit>(w: Rows, bias: Option<&[f32]>, levels: f32) -> Packed<E> {
    let (n, k) = (w.rows, w.k);
    let units = k.div_ceil(E::K);
    let padded = n.div_ceil(NR) * NR;
    let mut scales = vec![1f32; padded];
    let mut offsets = vec![0f32; padded];
    let mut codes = vec![0i8; n * units * E::K];
    for (c, (scale_c, (offset, codes))) in scales
        .iter_mut()
        .zip(offsets.iter_mut().zip(codes.chunks_exact_mut(units * E::K)))
        .enumerate()
    {
        let row = w.row(c);
        *scale_c = scale(row, levels);
        let inv = 1.0 / *scale_c;
        let mut sum = 0i64;
        for (q, &x) in codes.iter_mut().zip(row) {
            *q = code(x, inv) as i8;
            sum += i64::from(*q);
        }
        *offset = 128.0 * sum as f32;
    }
    let mut packed = vec![E::default(); padded * units];
    let per_column = units * E::K;
    packed
        .par_chunks_mut(units * NR)
        .enumerate()
        .for_each(|(j, panel)| {
            for c in 0..NR.min(n - j * NR) {
                let codes = &codes[(j * NR + c) * per_column..(j * NR + c + 1) * per_column];
                for (p, unit) in codes.chunks_exact(E::K).enumerate() {
                    panel[p * NR + c] = E::weights(unit);
                }
            }
        });
    Packed {
        units: packed,
        scales,
        offsets,
        bias: padded_bias(n, bias),
    }
}

/// `x Wᵀ + b` in the int8 format of `E`, then `epilogue`.
pub(crate) fn matmul<E: Unit>(
    kernel: Kernel,
    x: Rows,
    w: &PackedWeight,
    packed: &Packed<E>,
    epilogue: Epilogue,
) -> Vec<f32> {
    let steps: Vec<f32> = (0..x.rows)
        .into_par_iter()
        .map(|r| scale(x.row(r), LEVELS))
        .collect();
    let a = pack_rows(x, w.k.div_ceil(E::K), |r, row, out| {
        E::row(row, 1.0 / steps[r], out)
    });
    // The tiles sum codes (w.bias is zero for this format); each finished tile is scaled
    // back, gets the bias, then the epilogue, while it is in L1.
    let dequant = Dequant {
        steps: &steps,
        scales: &packed.scales,
        offsets: &packed.offsets,
        bias: &packed.bias,
    };
    drive(
        kernel,
        x.rows,
        w,
        &packed.units,
        &a,
        Some(&dequant),
        epilogue,
    )
}

/// What turns a finished tile's sums of codes back into `x Wᵀ + b`.
pub(crate) struct Dequant<'a> {
    /// Each row's step.
    steps: &'a [f32],
    /// The weight's [`Packed::scales`], [`Packed::offsets`] and [`Packed::bias`].
    scales: &'a [f32],
    offsets: &'a [f32],
    bias: &'a [f32],
}

impl Dequant<'_> {
    /// Row `row`'s outputs from column `first` on, in place.
    pub(crate) fn apply(&self, row: usize, first: usize, ys: &mut [f32]) {
        let step = self.steps[row];
        let end = first + ys.len();
        for (((y, scale), offset), bias) in ys
            .iter_mut()
            .zip(&self.scales[first..end])
            .zip(&self.offsets[first..end])
            .zip(&self.bias[first..end])
        {
            *y = step * scale * (*y - offset) + bias;
        }
    }
}

/// The weight's codes dequantized (n × k, row-major): what the int8 kernels multiply.
#[cfg(test)]
pub(crate) fn dequantized_weight(packed: &Packed<Quad>, n: usize, k: usize) -> Vec<f64> {
    let units = k.div_ceil(4);
    let mut out = vec![0f64; n * k];
    for c in 0..n {
        let (j, col) = (c / NR, c % NR);
        for i in 0..k {
            let quad = packed.units[j * units * NR + (i / 4) * NR + col].0;
            let q = (quad >> (8 * (i % 4))) as u8 as i8;
            out[c * k + i] = f64::from(q) * f64::from(packed.scales[c]);
        }
    }
    out
}

/// A row dequantized: what the int8 kernels multiply.
#[cfg(test)]
pub(crate) fn dequantized_row(row: &[f32]) -> Vec<f64> {
    let step = scale(row, LEVELS);
    row.iter()
        .map(|&x| f64::from(code(x, 1.0 / step)) * f64::from(step))
        .collect()
}
