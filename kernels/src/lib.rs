//! qseek-kernels: the CPU kernels of qseek, in one place.
//!
//! * [`gemm`]: `y = x Wᵀ + b` over weights packed once, in f32, bf16, int8 (two layouts)
//!   and 7-bit weights, for the model's linear layers and attention's products;
//! * [`activations`]: GELU, the rows' softmax and `exp`, beside the GEMM that fuses them;
//! * [`max_sim`]: dot products and BLIP-2's max-over-slots score, one query or a block
//!   of them, for the index.
//!
//! Each family is a table of kernels ([`gemm::Kernel`]'s table, [`max_sim`]'s builds):
//! an entry names the CPU features it needs ([`cpu::Features`], detected once), and a
//! kernel is picked from it once, not asked about at every call. Each family has a
//! portable (plain Rust) entry, the reference its tests compare every other entry with.
#![warn(missing_docs)]

pub mod activations;
pub mod cpu;
pub mod gemm;
pub mod max_sim;
