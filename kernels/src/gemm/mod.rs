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
//! Kernels ([`Kernel`], one entry each in `table.rs`): AVX512-BF16 for bf16; AVX-512F
//! and AVX2+FMA for f32; AVX512-VNNI and 256-bit VNNI (AVX-VNNI, for CPUs without
//! AVX-512, or the same code in AVX512-VL's encoding) for int8, and AVX2's `vpmaddubsw`
//! (7-bit weights) and `vpmaddwd` for int8 on CPUs without VNNI; each chosen once
//! ([`Kernels::chosen`]), and a portable one per format that is the reference in the
//! tests (not a fallback: without the instructions the model keeps candle's GEMM). The kernels
//! of one format compute the same products; the summation order differs (the hardware's
//! rounding of the pair sum, flushed denormals, FMA), so results agree to float
//! rounding, not bit for bit.

//!
//! The files: `table.rs` the kernels, `pack.rs` the packing of weights and rows,
//! `drive.rs` the loop over tiles (and the portable tile), `int8.rs` the int8 formats'
//! codes and scales, `x86/` the SIMD tiles, `tests.rs` one loop over every kernel.

mod drive;
mod int8;
mod pack;
mod table;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

use drive::drive;
pub use drive::OutPtr;
pub use pack::PackedWeight;
use pack::{pack_rows, to_bf16_pairs, Data};
use table::{KernelInfo, KERNELS};

use crate::cpu::Features;

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
    /// Whether it rounds each row of `x` to integer codes (int8's formats), whose
    /// precision outlier channels of `x` cost ([`PackedWeight::with_exact_inputs`]).
    pub fn codes_rows(self) -> bool {
        is_int8(self)
    }

    /// Units of k ([`NR`] values of a panel each) for `k` inputs.
    pub(crate) fn units(self, k: usize) -> usize {
        match self {
            Format::Bf16 => k.div_ceil(2),
            Format::F32 => k,
            Format::Int8 | Format::Int7 => k.div_ceil(4),
            Format::Int8Pairs => k.div_ceil(2),
        }
    }
}

/// A kernel: a handle to its entry in the table (`table.rs`), which says what it needs of
/// the CPU and the [`Format`] it reads.
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
    /// int8: `vpdpbusd` on 8 lanes in its VEX encoding (`avx2` + `avxvnni`, as Intel's
    /// Core CPUs from Alder Lake on have).
    Avx2Vnni,
    /// [`Kernel::Avx2Vnni`]'s code with `vpdpbusd` in its EVEX encoding (`avx512vnni` +
    /// `avx512vl`): the same bits, on AVX-512 CPUs, where the 8-lane kernel is tested.
    Avx2VnniEvex,
    /// int8 rows by 7-bit weights ([`Format::Int7`]): `vpmaddubsw` + `vpmaddwd` (by ones)
    /// + `vpaddd` on 8 lanes (`avx2`), the fastest int8 on AVX2 CPUs without VNNI.
    Avx2Maddubs,
    /// int8 without VNNI ([`Format::Int8Pairs`]): `vpmaddwd` + `vpaddd` on 8 lanes
    /// (`avx2` + `fma`).
    Avx2Madd,
    /// int8 in plain Rust, any CPU: the reference.
    PortableInt8,
    /// [`Format::Int7`] in plain Rust, any CPU: the reference.
    PortableInt7,
}

impl Kernel {
    /// How many kernels there are.
    pub(crate) const COUNT: usize = Kernel::PortableInt7 as usize + 1;

    /// Its entry in the table.
    pub(crate) fn info(self) -> &'static KernelInfo {
        &KERNELS[self as usize]
    }

    /// Every kernel, whether this CPU runs it or not, in the table's order.
    pub fn all() -> impl Iterator<Item = Kernel> {
        KERNELS.iter().map(|info| info.kernel)
    }

    /// The format the kernel reads.
    pub fn format(self) -> Format {
        self.info().tiles.format()
    }

    /// The kernels of `format` this CPU runs, fastest first (the portable one always).
    pub fn available(format: Format) -> Vec<Kernel> {
        Kernel::all()
            .filter(|k| k.format() == format && k.runs_here())
            .collect()
    }

    /// Whether this CPU has the instructions the kernel uses.
    pub fn runs_here(self) -> bool {
        self.info().runs_here()
    }

    /// Whether it is a format's portable kernel, the reference (any CPU, slow).
    pub fn is_portable(self) -> bool {
        std::ptr::eq(self.info().vectors, &crate::activations::BASELINE)
    }

    /// The int8 kernels of the three int8 formats this CPU runs, fastest first, the
    /// portable ones last.
    pub fn int8_family() -> Vec<Kernel> {
        // The table's order: the SIMD ones (VNNI, 7-bit, pairs), then int8's portable
        // kernel and int7's.
        Kernel::all()
            .filter(|k| is_int8(k.format()) && k.runs_here())
            .collect()
    }

    /// The name the environment variables of [`Kernels::chosen`] give it: the
    /// instruction set's width (`avx512`, `avx2`), the instruction for the AVX2 int8
    /// kernels without VNNI (`maddubs`, `madd`), or `portable` (`portable7` for
    /// [`Format::Int7`]'s). The two encodings of the 8-lane VNNI kernel are both `avx2`.
    pub fn name(self) -> &'static str {
        self.info().name
    }
}

/// Whether `format` is one of int8's (which share one choice of kernel).
fn is_int8(format: Format) -> bool {
    matches!(format, Format::Int8 | Format::Int8Pairs | Format::Int7)
}

/// The kernel of each format a model runs on the CPU, `None` where it keeps candle's GEMM:
/// chosen once per process by default ([`Kernels::chosen`]), or given (tests run the
/// model on each kernel set this CPU has).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels {
    /// [`Format::Bf16`]'s: the ViT's linear layers under `--dtype bf16`, and ITM's
    /// Q-Former.
    pub bf16: Option<Kernel>,
    /// [`Format::F32`]'s: the Q-Former's linear layers in every dtype, the ViT's in f32.
    pub f32: Option<Kernel>,
    /// The int8 formats' one choice ([`Format::Int8`], [`Format::Int8Pairs`] or
    /// [`Format::Int7`], which its [`format`](Kernel::format) tells): the ViT's encoder
    /// layers under `--dtype int8`.
    pub int8: Option<Kernel>,
}

impl Default for Kernels {
    /// [`Kernels::chosen`].
    fn default() -> Self {
        Kernels::chosen()
    }
}

impl Kernels {
    /// The kernels for this CPU, chosen at the first call: per format the fastest SIMD
    /// kernel it runs, else `None` (candle's GEMM). For int8 that is a kernel of any of
    /// its three formats: the VNNI ones, else [`Kernel::Avx2Maddubs`] (7-bit weights). An
    /// environment variable overrides a format's choice, for benchmarks:
    /// `QSEEK_BF16_GEMM` (bf16), `QSEEK_F32_GEMM` (f32) or `QSEEK_INT8_GEMM` (int8) set to
    /// `off` (`None`), `portable` (slow, the reference kernel), or a kernel's
    /// [`name`](Kernel::name) (`avx512`, `avx2`, `maddubs`, `madd`, `portable7`), ignored
    /// where the CPU lacks it.
    pub fn chosen() -> Kernels {
        static CHOSEN: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let choose = |format| {
                let value = std::env::var(variable(format)).ok();
                choose_from(format, value.as_deref())
            };
            Kernels {
                bf16: choose(Format::Bf16),
                f32: choose(Format::F32),
                int8: choose(Format::Int8),
            }
        })
    }

    /// No kernel: candle's GEMM everywhere (and no `--dtype int8`).
    pub fn none() -> Kernels {
        Kernels {
            bf16: None,
            f32: None,
            int8: None,
        }
    }

    /// The kernel for `format` (int8's for each of its formats).
    pub fn get(&self, format: Format) -> Option<Kernel> {
        match format {
            Format::Bf16 => self.bf16,
            Format::F32 => self.f32,
            Format::Int8 | Format::Int8Pairs | Format::Int7 => self.int8,
        }
    }

    /// Checks that each kernel reads its field's format and that this CPU runs it.
    pub fn check(&self) -> Result<(), String> {
        for format in [Format::Bf16, Format::F32, Format::Int8] {
            let Some(kernel) = self.get(format) else {
                continue;
            };
            let fits = match format {
                Format::Int8 => is_int8(kernel.format()),
                _ => kernel.format() == format,
            };
            if !fits {
                return Err(format!("{kernel:?} is no {format:?} kernel"));
            }
            if !kernel.runs_here() {
                return Err(format!(
                    "this CPU cannot run the {kernel:?} kernel (it has {})",
                    Features::get().names().join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// The environment variable that overrides [`Kernels::chosen`] for `format`.
fn variable(format: Format) -> &'static str {
    match format {
        Format::Bf16 => "QSEEK_BF16_GEMM",
        Format::F32 => "QSEEK_F32_GEMM",
        Format::Int8 | Format::Int8Pairs | Format::Int7 => "QSEEK_INT8_GEMM",
    }
}

/// The kernel for `format` when its [`variable`] is `value` (`None`: not set, or not
/// Unicode), as [`Kernels::chosen`] describes.
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
    let fastest = available.first().copied().filter(|k| !k.is_portable());
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
