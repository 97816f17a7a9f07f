//! The SIMD tile kernels of [`super`]: in 512-bit vectors (`avx512.rs`: AVX512-BF16 for
//! bf16, AVX-512F for f32, AVX512-VNNI for int8) and in 256-bit vectors (`avx2.rs`: AVX2 +
//! FMA for f32; 256-bit VNNI, `vpmaddubsw` and `vpmaddwd` for int8).

use super::{MR, NR};

// The AVX-512 kernels dispatch up to six rows and hold four 16-lane vectors per row; the
// AVX2 one walks the panel in four chunks of 16 columns.
const _: () = assert!(MR == 6 && NR == 64);

// What every tile kernel below relies on for its pointers (the `SAFETY:` comments name
// it "the tile's bounds"): `Tile::run`'s contract and its asserts. With `R` = `t.rows`
// (1 ≤ R ≤ MR; [`by_rows`] picks it), `U` = `t.b.len() / NR` units:
// * `t.b` holds `U · NR` elements of 4 bytes: unit `p`'s NR (= 64) columns at `p · NR`;
// * `t.a` holds at least `U · MR` elements of 4 bytes (`t.a.len() / MR == U`), so
//   `p · MR + r` (p < U, r < R ≤ MR) is inside it; a `u32` read there is aligned, `t.a`
//   being a slice of `u32`, `f32` or a `#[repr(transparent)]` `u32` ([`Quad`], [`Pair`]);
// * `t.init`, when there, holds at least NR floats;
// * `t.c + r · ldc + col` (r < R, col < `t.cols` ≤ NR) is an f32 of `y` this call alone
//   may read and write (initialised where `t.init` is `None`).
// All vector loads and stores are the unaligned (`loadu`/`storeu`) or masked forms.

/// Calls `$rows::<R>($tile)` with `R` = the tile's row count, a constant, so that the
/// accumulators stay in registers.
macro_rules! by_rows {
    ($rows:ident, $tile:expr) => {
        match $tile.rows {
            6 => $rows::<6>($tile),
            5 => $rows::<5>($tile),
            4 => $rows::<4>($tile),
            3 => $rows::<3>($tile),
            2 => $rows::<2>($tile),
            _ => $rows::<1>($tile),
        }
    };
}

/// As [`by_rows`], for a macro `$rows!(R, tile)`: a closure's intrinsic must be called
/// inside the function that enables its target feature, so the row count is spelled out.
macro_rules! by_rows_literal {
    ($rows:ident, $tile:expr) => {
        match $tile.rows {
            6 => $rows!(6, $tile),
            5 => $rows!(5, $tile),
            4 => $rows!(4, $tile),
            3 => $rows!(3, $tile),
            2 => $rows!(2, $tile),
            _ => $rows!(1, $tile),
        }
    };
}

mod avx2;
mod avx512;

pub(in crate::gemm) use avx2::{
    tile_f32_avx2, tile_i8_avx512vl, tile_i8_avxvnni, tile_i8_madd, tile_i8_maddubs,
};
pub(in crate::gemm) use avx512::{tile_bf16, tile_f32_avx512, tile_i8, to_bf16_row};
