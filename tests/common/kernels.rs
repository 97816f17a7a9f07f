//! The kernel sets the model tests run on, in this process: the default
//! ([`Kernels::chosen`]) and each other path of the CPU's GEMMs that this CPU runs, as a
//! CPU of another kind would take it.

use qseek_kernels::gemm::{Format, Kernel, Kernels};

/// Which kernel a test varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// `--dtype bf16`'s: every bf16 kernel this CPU runs, and candle's bf16 (`None`).
    Bf16,
    /// The f32 linear layers': candle's GEMM (`None`) and the 256-bit kernel.
    F32,
    /// `--dtype int8`'s: every int8 kernel this CPU runs (both layouts, 7-bit weights,
    /// the portable ones), with the bf16 and f32 kernels a CPU of its kind has.
    Int8,
}

/// A kernel set and what it stands for.
#[derive(Debug, Clone, Copy)]
pub struct KernelSet {
    pub name: &'static str,
    pub kernels: Kernels,
}

/// The default kernels, then each variation of them along `axes` that this CPU runs
/// (each once). Prints which sets run, and the kernels of those axes this CPU lacks.
pub fn kernel_sets(test: &str, axes: &[Axis]) -> Vec<KernelSet> {
    let default = Kernels::chosen();
    let mut sets = vec![KernelSet {
        name: "default",
        kernels: default,
    }];
    let mut add = |name: &'static str, kernels: Kernels| {
        if sets.iter().all(|s| s.kernels != kernels) {
            sets.push(KernelSet { name, kernels });
        }
    };
    let avx2_f32 = Some(Kernel::Avx2F32).filter(|k| k.runs_here());
    let mut missing = Vec::new();
    for axis in axes {
        match axis {
            Axis::Bf16 => {
                for kernel in Kernel::available(Format::Bf16) {
                    add(
                        "a bf16 kernel",
                        Kernels {
                            bf16: Some(kernel),
                            ..default
                        },
                    );
                }
                add(
                    "candle's bf16",
                    Kernels {
                        bf16: None,
                        ..default
                    },
                );
            }
            Axis::F32 => {
                add(
                    "candle's f32 GEMM",
                    Kernels {
                        f32: None,
                        ..default
                    },
                );
                if let Some(kernel) = avx2_f32 {
                    add(
                        "the 256-bit f32 kernel",
                        Kernels {
                            f32: Some(kernel),
                            ..default
                        },
                    );
                }
            }
            Axis::Int8 => {
                for kernel in Kernel::int8_family() {
                    // As `.ci/run` ran them: each with the kernels a CPU of its kind has.
                    let (name, kernels) = match kernel {
                        Kernel::Avx512Vnni => (
                            "AVX512-VNNI",
                            Kernels {
                                int8: Some(kernel),
                                ..default
                            },
                        ),
                        // An AVX2 CPU: no bf16 kernel, the 256-bit f32 one.
                        Kernel::Avx2Vnni
                        | Kernel::Avx2VnniEvex
                        | Kernel::Avx2Maddubs
                        | Kernel::Avx2Madd => (
                            "an AVX2 CPU's int8",
                            Kernels {
                                int8: Some(kernel),
                                bf16: None,
                                f32: avx2_f32.or(default.f32),
                            },
                        ),
                        // The references, beside bf16's.
                        Kernel::PortableInt8 | Kernel::PortableInt7 => (
                            "a portable int8 kernel",
                            Kernels {
                                int8: Some(kernel),
                                bf16: Some(Kernel::Portable),
                                ..default
                            },
                        ),
                        Kernel::Avx512Bf16
                        | Kernel::Portable
                        | Kernel::Avx512F32
                        | Kernel::Avx2F32
                        | Kernel::PortableF32 => unreachable!("{kernel:?} is no int8 kernel"),
                    };
                    add(name, kernels);
                }
            }
        }
        let format = |k: &Kernel| match axis {
            Axis::Bf16 => k.format() == Format::Bf16,
            Axis::F32 => *k == Kernel::Avx2F32,
            Axis::Int8 => matches!(k.format(), Format::Int8 | Format::Int8Pairs | Format::Int7),
        };
        missing.extend(Kernel::all().filter(|k| format(k) && !k.runs_here()));
    }
    let ran: Vec<String> = sets
        .iter()
        .map(|s| format!("{} {:?}", s.name, s.kernels))
        .collect();
    eprintln!("{test}: kernel sets {ran:#?}; not run here (the CPU lacks them): {missing:?}");
    sets
}

impl std::fmt::Display for KernelSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let k = self.kernels;
        write!(
            f,
            "{} (bf16 {:?}, f32 {:?}, int8 {:?})",
            self.name, k.bf16, k.f32, k.int8
        )
    }
}
