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
//!
//! **Outliers.** One step per row spends the 255 codes on the row's largest value. Trained
//! networks have a few input channels (the layer norms' outputs) at 10–100× the rest, and
//! one step per row would then round every other value of the row to a few codes. So each
//! row is split first ([`split_row`]), the row alone deciding, so that a row's result never
//! depends on the rows beside it: the weight's *exact inputs* (channels the caller names
//! when packing, whose weight columns are kept in f32 beside the codes: the channels a
//! layer norm's own weights make large) and every other value above [`OUTLIER_RMS`] times
//! the row's RMS (at most [`MAX_OUTLIERS`] per row, the largest) are taken out of the
//! codes (coded 0) and the row's step is set by what remains. Each finished tile then adds
//! the taken values' products exactly in f32 (`x · w` with the f32 column of an exact
//! input, or the column's int8 codes for another channel: LLM.int8()'s decomposition, per
//! row). A row without outliers (the common case) is coded as before, bit for bit.

use rayon::prelude::*;

use super::drive::{apply_epilogue, drive, Element};
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
    /// A weight unit's code of k `lane` (< `K`).
    fn code(self, lane: usize) -> i32;
    /// A row's units: `out[p]` holds `code(row[K·p + j]) + 128` for each `j` (128, a
    /// zero, past the row's end).
    fn row(row: &[f32], inv_step: f32, out: &mut [Self]);
}

impl Unit for Quad {
    const K: usize = 4;

    fn code(self, lane: usize) -> i32 {
        i32::from((self.0 >> (8 * lane)) as u8 as i8)
    }

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

    fn code(self, lane: usize) -> i32 {
        i32::from((self.0 >> (16 * lane)) as u16 as i16)
    }

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
    /// Units of k per column (the panels' height).
    units_per_column: usize,
    /// The exact inputs, ascending: channels of `x` whose products use the weight's f32
    /// columns (`exact_weights`) and never the codes.
    exact: Vec<usize>,
    /// Per exact input, its weight column in f32 (padded to whole panels).
    exact_weights: Vec<f32>,
    /// Whether each row is coded twice ([`PackedWeight::with_fine_rows`]): its codes,
    /// then the codes of what they leave out, each pass its own GEMM.
    pub(crate) fine_rows: bool,
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
/// [`WEIGHT_LEVELS_INT7`]), and the f32 columns of the `exact` inputs (channels of `x`,
/// each < k).
pub(crate) fn pack_weight<E: Unit>(
    w: Rows,
    bias: Option<&[f32]>,
    levels: f32,
    exact: &[usize],
) -> Packed<E> {
    let (n, k) = (w.rows, w.k);
    let mut exact = exact.to_vec();
    exact.sort_unstable();
    exact.dedup();
    assert!(exact.last().is_none_or(|&c| c < k), "an exact input past k");
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
    let mut exact_weights = vec![0f32; exact.len() * padded];
    for (column, &c) in exact_weights.chunks_exact_mut(padded).zip(&exact) {
        for (o, x) in column.iter_mut().zip(0..n) {
            *o = w.row(x)[c];
        }
    }
    Packed {
        units: packed,
        units_per_column: units,
        fine_rows: false,
        exact,
        exact_weights,
        scales,
        offsets,
        bias: padded_bias(n, bias),
    }
}

/// A value taken out of a row's codes ([`split_row`]): its channel, the value, and where
/// its weights are: the index of its f32 column among the exact inputs, or
/// [`FROM_CODES`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Outlier {
    channel: u32,
    value: f32,
    exact: u32,
}

impl Outlier {
    /// The channel of `x` it is.
    #[cfg(test)]
    pub(crate) fn channel(&self) -> usize {
        self.channel as usize
    }
}

/// [`Outlier::exact`] of a channel whose products use the weight's codes.
const FROM_CODES: u32 = u32::MAX;

/// A value of a row above this many times the RMS of the row's values (the exact inputs
/// left out) is an outlier. The largest of k Gaussian values is about 3.2 σ at k = 1 408
/// and 3.6 σ at 6 144 (GELU's outputs, skewed, reach about 5.5 RMS): a row of a
/// well-behaved layer has none, and keeps its codes bit for bit. With c values of
/// magnitude A among k (A ≫ the rest), the RMS is about A·√(c/k), so up to k/36 such
/// channels (39 of 1 408) are still found.
pub(crate) const OUTLIER_RMS: f32 = 6.0;
/// At most this many outliers per row besides the exact inputs (the largest ones): the
/// correction costs n multiply-adds each.
pub(crate) const MAX_OUTLIERS: usize = 32;

/// How a row is coded: its step and what is taken out of its codes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RowSplit {
    pub(crate) step: f32,
    pub(crate) outliers: Vec<Outlier>,
}

/// Splits `row`: the `exact` inputs (ascending) and the values above [`OUTLIER_RMS`] ×
/// the RMS of the rest (at most [`MAX_OUTLIERS`], the largest, ties to the lower
/// channel) are taken out; the step is what remains' maximum over [`LEVELS`]. The row
/// alone decides: the same row gives the same split in any batch.
pub(crate) fn split_row(row: &[f32], exact: &[usize]) -> RowSplit {
    // One vectorised pass: the maximum and the sum of squares.
    let mut max_lanes = [0f32; 16];
    let mut sq_lanes = [0f32; 16];
    let chunks = row.chunks_exact(16);
    let tail = chunks.remainder();
    for chunk in chunks {
        for ((m, s), x) in max_lanes.iter_mut().zip(sq_lanes.iter_mut()).zip(chunk) {
            *m = m.max(x.abs());
            *s += x * x;
        }
    }
    let max = tail
        .iter()
        .chain(&max_lanes)
        .fold(0f32, |m, x| m.max(x.abs()));
    let mut sum_sq = sq_lanes.iter().sum::<f32>() + tail.iter().map(|x| x * x).sum::<f32>();
    sum_sq -= exact.iter().map(|&c| row[c] * row[c]).sum::<f32>();
    let rest = row.len() - exact.len();
    let limit = OUTLIER_RMS * (sum_sq.max(0.0) / rest.max(1) as f32).sqrt();
    if exact.is_empty() && max.partial_cmp(&limit) != Some(std::cmp::Ordering::Greater) {
        // No outlier (or a NaN, coded as before): the row's codes as without the split.
        return RowSplit {
            step: if max > 0.0 { max / LEVELS } else { 1.0 },
            outliers: Vec::new(),
        };
    }
    let mut outliers: Vec<Outlier> = Vec::new();
    let mut rest_max = 0f32;
    let mut next_exact = exact.iter().copied().enumerate().peekable();
    for (c, &x) in row.iter().enumerate() {
        if let Some(&(i, e)) = next_exact.peek() {
            if e == c {
                next_exact.next();
                outliers.push(Outlier {
                    channel: c as u32,
                    value: x,
                    exact: i as u32,
                });
                continue;
            }
        }
        if x.abs() > limit {
            outliers.push(Outlier {
                channel: c as u32,
                value: x,
                exact: FROM_CODES,
            });
        } else {
            rest_max = rest_max.max(x.abs());
        }
    }
    let found = outliers.iter().filter(|o| o.exact == FROM_CODES).count();
    if found > MAX_OUTLIERS {
        // Keep the largest: the others are coded with the row.
        let mut dynamic: Vec<Outlier> = outliers
            .iter()
            .copied()
            .filter(|o| o.exact == FROM_CODES)
            .collect();
        dynamic.sort_by(|a, b| {
            b.value
                .abs()
                .total_cmp(&a.value.abs())
                .then(a.channel.cmp(&b.channel))
        });
        for o in &dynamic[MAX_OUTLIERS..] {
            rest_max = rest_max.max(o.value.abs());
        }
        dynamic.truncate(MAX_OUTLIERS);
        outliers.retain(|o| o.exact != FROM_CODES || dynamic.contains(o));
    }
    RowSplit {
        step: if rest_max > 0.0 {
            rest_max / LEVELS
        } else {
            1.0
        },
        outliers,
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
    let splits: Vec<RowSplit> = (0..x.rows)
        .into_par_iter()
        .map(|r| split_row(x.row(r), &packed.exact))
        .collect();
    let steps: Vec<f32> = splits.iter().map(|s| s.step).collect();
    let a = pack_rows(x, w.k.div_ceil(E::K), |r, row, out| {
        let outliers = &splits[r].outliers;
        if outliers.is_empty() {
            E::row(row, 1.0 / steps[r], out)
        } else {
            // The outliers coded 0: their products are added in f32 afterwards.
            let mut rest = row.to_vec();
            for o in outliers {
                rest[o.channel as usize] = 0.0;
            }
            E::row(&rest, 1.0 / steps[r], out)
        }
    });
    // The tiles sum codes (w.bias is zero for this format); each finished tile is scaled
    // back, gets the bias and the outliers' products, then the epilogue, while it is in
    // L1.
    let correct = |row: usize, first: usize, ys: &mut [f32]| {
        add_outliers(packed, &splits[row].outliers, first, ys)
    };
    let dequant = Dequant {
        steps: &steps,
        scales: &packed.scales,
        offsets: &packed.offsets,
        bias: &packed.bias,
        outliers: &correct,
    };
    if !packed.fine_rows {
        return drive(
            kernel,
            x.rows,
            w,
            &packed.units,
            &a,
            Some(&dequant),
            epilogue,
        );
    }
    let mut y = drive(
        kernel,
        x.rows,
        w,
        &packed.units,
        &a,
        Some(&dequant),
        Epilogue::None,
    );
    drop(a);
    // The second pass: what the codes left out of each row (at most half a step each),
    // coded with a step of its own, about 1/254 of the first.
    let (rows, k, n) = (x.rows, w.k, w.n);
    let mut left_out = vec![0f32; rows * k];
    left_out
        .par_chunks_mut(k.max(1))
        .enumerate()
        .for_each(|(r, rest)| {
            let inv = 1.0 / steps[r];
            for (e, &v) in rest.iter_mut().zip(x.row(r)) {
                *e = v - code(v, inv) as f32 * steps[r];
            }
            for o in &splits[r].outliers {
                rest[o.channel as usize] = 0.0;
            }
        });
    let left_out = Rows::new(&left_out, rows, k);
    let steps2: Vec<f32> = (0..rows)
        .into_par_iter()
        .map(|r| scale(left_out.row(r), LEVELS))
        .collect();
    let a2 = pack_rows(left_out, k.div_ceil(E::K), |r, row, out| {
        E::row(row, 1.0 / steps2[r], out)
    });
    let zeros = vec![0f32; packed.bias.len()];
    let dequant2 = Dequant {
        steps: &steps2,
        scales: &packed.scales,
        offsets: &packed.offsets,
        bias: &zeros,
        outliers: &|_, _, _| {},
    };
    let y2 = drive(
        kernel,
        rows,
        w,
        &packed.units,
        &a2,
        Some(&dequant2),
        Epilogue::None,
    );
    y.par_chunks_mut(n)
        .zip(y2.par_chunks(n))
        .enumerate()
        .for_each(|(r, (row, second))| {
            for (a, b) in row.iter_mut().zip(second) {
                *a += b;
            }
            apply_epilogue(kernel, epilogue, r * n, row);
        });
    y
}

/// Adds the products of a row's `outliers` with the weight's columns `first..` (`ys`, in
/// one panel) to `ys`: an exact input's f32 weights, or another channel's codes times
/// their column's scale.
fn add_outliers<E: Unit>(packed: &Packed<E>, outliers: &[Outlier], first: usize, ys: &mut [f32]) {
    let padded = packed.scales.len();
    let end = first + ys.len();
    for o in outliers {
        if o.exact == FROM_CODES {
            let c = o.channel as usize;
            let panel = first / NR * packed.units_per_column * NR;
            let units = &packed.units[panel + c / E::K * NR..][..ys.len()];
            for ((y, unit), scale) in ys.iter_mut().zip(units).zip(&packed.scales[first..end]) {
                *y += o.value * (scale * unit.code(c % E::K) as f32);
            }
        } else {
            let column = &packed.exact_weights[o.exact as usize * padded..][first..end];
            for (y, w) in ys.iter_mut().zip(column) {
                *y += o.value * w;
            }
        }
    }
}

/// What turns a finished tile's sums of codes back into `x Wᵀ + b`.
pub(crate) struct Dequant<'a> {
    /// Each row's step.
    steps: &'a [f32],
    /// The weight's [`Packed::scales`], [`Packed::offsets`] and [`Packed::bias`].
    scales: &'a [f32],
    offsets: &'a [f32],
    bias: &'a [f32],
    /// Adds the row's outliers' products to its outputs from a column on.
    outliers: &'a (dyn Fn(usize, usize, &mut [f32]) + Sync),
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
        (self.outliers)(row, first, ys);
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
pub(crate) fn dequantized_row(row: &[f32], exact: &[usize]) -> Vec<f64> {
    let split = split_row(row, exact);
    let taken = |c: usize| split.outliers.iter().any(|o| o.channel as usize == c);
    row.iter()
        .enumerate()
        .map(|(c, &x)| {
            if taken(c) {
                f64::from(x)
            } else {
                f64::from(code(x, 1.0 / split.step)) * f64::from(split.step)
            }
        })
        .collect()
}
