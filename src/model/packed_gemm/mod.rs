//! `y = x Wᵀ + b` over weights packed once (`ops::Linear` packs at a layer's first call),
//! for the CPU: the ViT's linear layers under `--dtype bf16` (bf16 weights, bf16
//! products, f32 sums), and in f32 the ViT's under `--dtype f32` and the Q-Former's.
//!
//! candle's CPU GEMM packs the weight matrix into its own layout on every call. For the
//! ViT in bf16 there is no fast kernel at all (bf16 ran slower than f32); for the
//! Q-Former's text pass (a query's ~12 tokens, or a server's batch of queries) the
//! per-call packing of ~340 MB of weights was a fifth to a half of the time
//! (`benches/README.md`). Here each weight is packed once ([`PackedWeight`]) in one of two
//! [`Format`]s:
//!
//! * **bf16** (`--dtype bf16` on AVX512-BF16: the ViT's linear layers and attention
//!   products, and ITM's Q-Former): each weight is rounded to bf16; per call the rows of
//!   `x` (f32) are rounded to bf16, every product of two bf16 values is exact in f32,
//!   and the sums, the bias and the output are f32. So the only precision given up is
//!   the rounding of the two inputs to 8-bit mantissas; everything else (layer norms,
//!   softmax, GELU, residuals) stays f32 (`vision.rs`, `retrieval.rs`).
//! * **int8** (`--dtype int8`: the ViT's encoder layers): each weight column is
//!   rounded to int8 with its own scale, each row of `x` at each call with its own;
//!   `vpdpbusd` (AVX512-VNNI or AVX-VNNI) sums the products of the codes exactly in i32;
//!   each finished tile is then scaled back to f32 and gets the bias, before its
//!   epilogue (`int8.rs`). What is given up: the two roundings, to a step of 1/127 of the
//!   row's (or column's) largest magnitude. AVX2 CPUs without VNNI have two ways, both
//!   exact sums: by default the weights rounded to 7 bits instead ([`Format::Int7`],
//!   a step of 1/64), whose products `vpmaddubsw` sums without saturating; or
//!   (`QSEEK_INT8_GEMM=madd`) int8's own codes widened to i16 ([`Format::Int8Pairs`])
//!   for `vpmaddwd`, ~0.7× as fast.
//! * **f32** (the Q-Former's image and text passes in every dtype; the ViT in f32): the
//!   weights as they are, f32 FMAs. The result is within float rounding of candle's
//!   (another summation order), not bit-identical.
//!
//! Attention packs per call: a head's keys as a weight read in place ([`Rows`], some
//! columns of the stacked q/k/v), its values as the transposed weight
//! ([`PackedWeight::from_columns`]).
//!
//! Both can apply GELU ([`Epilogue::Gelu`]) or add a residual ([`Epilogue::Residual`]) to each
//! finished tile while it is in L1.
//!
//! Layout: the weight (n × k) becomes panels of [`NR`] output columns; within a panel, for
//! each *unit* of k (bf16: a pair of k indices `(2p, 2p+1)`; f32: one index), the
//! [`NR`] columns' values side by side. A bf16 unit is the two bf16 values in one `u32`
//! (low half: `2p`; an odd k is padded with a zero), which one `vdpbf16ps` multiplies by
//! a broadcast pair of `x` and adds to 16 f32 sums; an f32 unit is one `vfmadd` per 16
//! columns.
//!
//! Kernels ([`Kernel`]): AVX512-BF16 for bf16; AVX-512F and AVX2+FMA for f32;
//! AVX512-VNNI and 256-bit VNNI (AVX-VNNI, for CPUs without AVX-512) for int8, and
//! AVX2's `vpmaddubsw` (7-bit weights) and `vpmaddwd` for int8 on CPUs without VNNI;
//! each chosen at run time, and a portable one per format that is the reference in the
//! tests (not a fallback: without the instructions the model keeps candle's GEMM). The kernels
//! of one format compute the same products; the summation order differs (the hardware's
//! rounding of the pair sum, flushed denormals, FMA), so results agree to float
//! rounding, not bit for bit.

use rayon::prelude::*;

mod activations;
mod int8;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use activations::{gelu_in_place, softmax_rows};
use int8::{Pair, Quad};

/// Output columns per panel: four 16-lane f32 accumulators per row.
const NR: usize = 64;
/// Rows per register tile: 6 rows × 4 vectors are 24 accumulators of the 32 zmm registers,
/// enough independent sums to hide `vdpbf16ps`/`vfmadd` latency.
const MR: usize = 6;
/// Units of k per cache block: 1024 units × 64 columns × 4 bytes are 256 KiB of weights,
/// read from L2 for every tile of rows; the tile's sums go through memory once per block.
/// ViT-g's k = 1408 is then one bf16 block and fc2's k = 6144 three; the Q-Former's
/// 768 one f32 block, 3072 three. On Zen 4 (1 MiB L2) this beat 256 pairs by 5–15% on
/// every ViT-g shape; 32 and 64 were slower still.
const KC: usize = 1024;

/// How a [`PackedWeight`] stores the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Rounded to bf16, in pairs of k.
    Bf16,
    /// As they are.
    F32,
    /// Rounded to int8, one scale per output column, in quads of k; each row of `x`
    /// rounded to int8 at each call, one scale per row (`int8.rs`).
    Int8,
    /// The codes of [`Format::Int8`] widened to i16, in pairs of k: for CPUs with AVX2 but
    /// no VNNI (`vpmaddwd`), at twice the bytes per weight.
    Int8Pairs,
    /// As [`Format::Int8`], with each weight column's codes in [-64, 64] (half the step):
    /// for CPUs with AVX2 but no VNNI, whose `vpmaddubsw` sums two products of a row's u8
    /// and such a code in i16 without saturating. The rows' codes are int8's.
    Int7,
}

impl Format {
    /// Units of k ([`NR`] values of a panel each) for `k` inputs.
    fn units(self, k: usize) -> usize {
        match self {
            Format::Bf16 => k.div_ceil(2),
            Format::F32 => k,
            Format::Int8 | Format::Int7 => k.div_ceil(4),
            Format::Int8Pairs => k.div_ceil(2),
        }
    }
}

/// The instruction set a kernel uses, and so the [`Format`] it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// bf16: `vdpbf16ps` on 16 lanes (`avx512f` + `avx512bf16`).
    Avx512Bf16,
    /// bf16 in plain Rust, any CPU: the reference.
    Portable,
    /// f32: 16-lane FMA (`avx512f`).
    Avx512F32,
    /// f32: 8-lane FMA (`avx2` + `fma`).
    Avx2F32,
    /// f32 in plain Rust, any CPU: the reference.
    PortableF32,
    /// int8: `vpdpbusd` on 16 lanes (`avx512f` + `avx512vnni`).
    Avx512Vnni,
    /// int8: `vpdpbusd` on 8 lanes (`avx2` + `avxvnni`, as Intel's Core CPUs from Alder
    /// Lake on have; or `avx512vnni` + `avx512vl`, where it is tested).
    Avx2Vnni,
    /// int8 without VNNI ([`Format::Int8Pairs`]): `vpmaddwd` + `vpaddd` on 8 lanes
    /// (`avx2` + `fma`).
    Avx2Madd,
    /// int8 in plain Rust, any CPU: the reference.
    PortableInt8,
    /// int8 rows by 7-bit weights ([`Format::Int7`]): `vpmaddubsw` + `vpmaddwd` (by ones)
    /// + `vpaddd` on 8 lanes (`avx2`), the fastest int8 on AVX2 CPUs without VNNI.
    Avx2Maddubs,
    /// [`Format::Int7`] in plain Rust, any CPU: the reference.
    PortableInt7,
}

impl Kernel {
    /// The format the kernel reads.
    pub fn format(self) -> Format {
        match self {
            Kernel::Avx512Bf16 | Kernel::Portable => Format::Bf16,
            Kernel::Avx512F32 | Kernel::Avx2F32 | Kernel::PortableF32 => Format::F32,
            Kernel::Avx512Vnni | Kernel::Avx2Vnni | Kernel::PortableInt8 => Format::Int8,
            Kernel::Avx2Madd => Format::Int8Pairs,
            Kernel::Avx2Maddubs | Kernel::PortableInt7 => Format::Int7,
        }
    }

    /// The kernels of `format` this CPU runs, fastest first (the portable one always).
    pub fn available(format: Format) -> Vec<Kernel> {
        let all = match format {
            Format::Bf16 => &[Kernel::Avx512Bf16, Kernel::Portable][..],
            Format::F32 => &[Kernel::Avx512F32, Kernel::Avx2F32, Kernel::PortableF32][..],
            Format::Int8 => &[Kernel::Avx512Vnni, Kernel::Avx2Vnni, Kernel::PortableInt8][..],
            Format::Int8Pairs => &[Kernel::Avx2Madd][..],
            Format::Int7 => &[Kernel::Avx2Maddubs, Kernel::PortableInt7][..],
        };
        all.iter().copied().filter(|k| k.runs_here()).collect()
    }

    /// Whether this CPU has the instructions the kernel uses.
    pub fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Kernel::Avx512Bf16 => has!("avx512f") && has!("avx512bf16"),
                Kernel::Avx512F32 => has!("avx512f"),
                Kernel::Avx2F32 | Kernel::Avx2Madd | Kernel::Avx2Maddubs => {
                    has!("avx2") && has!("fma")
                }
                Kernel::Avx512Vnni => has!("avx512f") && has!("avx512vnni"),
                Kernel::Avx2Vnni => {
                    has!("avx2")
                        && has!("fma")
                        && (has!("avxvnni") || (has!("avx512vnni") && has!("avx512vl")))
                }
                Kernel::Portable
                | Kernel::PortableF32
                | Kernel::PortableInt8
                | Kernel::PortableInt7 => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        matches!(
            self,
            Kernel::Portable | Kernel::PortableF32 | Kernel::PortableInt8 | Kernel::PortableInt7
        )
    }

    /// The kernel for `format` on the CPU: the fastest SIMD one this CPU runs, else `None`
    /// (candle's GEMM, as before this module). For int8 ([`Format::Int8`],
    /// [`Format::Int8Pairs`] or [`Format::Int7`]: one choice) that is a kernel of any of
    /// the three, which its [`format`](Self::format) tells: the VNNI ones, else
    /// [`Kernel::Avx2Maddubs`] (7-bit weights). An environment variable overrides it for
    /// benchmarks and for testing every path end to end: `QSEEK_BF16_GEMM` (bf16) or
    /// `QSEEK_F32_GEMM` (f32) or `QSEEK_INT8_GEMM` (int8) set to `off` (`None`),
    /// `portable` (slow, the reference kernel), or a kernel's [`name`](Self::name)
    /// (`avx512`, `avx2`, `maddubs`, `madd`, `portable7`), ignored where the CPU lacks it.
    pub fn chosen(format: Format) -> Option<Kernel> {
        static CHOSEN: std::sync::OnceLock<[Option<Kernel>; 3]> = std::sync::OnceLock::new();
        let chosen =
            CHOSEN.get_or_init(|| [Format::Bf16, Format::F32, Format::Int8].map(Kernel::choose));
        chosen[match format {
            Format::Int8Pairs | Format::Int7 => Format::Int8,
            format => format,
        } as usize]
    }

    fn choose(format: Format) -> Option<Kernel> {
        let value = std::env::var(Kernel::variable(format)).ok();
        Kernel::choose_from(format, value.as_deref())
    }

    /// The environment variable that overrides [`chosen`](Self::chosen) for `format`.
    fn variable(format: Format) -> &'static str {
        match format {
            Format::Bf16 => "QSEEK_BF16_GEMM",
            Format::F32 => "QSEEK_F32_GEMM",
            Format::Int8 | Format::Int8Pairs | Format::Int7 => "QSEEK_INT8_GEMM",
        }
    }

    /// The kernel for `format` when its [`variable`](Self::variable) is `value` (`None`:
    /// not set, or not Unicode), as [`chosen`](Self::chosen) describes.
    fn choose_from(format: Format, value: Option<&str>) -> Option<Kernel> {
        let portable = match format {
            Format::Bf16 => Kernel::Portable,
            Format::F32 => Kernel::PortableF32,
            Format::Int8 | Format::Int8Pairs | Format::Int7 => Kernel::PortableInt8,
        };
        let available = match format {
            // Fastest first: VNNI, else 7-bit weights, else the pairs; then the portable
            // kernels.
            Format::Int8 | Format::Int8Pairs | Format::Int7 => Kernel::int8_family(),
            _ => Kernel::available(format),
        };
        let fastest = available
            .first()
            .copied()
            .filter(|k| k.vectors() != Vectors::Baseline);
        match value {
            Some("off") => None,
            Some("portable") => Some(portable),
            Some(name) => available
                .iter()
                .copied()
                .find(|k| k.name() == name)
                .or(fastest),
            None => fastest,
        }
    }

    /// The vector instructions the kernel's code around its tiles (GELU) is compiled for.
    fn vectors(self) -> Vectors {
        match self {
            Kernel::Avx512Bf16 | Kernel::Avx512F32 | Kernel::Avx512Vnni => Vectors::Avx512,
            Kernel::Avx2F32 | Kernel::Avx2Vnni | Kernel::Avx2Madd | Kernel::Avx2Maddubs => {
                Vectors::Avx2
            }
            Kernel::Portable
            | Kernel::PortableF32
            | Kernel::PortableInt8
            | Kernel::PortableInt7 => Vectors::Baseline,
        }
    }

    /// The int8 kernels of the three int8 formats this CPU runs, fastest first, the
    /// portable ones last.
    pub fn int8_family() -> Vec<Kernel> {
        let mut kernels: Vec<Kernel> = [Format::Int8, Format::Int7, Format::Int8Pairs]
            .into_iter()
            .flat_map(Kernel::available)
            .collect();
        // Stable: the SIMD ones keep their order (VNNI, 7-bit, pairs), then int8's
        // portable kernel and int7's.
        kernels.sort_by_key(|k| k.vectors() == Vectors::Baseline);
        kernels
    }

    /// The name the environment variables of [`chosen`](Self::chosen) give it: the
    /// instruction set's width (`avx512`, `avx2`), the instruction for the AVX2 int8
    /// kernels without VNNI (`maddubs`, `madd`), or `portable` (`portable7` for
    /// [`Format::Int7`]'s).
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512Bf16 | Kernel::Avx512F32 | Kernel::Avx512Vnni => "avx512",
            Kernel::Avx2F32 | Kernel::Avx2Vnni => "avx2",
            Kernel::Avx2Madd => "madd",
            Kernel::Avx2Maddubs => "maddubs",
            Kernel::Portable | Kernel::PortableF32 | Kernel::PortableInt8 => "portable",
            Kernel::PortableInt7 => "portable7",
        }
    }
}

/// What a [`Kernel`]'s code beside its tiles is compiled for: AVX-512, AVX2 + FMA, or the
/// build's baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vectors {
    Avx512,
    Avx2,
    Baseline,
}

/// A weight (n × k, as `nn.Linear` stores it) and its bias, packed for [`matmul_wt`] in
/// one [`Format`] (see the module doc for the layout).
pub struct PackedWeight {
    n: usize,
    k: usize,
    data: Data,
    /// The bias in f32, zero-padded to `panels × NR`.
    bias: Vec<f32>,
}

/// `panels × units × NR` values.
enum Data {
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
fn padded_bias(n: usize, bias: Option<&[f32]>) -> Vec<f32> {
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
fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    let rounded = (b + 0x7FFF + ((b >> 16) & 1)) >> 16;
    if x.is_nan() {
        (b >> 16) | 0x40
    } else {
        rounded
    }
}

/// The bf16 unit `p` of a row: its values `2p` and `2p + 1` (zero past the end).
fn bf16_pair(row: &[f32], p: usize) -> u32 {
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
        let (n, k) = (w.rows, w.k);
        assert!(k > 0, "a weight of no inputs");
        let data = match format {
            Format::Bf16 => Data::Bf16(pack_panels(w, format.units(k), bf16_pair)),
            Format::F32 => Data::F32(pack_panels(w, k, |row, p| row[p])),
            // The bias is applied after the scaling (`int8::matmul`); the tiles start
            // from zero.
            Format::Int8 => Data::Int8(int8::pack_weight(w, bias, int8::LEVELS)),
            Format::Int8Pairs => Data::Int8Pairs(int8::pack_weight(w, bias, int8::LEVELS)),
            Format::Int7 => Data::Int7(int8::pack_weight(w, bias, int8::WEIGHT_LEVELS_INT7)),
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

/// A matrix read where it lies: `rows` rows of `k` values, row `i` at
/// `data[i · stride..][..k]`. With a stride wider than `k` it is some columns of a wider
/// matrix: one head of a stacked q/k/v, say.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    data: &'a [f32],
    rows: usize,
    k: usize,
    stride: usize,
}

impl<'a> Rows<'a> {
    /// `rows` × `k`, row-major; `data` holds exactly those values.
    pub fn new(data: &'a [f32], rows: usize, k: usize) -> Self {
        assert_eq!(data.len(), rows * k, "not rows × k values");
        Self::strided(data, rows, k, k)
    }

    /// `rows` rows of `k` values, each `stride` after the last, from `data`'s start.
    pub fn strided(data: &'a [f32], rows: usize, k: usize, stride: usize) -> Self {
        assert!(
            rows == 0 || (rows - 1) * stride + k <= data.len(),
            "{rows} rows of {k} every {stride} do not fit in {} values",
            data.len()
        );
        Self {
            data,
            rows,
            k,
            stride,
        }
    }

    fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.stride..i * self.stride + self.k]
    }
}

/// What [`matmul_wt`] applies to each output once its sum is complete.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Epilogue<'a> {
    /// Nothing: `x Wᵀ + b`.
    None,
    /// GELU, erf form (`nn.GELU()`, candle's `gelu_erf`), through [`gelu_in_place`],
    /// on each tile while it is in L1: `fc1` needs no second pass over its output.
    Gelu,
    /// Adds a residual (rows × n, row-major) to each output, on each tile while it is
    /// in L1: `x Wᵀ + b + r`, the bits of adding `r` afterwards, without a second pass
    /// over the output or a new buffer.
    Residual(&'a [f32]),
}

/// `x` (rows × k, row-major, f32) times `w`ᵀ plus its bias, then `epilogue`: (rows × n),
/// row-major, with `kernel` (one of [`Kernel::available`] for `w`'s format; panics on
/// another).
pub fn matmul_wt(
    kernel: Kernel,
    x: &[f32],
    rows: usize,
    w: &PackedWeight,
    epilogue: Epilogue,
) -> Vec<f32> {
    matmul_rows(kernel, Rows::new(x, rows, w.k), w, epilogue)
}

/// [`matmul_wt`] of `x` read where it lies ([`Rows`]: some columns of a wider matrix).
pub fn matmul_rows(kernel: Kernel, x: Rows, w: &PackedWeight, epilogue: Epilogue) -> Vec<f32> {
    let rows = x.rows;
    if let Epilogue::Residual(r) = epilogue {
        assert_eq!(r.len(), rows * w.n, "the residual is not rows × n");
    }
    assert!(
        kernel.runs_here(),
        "this CPU cannot run the {kernel:?} kernel"
    );
    assert_eq!(
        kernel.format(),
        w.format(),
        "{kernel:?} reads another format"
    );
    assert_eq!(x.k, w.k, "x's rows are not k wide");
    match &w.data {
        Data::Bf16(data) => {
            let a = pack_rows(x, Format::Bf16.units(w.k), |_, row, out| {
                to_bf16_pairs(kernel, row, out)
            });
            drive(kernel, rows, w, data, &a, None, epilogue)
        }
        Data::F32(data) => {
            let a = pack_rows(x, w.k, |_, row, out| out.copy_from_slice(row));
            drive(kernel, rows, w, data, &a, None, epilogue)
        }
        Data::Int8(packed) => int8::matmul(kernel, x, w, packed, epilogue),
        Data::Int8Pairs(packed) => int8::matmul(kernel, x, w, packed, epilogue),
        Data::Int7(packed) => int8::matmul(kernel, x, w, packed, epilogue),
    }
}

/// The loop over panels (in parallel), k blocks and tiles of rows, for either format.
fn drive<E: Element>(
    kernel: Kernel,
    rows: usize,
    w: &PackedWeight,
    data: &[E],
    a: &[E],
    dequant: Option<&int8::Dequant>,
    epilogue: Epilogue,
) -> Vec<f32> {
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
                unsafe { tile.run(kernel) };
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
                        match epilogue {
                            Epilogue::Gelu => gelu_in_place(kernel, row),
                            Epilogue::Residual(residual) => {
                                let at = (i0 + r) * n + j * NR;
                                for (y, x) in row.iter_mut().zip(&residual[at..at + cols]) {
                                    *y += x;
                                }
                            }
                            Epilogue::None => {}
                        }
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

/// An output buffer shared by tasks that write disjoint parts of it: `drive`'s column
/// panels, attention's heads (`ops`).
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: it is only a pointer; the unsafe code that writes through it makes each task
// write disjoint elements, of a buffer that outlives the tasks (`drive`: panel j's
// columns; `ops`: a head's columns of a batch's rows), and no one reads them meanwhile.
unsafe impl Sync for OutPtr {}
impl OutPtr {
    /// A method, so that closures capture the `Sync` wrapper and not the raw pointer.
    pub(crate) fn get(&self) -> *mut f32 {
        self.0
    }
}

/// One register tile: `rows` (≤ [`MR`]) rows × `cols` (≤ [`NR`]) columns of `y`, over
/// one block of `b.len() / NR` units of k.
struct Tile<'a, E> {
    rows: usize,
    /// `x`'s units in this tile and block: unit `p`, row `r` at `a[p · MR + r]`
    /// ([`pack_rows`]).
    a: &'a [E],
    /// The panel's units for this block: unit `p`, column `c` at `b[p · NR + c]`.
    b: &'a [E],
    /// The bias (the first block), or `None`: add to what `c` holds.
    init: Option<&'a [f32]>,
    /// `y` at the tile's first row and column; row `r` at `c + r · ldc`.
    c: *mut f32,
    ldc: usize,
    cols: usize,
}

/// A unit of a [`Format`]: `u32` (a pair of bf16) or `f32`, and its tile kernels.
trait Element: Copy + Default + Send + Sync {
    /// # Safety
    /// As [`Tile::run`].
    unsafe fn tile(tile: &Tile<Self>, kernel: Kernel);
    /// The sum of products of one row and column over the tile's block, added to `acc`:
    /// the portable kernel's inner loop.
    fn dot(acc: f32, a: Self, b: Self) -> f32;
}

impl Element for u32 {
    unsafe fn tile(tile: &Tile<Self>, kernel: Kernel) {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `tile` meets `Tile::run`'s contract (this fn's), and the CPU runs
            // `kernel` (the same): AVX-512F and AVX512-BF16 (`Kernel::runs_here`).
            Kernel::Avx512Bf16 => unsafe { x86::tile_bf16(tile) },
            // SAFETY: `tile` meets `Tile::run`'s contract (this fn's), `portable`'s.
            _ => unsafe { tile.portable() },
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
    unsafe fn tile(tile: &Tile<Self>, kernel: Kernel) {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `tile` meets `Tile::run`'s contract (this fn's), and the CPU runs
            // `kernel` (the same): AVX-512F and AVX512-VNNI (`Kernel::runs_here`).
            Kernel::Avx512Vnni => unsafe { x86::tile_i8(tile) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above; `Kernel::runs_here` checked AVX2 and either AVX-VNNI or
            // AVX512-VNNI + AVX512-VL, `tile_i8_ymm`'s requirement.
            Kernel::Avx2Vnni => unsafe { x86::tile_i8_ymm(tile) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above; `Kernel::runs_here` checked AVX2.
            Kernel::Avx2Maddubs => unsafe { x86::tile_i8_maddubs(tile) },
            // SAFETY: `tile` meets `Tile::run`'s contract (this fn's), `portable`'s.
            _ => unsafe { tile.portable() },
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
    unsafe fn tile(tile: &Tile<Self>, kernel: Kernel) {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `tile` meets `Tile::run`'s contract (this fn's), and the CPU runs
            // `kernel` (the same): AVX2 (`Kernel::runs_here`).
            Kernel::Avx2Madd => unsafe { x86::tile_i8_madd(tile) },
            // SAFETY: `tile` meets `Tile::run`'s contract (this fn's), `portable`'s.
            _ => unsafe { tile.portable() },
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
    unsafe fn tile(tile: &Tile<Self>, kernel: Kernel) {
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `tile` meets `Tile::run`'s contract (this fn's), and the CPU runs
            // `kernel` (the same): AVX-512F (`Kernel::runs_here`).
            Kernel::Avx512F32 => unsafe { x86::tile_f32_avx512(tile) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above; `Kernel::runs_here` checked AVX2 and FMA.
            Kernel::Avx2F32 => unsafe { x86::tile_f32_avx2(tile) },
            // SAFETY: `tile` meets `Tile::run`'s contract (this fn's), `portable`'s.
            _ => unsafe { tile.portable() },
        }
    }

    fn dot(acc: f32, a: f32, b: f32) -> f32 {
        acc + a * b
    }
}

impl<E: Element> Tile<'_, E> {
    /// # Safety
    /// `c` must be valid for `rows` rows of `cols` floats `ldc` apart (f32-aligned),
    /// initialised where `init` is `None`, and read or written by no one else meanwhile;
    /// the CPU must run `kernel` ([`Kernel::runs_here`]), which reads `E`'s format.
    unsafe fn run(&self, kernel: Kernel) {
        assert!(self.rows <= MR && self.cols <= NR && self.b.len().is_multiple_of(NR));
        assert_eq!(
            self.a.len() / MR,
            self.b.len() / NR,
            "a and b cover other k"
        );
        // The SIMD kernels also run one row when `rows` is 0, and read NR bias values.
        assert!(self.rows > 0 && self.init.is_none_or(|bias| bias.len() >= NR));
        // SAFETY: this fn's contract, with the asserts above: the tile's bounds that the
        // kernels rely on (`x86.rs`, at the top).
        unsafe { E::tile(self, kernel) };
    }

    /// The reference kernel.
    ///
    /// # Safety
    /// As [`Tile::run`].
    unsafe fn portable(&self) {
        for r in 0..self.rows {
            for col in 0..self.cols {
                // SAFETY: r < rows and col < cols: an f32 of the tile's rows, which this
                // fn's contract lets it read (initialised when `init` is `None`) and write;
                // aligned.
                let c = unsafe { self.c.add(r * self.ldc + col) };
                // SAFETY: as above.
                let mut acc = self.init.map_or_else(|| unsafe { *c }, |bias| bias[col]);
                for (p, a) in self.b.chunks_exact(NR).zip(self.a.chunks_exact(MR)) {
                    acc = E::dot(acc, a[r], p[col]);
                }
                // SAFETY: as above.
                unsafe { *c = acc };
            }
        }
    }
}

/// A row of `x` as bf16 pairs (⌈k/2⌉, an odd k padded with zero), rounded to nearest
/// even.
fn to_bf16_pairs(kernel: Kernel, row: &[f32], out: &mut [u32]) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `matmul_rows`, the only caller, asserted that the CPU runs this kernel:
        // AVX-512F and AVX512-BF16, `to_bf16_row`'s one requirement (it checks `out`).
        Kernel::Avx512Bf16 => unsafe { x86::to_bf16_row(row, out) },
        _ => out
            .iter_mut()
            .enumerate()
            .for_each(|(p, o)| *o = bf16_pair(row, p)),
    }
}

/// The rows of `x` (rows × k) as units (`convert(i, row, out)` writes row `i`'s), in tiles of [`MR`]
/// rows: tile `t`, unit `p`, row `r` at `(t · units + p) · MR + r` (rows past the last are
/// zero). A tile's units for a block of k are then one sequential stream.
fn pack_rows<E: Copy + Default + Send + Sync>(
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
fn advise_huge_pages<T>(buffer: &mut Vec<T>) {
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

#[cfg(test)]
mod tests {
    use super::activations::softmax_rows_body;
    use super::*;

    #[test]
    fn a_buffer_advised_huge_pages_keeps_its_capacity_and_what_is_written() {
        // 40 MiB (advised, wherever it starts) and 1 MiB (too small: left alone).
        for len in [10 << 20, 1 << 18] {
            let mut buffer: Vec<f32> = Vec::with_capacity(len);
            advise_huge_pages(&mut buffer);
            // The advice is on the mapping: `hg` in its flags (`madvise(MADV_HUGEPAGE)`)
            // where Linux has transparent huge pages at all. The middle of the buffer
            // lies in the advised range (its whole 2 MiB pages), wherever it starts.
            #[cfg(target_os = "linux")]
            {
                let thp = std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists();
                let middle = buffer.as_ptr() as usize + len * std::mem::size_of::<f32>() / 2;
                let flags = vm_flags(middle);
                let advised = len * std::mem::size_of::<f32>() >= 32 << 20;
                assert_eq!(
                    flags.iter().any(|f| f == "hg"),
                    thp && advised,
                    "{len} floats, transparent huge pages {thp}: VmFlags {flags:?}"
                );
            }
            assert!(buffer.capacity() >= len);
            buffer.extend((0..len).map(|i| i as f32));
            assert!(buffer.iter().enumerate().all(|(i, &x)| x == i as f32));
        }
    }

    /// The `VmFlags` of this process's mapping that holds `address` (`/proc/self/smaps`).
    #[cfg(target_os = "linux")]
    fn vm_flags(address: usize) -> Vec<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
        let mut holds = false;
        for line in smaps.lines() {
            // A mapping's first line starts with its range, `start-end` in hex.
            let range = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'))
                .and_then(|(start, end)| {
                    let hex = |h| usize::from_str_radix(h, 16).ok();
                    Some((hex(start)?, hex(end)?))
                });
            if let Some((start, end)) = range {
                holds = (start..end).contains(&address);
            } else if let Some(flags) = line.strip_prefix("VmFlags:").filter(|_| holds) {
                return flags.split_whitespace().map(String::from).collect();
            }
        }
        panic!("no mapping in /proc/self/smaps holds {address:#x}");
    }

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

    /// What a format's kernels multiply: `x` rounded to bf16, or `x` (int8's codes
    /// depend on their row: its own tests).
    fn input(format: Format, x: f32) -> f64 {
        match format {
            Format::Bf16 => half::bf16::from_f32(x).to_f64(),
            Format::F32 | Format::Int8 | Format::Int8Pairs | Format::Int7 => x as f64,
        }
    }

    /// Every kernel of the bf16 and f32 formats.
    fn every_kernel() -> Vec<Kernel> {
        let mut kernels = Kernel::available(Format::Bf16);
        kernels.extend(Kernel::available(Format::F32));
        kernels
    }

    #[test]
    fn rows_read_in_place_and_a_weight_packed_from_its_columns_give_the_same_bits() {
        // (rows, n, k): odd sizes, a k that is odd (a bf16 pair padded), several panels.
        for (rows, n, k) in [(1, 3, 1), (7, 19, 9), (13, 130, 88), (6, 64, 257)] {
            // x: columns 3..3 + k of a wider matrix; w and its transpose as they are.
            let stride = k + 5;
            let wide = values(rows * stride, 1);
            let x: Vec<f32> = (0..rows)
                .flat_map(|i| wide[i * stride + 3..i * stride + 3 + k].to_vec())
                .collect();
            let w = values(n * k, 2);
            let wt: Vec<f32> = (0..k)
                .flat_map(|p| (0..n).map(|c| w[c * k + p]).collect::<Vec<_>>())
                .collect();
            for kernel in every_kernel() {
                let format = kernel.format();
                let want = matmul_wt(
                    kernel,
                    &x,
                    rows,
                    &PackedWeight::new(format, &w, None, k),
                    Epilogue::None,
                );
                let strided = Rows::strided(&wide[3..], rows, k, stride);
                let columns = PackedWeight::from_columns(format, Rows::new(&wt, k, n));
                let got = matmul_rows(kernel, strided, &columns, Epilogue::None);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{kernel:?} ({rows}, {n}, {k})");
            }
        }
    }

    #[test]
    fn softmax_rows_is_a_softmax_in_the_same_bits_on_every_kernel_and_padding_adds_nothing() {
        for (rows, len) in [(1, 1), (3, 5), (4, 16), (2, 17), (5, 257), (3, 44)] {
            let x: Vec<f32> = values(rows * len, 7).iter().map(|v| v * 8.0).collect();
            let mask: Vec<f32> = values(rows * len, 8)
                .iter()
                .enumerate()
                .map(|(j, v)| {
                    if j % len == 0 || *v > -0.5 {
                        0.0
                    } else {
                        -1e30
                    }
                })
                .collect();
            for mask in [None, Some(&mask[..])] {
                let mut base = x.clone();
                softmax_rows_body(&mut base, len, 0.3, mask);
                for (i, row) in base.chunks_exact(len).enumerate() {
                    // A float64 reference.
                    let z: Vec<f64> = (0..len)
                        .map(|j| {
                            let m = mask.map_or(0.0, |m| m[i * len + j]);
                            (x[i * len + j] * 0.3 + m) as f64
                        })
                        .collect();
                    let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = z.iter().map(|z| (z - max).exp()).sum();
                    for (j, &p) in row.iter().enumerate() {
                        let want = (z[j] - max).exp() / sum;
                        assert!((p as f64 - want).abs() < 1e-6, "({rows}, {len}) {j}");
                    }
                }
                // Every kernel of every format (attention takes the bf16 one too).
                let kernels = [
                    Format::Bf16,
                    Format::F32,
                    Format::Int8,
                    Format::Int8Pairs,
                    Format::Int7,
                ]
                .into_iter()
                .flat_map(Kernel::available);
                for kernel in kernels {
                    let mut y = x.clone();
                    softmax_rows(kernel, &mut y, len, 0.3, mask);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&y), bits(&base), "{kernel:?}");
                }
                // The same rows with 3 masked values of padding appended.
                let padded_len = len + 3;
                let mut padded = vec![0f32; rows * padded_len];
                let mut padded_mask = vec![-1e30f32; rows * padded_len];
                for i in 0..rows {
                    padded[i * padded_len..][..len].copy_from_slice(&x[i * len..][..len]);
                    let m = mask.map_or(vec![0.0; len], |m| m[i * len..][..len].to_vec());
                    padded_mask[i * padded_len..][..len].copy_from_slice(&m);
                }
                softmax_rows_body(&mut padded, padded_len, 0.3, Some(&padded_mask));
                for i in 0..rows {
                    let (row, pad) = padded[i * padded_len..][..padded_len].split_at(len);
                    let want = &base[i * len..][..len];
                    assert!(row
                        .iter()
                        .zip(want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()));
                    assert!(pad.iter().all(|&p| p == 0.0));
                }
            }
        }
    }

    #[test]
    fn every_kernel_matches_a_float64_reference_of_its_inputs() {
        // (rows, k, n): the ViT-g and Q-Former shapes' widths at a few rows, and sizes
        // that leave tails of rows (MR), columns (NR, and the AVX2 kernel's 16 and 8), an
        // odd k and several k blocks (KC: k = 6144 in bf16, 3072 in f32).
        let shapes = [
            (1, 1, 1),
            (6, 2, 64),
            (7, 3, 65),
            (13, 37, 130),
            (5, 300, 129),
            (12, 588, 70),
            (9, 1408, 200),
            (3, 768, 9),
            (2, 3072, 23),
            (2, 6144, 17),
        ];
        for kernel in every_kernel() {
            let format = kernel.format();
            for (rows, k, n) in shapes {
                for with_bias in [false, true] {
                    let (x, w, b) = (values(rows * k, 1), values(n * k, 2), values(n, 3));
                    let packed = PackedWeight::new(format, &w, with_bias.then_some(&b[..]), k);
                    assert_eq!((packed.n(), packed.k(), packed.format()), (n, k, format));
                    let y = matmul_wt(kernel, &x, rows, &packed, Epilogue::None);
                    assert_eq!(y.len(), rows * n);
                    for i in 0..rows {
                        for j in 0..n {
                            let dot: f64 = (0..k)
                                .map(|p| input(format, x[i * k + p]) * input(format, w[j * k + p]))
                                .sum();
                            let exact = dot + if with_bias { b[j] as f64 } else { 0.0 };
                            let got = y[i * n + j] as f64;
                            // f32 accumulation over k products of size <= 1.
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
    fn the_int8_family_is_every_int8_kernel_once_the_simd_ones_first() {
        let family = Kernel::int8_family();
        let mut every: Vec<Kernel> = [Format::Int8, Format::Int8Pairs, Format::Int7]
            .into_iter()
            .flat_map(Kernel::available)
            .collect();
        assert_eq!(family.len(), every.len(), "{family:?}");
        every.retain(|k| !family.contains(k));
        assert!(every.is_empty(), "{every:?}");
        let portable = [Kernel::PortableInt8, Kernel::PortableInt7];
        assert_eq!(&family[family.len() - 2..], &portable);
    }

    #[test]
    fn the_environment_picks_a_kernel_of_the_format() {
        // What each value of a format's variable picks (`None`: not set), whatever this
        // CPU runs. The default is the fastest SIMD kernel this CPU runs (none: candle's
        // GEMM); a kernel's name gives that kernel where it runs here, else the default.
        #[derive(Clone, Copy)]
        enum Pick {
            Default,
            Off,
            Exactly(Kernel),
            IfItRuns(Kernel),
        }
        use Kernel::*;
        use Pick::*;
        let default = |format: Format| {
            let fastest_first: &[Kernel] = match format {
                Format::Bf16 => &[Avx512Bf16],
                Format::F32 => &[Avx512F32, Avx2F32],
                Format::Int8 | Format::Int8Pairs | Format::Int7 => {
                    &[Avx512Vnni, Avx2Vnni, Avx2Maddubs, Avx2Madd]
                }
            };
            fastest_first.iter().copied().find(|k| k.runs_here())
        };
        let int8 = [
            (None, Default),
            (Some("off"), Off),
            (Some("portable"), Exactly(PortableInt8)),
            (Some("portable7"), Exactly(PortableInt7)),
            (Some("avx512"), IfItRuns(Avx512Vnni)),
            (Some("avx2"), IfItRuns(Avx2Vnni)),
            (Some("maddubs"), IfItRuns(Avx2Maddubs)),
            (Some("madd"), IfItRuns(Avx2Madd)),
            (Some("avx"), Default),
            (Some(""), Default),
        ];
        let table: Vec<(Format, Option<&str>, Pick)> = [
            (Format::Bf16, None, Default),
            (Format::Bf16, Some("off"), Off),
            (Format::Bf16, Some("portable"), Exactly(Portable)),
            (Format::Bf16, Some("avx512"), IfItRuns(Avx512Bf16)),
            // Names of other formats' kernels: not bf16's.
            (Format::Bf16, Some("avx2"), Default),
            (Format::Bf16, Some("maddubs"), Default),
            (Format::Bf16, Some("portable7"), Default),
            (Format::Bf16, Some("AVX512"), Default),
            (Format::F32, None, Default),
            (Format::F32, Some("off"), Off),
            (Format::F32, Some("portable"), Exactly(PortableF32)),
            (Format::F32, Some("avx512"), IfItRuns(Avx512F32)),
            (Format::F32, Some("avx2"), IfItRuns(Avx2F32)),
            (Format::F32, Some("madd"), Default),
            (Format::F32, Some("portable7"), Default),
            (Format::F32, Some("fast"), Default),
        ]
        .into_iter()
        // int8's one choice, whichever of its formats asks.
        .chain(
            [Format::Int8, Format::Int8Pairs, Format::Int7]
                .into_iter()
                .flat_map(|format| int8.map(|(value, pick)| (format, value, pick))),
        )
        .collect();
        for (format, value, pick) in table {
            let expected = match pick {
                Default => default(format),
                Off => None,
                Exactly(kernel) => Some(kernel),
                IfItRuns(kernel) => Some(kernel).filter(|k| k.runs_here()).or(default(format)),
            };
            assert_eq!(
                Kernel::choose_from(format, value),
                expected,
                "{format:?} with {value:?}"
            );
        }

        for format in [
            Format::Bf16,
            Format::F32,
            Format::Int8,
            Format::Int8Pairs,
            Format::Int7,
        ] {
            // `chosen` is this choice for the variable's value in this process.
            let value = std::env::var(Kernel::variable(format)).ok();
            assert_eq!(
                Kernel::chosen(format),
                Kernel::choose_from(format, value.as_deref()),
                "{format:?}"
            );
            if let Some(kernel) = Kernel::chosen(format) {
                // int8's one choice may be of any of its formats.
                let int8 = [Format::Int8, Format::Int8Pairs, Format::Int7];
                if int8.contains(&format) {
                    assert!(int8.contains(&kernel.format()), "{kernel:?}");
                    assert_eq!(Kernel::chosen(Format::Int8), Some(kernel));
                } else {
                    assert_eq!(kernel.format(), format);
                }
                assert!(kernel.runs_here());
            }
            // Each format's kernels (int8's of both layouts) have names of their own, which
            // `chosen` looks up.
            let kernels = match format {
                Format::Int8 | Format::Int8Pairs | Format::Int7 => Kernel::int8_family(),
                _ => Kernel::available(format),
            };
            let names: Vec<_> = kernels.iter().map(|k| k.name()).collect();
            let mut unique = names.clone();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(names.len(), unique.len(), "{format:?}: {names:?}");
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
        for kernel in every_kernel() {
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
        for kernel in every_kernel() {
            let packed = PackedWeight::new(kernel.format(), &w, Some(&b), k);
            let mut expected = matmul_wt(kernel, &x, rows, &packed, Epilogue::None);
            gelu_in_place(kernel, &mut expected);
            let got = matmul_wt(kernel, &x, rows, &packed, Epilogue::Gelu);
            assert_eq!(got, expected, "{kernel:?}");
        }
    }

    #[test]
    fn the_residual_epilogue_gives_the_bits_of_adding_it_afterwards() {
        // Tails of rows and columns, and several k blocks in f32 (k = 3072).
        for (rows, k, n) in [(13, 300, 130), (7, 3072, 65)] {
            let (x, w, b) = (values(rows * k, 4), values(n * k, 5), values(n, 6));
            let residual = values(rows * n, 7);
            for kernel in every_kernel() {
                let packed = PackedWeight::new(kernel.format(), &w, Some(&b), k);
                let mut expected = matmul_wt(kernel, &x, rows, &packed, Epilogue::None);
                expected
                    .iter_mut()
                    .zip(&residual)
                    .for_each(|(y, r)| *y += r);
                let got = matmul_wt(kernel, &x, rows, &packed, Epilogue::Residual(&residual));
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&expected), "{kernel:?}");
            }
        }
    }

    #[test]
    fn int8_kernels_match_a_float64_reference_of_their_codes() {
        // (rows, n, k): one quad, a k not a multiple of 4, several panels, two k blocks,
        // and a panel's tail of columns over several of the 256-bit kernel's passes of k.
        for (rows, n, k) in [
            (1, 1, 4),
            (7, 19, 9),
            (13, 130, 88),
            (6, 64, 4100),
            (5, 70, 2100),
        ] {
            let x: Vec<f32> = values(rows * k, 1).iter().map(|v| v * 3.0).collect();
            let w_rows = values(n * k, 2);
            let b = values(n, 3);
            for kernel in Kernel::int8_family() {
                // The codes of the kernel's format: int8's (both of its layouts hold them)
                // or int7's.
                let (quads, levels) = match kernel.format() {
                    Format::Int7 => (Format::Int7, int8::WEIGHT_LEVELS_INT7),
                    _ => (Format::Int8, int8::LEVELS),
                };
                let quads = PackedWeight::new(quads, &w_rows, Some(&b), k);
                let (Data::Int8(codes) | Data::Int7(codes)) = &quads.data else {
                    unreachable!()
                };
                let wq = int8::dequantized_weight(codes, n, k);
                let packed = PackedWeight::new(kernel.format(), &w_rows, Some(&b), k);
                let y = matmul_wt(kernel, &x, rows, &packed, Epilogue::None);
                for r in 0..rows {
                    let xq = int8::dequantized_row(&x[r * k..(r + 1) * k]);
                    for c in 0..n {
                        let w = &wq[c * k..(c + 1) * k];
                        let want: f64 =
                            xq.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() + f64::from(b[c]);
                        let size: f64 = xq.iter().zip(w).map(|(a, b)| (a * b).abs()).sum();
                        let err = (f64::from(y[r * n + c]) - want).abs();
                        assert!(
                            err <= 1e-5 * size.max(1.0),
                            "{kernel:?} ({rows}, {n}, {k}) [{r}, {c}]: {} vs {want}",
                            y[r * n + c]
                        );
                        // And within the two roundings (half a step each: of the row's
                        // largest value over 127, of the column's over `levels`) of the
                        // product of the inputs as they are.
                        let (xr, wr) = (&x[r * k..(r + 1) * k], &w_rows[c * k..(c + 1) * k]);
                        let exact: f64 = xr
                            .iter()
                            .zip(wr)
                            .map(|(a, b)| f64::from(*a) * f64::from(*b))
                            .sum::<f64>()
                            + f64::from(b[c]);
                        let max = |v: &[f32]| v.iter().fold(0f64, |m, x| m.max(f64::from(x.abs())));
                        let bound = k as f64
                            * max(xr)
                            * max(wr)
                            * (0.5 / f64::from(levels) + 0.5 / f64::from(int8::LEVELS));
                        assert!(
                            (f64::from(y[r * n + c]) - exact).abs() <= bound,
                            "{kernel:?} ({rows}, {n}, {k}) [{r}, {c}]: {} vs exact {exact}",
                            y[r * n + c]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn int8_kernels_of_the_same_codes_give_the_same_bits_within_a_block() {
        // Within one k block of the pairs (1024 units: k ≤ 2048) and of the quads, every
        // SIMD kernel of int8's codes (both layouts) sums the same integers, converted and
        // scaled alike; so do int7's. The portable kernels round their running sums to
        // f32 at each unit, which is exact only while the sums stay below 2²⁴ (k · 255 ·
        // 127 < 2²⁴: k ≤ 518; int7's k · 255 · 64: k ≤ 1028), so they join only there.
        let int8 = |k: &Kernel| k.format() != Format::Int7;
        for (rows, n, k, same_codes) in [
            (7, 19, 9, int8 as fn(&Kernel) -> bool),
            (13, 130, 301, int8),
            (6, 70, 2048, int8),
            (7, 19, 9, |k| k.format() == Format::Int7),
            (13, 130, 1028, |k| k.format() == Format::Int7),
            (6, 70, 4096, |k| k.format() == Format::Int7),
        ] {
            let (x, w, b) = (values(rows * k, 8), values(n * k, 9), values(n, 10));
            let x: Vec<f32> = x.iter().map(|v| v * 5.0).collect();
            let kernels: Vec<Kernel> = Kernel::int8_family()
                .into_iter()
                .filter(same_codes)
                .filter(|kernel| match kernel {
                    Kernel::PortableInt8 => k <= 518,
                    Kernel::PortableInt7 => k <= 1028,
                    _ => true,
                })
                .collect();
            let outputs: Vec<Vec<u32>> = kernels
                .iter()
                .map(|&kernel| {
                    let packed = PackedWeight::new(kernel.format(), &w, Some(&b), k);
                    let y = matmul_wt(kernel, &x, rows, &packed, Epilogue::None);
                    y.iter().map(|v| v.to_bits()).collect()
                })
                .collect();
            for (kernel, y) in kernels.iter().zip(&outputs) {
                assert_eq!(
                    y, &outputs[0],
                    "{kernel:?} vs {:?} ({rows}, {n}, {k})",
                    kernels[0]
                );
            }
        }
    }

    #[test]
    fn int8_epilogues_give_the_bits_of_applying_them_afterwards() {
        let (rows, n, k) = (7, 70, 40);
        let (x, w, b) = (values(rows * k, 4), values(n * k, 5), values(n, 6));
        let residual = values(rows * n, 7);
        for kernel in Kernel::int8_family() {
            let packed = PackedWeight::new(kernel.format(), &w, Some(&b), k);
            let plain = matmul_wt(kernel, &x, rows, &packed, Epilogue::None);
            let mut gelu = plain.clone();
            gelu_in_place(kernel, &mut gelu);
            let added: Vec<f32> = plain.iter().zip(&residual).map(|(y, r)| y + r).collect();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let fused = matmul_wt(kernel, &x, rows, &packed, Epilogue::Gelu);
            assert_eq!(bits(&fused), bits(&gelu), "{kernel:?}");
            let fused = matmul_wt(kernel, &x, rows, &packed, Epilogue::Residual(&residual));
            assert_eq!(bits(&fused), bits(&added), "{kernel:?}");
        }
    }

    #[test]
    fn bf16_bits_are_halfs() {
        let specials = [
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7F80_0001), // a signalling NaN
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            f32::from_bits(1), // the smallest denormal
            f32::from_bits(0x7F7F_8000),
            f32::from_bits(0x3F80_8000),
            f32::from_bits(0x3F81_8000),
        ];
        let random = values(100_000, 3)
            .into_iter()
            .enumerate()
            .map(|(i, v)| f32::from_bits(v.to_bits().rotate_left(i as u32 % 32)));
        for x in specials.into_iter().chain(random) {
            let want = u32::from(half::bf16::from_f32(x).to_bits());
            assert_eq!(bf16_bits(x), want, "{x:e} ({:#010x})", x.to_bits());
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
        for kernel in Kernel::available(Format::Bf16) {
            let mut a = vec![0; x.len() / 2];
            to_bf16_pairs(kernel, &x, &mut a);
            let got: Vec<u32> = a.iter().flat_map(|p| [p & 0xffff, p >> 16]).collect();
            assert_eq!(got, bits, "{kernel:?}");
        }
    }
}
