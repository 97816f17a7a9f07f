//! The tiles in 512-bit vectors: 6 rows × 64 columns, four zmm sums per row.

use std::arch::x86_64::*;

use super::super::drive::Tile;
use super::super::int8::Quad;
use super::super::{MR, NR};

/// The mask of the lanes of vector `v` (columns 16v..16v + 16) below `cols`.
fn lanes(cols: usize, v: usize) -> __mmask16 {
    let n = cols.saturating_sub(16 * v).min(16);
    ((1u32 << n) - 1) as __mmask16
}

/// # Safety
/// As `Tile::run`, on a CPU with `avx512f` and `avx512bf16`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(in crate::gemm) unsafe fn tile_bf16(t: &Tile<u32>) {
    // SAFETY: this fn's contract: the CPU has AVX-512F and AVX512-BF16, the features
    // `rows_bf16` is compiled for, and `t` meets `Tile::run`'s; `by_rows` gives it R =
    // `t.rows`.
    unsafe { by_rows!(rows_bf16, t) }
}

/// # Safety
/// As `Tile::run`, on a CPU with `avx512f` and `avx512vnni`.
#[target_feature(enable = "avx512f,avx512vnni")]
pub(in crate::gemm) unsafe fn tile_i8(t: &Tile<Quad>) {
    // SAFETY: this fn's contract: the CPU has AVX-512F and AVX512-VNNI, the features
    // `rows_i8` is compiled for, and `t` meets `Tile::run`'s; `by_rows` gives it R =
    // `t.rows`.
    unsafe { by_rows!(rows_i8, t) }
}

/// # Safety
/// As `Tile::run`, on a CPU with `avx512f`.
#[target_feature(enable = "avx512f")]
pub(in crate::gemm) unsafe fn tile_f32_avx512(t: &Tile<f32>) {
    // SAFETY: this fn's contract: the CPU has AVX-512F, the feature `rows_f32_avx512` is
    // compiled for, and `t` meets `Tile::run`'s; `by_rows` gives it R = `t.rows`.
    unsafe { by_rows!(rows_f32_avx512, t) }
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

/// `row` (k floats) as bf16 pairs into `out` (⌈k/2⌉), rounded to nearest even.
///
/// # Safety
/// The CPU must have `avx512f` and `avx512bf16`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(in crate::gemm) unsafe fn to_bf16_row(row: &[f32], out: &mut [u32]) {
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
        *o = super::super::pack::bf16_pair(row, p);
    }
}
