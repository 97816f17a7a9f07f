//! `y = x Wᵀ + b` with bf16 weights and bf16 products, accumulated in f32: the ViT's
//! linear layers under `--dtype bf16` on CPUs with AVX512-BF16 (`vdpbf16ps`).
//!
//! candle's CPU backend has no fast bf16 GEMM: in bf16 the ViT ran slower than in f32.
//! Here each weight is rounded to bf16 and packed once, at load time, into the layout
//! `vdpbf16ps` reads ([`PackedWeight`]); per call the rows of `x` (f32) are rounded to
//! bf16, every product of two bf16 values is exact in f32, and the sums, the bias and the
//! output are f32. So the only precision given up is the rounding of the two inputs to
//! 8-bit mantissas; everything between the linear layers (layer norms, softmax, the
//! attention matmuls, residuals) stays f32 (`vision.rs`), and fc1's GELU is applied in
//! f32 to each finished tile ([`Epilogue::Gelu`]).
//!
//! Layout: the weight (n × k) becomes panels of [`NR`] output columns; within a panel,
//! for each pair of k indices `(2p, 2p+1)`, the [`NR`] columns' two bf16 values side by
//! side in one `u32` (low half: `2p`). An odd k is padded with a zero. One `vdpbf16ps`
//! then multiplies a broadcast pair of `x` by 16 columns' pairs and adds both products to
//! 16 f32 sums.
//!
//! Kernels: AVX512-BF16, chosen at run time, and a portable one that is the reference in
//! the tests (far too slow to be a fallback: without AVX512-BF16 the model keeps
//! candle's bf16). Each computes the same products; the summation order differs (the
//! hardware's rounding of the pair sum, flushed denormals), so results agree to float
//! rounding, not bit for bit.

use rayon::prelude::*;

/// Output columns per panel: four 16-lane f32 accumulators per row.
const NR: usize = 64;
/// Rows per register tile: 6 rows × 4 vectors are 24 accumulators of the 32 zmm registers,
/// enough independent sums to hide `vdpbf16ps` latency (Zen 4: one per cycle).
const MR: usize = 6;
/// k pairs per cache block: 1024 pairs × 64 columns of weights are 256 KiB, read from L2
/// for every tile of rows; the tile's sums go through memory once per block. ViT-g's
/// k = 1408 is then one block and fc2's k = 6144 three. On Zen 4 (1 MiB L2) this beat 256
/// pairs by 5–15% on every ViT-g shape; 32 and 64 were slower still.
const KC_PAIRS: usize = 1024;

/// The instruction set a kernel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// `vdpbf16ps` on 16 lanes (`avx512f` + `avx512bf16`).
    Avx512Bf16,
    /// Plain Rust, any CPU: the reference.
    Portable,
}

impl Kernel {
    /// The kernels this CPU runs, fastest first (the portable one always).
    pub fn available() -> Vec<Kernel> {
        [Kernel::Avx512Bf16, Kernel::Portable]
            .into_iter()
            .filter(|k| k.runs_here())
            .collect()
    }

    /// Whether this CPU has the instructions the kernel uses.
    pub fn runs_here(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Bf16 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bf16")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512Bf16 => false,
            Kernel::Portable => true,
        }
    }

    /// The kernel `--dtype bf16` uses on the CPU: AVX512-BF16 where the CPU has it, else
    /// `None` (candle's bf16, as before this module). `QSEEK_BF16_GEMM` overrides it for
    /// benchmarks and for testing every path end to end: `off` (`None`), `portable`
    /// (slow, the reference kernel), `avx512bf16` (ignored where the CPU lacks it).
    pub fn chosen() -> Option<Kernel> {
        static CHOSEN: std::sync::OnceLock<Option<Kernel>> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let available = Kernel::available();
            let wanted = match std::env::var("QSEEK_BF16_GEMM").as_deref() {
                Ok("off") => return None,
                Ok("portable") => Kernel::Portable,
                _ => Kernel::Avx512Bf16,
            };
            available.contains(&wanted).then_some(wanted)
        })
    }
}

/// A weight (n × k, as `nn.Linear` stores it) and its bias, rounded to bf16 and packed
/// for [`matmul_wt`] (see the module doc for the layout).
pub struct PackedWeight {
    n: usize,
    k: usize,
    /// `panels × pairs × NR` pairs of bf16.
    data: Vec<u32>,
    /// The bias in f32, zero-padded to `panels × NR`.
    bias: Vec<f32>,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight(bf16, {} × {})", self.n, self.k)
    }
}

/// The bf16 bits of `x`, rounded to nearest even.
fn bf16_bits(x: f32) -> u32 {
    u32::from(half::bf16::from_f32(x).to_bits())
}

impl PackedWeight {
    /// Packs `w` (n × k, row-major) and `bias` (n), rounding the weights to bf16.
    pub fn new(w: &[f32], bias: Option<&[f32]>, k: usize) -> Self {
        assert!(k > 0 && w.len().is_multiple_of(k), "w is not n × k");
        let n = w.len() / k;
        let pairs = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut data = vec![0u32; panels * pairs * NR];
        data.par_chunks_mut(pairs * NR)
            .enumerate()
            .for_each(|(j, panel)| {
                for c in 0..NR.min(n - j * NR) {
                    let row = &w[(j * NR + c) * k..(j * NR + c + 1) * k];
                    for (p, pair) in row.chunks(2).enumerate() {
                        let hi = pair.get(1).map_or(0, |&x| bf16_bits(x));
                        panel[p * NR + c] = bf16_bits(pair[0]) | hi << 16;
                    }
                }
            });
        let mut padded = vec![0f32; panels * NR];
        if let Some(b) = bias {
            assert_eq!(b.len(), n, "bias is not n");
            padded[..n].copy_from_slice(b);
        }
        Self {
            n,
            k,
            data,
            bias: padded,
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
}

/// What [`matmul_wt`] applies to each output once its sum is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    /// Nothing: `x Wᵀ + b`.
    None,
    /// GELU, erf form (`nn.GELU()`, candle's `gelu_erf`), through [`gelu_in_place`],
    /// on each tile while it is in L1: `fc1` needs no second pass over its output.
    Gelu,
}

/// `x` (rows × k, row-major, f32) times `w`ᵀ plus its bias, then `epilogue`: (rows × n),
/// row-major, with `kernel` (one of [`Kernel::available`]; panics on another).
pub fn matmul_wt(
    kernel: Kernel,
    x: &[f32],
    rows: usize,
    w: &PackedWeight,
    epilogue: Epilogue,
) -> Vec<f32> {
    let (n, k) = (w.n, w.k);
    assert!(
        kernel.runs_here(),
        "this CPU cannot run the {kernel:?} kernel"
    );
    assert_eq!(x.len(), rows * k, "x is not rows × k");
    let pairs = k.div_ceil(2);
    let a = pack_rows(kernel, x, rows, k);
    let mut y = vec![0f32; rows * n];
    let out = OutPtr(y.as_mut_ptr());
    (0..n.div_ceil(NR)).into_par_iter().for_each(|j| {
        let cols = NR.min(n - j * NR);
        let panel = &w.data[j * pairs * NR..(j + 1) * pairs * NR];
        let bias = &w.bias[j * NR..(j + 1) * NR];
        for p0 in (0..pairs).step_by(KC_PAIRS) {
            let kc = KC_PAIRS.min(pairs - p0);
            let b = &panel[p0 * NR..(p0 + kc) * NR];
            for i0 in (0..rows).step_by(MR) {
                let tile = Tile {
                    rows: MR.min(rows - i0),
                    a: &a[(i0 * pairs + p0 * MR)..(i0 * pairs + (p0 + kc) * MR)],
                    b,
                    init: (p0 == 0).then_some(bias),
                    // SAFETY: in bounds (row i0, column j·NR of y, rows × n); this task
                    // alone writes columns j·NR..j·NR + cols, and `y` outlives the tasks.
                    c: unsafe { out.get().add(i0 * n + j * NR) },
                    ldc: n,
                    cols,
                };
                // SAFETY: the tile lies within `a`, `b` and `y` (see `Tile`).
                unsafe { tile.run(kernel) };
                if epilogue == Epilogue::Gelu && p0 + kc == pairs {
                    for r in 0..tile.rows {
                        // SAFETY: as for the tile: this task's columns of row i0 + r.
                        let row =
                            unsafe { std::slice::from_raw_parts_mut(tile.c.add(r * n), cols) };
                        gelu_in_place(kernel, row);
                    }
                }
            }
        }
    });
    y
}

/// `y`'s buffer, shared by the tasks that write its disjoint column panels.
struct OutPtr(*mut f32);
// SAFETY: the tasks of `matmul_wt` write disjoint columns through it.
unsafe impl Sync for OutPtr {}
impl OutPtr {
    /// A method, so that closures capture the `Sync` wrapper and not the raw pointer.
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// One register tile: `rows` (≤ [`MR`]) rows × `cols` (≤ [`NR`]) columns of `y`, over
/// one block of `b.len() / NR` k pairs.
struct Tile<'a> {
    rows: usize,
    /// The bf16 pairs of `x`'s rows in this tile and block: pair `p`, row `r` at
    /// `a[p · MR + r]` ([`pack_rows`]).
    a: &'a [u32],
    /// The panel's pairs for this block: pair `p`, column `c` at `b[p · NR + c]`.
    b: &'a [u32],
    /// The bias (the first block), or `None`: add to what `c` holds.
    init: Option<&'a [f32]>,
    /// `y` at the tile's first row and column; row `r` at `c + r · ldc`.
    c: *mut f32,
    ldc: usize,
    cols: usize,
}

impl Tile<'_> {
    /// # Safety
    /// `c` must be valid for `rows` rows of `cols` floats `ldc` apart, written by no one
    /// else meanwhile; the CPU must run `kernel` ([`Kernel::runs_here`]).
    unsafe fn run(&self, kernel: Kernel) {
        assert!(self.rows <= MR && self.cols <= NR && self.b.len().is_multiple_of(NR));
        assert_eq!(
            self.a.len() / MR,
            self.b.len() / NR,
            "a and b cover other k"
        );
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Bf16 => x86::tile(self),
            _ => self.portable(),
        }
    }

    /// The reference: for each pair, the high product then the low one, as Intel
    /// documents `vdpbf16ps` (which may round differently, and flushes denormals).
    unsafe fn portable(&self) {
        let lo = |u: u32| f32::from_bits(u << 16);
        let hi = |u: u32| f32::from_bits(u & 0xffff_0000);
        for r in 0..self.rows {
            for col in 0..self.cols {
                let c = self.c.add(r * self.ldc + col);
                let mut acc = self.init.map_or_else(|| *c, |bias| bias[col]);
                for (p, a) in self.b.chunks_exact(NR).zip(self.a.chunks_exact(MR)) {
                    acc += hi(a[r]) * hi(p[col]);
                    acc += lo(a[r]) * lo(p[col]);
                }
                *c = acc;
            }
        }
    }
}

/// GELU in place, erf form: `0.5 x (1 + erf(x / √2))`, with erf from Abramowitz & Stegun
/// 7.1.26 (absolute error ≤ 1.5e-7, the formula of PyTorch's vectorised erf) and exp from
/// a degree-7 polynomial: within ~2e-7 · max(1, |x|) of the exact GELU, far below the
/// bf16 rounding of the products. Plain code, which the compiler vectorises under
/// `avx512f`.
pub fn gelu_in_place(kernel: Kernel, xs: &mut [f32]) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `matmul_wt` (or the caller) checked that the CPU runs this kernel.
        Kernel::Avx512Bf16 if kernel.runs_here() => unsafe { x86::gelu_in_place(xs) },
        _ => xs.iter_mut().for_each(|x| *x = gelu(*x)),
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
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// A row of `x` as bf16 pairs (⌈k/2⌉, an odd k padded with zero), rounded to nearest
/// even.
fn to_bf16_pairs(kernel: Kernel, row: &[f32], out: &mut [u32]) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `matmul_wt` checked that the CPU runs this kernel.
        Kernel::Avx512Bf16 => unsafe { x86::to_bf16_row(row, out) },
        _ => {
            for (o, pair) in out.iter_mut().zip(row.chunks(2)) {
                *o = bf16_bits(pair[0]) | pair.get(1).map_or(0, |&x| bf16_bits(x)) << 16;
            }
        }
    }
}

/// The rows of `x` (rows × k) as bf16 pairs, in tiles of [`MR`] rows: tile `t`, pair `p`,
/// row `r` at `(t · pairs + p) · MR + r` (rows past the last are zero). A tile's pairs for
/// a block of k are then one sequential stream.
fn pack_rows(kernel: Kernel, x: &[f32], rows: usize, k: usize) -> Vec<u32> {
    let pairs = k.div_ceil(2);
    let mut a = vec![0u32; rows.div_ceil(MR) * MR * pairs];
    a.par_chunks_mut(MR * pairs)
        .zip(x.par_chunks(MR * k))
        .for_each(|(tile, x)| {
            let mut row = vec![0u32; pairs];
            for (r, x_row) in x.chunks(k).enumerate() {
                to_bf16_pairs(kernel, x_row, &mut row);
                for (p, pair) in row.iter().enumerate() {
                    tile[p * MR + r] = *pair;
                }
            }
        });
    a
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Tile, MR, NR};

    /// # Safety
    /// As [`Tile::run`], on a CPU with `avx512f` and `avx512bf16`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile(t: &Tile) {
        match t.rows {
            6 => rows::<6>(t),
            5 => rows::<5>(t),
            4 => rows::<4>(t),
            3 => rows::<3>(t),
            2 => rows::<2>(t),
            _ => rows::<1>(t),
        }
    }

    // `tile` dispatches up to six rows; `rows` holds four 16-lane vectors per row.
    const _: () = assert!(MR == 6 && NR == 64);

    /// The mask of the lanes of vector `v` (columns 16v..16v + 16) below `cols`.
    fn lanes(cols: usize, v: usize) -> __mmask16 {
        let n = cols.saturating_sub(16 * v).min(16);
        ((1u32 << n) - 1) as __mmask16
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn rows<const R: usize>(t: &Tile) {
        let masks = [
            lanes(t.cols, 0),
            lanes(t.cols, 1),
            lanes(t.cols, 2),
            lanes(t.cols, 3),
        ];
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for (r, row) in acc.iter_mut().enumerate() {
            for (v, sum) in row.iter_mut().enumerate() {
                *sum = match t.init {
                    Some(bias) => _mm512_loadu_ps(bias.as_ptr().add(16 * v)),
                    // Masked lanes are not read (fault suppression), so the pointer may
                    // point past the row; `wrapping_add` keeps that computation defined.
                    None => _mm512_maskz_loadu_ps(masks[v], t.c.wrapping_add(r * t.ldc + 16 * v)),
                };
            }
        }
        let (a, b) = (t.a.as_ptr(), t.b.as_ptr());
        for p in 0..t.b.len() / NR {
            let bp = b.add(p * NR) as *const __m512i;
            let bv: [__m512bh; 4] = [
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp)),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(1))),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(2))),
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(bp.add(3))),
            ];
            for (r, row) in acc.iter_mut().enumerate() {
                let pair = *a.add(p * MR + r) as i32;
                let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair));
                for (sum, bv) in row.iter_mut().zip(bv) {
                    *sum = _mm512_dpbf16_ps(*sum, av, bv);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, sum) in row.iter().enumerate() {
                _mm512_mask_storeu_ps(t.c.wrapping_add(r * t.ldc + 16 * v), masks[v], *sum);
            }
        }
    }

    /// [`super::gelu_in_place`], compiled for AVX-512.
    ///
    /// # Safety
    /// The CPU must have `avx512f`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gelu_in_place(xs: &mut [f32]) {
        for x in xs {
            *x = super::gelu(*x);
        }
    }

    /// `row` (k floats) as bf16 pairs into `out` (⌈k/2⌉), rounded to nearest even.
    ///
    /// # Safety
    /// The CPU must have `avx512f` and `avx512bf16`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn to_bf16_row(row: &[f32], out: &mut [u32]) {
        let split = row.len() - row.len() % 16;
        let dst = out.as_mut_ptr() as *mut __m256i;
        for (i, chunk) in row[..split].chunks_exact(16).enumerate() {
            let bf = _mm512_cvtneps_pbh(_mm512_loadu_ps(chunk.as_ptr()));
            // 16 bf16 are 8 pairs, the lower index in the low half (little-endian).
            _mm256_storeu_si256(dst.add(i), std::mem::transmute::<__m256bh, __m256i>(bf));
        }
        for (o, pair) in out[split / 2..].iter_mut().zip(row[split..].chunks(2)) {
            *o = super::bf16_bits(pair[0]) | pair.get(1).map_or(0, |&x| super::bf16_bits(x)) << 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn round(x: f32) -> f64 {
        half::bf16::from_f32(x).to_f64()
    }

    #[test]
    fn every_kernel_matches_a_float64_reference_of_the_rounded_inputs() {
        // (rows, k, n): the ViT-g shapes' widths at a few rows, and sizes that leave
        // tails of rows (MR), columns (NR), an odd k and several k blocks (KC_PAIRS:
        // k = 6144).
        let shapes = [
            (1, 1, 1),
            (6, 2, 64),
            (7, 3, 65),
            (13, 37, 130),
            (5, 300, 129),
            (12, 588, 70),
            (9, 1408, 200),
            (2, 6144, 17),
        ];
        for kernel in Kernel::available() {
            for (rows, k, n) in shapes {
                for with_bias in [false, true] {
                    let (x, w, b) = (values(rows * k, 1), values(n * k, 2), values(n, 3));
                    let packed = PackedWeight::new(&w, with_bias.then_some(&b[..]), k);
                    assert_eq!((packed.n(), packed.k()), (n, k));
                    let y = matmul_wt(kernel, &x, rows, &packed, Epilogue::None);
                    assert_eq!(y.len(), rows * n);
                    for i in 0..rows {
                        for j in 0..n {
                            let dot: f64 = (0..k)
                                .map(|p| round(x[i * k + p]) * round(w[j * k + p]))
                                .sum();
                            let exact = dot + if with_bias { b[j] as f64 } else { 0.0 };
                            let got = y[i * n + j] as f64;
                            // f32 accumulation over k exact products of size <= 1.
                            let tolerance = 1e-6 * k as f64;
                            assert!(
                                (got - exact).abs() <= tolerance,
                                "{kernel:?} {rows}x{k}x{n} bias {with_bias} [{i},{j}]: {got} vs {exact}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn gelu_matches_candles_exact_gelu() {
        use candle_core::{Device, Tensor};
        // -10..10 in steps of 1/64, and values near 0.
        let xs: Vec<f32> = (-640..=640)
            .map(|i| i as f32 / 64.0)
            .chain([1e-6, -1e-6, 1e-30, 0.0, -0.0, -30.0, -100.0, 100.0])
            .collect();
        let exact = Tensor::new(xs.as_slice(), &Device::Cpu)
            .and_then(|t| t.gelu_erf())
            .and_then(|t| t.to_vec1::<f32>())
            .unwrap();
        for kernel in Kernel::available() {
            let mut got = xs.clone();
            gelu_in_place(kernel, &mut got);
            for ((x, g), e) in xs.iter().zip(&got).zip(&exact) {
                assert!(
                    (g - e).abs() <= 3e-7 * x.abs().max(1.0),
                    "{kernel:?} gelu({x}) = {g}, exact {e}"
                );
            }
        }
    }

    #[test]
    fn the_gelu_epilogue_is_gelu_of_the_product() {
        let (rows, k, n) = (13, 300, 130);
        let (x, w, b) = (values(rows * k, 4), values(n * k, 5), values(n, 6));
        let packed = PackedWeight::new(&w, Some(&b), k);
        for kernel in Kernel::available() {
            let mut expected = matmul_wt(kernel, &x, rows, &packed, Epilogue::None);
            gelu_in_place(kernel, &mut expected);
            let got = matmul_wt(kernel, &x, rows, &packed, Epilogue::Gelu);
            assert_eq!(got, expected, "{kernel:?}");
        }
    }

    #[test]
    fn every_kernel_rounds_inputs_to_nearest_even() {
        // (f32, its bf16 bits): exact, halfway down to even, halfway up to even, above
        // halfway, negative, and 0x3F80_8000 + 1 (just past halfway).
        let table: [(f32, u32); 6] = [
            (1.0, 0x3F80),
            (f32::from_bits(0x3F80_8000), 0x3F80),
            (f32::from_bits(0x3F81_8000), 0x3F82),
            (f32::from_bits(0x3F80_C000), 0x3F81),
            (-2.5, 0xC020),
            (f32::from_bits(0x3F80_8001), 0x3F81),
        ];
        // 40 values: a SIMD part and a tail, the table repeated.
        let x: Vec<f32> = table.iter().cycle().take(40).map(|(v, _)| *v).collect();
        let bits: Vec<u32> = table.iter().cycle().take(40).map(|(_, b)| *b).collect();
        for kernel in Kernel::available() {
            let mut a = vec![0; x.len() / 2];
            to_bf16_pairs(kernel, &x, &mut a);
            let got: Vec<u32> = a.iter().flat_map(|p| [p & 0xffff, p >> 16]).collect();
            assert_eq!(got, bits, "{kernel:?}");
        }
    }
}
