//! What the CPU can do, detected once per process: the features the kernels' tables
//! name ([`Features`]).

use std::sync::OnceLock;

/// The instruction-set extensions the kernels use. All false off x86-64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// AVX2 (256-bit integer vectors).
    pub avx2: bool,
    /// FMA3 (fused multiply-add on 128- and 256-bit vectors).
    pub fma: bool,
    /// AVX-512 Foundation (512-bit vectors, mask registers).
    pub avx512f: bool,
    /// AVX-512 Vector Length (the EVEX instructions on 128- and 256-bit vectors).
    pub avx512vl: bool,
    /// AVX512-BF16 (`vdpbf16ps`, `vcvtneps2bf16`).
    pub avx512bf16: bool,
    /// AVX512-VNNI (`vpdpbusd`, EVEX).
    pub avx512vnni: bool,
    /// AVX-VNNI (`vpdpbusd` on 256-bit vectors, VEX: Intel Core from Alder Lake on).
    pub avxvnni: bool,
}

impl Features {
    /// This CPU's, detected at the first call.
    pub fn get() -> &'static Features {
        static FEATURES: OnceLock<Features> = OnceLock::new();
        FEATURES.get_or_init(Features::detect)
    }

    fn detect() -> Features {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            Features {
                avx2: has!("avx2"),
                fma: has!("fma"),
                avx512f: has!("avx512f"),
                avx512vl: has!("avx512vl"),
                avx512bf16: has!("avx512bf16"),
                avx512vnni: has!("avx512vnni"),
                avxvnni: has!("avxvnni"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Features::default()
    }

    /// The names of the features this CPU has, for messages.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.avx2, "avx2"),
            (self.fma, "fma"),
            (self.avx512f, "avx512f"),
            (self.avx512vl, "avx512vl"),
            (self.avx512bf16, "avx512bf16"),
            (self.avx512vnni, "avx512vnni"),
            (self.avxvnni, "avxvnni"),
        ]
        .into_iter()
        .filter_map(|(has, name)| has.then_some(name))
        .collect()
    }
}
