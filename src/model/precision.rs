//! `--dtype`: the precision a model computes in.

use candle_core::{DType, Device};

use qseek_kernels::gemm::Kernels;

/// The precision of the image encoder (`--dtype`): see [`Blip2ForImageTextRetrieval`]
/// (super::Blip2ForImageTextRetrieval) for what each computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    /// The reference.
    F32,
    /// The ViT in f16 (candle's half-precision path; for GPUs).
    F16,
    /// The ViT's linear layers and attention products in bf16 (on AVX512-BF16 CPUs;
    /// candle's bf16 elsewhere), and ITM's Q-Former on those CPUs.
    Bf16,
    /// The ViT encoder layers' linear layers (qkv, projection, fc1, fc2) in int8, the
    /// rest of the ViT as bf16 on a CPU with AVX512-BF16, else as f32: a CPU mode, for
    /// CPUs with VNNI (AVX512-VNNI, or AVX-VNNI with AVX2), or with AVX2 alone
    /// (`vpmaddwd`, the same sums).
    Int8,
}

impl Precision {
    /// Parses `--dtype`'s value.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "f32" | "float32" => Some(Self::F32),
            "f16" | "float16" => Some(Self::F16),
            "bf16" | "bfloat16" => Some(Self::Bf16),
            "int8" => Some(Self::Int8),
            _ => None,
        }
    }

    /// The name `--dtype` takes, and that caches and shard files record.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Int8 => "int8",
        }
    }

    /// Whether it runs on `device` here with the kernels chosen for this CPU
    /// ([`Kernels::chosen`]): see [`runs_with`](Self::runs_with).
    pub fn runs_on(self, device: &Device) -> bool {
        self.runs_with(device, &Kernels::chosen())
    }

    /// Whether it runs on `device` with `kernels`: int8 needs a CPU and an int8 kernel of
    /// `qseek_kernels::gemm` (AVX512-VNNI, AVX-VNNI or AVX2, or a portable one given or
    /// forced through the environment); the others run anywhere.
    pub fn runs_with(self, device: &Device, kernels: &Kernels) -> bool {
        match self {
            Self::Int8 => device.is_cpu() && kernels.int8.is_some(),
            Self::F32 | Self::F16 | Self::Bf16 => true,
        }
    }

    /// The dtype the vision model's tensors are converted to (int8's are bf16's; where
    /// `qseek_kernels::gemm` computes the linear layers they are f32 instead: see
    /// [`Blip2ForImageTextRetrieval::new`](super::Blip2ForImageTextRetrieval::new)).
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 | Self::Int8 => DType::BF16,
        }
    }
}

impl From<DType> for Precision {
    /// The float dtypes' precision (f64 and the integer dtypes: f32).
    fn from(dtype: DType) -> Self {
        match dtype {
            DType::F16 => Self::F16,
            DType::BF16 => Self::Bf16,
            _ => Self::F32,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
