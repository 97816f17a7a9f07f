//! The SIMD tile kernels of [`super`]: AVX512-BF16 (bf16), AVX-512F and AVX2+FMA (f32),
//! AVX512-VNNI, 256-bit VNNI and AVX2's `vpmaddwd` (int8).

use std::arch::x86_64::*;

use super::drive::Tile;
use super::int8::{Pair, Quad};
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

/// The mask of the lanes of vector `v` (columns 16v..16v + 16) below `cols`.
fn lanes(cols: usize, v: usize) -> __mmask16 {
    let n = cols.saturating_sub(16 * v).min(16);
    ((1u32 << n) - 1) as __mmask16
}

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

/// # Safety
/// As `Tile::run`, on a CPU with `avx512f` and `avx512bf16`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn tile_bf16(t: &Tile<u32>) {
    // SAFETY: this fn's contract: the CPU has AVX-512F and AVX512-BF16, the features
    // `rows_bf16` is compiled for, and `t` meets `Tile::run`'s; `by_rows` gives it R =
    // `t.rows`.
    unsafe { by_rows!(rows_bf16, t) }
}

/// # Safety
/// As `Tile::run`, on a CPU with `avx512f` and `avx512vnni`.
#[target_feature(enable = "avx512f,avx512vnni")]
pub(super) unsafe fn tile_i8(t: &Tile<Quad>) {
    // SAFETY: this fn's contract: the CPU has AVX-512F and AVX512-VNNI, the features
    // `rows_i8` is compiled for, and `t` meets `Tile::run`'s; `by_rows` gives it R =
    // `t.rows`.
    unsafe { by_rows!(rows_i8, t) }
}

/// The int8 tile in 256-bit vectors, for CPUs with AVX2 and AVX-VNNI but no AVX-512
/// (Intel Core from Alder Lake on): `vpdpbusd` in its VEX encoding. [`tile_i8_avx512vl`]
/// is the same code in the EVEX encoding; both give the same bits (the sums of codes are
/// exact).
///
/// # Safety
/// As `Tile::run`, on a CPU with `avx2` and `avxvnni`.
#[target_feature(enable = "avx2,avxvnni")]
pub(super) unsafe fn tile_i8_avxvnni(t: &Tile<Quad>) {
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
pub(super) unsafe fn tile_i8_avx512vl(t: &Tile<Quad>) {
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
pub(super) unsafe fn tile_i8_madd(t: &Tile<Pair>) {
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
pub(super) unsafe fn tile_i8_maddubs(t: &Tile<Quad>) {
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
/// As `Tile::run`, on a CPU with `avx512f`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile_f32_avx512(t: &Tile<f32>) {
    // SAFETY: this fn's contract: the CPU has AVX-512F, the feature `rows_f32_avx512` is
    // compiled for, and `t` meets `Tile::run`'s; `by_rows` gives it R = `t.rows`.
    unsafe { by_rows!(rows_f32_avx512, t) }
}

/// # Safety
/// As `Tile::run`, on a CPU with `avx2` and `fma`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile_f32_avx2(t: &Tile<f32>) {
    // SAFETY: this fn's contract: the CPU has AVX2 and FMA, the features `rows_f32_avx2`
    // is compiled for, and `t` meets `Tile::run`'s; `by_rows` gives it R = `t.rows`.
    unsafe { by_rows!(rows_f32_avx2, t) }
}

/// The tile's sums before its block: the bias, or what `c` holds.
///
/// # Safety
/// The CPU has `avx512f`; `t` is within the tile's bounds (see the top of this file) with
/// `R` = `t.rows`, and `masks` are `masks(t.cols)`.
#[target_feature(enable = "avx512f")]
unsafe fn load_sums<const R: usize, E>(t: &Tile<E>, masks: &[__mmask16; 4]) -> [[__m512; 4]; R] {
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    for (r, row) in acc.iter_mut().enumerate() {
        for (v, sum) in row.iter_mut().enumerate() {
            *sum = match t.init {
                // SAFETY: v < 4, so the 16 floats at 16v are inside the bias's NR (= 64)
                // (the tile's bounds); an unaligned load.
                Some(bias) => unsafe { _mm512_loadu_ps(bias.as_ptr().add(16 * v)) },
                // Masked lanes are not read (fault suppression), so the pointer may
                // point past the row; `wrapping_add` keeps that computation defined.
                // SAFETY: the lanes of `masks[v]` are the columns 16v + l < `t.cols` of
                // row r < R, which the tile's bounds let this call read (initialised,
                // `init` being `None`); the others are not accessed. Unaligned.
                None => unsafe {
                    _mm512_maskz_loadu_ps(masks[v], t.c.wrapping_add(r * t.ldc + 16 * v))
                },
            };
        }
    }
    acc
}

/// Stores the tile's sums: the lanes of `masks` of each row of `acc` into `c`.
///
/// # Safety
/// As [`load_sums`].
#[target_feature(enable = "avx512f")]
unsafe fn store_sums<const R: usize, E>(
    t: &Tile<E>,
    masks: &[__mmask16; 4],
    acc: &[[__m512; 4]; R],
) {
    for (r, row) in acc.iter().enumerate() {
        for (v, sum) in row.iter().enumerate() {
            // SAFETY: the lanes of `masks[v]` are the columns 16v + l < `t.cols` of row
            // r < R, which the tile's bounds let this call write; the others are not
            // accessed (`wrapping_add`: the address may lie past the row). Unaligned.
            unsafe { _mm512_mask_storeu_ps(t.c.wrapping_add(r * t.ldc + 16 * v), masks[v], *sum) };
        }
    }
}

fn masks(cols: usize) -> [__mmask16; 4] {
    [
        lanes(cols, 0),
        lanes(cols, 1),
        lanes(cols, 2),
        lanes(cols, 3),
    ]
}

/// # Safety
/// The CPU has `avx512f` and `avx512bf16`; `t` is within the tile's bounds (see the top of
/// this file) with `R` = `t.rows`.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn rows_bf16<const R: usize>(t: &Tile<u32>) {
    let masks = masks(t.cols);
    // SAFETY: AVX-512F is there, `t` is within the tile's bounds with R = `t.rows`, and
    // `masks` are `t.cols`' (this fn's contract).
    let mut acc = unsafe { load_sums::<R, _>(t, &masks) };
    let (a, b) = (t.a.as_ptr(), t.b.as_ptr());
    for p in 0..t.b.len() / NR {
        // SAFETY: p < U, so unit p's NR (= 64) u32 at `b + p · NR` are inside `t.b`: four
        // unaligned 64-byte loads at `bp`, `bp + 1`, `+ 2`, `+ 3` (in `__m512i`s). Each
        // transmute reinterprets 64 bytes as 64 bytes (32 bf16, any bits valid).
        let bp = unsafe { b.add(p * NR) } as *const __m512i;
        // SAFETY: as above.
        let bv: [__m512bh; 4] = unsafe {
            [
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(1))),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(2))),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(3))),
            ]
        };
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: p < U and r < R ≤ MR, so `p · MR + r` is inside `t.a` (the tile's
            // bounds): an aligned u32 read.
            let pair = unsafe { *a.add(p * MR + r) } as i32;
            // SAFETY: a transmute of 64 bytes to 64 bytes (32 bf16, any bits valid).
            let av = unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair)) };
            for (sum, bv) in row.iter_mut().zip(bv) {
                *sum = _mm512_dpbf16_ps(*sum, av, bv);
            }
        }
    }
    // SAFETY: as for `load_sums`.
    unsafe { store_sums(t, &masks, &acc) };
}

/// The block's sums of codes in i32 (exact), then converted and added to the tile's
/// start (zero, or what `c` holds).
///
/// # Safety
/// The CPU has `avx512f` and `avx512vnni`; `t` is within the tile's bounds (see the top of
/// this file) with `R` = `t.rows`.
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn rows_i8<const R: usize>(t: &Tile<Quad>) {
    let masks = masks(t.cols);
    let mut acc = [[_mm512_setzero_si512(); 4]; R];
    let (a, b) = (t.a.as_ptr().cast::<u32>(), t.b.as_ptr().cast::<u32>());
    for p in 0..t.b.len() / NR {
        // SAFETY: p < U, so unit p's NR (= 64) quads (4 bytes each, `#[repr(transparent)]`
        // u32) at `b + p · NR` are inside `t.b`: four unaligned 64-byte loads at `bp`,
        // `bp + 1`, `+ 2`, `+ 3` (in `__m512i`s).
        let bp = unsafe { b.add(p * NR) }.cast::<__m512i>();
        // SAFETY: as above.
        let bv = unsafe {
            [
                _mm512_loadu_si512(bp),
                _mm512_loadu_si512(bp.add(1)),
                _mm512_loadu_si512(bp.add(2)),
                _mm512_loadu_si512(bp.add(3)),
            ]
        };
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: p < U and r < R ≤ MR, so `p · MR + r` is inside `t.a` (the tile's
            // bounds): an aligned u32 read (a quad is a `#[repr(transparent)]` u32).
            let av = _mm512_set1_epi32(unsafe { *a.add(p * MR + r) } as i32);
            for (sum, bv) in row.iter_mut().zip(bv) {
                *sum = _mm512_dpbusd_epi32(*sum, av, bv);
            }
        }
    }
    // SAFETY: AVX-512F is there, `t` is within the tile's bounds with R = `t.rows`, and
    // `masks` are `t.cols`' (this fn's contract).
    let mut sums = unsafe { load_sums::<R, _>(t, &masks) };
    for (row, acc) in sums.iter_mut().zip(&acc) {
        for (sum, acc) in row.iter_mut().zip(acc) {
            *sum = _mm512_add_ps(*sum, _mm512_cvtepi32_ps(*acc));
        }
    }
    // SAFETY: as for `load_sums`.
    unsafe { store_sums(t, &masks, &sums) };
}

/// # Safety
/// The CPU has `avx512f`; `t` is within the tile's bounds (see the top of this file) with
/// `R` = `t.rows`.
#[target_feature(enable = "avx512f")]
unsafe fn rows_f32_avx512<const R: usize>(t: &Tile<f32>) {
    let masks = masks(t.cols);
    // SAFETY: AVX-512F is there, `t` is within the tile's bounds with R = `t.rows`, and
    // `masks` are `t.cols`' (this fn's contract).
    let mut acc = unsafe { load_sums::<R, _>(t, &masks) };
    let (a, b) = (t.a.as_ptr(), t.b.as_ptr());
    for p in 0..t.b.len() / NR {
        // SAFETY: p < U, so unit p's NR (= 64) floats at `b + p · NR` are inside `t.b`:
        // four unaligned loads of 16 floats at offsets 0, 16, 32 and 48.
        let bp = unsafe { b.add(p * NR) };
        // SAFETY: as above.
        let bv = unsafe {
            [
                _mm512_loadu_ps(bp),
                _mm512_loadu_ps(bp.add(16)),
                _mm512_loadu_ps(bp.add(32)),
                _mm512_loadu_ps(bp.add(48)),
            ]
        };
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: p < U and r < R ≤ MR, so `p · MR + r` is inside `t.a` (the tile's
            // bounds): an aligned f32 read.
            let av = _mm512_set1_ps(unsafe { *a.add(p * MR + r) });
            for (sum, bv) in row.iter_mut().zip(bv) {
                *sum = _mm512_fmadd_ps(av, bv, *sum);
            }
        }
    }
    // SAFETY: as for `load_sums`.
    unsafe { store_sums(t, &masks, &acc) };
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
/// this file) with `R` = `t.rows`. (Not compiled for AVX2 itself: it is inlined into the
/// callers that are.)
#[inline(always)]
unsafe fn rows_i8_ymm<const R: usize, const RELOAD: bool, E, D>(t: &Tile<E>, dot: D)
where
    D: Fn(__m256i, __m256i, __m256i) -> __m256i,
{
    const { assert!(std::mem::size_of::<E>() == 4) };
    let (a, b) = (t.a.as_ptr().cast::<u32>(), t.b.as_ptr().cast::<u32>());
    for c0 in (0..t.cols).step_by(16) {
        // SAFETY: the CPU has AVX2 (this fn's contract).
        let mut acc = [[unsafe { _mm256_setzero_si256() }; 2]; R];
        for p in 0..t.b.len() / NR {
            // SAFETY: p < U and c0 + 16 ≤ NR (c0 a multiple of 16 below `t.cols` ≤ NR), so
            // the 16 units (4 bytes each) at `b + p · NR + c0` are inside `t.b`: two
            // unaligned 32-byte loads at `bp` and `bp + 1` (in `__m256i`s). AVX2 is there.
            let bp = unsafe { b.add(p * NR + c0) }.cast::<__m256i>();
            // SAFETY: as above.
            let held = unsafe { [_mm256_loadu_si256(bp), _mm256_loadu_si256(bp.add(1))] };
            for (r, row) in acc.iter_mut().enumerate() {
                if RELOAD {
                    // An empty asm that may write memory: the loads below are not merged
                    // with the last row's.
                    // SAFETY: the template is empty: it runs no instruction and touches no
                    // register, flag, stack or memory (the compiler must still assume it
                    // may write memory, which is the point).
                    unsafe {
                        std::arch::asm!("", options(nostack, preserves_flags));
                    }
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

/// `row` (k floats) as bf16 pairs into `out` (⌈k/2⌉), rounded to nearest even.
///
/// # Safety
/// The CPU must have `avx512f` and `avx512bf16`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn to_bf16_row(row: &[f32], out: &mut [u32]) {
    let split = row.len() - row.len() % 16;
    // The vector stores below write `out[..split / 2]`.
    assert!(
        out.len() >= split / 2,
        "{} pairs cannot hold a row of {}",
        out.len(),
        row.len()
    );
    let dst = out.as_mut_ptr() as *mut __m256i;
    for (i, chunk) in row[..split].chunks_exact(16).enumerate() {
        // SAFETY: AVX-512F is there (this fn's contract); `chunk` is 16 floats: one
        // unaligned load.
        let bf = _mm512_cvtneps_pbh(unsafe { _mm512_loadu_ps(chunk.as_ptr()) });
        // 16 bf16 are 8 pairs, the lower index in the low half (little-endian).
        // SAFETY: i < split / 16, so the 8 u32 at `out[8i..8i + 8]` (`dst + i` in 32-byte
        // `__m256i`s) lie within `out[..split / 2]`, which the assert above keeps inside
        // `out`; an unaligned store (AVX is there). The transmute reinterprets 32 bytes
        // as 32 bytes (any bits valid).
        unsafe { _mm256_storeu_si256(dst.add(i), std::mem::transmute::<__m256bh, __m256i>(bf)) };
    }
    for (p, o) in out.iter_mut().enumerate().skip(split / 2) {
        *o = super::pack::bf16_pair(row, p);
    }
}
