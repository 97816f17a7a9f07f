//! The similarity kernels the index scores with ([`qseek_kernels::max_sim`]: dot products
//! and BLIP-2's max-over-slots score, picked once for the CPU), and the index's own
//! helpers beside them.

pub use qseek_kernels::max_sim::*;

/// Asks the CPU to load `values` into L2, one request per 64-byte line (a hint; not L1,
/// which holds the row being scored).
pub(crate) fn prefetch<T>(values: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let start = values.as_ptr().cast::<i8>();
        for offset in (0..std::mem::size_of_val(values)).step_by(64) {
            // SAFETY: SSE is part of x86-64; `offset` < the slice's size in bytes, so the
            // address is inside `values` (`wrapping_add`: no in-bounds requirement), and a
            // prefetch only hints the cache: it never reads nor faults.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(start.wrapping_add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// Vectors must be L2-normalised: dot products are cosine similarities only then.
pub(crate) fn debug_assert_unit(vectors: &[f32], dim: usize) {
    if cfg!(debug_assertions) {
        for v in vectors.chunks_exact(dim) {
            let n = norm(v);
            debug_assert!(
                (n - 1.0).abs() < 1e-2,
                "vector is not L2-normalised (norm {n})"
            );
        }
    }
}
