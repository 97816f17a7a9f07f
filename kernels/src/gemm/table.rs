//! The GEMM kernels, one entry each: what a kernel needs of the CPU, the [`Format`] it
//! reads (its tile function's element), and the build of the activations beside it. A
//! new kernel is a [`Kernel`] variant and its entry here; nothing else dispatches on it.

use super::drive::{portable, Tile};
use super::int8::{Pair, Quad};
use super::pack::bf16_row;
use super::{Format, Kernel};
use crate::activations::{self, Vectors};
use crate::cpu::Features;

/// A kernel: its [`Kernel`] and what runs it.
pub(crate) struct KernelInfo {
    /// The handle this entry is for: entry `i` is `Kernel` `i` (checked at compile time).
    pub(crate) kernel: Kernel,
    /// The name the `QSEEK_*_GEMM` variables give it ([`Kernel::name`]).
    pub(crate) name: &'static str,
    /// Whether a CPU with these features runs it.
    pub(crate) needs: fn(&Features) -> bool,
    /// The build of GELU and softmax its epilogues and callers run.
    pub(crate) vectors: &'static Vectors,
    /// Its tile function, of its format's element.
    pub(crate) tiles: Tiles,
}

/// A kernel's register-tile function (and for bf16, its rounding of `x`'s rows): each
/// [`Tile::run`]'s contract, on a CPU with the entry's [`needs`](KernelInfo::needs).
#[derive(Clone, Copy)]
pub(crate) enum Tiles {
    /// [`Format::Bf16`]: the tile, and a row of `x` rounded to bf16 pairs.
    Bf16 {
        tile: unsafe fn(&Tile<u32>),
        round: unsafe fn(&[f32], &mut [u32]),
    },
    /// [`Format::F32`].
    F32(unsafe fn(&Tile<f32>)),
    /// [`Format::Int8`].
    Int8(unsafe fn(&Tile<Quad>)),
    /// [`Format::Int8Pairs`].
    Int8Pairs(unsafe fn(&Tile<Pair>)),
    /// [`Format::Int7`].
    Int7(unsafe fn(&Tile<Quad>)),
}

impl Tiles {
    pub(crate) fn format(self) -> Format {
        match self {
            Tiles::Bf16 { .. } => Format::Bf16,
            Tiles::F32(_) => Format::F32,
            Tiles::Int8(_) => Format::Int8,
            Tiles::Int8Pairs(_) => Format::Int8Pairs,
            Tiles::Int7(_) => Format::Int7,
        }
    }
}

impl KernelInfo {
    /// Whether this CPU runs it.
    pub(crate) fn runs_here(&self) -> bool {
        (self.needs)(Features::get())
    }
}

/// Every kernel, in [`Kernel`]'s order: within a format, fastest first, its portable
/// reference last; the int8 formats' SIMD kernels before either portable one.
pub(crate) static KERNELS: [KernelInfo; Kernel::COUNT] = [
    KernelInfo {
        kernel: Kernel::Avx512Bf16,
        name: "avx512",
        needs: |f| f.avx512f && f.avx512bf16,
        vectors: &activations::AVX512,
        tiles: Tiles::Bf16 {
            tile: x86::tile_bf16,
            round: x86::to_bf16_row,
        },
    },
    KernelInfo {
        kernel: Kernel::Portable,
        name: "portable",
        needs: |_| true,
        vectors: &activations::BASELINE,
        tiles: Tiles::Bf16 {
            tile: portable,
            round: bf16_row,
        },
    },
    KernelInfo {
        kernel: Kernel::Avx512F32,
        name: "avx512",
        needs: |f| f.avx512f,
        vectors: &activations::AVX512,
        tiles: Tiles::F32(x86::tile_f32_avx512),
    },
    KernelInfo {
        kernel: Kernel::Avx2F32,
        name: "avx2",
        needs: |f| f.avx2 && f.fma,
        vectors: &activations::AVX2,
        tiles: Tiles::F32(x86::tile_f32_avx2),
    },
    KernelInfo {
        kernel: Kernel::PortableF32,
        name: "portable",
        needs: |_| true,
        vectors: &activations::BASELINE,
        tiles: Tiles::F32(portable),
    },
    KernelInfo {
        kernel: Kernel::Avx512Vnni,
        name: "avx512",
        needs: |f| f.avx512f && f.avx512vnni,
        vectors: &activations::AVX512,
        tiles: Tiles::Int8(x86::tile_i8),
    },
    KernelInfo {
        kernel: Kernel::Avx2Vnni,
        name: "avx2",
        needs: |f| f.avx2 && f.fma && f.avxvnni,
        vectors: &activations::AVX2,
        tiles: Tiles::Int8(x86::tile_i8_avxvnni),
    },
    KernelInfo {
        kernel: Kernel::Avx2VnniEvex,
        // The same kernel as `Avx2Vnni`, in the other encoding: `avx2` picks whichever
        // this CPU runs, the VEX one first.
        name: "avx2",
        needs: |f| f.avx2 && f.fma && f.avx512vnni && f.avx512vl,
        vectors: &activations::AVX2,
        tiles: Tiles::Int8(x86::tile_i8_avx512vl),
    },
    KernelInfo {
        kernel: Kernel::Avx2Maddubs,
        name: "maddubs",
        needs: |f| f.avx2 && f.fma,
        vectors: &activations::AVX2,
        tiles: Tiles::Int7(x86::tile_i8_maddubs),
    },
    KernelInfo {
        kernel: Kernel::Avx2Madd,
        name: "madd",
        needs: |f| f.avx2 && f.fma,
        vectors: &activations::AVX2,
        tiles: Tiles::Int8Pairs(x86::tile_i8_madd),
    },
    KernelInfo {
        kernel: Kernel::PortableInt8,
        name: "portable",
        needs: |_| true,
        vectors: &activations::BASELINE,
        tiles: Tiles::Int8(portable),
    },
    KernelInfo {
        kernel: Kernel::PortableInt7,
        name: "portable7",
        needs: |_| true,
        vectors: &activations::BASELINE,
        tiles: Tiles::Int7(portable),
    },
];

// Entry i is Kernel i: `Kernel::info` indexes the table by the handle.
const _: () = {
    let mut i = 0;
    while i < KERNELS.len() {
        assert!(
            KERNELS[i].kernel as usize == i,
            "KERNELS is not in Kernel's order"
        );
        i += 1;
    }
};

#[cfg(target_arch = "x86_64")]
use super::x86;

/// Off x86-64 no entry that names these runs (every x86 entry needs a feature, and
/// [`Features`] has none there): they stand in for the x86 kernels' functions and are
/// never called.
#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    use super::{Pair, Quad, Tile};

    fn unreachable() -> ! {
        unreachable!("an x86 kernel off x86-64")
    }
    pub(super) unsafe fn tile_bf16(_: &Tile<u32>) {
        unreachable()
    }
    pub(super) unsafe fn to_bf16_row(_: &[f32], _: &mut [u32]) {
        unreachable()
    }
    pub(super) unsafe fn tile_f32_avx512(_: &Tile<f32>) {
        unreachable()
    }
    pub(super) unsafe fn tile_f32_avx2(_: &Tile<f32>) {
        unreachable()
    }
    pub(super) unsafe fn tile_i8(_: &Tile<Quad>) {
        unreachable()
    }
    pub(super) unsafe fn tile_i8_avxvnni(_: &Tile<Quad>) {
        unreachable()
    }
    pub(super) unsafe fn tile_i8_avx512vl(_: &Tile<Quad>) {
        unreachable()
    }
    pub(super) unsafe fn tile_i8_maddubs(_: &Tile<Quad>) {
        unreachable()
    }
    pub(super) unsafe fn tile_i8_madd(_: &Tile<Pair>) {
        unreachable()
    }
}
