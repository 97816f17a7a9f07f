//! The tiles in 256-bit vectors, for CPUs without AVX-512 (and where the tests run them):
//! 16 columns of a tile at a time.

use std::arch::x86_64::*;
use std::sync::atomic::{compiler_fence, Ordering};

use super::super::drive::Tile;
use super::super::int8::{Pair, Quad};
use super::super::{MR, NR};

/// The int8 tile in 256-bit vectors, for CPUs with AVX2 and AVX-VNNI but no AVX-512
/// (Intel Core from Alder Lake on): `vpdpbusd` in its VEX encoding. [`tile_i8_avx512vl`]
/// is the same code in the EVEX encoding; both give the same bits (the sums of codes are
/// exact).
///
/// # Safety
/// As `Tile::run`, on a CPU with `avx2` and `avxvnni`.
#[target_feature(enable = "avx2,avxvnni")]
pub(in crate::gemm) unsafe fn tile_i8_avxvnni(t: &Tile<Quad>) {
    macro_rules! rows {
        ($r:literal, $t:expr) => {
            rows_i8_ymm::<$r, false, _, _>($t, |acc, a, b| _mm256_dpbusd_avx_epi32(acc, a, b))
        };
    }
    // SAFETY: this fn's contract: the CPU has AVX2 and AVX-VNNI, what `rows_i8_ymm` and
    // this `dot` use, and `t` meets `Tile::run`'s; R = `t.rows`.
    unsafe { by_rows_literal!(rows, t) }
}

/// [`tile_i8_avxvnni`] with `vpdpbusd` in its EVEX encoding on ymm registers, for CPUs
/// with AVX512-VNNI and AVX512-VL: where the 8-lane kernel is tested on AVX-512 CPUs.
///
/// # Safety
/// As `Tile::run`, on a CPU with `avx2`, `avx512vnni` and `avx512vl`.
#[target_feature(enable = "avx2,avx512vl,avx512vnni")]
pub(in crate::gemm) unsafe fn tile_i8_avx512vl(t: &Tile<Quad>) {
    macro_rules! rows {
        ($r:literal, $t:expr) => {
            rows_i8_ymm::<$r, false, _, _>($t, |acc, a, b| _mm256_dpbusd_epi32(acc, a, b))
        };
    }
    // SAFETY: this fn's contract: the CPU has AVX2, AVX512-VNNI and AVX512-VL, what
    // `rows_i8_ymm` and this `dot` use, and `t` meets `Tile::run`'s; R = `t.rows`.
    unsafe { by_rows_literal!(rows, t) }
}

/// The int8 tile on CPUs with AVX2 but no VNNI, over [`Pair`]s: `vpmaddwd` sums the two
/// products of a lane's i16 codes exactly in i32, `vpaddd` adds them to the lane's sum.
/// The same integers as `vpdpbusd`'s sums of the same codes; the blocks hold half the k
/// of the quads' (1024 units of 2), so a sum over k beyond a block may round differently.
///
/// # Safety
/// As `Tile::run`, on a CPU with `avx2`.
#[target_feature(enable = "avx2")]
pub(in crate::gemm) unsafe fn tile_i8_madd(t: &Tile<Pair>) {
    macro_rules! rows {
        ($r:literal, $t:expr) => {
            rows_i8_ymm::<$r, false, _, _>($t, |acc, a, b| {
                _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
            })
        };
    }
    // SAFETY: this fn's contract: the CPU has AVX2, what `rows_i8_ymm` and this `dot`
    // use, and `t` meets `Tile::run`'s; R = `t.rows`.
    unsafe { by_rows_literal!(rows, t) }
}

/// The int8 tile on CPUs with AVX2 but no VNNI, over [`Quad`]s of
/// [`Format::Int7`](super::Format::Int7) (weights in [-64, 64]): `vpmaddubsw` sums each
/// two products of a row's u8 and a weight's code in i16, exactly (at most 2 · 255 · 64 <
/// 2¹⁵), `vpmaddwd` by ones sums those two by two in i32, `vpaddd` adds them to the
/// lane's sum. The same integers as `vpdpbusd`'s sums of the same codes, in three
/// instructions per 32 products where [`tile_i8_madd`] takes two per 16.
///
/// # Safety
/// As `Tile::run`, on a CPU with `avx2`.
#[target_feature(enable = "avx2")]
pub(in crate::gemm) unsafe fn tile_i8_maddubs(t: &Tile<Quad>) {
    let ones = _mm256_set1_epi16(1);
    macro_rules! rows {
        ($r:literal, $t:expr) => {
            rows_i8_ymm::<$r, true, _, _>($t, |acc, a, b| {
                _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), ones))
            })
        };
    }
    // SAFETY: this fn's contract: the CPU has AVX2, what `rows_i8_ymm` and this `dot`
    // use, and `t` meets `Tile::run`'s; R = `t.rows`.
    unsafe { by_rows_literal!(rows, t) }
}

/// # Safety
/// As `Tile::run`, on a CPU with `avx2` and `fma`.
#[target_feature(enable = "avx2,fma")]
pub(in crate::gemm) unsafe fn tile_f32_avx2(t: &Tile<f32>) {
    // SAFETY: this fn's contract: the CPU has AVX2 and FMA, the features `rows_f32_avx2`
    // is compiled for, and `t` meets `Tile::run`'s; `by_rows` gives it R = `t.rows`.
    unsafe { by_rows!(rows_f32_avx2, t) }
}

/// The mask of the lanes below `n` (of 8), for `_mm256_maskload_ps`/`maskstore`.
#[target_feature(enable = "avx2")]
unsafe fn lanes8(n: usize) -> __m256i {
    let n = n.min(8) as i32;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// `n` (≥ 1) floats at `p` as 8 lanes, the lanes from `n` on zero: a plain load when all 8
/// are there (a masked one is microcoded on AMD's cores, several times slower).
///
/// # Safety
/// The CPU has `avx2`; `p` is valid for reading `min(n, 8)` floats (unaligned).
#[target_feature(enable = "avx2")]
unsafe fn load8(p: *const f32, n: usize) -> __m256 {
    if n >= 8 {
        // SAFETY: n ≥ 8: `p` is valid for 8 floats (this fn's contract); unaligned load.
        unsafe { _mm256_loadu_ps(p) }
    } else {
        // SAFETY: `lanes8(n)` (AVX2, there) has the lanes below n on: the load reads the
        // n floats `p` is valid for (this fn's contract), and not the others.
        unsafe { _mm256_maskload_ps(p, lanes8(n)) }
    }
}

/// Stores the first `n` (≥ 1) lanes of `v` at `p`, as [`load8`].
///
/// # Safety
/// The CPU has `avx2`; `p` is valid for writing `min(n, 8)` floats (unaligned).
#[target_feature(enable = "avx2")]
unsafe fn store8(p: *mut f32, n: usize, v: __m256) {
    if n >= 8 {
        // SAFETY: n ≥ 8: `p` is valid for 8 floats (this fn's contract); unaligned store.
        unsafe { _mm256_storeu_ps(p, v) }
    } else {
        // SAFETY: `lanes8(n)` (AVX2, there) has the lanes below n on: the store writes
        // the n floats `p` is valid for (this fn's contract), and not the others.
        unsafe { _mm256_maskstore_ps(p, lanes8(n), v) }
    }
}

/// Units of k per pass of the f32 256-bit kernel: its four 16-column passes over a tile
/// re-read the tile's rows of `x`, which then stay in L1 beside the panel's lines the
/// passes stream (64 units: 1.5 KB of `x`, 4 KB of the panel; a whole block of 1024 is
/// 24 KB of `x` and 64 KB of the panel). With [`store8`]'s plain stores and 256 units,
/// ViT-g's shapes at 1028 rows went from 126–176 to 141–189 GFLOP/s in three alternating
/// pairs on Zen 4 (an AVX-512 CPU, which runs this kernel only when told to). On a Zen 3
/// (AVX2 only, where it is the default) 64 units beat 256 (and 32, 128, 1024): the four
/// shapes took 390–441 ms (`packed_gemm --f32 --reps 3`) against 426–457 in four
/// alternating runs. The sums are the same either way (`c` carries them in order).
const SUB: usize = 64;

/// 16 columns at a time (2 × 8 lanes × `R` rows: at most 12 accumulators of the 16 ymm
/// registers), the panel's 64 in four passes over each [`SUB`] units of the block; the
/// sums go through `c` between them (the same additions in the same order).
///
/// # Safety
/// The CPU has `avx2` and `fma`; `t` is within the tile's bounds (see the top of this
/// file) with `R` = `t.rows`.
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_f32_avx2<const R: usize>(t: &Tile<f32>) {
    let (a, b) = (t.a.as_ptr(), t.b.as_ptr());
    let units = t.b.len() / NR;
    for p0 in (0..units).step_by(SUB) {
        let p1 = units.min(p0 + SUB);
        for c0 in (0..t.cols).step_by(16) {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, sum) in row.iter_mut().enumerate() {
                    let col = c0 + 8 * v;
                    *sum = match t.init {
                        // SAFETY: c0 is a multiple of 16 below `t.cols` ≤ NR, so col + 8 =
                        // c0 + 8v + 8 ≤ c0 + 16 ≤ NR: 8 floats inside the bias's NR (the
                        // tile's bounds); an unaligned load.
                        Some(bias) if p0 == 0 => unsafe { _mm256_loadu_ps(bias.as_ptr().add(col)) },
                        // SAFETY: r < R and col < `t.cols`: the address is in row r of the
                        // tile, and `load8` reads min(cols - col, 8) floats, columns below
                        // `t.cols`, which the tile's bounds let this call read (initialised:
                        // by this call's previous pass when p0 > 0, else `init` is `None`).
                        // AVX2 is there.
                        _ if col < t.cols => unsafe {
                            load8(t.c.add(r * t.ldc + col), t.cols - col)
                        },
                        _ => _mm256_setzero_ps(),
                    };
                }
            }
            for p in p0..p1 {
                // SAFETY: p < p1 ≤ U and c0 + 16 ≤ NR (c0 a multiple of 16 below `t.cols` ≤
                // NR), so the 16 floats at `b + p · NR + c0` are inside `t.b`: two
                // unaligned loads of 8.
                let bp = unsafe { b.add(p * NR + c0) };
                // SAFETY: as above.
                let bv = unsafe { [_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8))] };
                for (r, row) in acc.iter_mut().enumerate() {
                    // SAFETY: p < U and r < R ≤ MR, so `p · MR + r` is inside `t.a` (the
                    // tile's bounds): an aligned f32 read.
                    let av = _mm256_set1_ps(unsafe { *a.add(p * MR + r) });
                    for (sum, bv) in row.iter_mut().zip(bv) {
                        *sum = _mm256_fmadd_ps(av, bv, *sum);
                    }
                }
            }
            for (r, row) in acc.iter().enumerate() {
                for (v, sum) in row.iter().enumerate() {
                    let col = c0 + 8 * v;
                    if col < t.cols {
                        // SAFETY: r < R and col < `t.cols`: the address is in row r of the
                        // tile, and `store8` writes min(cols - col, 8) floats, columns
                        // below `t.cols`, which the tile's bounds let this call write.
                        // AVX2 is there.
                        unsafe { store8(t.c.add(r * t.ldc + col), t.cols - col, *sum) };
                    }
                }
            }
        }
    }
}

/// 16 columns at a time (2 × 8 lanes × `R` rows, as [`rows_f32_avx2`]) over the whole
/// block, summing its codes in i32 with `dot` (a `vpdpbusd` on [`Quad`]s, `vpmaddubsw`,
/// `vpmaddwd` by ones and `vpaddd` on int7's quads, or `vpmaddwd` and `vpaddd` on
/// [`Pair`]s: units of 32 bits), then adding them, converted, to the tile's start (the
/// zero bias, or what `c` holds). (Passes of [`SUB`] units, as the f32 kernel's, were no
/// faster for quads: a unit is four values of k, so the tile's `x` is read a quarter as
/// often; nor, on a Zen 3, for pairs, with the i32 sums kept between passes.)
///
/// With `RELOAD` each row reads the unit's two weight vectors again (from L1), which the
/// compiler then folds into the product's instruction. `vpmaddubsw`'s kernel needs it:
/// held in registers, as the compiler would hoist them, they left too few of the 16 for
/// its 12 sums, the ones, a row's codes and the products, and a sum went through the
/// stack at every unit (its GEMMs went from 1.3 to 1.4× `vpmaddwd`'s on a Zen 3).
/// `vpmaddwd`'s, without the ones, fits either way and was 10–30% slower reloading.
///
/// # Safety
/// The CPU has `avx2` and what `dot` uses; `t` is within the tile's bounds (see the top of
/// this file) with `R` = `t.rows`. Compiled for AVX2, and inlined into its callers
/// (which have AVX2 and what their `dot` needs), where `dot` is inlined in turn.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn rows_i8_ymm<const R: usize, const RELOAD: bool, E, D>(t: &Tile<E>, dot: D)
where
    D: Fn(__m256i, __m256i, __m256i) -> __m256i,
{
    const { assert!(std::mem::size_of::<E>() == 4) };
    let (a, b) = (t.a.as_ptr().cast::<u32>(), t.b.as_ptr().cast::<u32>());
    for c0 in (0..t.cols).step_by(16) {
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        for p in 0..t.b.len() / NR {
            // SAFETY: p < U and c0 + 16 ≤ NR (c0 a multiple of 16 below `t.cols` ≤ NR), so
            // the 16 units (4 bytes each) at `b + p · NR + c0` are inside `t.b`: two
            // unaligned 32-byte loads at `bp` and `bp + 1` (in `__m256i`s). AVX2 is there.
            let bp = unsafe { b.add(p * NR + c0) }.cast::<__m256i>();
            // SAFETY: as above.
            let held = unsafe { [_mm256_loadu_si256(bp), _mm256_loadu_si256(bp.add(1))] };
            for (r, row) in acc.iter_mut().enumerate() {
                if RELOAD {
                    // A compiler fence (no instruction): the loads below are not merged
                    // with the last row's.
                    compiler_fence(Ordering::SeqCst);
                }
                // SAFETY: p < U and r < R ≤ MR, so `p · MR + r` is inside `t.a` (the
                // tile's bounds): an aligned u32 read. AVX2 is there.
                let av = unsafe { _mm256_set1_epi32(*a.add(p * MR + r) as i32) };
                for (v, sum) in row.iter_mut().enumerate() {
                    let bv = if RELOAD {
                        // SAFETY: v < 2: one of the two 32-byte loads above, again.
                        unsafe { _mm256_loadu_si256(bp.add(v)) }
                    } else {
                        held[v]
                    };
                    *sum = dot(*sum, av, bv);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, sum) in row.iter().enumerate() {
                let col = c0 + 8 * v;
                if col >= t.cols {
                    continue;
                }
                // SAFETY: r < R and col < `t.cols`: an f32 in row r of the tile (the
                // tile's bounds).
                let c = unsafe { t.c.add(r * t.ldc + col) };
                let start = match t.init {
                    // SAFETY: col + 8 = c0 + 8v + 8 ≤ c0 + 16 ≤ NR: 8 floats inside the
                    // bias's NR (the tile's bounds); an unaligned load. AVX2 is there.
                    Some(bias) => unsafe { _mm256_loadu_ps(bias.as_ptr().add(col)) },
                    // SAFETY: `load8` reads min(cols - col, 8) floats from `c`: columns
                    // below `t.cols` of row r, which the tile's bounds let this call read
                    // (initialised, `init` being `None`). AVX2 is there.
                    None => unsafe { load8(c, t.cols - col) },
                };
                // SAFETY: `store8` writes min(cols - col, 8) floats at `c`: columns below
                // `t.cols` of row r, which the tile's bounds let this call write. AVX2 is
                // there.
                unsafe {
                    store8(
                        c,
                        t.cols - col,
                        _mm256_add_ps(start, _mm256_cvtepi32_ps(*sum)),
                    );
                }
            }
        }
    }
}
