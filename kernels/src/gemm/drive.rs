//! The loop every GEMM runs: over panels of columns (in parallel), blocks of k and
//! register tiles of rows ([`Tile`]), each tile through the kernel's tile function
//! ([`Tiles`]), each finished tile's epilogue while it is in L1.

use rayon::prelude::*;

use super::int8::{self, Pair, Quad};
use super::pack::{advise_huge_pages, PackedWeight};
use super::table::Tiles;
use super::{Epilogue, Kernel, KC, MR, NR};
use crate::activations::gelu_in_place;

/// The loop over panels (in parallel), k blocks and tiles of rows, for any format.
pub(crate) fn drive<E: Element>(
    kernel: Kernel,
    rows: usize,
    w: &PackedWeight,
    data: &[E],
    a: &[E],
    dequant: Option<&int8::Dequant>,
    epilogue: Epilogue,
) -> Vec<f32> {
    let tile_fn = E::tile_of(kernel.info().tiles).expect("a kernel of the weight's format");
    let n = w.n;
    let units = data.len() / (n.div_ceil(NR) * NR);
    // Not zeroed: the first k block of every tile writes its part (bias + sums).
    let mut y: Vec<f32> = Vec::with_capacity(rows * n);
    advise_huge_pages(&mut y);
    let out = OutPtr(y.as_mut_ptr());
    (0..n.div_ceil(NR)).into_par_iter().for_each(|j| {
        let cols = NR.min(n - j * NR);
        let panel = &data[j * units * NR..(j + 1) * units * NR];
        let bias = &w.bias[j * NR..(j + 1) * NR];
        for p0 in (0..units).step_by(KC) {
            let kc = KC.min(units - p0);
            let b = &panel[p0 * NR..(p0 + kc) * NR];
            for i0 in (0..rows).step_by(MR) {
                let tile = Tile {
                    rows: MR.min(rows - i0),
                    a: &a[(i0 * units + p0 * MR)..(i0 * units + (p0 + kc) * MR)],
                    b,
                    init: (p0 == 0).then_some(bias),
                    // SAFETY: i0 < rows and j·NR < n, so the offset (row i0, column j·NR
                    // of y, rows × n) is inside `y`'s allocation (its capacity); this task
                    // alone writes columns j·NR..j·NR + cols, and `y` outlives the tasks.
                    c: unsafe { out.get().add(i0 * n + j * NR) },
                    ldc: n,
                    cols,
                };
                // SAFETY: `c` is valid for the tile's rows (i0 + rows ≤ `rows`) of `cols`
                // floats (j·NR + cols ≤ n) n apart: inside `y`'s capacity, f32-aligned,
                // touched by this task (panel j) alone; where `init` is `None` (p0 > 0) this
                // tile's earlier blocks stored them. The CPU runs `kernel`: `matmul_rows`,
                // the only caller (also through `int8::matmul`), asserted `runs_here`.
                unsafe { tile.run(tile_fn) };
                if p0 + kc == units && (dequant.is_some() || epilogue != Epilogue::None) {
                    for r in 0..tile.rows {
                        // SAFETY: as for the tile: row i0 + r < rows, columns j·NR..j·NR +
                        // cols ≤ n of `y`, f32-aligned, just written by the tile's last
                        // block, this task's alone, and no other reference to them lives.
                        let row =
                            unsafe { std::slice::from_raw_parts_mut(tile.c.add(r * n), cols) };
                        if let Some(dequant) = dequant {
                            dequant.apply(i0 + r, j * NR, row);
                        }
                        apply_epilogue(kernel, epilogue, (i0 + r) * n + j * NR, row);
                    }
                }
            }
        }
    });
    // SAFETY: every element is written: the panels cover the n columns, the tiles the
    // rows, and each tile's first block (p0 = 0) stores bias + sums before the later
    // blocks read them back.
    unsafe { y.set_len(rows * n) };
    y
}

/// `epilogue` on `row`, outputs of `y` from element `at` of it (row-major, rows × n): the
/// residual's values at the same place.
pub(crate) fn apply_epilogue(kernel: Kernel, epilogue: Epilogue, at: usize, row: &mut [f32]) {
    match epilogue {
        Epilogue::Gelu => gelu_in_place(kernel, row),
        Epilogue::Residual(residual) => {
            let end = at + row.len();
            for (y, x) in row.iter_mut().zip(&residual[at..end]) {
                *y += x;
            }
        }
        Epilogue::None => {}
    }
}

/// An output buffer shared by tasks that write disjoint parts of it: `drive`'s column
/// panels, attention's heads (qseek's `model::ops`).
pub struct OutPtr(pub *mut f32);
// SAFETY: it is only a pointer; the unsafe code that writes through it makes each task
// write disjoint elements, of a buffer that outlives the tasks (`drive`: panel j's
// columns; `ops`: a head's columns of a batch's rows), and no one reads them meanwhile.
unsafe impl Sync for OutPtr {}
impl OutPtr {
    /// A method, so that closures capture the `Sync` wrapper and not the raw pointer.
    pub fn get(&self) -> *mut f32 {
        self.0
    }
}

/// One register tile: `rows` (≤ [`MR`]) rows × `cols` (≤ [`NR`]) columns of `y`, over
/// one block of `b.len() / NR` units of k.
pub(crate) struct Tile<'a, E> {
    pub(crate) rows: usize,
    /// `x`'s units in this tile and block: unit `p`, row `r` at `a[p · MR + r]`
    /// ([`pack_rows`](super::pack::pack_rows)).
    pub(crate) a: &'a [E],
    /// The panel's units for this block: unit `p`, column `c` at `b[p · NR + c]`.
    pub(crate) b: &'a [E],
    /// The bias (the first block), or `None`: add to what `c` holds.
    pub(crate) init: Option<&'a [f32]>,
    /// `y` at the tile's first row and column; row `r` at `c + r · ldc`.
    pub(crate) c: *mut f32,
    pub(crate) ldc: usize,
    pub(crate) cols: usize,
}

/// A unit of a [`Format`](super::Format): `u32` (a pair of bf16), `f32`, or a [`Quad`] or
/// [`Pair`] of int8 codes.
pub(crate) trait Element: Copy + Default + Send + Sync {
    /// The kernel's tile function, where it reads this element (`None`: another format).
    fn tile_of(tiles: Tiles) -> Option<unsafe fn(&Tile<Self>)>;
    /// The sum of products of one row and column over the tile's block, added to `acc`:
    /// the portable kernel's inner loop.
    fn dot(acc: f32, a: Self, b: Self) -> f32;
}

impl Element for u32 {
    fn tile_of(tiles: Tiles) -> Option<unsafe fn(&Tile<Self>)> {
        match tiles {
            Tiles::Bf16 { tile, .. } => Some(tile),
            _ => None,
        }
    }

    /// The high product then the low one, as Intel documents `vdpbf16ps` (which may
    /// round differently, and flushes denormals).
    fn dot(acc: f32, a: u32, b: u32) -> f32 {
        let lo = |u: u32| f32::from_bits(u << 16);
        let hi = |u: u32| f32::from_bits(u & 0xffff_0000);
        let acc = acc + hi(a) * hi(b);
        acc + lo(a) * lo(b)
    }
}

impl Element for Quad {
    /// Int8's quads, or int7's (the same layout).
    fn tile_of(tiles: Tiles) -> Option<unsafe fn(&Tile<Self>)> {
        match tiles {
            Tiles::Int8(tile) | Tiles::Int7(tile) => Some(tile),
            _ => None,
        }
    }

    /// The four products of `a`'s bytes (unsigned) by `b`'s (signed): what one lane of
    /// `vpdpbusd` adds (exactly; here rounded to f32 once per unit).
    fn dot(acc: f32, a: Quad, b: Quad) -> f32 {
        let sum: i32 = (0..4)
            .map(|j| i32::from((a.0 >> (8 * j)) as u8) * i32::from((b.0 >> (8 * j)) as u8 as i8))
            .sum();
        acc + sum as f32
    }
}

impl Element for Pair {
    fn tile_of(tiles: Tiles) -> Option<unsafe fn(&Tile<Self>)> {
        match tiles {
            Tiles::Int8Pairs(tile) => Some(tile),
            _ => None,
        }
    }

    /// The two products of `a`'s halves by `b`'s (i16): what one lane of `vpmaddwd`
    /// gives (exactly; here rounded to f32 once per unit).
    fn dot(acc: f32, a: Pair, b: Pair) -> f32 {
        let sum: i32 = (0..2)
            .map(|j| i32::from((a.0 >> (16 * j)) as i16) * i32::from((b.0 >> (16 * j)) as i16))
            .sum();
        acc + sum as f32
    }
}

impl Element for f32 {
    fn tile_of(tiles: Tiles) -> Option<unsafe fn(&Tile<Self>)> {
        match tiles {
            Tiles::F32(tile) => Some(tile),
            _ => None,
        }
    }

    fn dot(acc: f32, a: f32, b: f32) -> f32 {
        acc + a * b
    }
}

impl<E: Element> Tile<'_, E> {
    /// Runs `tile` (a kernel's tile function of this element, [`Tiles`]) on this tile.
    ///
    /// # Safety
    /// `c` must be valid for `rows` rows of `cols` floats `ldc` apart (f32-aligned),
    /// initialised where `init` is `None`, and read or written by no one else meanwhile;
    /// the CPU must run the kernel whose function `tile` is ([`Kernel::runs_here`]).
    unsafe fn run(&self, tile: unsafe fn(&Tile<E>)) {
        assert!(self.rows <= MR && self.cols <= NR && self.b.len().is_multiple_of(NR));
        assert_eq!(
            self.a.len() / MR,
            self.b.len() / NR,
            "a and b cover other k"
        );
        // The SIMD kernels also run one row when `rows` is 0, and read NR bias values.
        assert!(self.rows > 0 && self.init.is_none_or(|bias| bias.len() >= NR));
        // SAFETY: this fn's contract, with the asserts above: the tile's bounds that the
        // kernels rely on (`x86/mod.rs`, at the top), on a CPU that runs the kernel.
        unsafe { tile(self) };
    }
}

/// The reference kernel: any CPU.
///
/// # Safety
/// As [`Tile::run`].
pub(crate) unsafe fn portable<E: Element>(t: &Tile<E>) {
    for r in 0..t.rows {
        for col in 0..t.cols {
            // SAFETY: r < rows and col < cols: an f32 of the tile's rows, which this
            // fn's contract lets it read (initialised when `init` is `None`) and write;
            // aligned.
            let c = unsafe { t.c.add(r * t.ldc + col) };
            // SAFETY: as above.
            let mut acc = t.init.map_or_else(|| unsafe { *c }, |bias| bias[col]);
            for (p, a) in t.b.chunks_exact(NR).zip(t.a.chunks_exact(MR)) {
                acc = E::dot(acc, a[r], p[col]);
            }
            // SAFETY: as above.
            unsafe { *c = acc };
        }
    }
}
