//! Packing: a weight once ([`PackedWeight`], panels of [`NR`] columns in its
//! [`Format`]'s units), the rows of `x` at each call ([`pack_rows`]: tiles of [`MR`]
//! rows), and the huge-page advice for the large buffers both fill.

use rayon::prelude::*;

use super::int8::{self, Pair, Quad};
use super::table::Tiles;
use super::{Format, Kernel, Rows, MR, NR};

/// A weight (n × k, as `nn.Linear` stores it) and its bias, packed for [`matmul_wt`](super::matmul_wt) in
/// one [`Format`] (see the module doc for the layout).
pub struct PackedWeight {
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) data: Data,
    /// The bias in f32, zero-padded to `panels × NR`.
    pub(crate) bias: Vec<f32>,
}

/// `panels × units × NR` values.
pub(crate) enum Data {
    /// Pairs of bf16.
    Bf16(Vec<u32>),
    F32(Vec<f32>),
    Int8(int8::Packed<Quad>),
    Int8Pairs(int8::Packed<Pair>),
    Int7(int8::Packed<Quad>),
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedWeight({:?}, {} × {})",
            self.format(),
            self.n,
            self.k
        )
    }
}

/// `bias` (n values; zeros without one), zero-padded to whole panels.
pub(crate) fn padded_bias(n: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let mut padded = vec![0f32; n.div_ceil(NR) * NR];
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias is not n");
        padded[..n].copy_from_slice(b);
    }
    padded
}

/// The bf16 bits of `x`, rounded to nearest even: `half::bf16::from_f32`'s (a NaN stays
/// a quiet NaN), without its branches, so that loops over it vectorise.
#[inline(always)]
pub(crate) fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    let rounded = (b + 0x7FFF + ((b >> 16) & 1)) >> 16;
    if x.is_nan() {
        (b >> 16) | 0x40
    } else {
        rounded
    }
}

/// The bf16 unit `p` of a row: its values `2p` and `2p + 1` (zero past the end).
pub(crate) fn bf16_pair(row: &[f32], p: usize) -> u32 {
    let hi = row.get(2 * p + 1).map_or(0, |&x| bf16_bits(x));
    bf16_bits(row[2 * p]) | hi << 16
}

impl PackedWeight {
    /// Packs `w` (n × k, row-major) and `bias` (n) in `format` (bf16 rounds the weights).
    pub fn new(format: Format, w: &[f32], bias: Option<&[f32]>, k: usize) -> Self {
        assert!(k > 0 && w.len().is_multiple_of(k), "w is not n × k");
        Self::from_rows(format, Rows::new(w, w.len() / k, k), bias)
    }

    /// Packs the weight whose rows (output features) are `w`'s rows, and `bias` (n), in
    /// `format`.
    pub fn from_rows(format: Format, w: Rows, bias: Option<&[f32]>) -> Self {
        Self::from_rows_with_exact_inputs(format, w, bias, &[])
    }

    /// [`new`](Self::new), where the int8 formats keep the weight's columns of the
    /// `exact` inputs (channels of `x`, each < k) in f32 beside the codes: those channels
    /// of every row are multiplied in f32, never rounded to a code. For the channels a
    /// caller knows to be large in every row (a layer norm's outputs whose weight is
    /// 10–100× the others'), which would otherwise set every row's step. The float
    /// formats ignore it.
    pub fn with_exact_inputs(
        format: Format,
        w: &[f32],
        bias: Option<&[f32]>,
        k: usize,
        exact: &[usize],
    ) -> Self {
        assert!(k > 0 && w.len().is_multiple_of(k), "w is not n × k");
        Self::from_rows_with_exact_inputs(format, Rows::new(w, w.len() / k, k), bias, exact)
    }

    /// This weight, where an int8 format codes each row of `x` twice: its codes, then
    /// the codes of what they left out (a step about 1/254 of the first), each pass a
    /// GEMM of its own: about 15 bits per value of `x` at twice the cost. For a layer
    /// whose rows mix blocks of very different sizes (attention's heads side by side,
    /// a sharp head's output beside a diffuse one's), where one step per row leaves the
    /// small blocks a few codes. The float formats ignore it.
    pub fn with_fine_rows(mut self) -> Self {
        match &mut self.data {
            Data::Int8(p) | Data::Int7(p) => p.fine_rows = true,
            Data::Int8Pairs(p) => p.fine_rows = true,
            Data::Bf16(_) | Data::F32(_) => {}
        }
        self
    }

    fn from_rows_with_exact_inputs(
        format: Format,
        w: Rows,
        bias: Option<&[f32]>,
        exact: &[usize],
    ) -> Self {
        let (n, k) = (w.rows, w.k);
        assert!(k > 0, "a weight of no inputs");
        let data = match format {
            Format::Bf16 => Data::Bf16(pack_panels(w, format.units(k), bf16_pair)),
            Format::F32 => Data::F32(pack_panels(w, k, |row, p| row[p])),
            // The bias is applied after the scaling (`int8::matmul`); the tiles start
            // from zero.
            Format::Int8 => Data::Int8(int8::pack_weight(w, bias, int8::LEVELS, exact)),
            Format::Int8Pairs => Data::Int8Pairs(int8::pack_weight(w, bias, int8::LEVELS, exact)),
            Format::Int7 => Data::Int7(int8::pack_weight(w, bias, int8::WEIGHT_LEVELS_INT7, exact)),
        };
        let tiles_start_from = match format {
            Format::Bf16 | Format::F32 => bias,
            Format::Int8 | Format::Int8Pairs | Format::Int7 => None,
        };
        Self::with_bias(n, k, data, tiles_start_from)
    }

    /// Packs the weight `wtᵀ` (no bias) in `format`: `wt`'s rows are the weight's
    /// inputs (k = `wt`'s row count, n = its width). `x wtᵀᵀ = x wt`: attention's
    /// probabilities times the values, with the values read where they are.
    pub fn from_columns(format: Format, wt: Rows) -> Self {
        let (n, k) = (wt.k, wt.rows);
        assert!(k > 0, "a weight of no inputs");
        let data = match format {
            Format::Bf16 => Data::Bf16(pack_panels_transposed(
                n,
                format.units(k),
                |p, columns, out| {
                    let lo = &wt.row(2 * p)[columns.clone()];
                    if 2 * p + 1 < k {
                        let hi = &wt.row(2 * p + 1)[columns];
                        for ((o, &a), &b) in out.iter_mut().zip(lo).zip(hi) {
                            *o = bf16_bits(a) | bf16_bits(b) << 16;
                        }
                    } else {
                        for (o, &a) in out.iter_mut().zip(lo) {
                            *o = bf16_bits(a);
                        }
                    }
                },
            )),
            Format::F32 => Data::F32(pack_panels_transposed(n, k, |p, columns, out| {
                out.copy_from_slice(&wt.row(p)[columns]);
            })),
            Format::Int8 | Format::Int8Pairs | Format::Int7 => {
                // Each column's scale needs the whole column: transpose first.
                let w: Vec<f32> = (0..n)
                    .flat_map(|c| (0..k).map(move |p| wt.row(p)[c]))
                    .collect();
                return Self::from_rows(format, Rows::new(&w, n, k), None);
            }
        };
        Self::with_bias(n, k, data, None)
    }

    fn with_bias(n: usize, k: usize, data: Data, bias: Option<&[f32]>) -> Self {
        Self {
            n,
            k,
            data,
            bias: padded_bias(n, bias),
        }
    }

    /// Output features (the weight's rows).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features (the weight's columns).
    pub fn k(&self) -> usize {
        self.k
    }

    /// How the weights are stored.
    pub fn format(&self) -> Format {
        match self.data {
            Data::Bf16(_) => Format::Bf16,
            Data::F32(_) => Format::F32,
            Data::Int8(_) => Format::Int8,
            Data::Int8Pairs(_) => Format::Int8Pairs,
            Data::Int7(_) => Format::Int7,
        }
    }
}

/// `w`'s rows (n × k) as panels of [`NR`] columns, `units` per panel row: unit `p` of
/// column `c` of panel `j` is `unit(row j·NR + c, p)`; columns past `n` are zero.
fn pack_panels<E: Copy + Default + Send>(
    w: Rows,
    units: usize,
    unit: impl Fn(&[f32], usize) -> E + Sync,
) -> Vec<E> {
    let n = w.rows;
    let mut data = vec![E::default(); n.div_ceil(NR) * units * NR];
    data.par_chunks_mut(units * NR)
        .enumerate()
        .for_each(|(j, panel)| {
            for c in 0..NR.min(n - j * NR) {
                let row = w.row(j * NR + c);
                for p in 0..units {
                    panel[p * NR + c] = unit(row, p);
                }
            }
        });
    data
}

/// [`pack_panels`] of a weight of `n` columns given by its transpose: `fill(p, columns,
/// out)` writes unit `p` of those columns (a range of at most [`NR`]) into `out`, from
/// consecutive values of the transpose's rows of unit `p`.
fn pack_panels_transposed<E: Copy + Default + Send>(
    n: usize,
    units: usize,
    fill: impl Fn(usize, std::ops::Range<usize>, &mut [E]) + Sync,
) -> Vec<E> {
    let mut data = vec![E::default(); n.div_ceil(NR) * units * NR];
    data.par_chunks_mut(units * NR)
        .enumerate()
        .for_each(|(j, panel)| {
            let columns = j * NR..n.min((j + 1) * NR);
            for (p, out) in panel.chunks_exact_mut(NR).enumerate() {
                fill(p, columns.clone(), &mut out[..columns.len()]);
            }
        });
    data
}

/// A row of `x` as bf16 pairs (⌈k/2⌉, an odd k padded with zero), rounded to nearest
/// even, by `kernel` (a bf16 kernel this CPU runs).
pub(crate) fn to_bf16_pairs(kernel: Kernel, row: &[f32], out: &mut [u32]) {
    let info = kernel.info();
    let Tiles::Bf16 { round, .. } = info.tiles else {
        panic!("{kernel:?} is no bf16 kernel");
    };
    assert!(
        info.runs_here(),
        "this CPU cannot run the {kernel:?} kernel"
    );
    // SAFETY: the CPU runs the kernel (asserted), whose `round` needs nothing else: it
    // takes slices, and checks `out`'s length against the row.
    unsafe { round(row, out) }
}

/// [`to_bf16_pairs`] in plain Rust: the portable kernel's, any CPU.
pub(crate) fn bf16_row(row: &[f32], out: &mut [u32]) {
    out.iter_mut()
        .enumerate()
        .for_each(|(p, o)| *o = bf16_pair(row, p));
}

/// The rows of `x` (rows × k) as units (`convert(i, row, out)` writes row `i`'s), in tiles of [`MR`]
/// rows: tile `t`, unit `p`, row `r` at `(t · units + p) · MR + r` (rows past the last are
/// zero). A tile's units for a block of k are then one sequential stream.
pub(crate) fn pack_rows<E: Copy + Default + Send + Sync>(
    x: Rows,
    units: usize,
    convert: impl Fn(usize, &[f32], &mut [E]) + Sync,
) -> Vec<E> {
    let len = x.rows.div_ceil(MR) * MR * units;
    // Not zeroed first: every element is written below, once (a memset of the whole
    // buffer was ~0.7% of a batched text pass).
    let mut a: Vec<E> = Vec::with_capacity(len);
    advise_huge_pages(&mut a);
    a.spare_capacity_mut()[..len]
        .par_chunks_mut(MR * units)
        .enumerate()
        .for_each_init(
            || vec![E::default(); MR * units],
            |converted, (t, tile)| {
                // The tile's rows, converted, one after the other (zero past the last).
                let n = MR.min(x.rows - t * MR);
                for (r, row) in converted.chunks_exact_mut(units).take(n).enumerate() {
                    convert(t * MR + r, x.row(t * MR + r), row);
                }
                converted[n * units..].fill(E::default());
                // Then interleaved, unit by unit: one sequential pass over the tile.
                for (p, out) in tile.chunks_exact_mut(MR).enumerate() {
                    for (r, unit) in out.iter_mut().enumerate() {
                        unit.write(converted[r * units + p]);
                    }
                }
            },
        );
    // SAFETY: the tiles cover `len` (⌈rows / MR⌉ chunks of MR · units, one per tile),
    // and each tile writes all its MR · units elements.
    unsafe { a.set_len(len) };
    a
}

/// Asks Linux to back a large buffer, before it is first written, with 2 MiB pages where
/// it has transparent huge pages (`madvise` mode, the common default; a no-op elsewhere).
///
/// glibc gives every allocation of 32 MiB or more its own mapping and returns it at
/// `free`, so such a buffer is new memory at every call: at batch 8 the ViT's qkv and
/// fc1 outputs (35 and 50 MB, every layer) were faulted in 4 KiB at a time while the
/// tiles wrote them, and those two GEMMs ran at ~62% of int8's peak where proj and fc2
/// (11.6 MB outputs, reused heap memory) ran at ~86% (`examples/parts.rs`). Smaller
/// buffers are left alone: they come from the heap, whose mapping this would split.
pub(crate) fn advise_huge_pages<T>(buffer: &mut Vec<T>) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 2 << 20;
        let bytes = buffer.capacity() * std::mem::size_of::<T>();
        if bytes < 16 * PAGE {
            return;
        }
        let start = buffer.as_mut_ptr() as usize;
        let (first, end) = (start.next_multiple_of(PAGE), (start + bytes) / PAGE * PAGE);
        // SAFETY: [first, end) lies within the buffer's allocation, which is ours; the
        // advice changes how its pages are backed, not what they hold. An error (no
        // transparent huge pages) leaves it as it was.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buffer;
}
