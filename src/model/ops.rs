//! The few building blocks the BLIP-2 modules share.

use std::sync::Arc;

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Activation, VarBuilder};

use super::lazy::Lazy;
use qseek_kernels::activations::softmax_rows;
use qseek_kernels::gemm::{self, Epilogue, Kernel, PackedWeight};

/// `nn.Linear`: `y = x Wᵀ + b`, over any number of leading dimensions.
///
/// Flattens the leading dimensions into one GEMM instead of a batched matmul with a
/// broadcast weight: one large GEMM is what the CPU kernels are fastest at.
#[derive(Debug, Clone)]
pub struct Linear {
    weights: Weights,
}

/// How an int8 kernel codes a [`Linear`]'s rows of `x` (see `qseek_kernels::gemm`'s
/// int8 module); the float kernels ignore it.
#[derive(Debug, Clone, Default)]
pub struct RowCoding {
    /// Channels multiplied in f32 in every row, with the weight's f32 columns
    /// ([`PackedWeight::with_exact_inputs`]): the channels a layer norm before the layer
    /// makes large.
    pub exact: Vec<usize>,
    /// Each row coded twice, its codes and what they left out
    /// ([`PackedWeight::with_fine_rows`]): for rows of blocks of very different sizes.
    pub fine: bool,
}

/// What a [`Linear`] computes with.
#[derive(Debug, Clone)]
enum Weights {
    /// candle tensors, any dtype and device: candle's GEMM.
    Tensors {
        weight: Tensor,
        bias: Option<Tensor>,
    },
    /// The weight (in the kernel's format) and the bias in f32, packed for
    /// [`gemm`](qseek_kernels::gemm) at the first call: f32 in, f32 out, on the
    /// CPU.
    Packed {
        kernel: Kernel,
        /// Packed at the layer's first call, not at load: a text search never runs
        /// the ViT, whose packing would add seconds to every one-shot `qseek search`.
        packed: Arc<Lazy<PackedWeight>>,
    },
}

impl Linear {
    /// Loads `weight` (out, in) and, when present in `vb`, `bias` (out).
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = Some(vb.get(out_dim, "bias")?);
        Ok(Self::from_parts(weight, bias))
    }

    /// Several layers over the same input stacked into one: the weights `(out_i, in)` of
    /// each `vb` (with their biases) one after the other, `(Σ out_i, in)`. Its output is
    /// theirs side by side, in one GEMM instead of one per layer (with `qseek_kernels::gemm`, bit
    /// for bit: each output column is summed alone).
    pub fn new_stacked(in_dim: usize, parts: &[(usize, VarBuilder)]) -> Result<Self> {
        let mut weights = Vec::with_capacity(parts.len());
        let mut biases = Vec::with_capacity(parts.len());
        for (out_dim, vb) in parts {
            weights.push(vb.get((*out_dim, in_dim), "weight")?);
            biases.push(vb.get(*out_dim, "bias")?);
        }
        Ok(Self::from_parts(
            Tensor::cat(&weights, 0)?,
            Some(Tensor::cat(&biases, 0)?),
        ))
    }

    /// A linear layer from tensors already loaded.
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weights: Weights::Tensors { weight, bias },
        }
    }

    /// This layer computed by [`gemm`] with `kernel` (unchanged if `None`): at
    /// its first call the weight is packed in the kernel's format (bf16 rounds it; the
    /// tensors are then dropped) and the bias kept in f32. The layer then takes and
    /// returns f32 on the CPU.
    pub fn into_packed(self, kernel: Option<Kernel>) -> Self {
        self.into_packed_coded(kernel, RowCoding::default())
    }

    /// [`into_packed`](Self::into_packed), with how an int8 kernel codes the layer's
    /// inputs (the float kernels ignore it).
    pub fn into_packed_coded(self, kernel: Option<Kernel>, coding: RowCoding) -> Self {
        let (Some(kernel), Weights::Tensors { weight, bias }) = (kernel, &self.weights) else {
            return self;
        };
        let (weight, bias) = (weight.clone(), bias.clone());
        let packed = Arc::new(Lazy::new("a packed weight", move || {
            let k = weight.dim(1)?;
            let w = weight
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let bias = match &bias {
                Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
                None => None,
            };
            let packed = PackedWeight::with_exact_inputs(
                kernel.format(),
                &w,
                bias.as_deref(),
                k,
                &coding.exact,
            );
            Ok(if coding.fine {
                packed.with_fine_rows()
            } else {
                packed
            })
        }));
        Self {
            weights: Weights::Packed { kernel, packed },
        }
    }
}

/// `x` as an f32 slice of its CPU storage, or `None` (another dtype or device).
fn with_cpu_f32<T>(x: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<Option<T>> {
    if x.dtype() != DType::F32 || !x.device().is_cpu() {
        return Ok(None);
    }
    with_cpu_f32s(&[x.contiguous()?], |slices| f(slices[0])).map(Some)
}

impl Linear {
    /// `activation(x Wᵀ + b)`: for a packed layer and GELU (erf form, `hidden_act:
    /// "gelu"`), GELU is applied inside the GEMM (see [`Epilogue::Gelu`]); otherwise
    /// the activation runs on the output.
    pub fn forward_activation(&self, xs: &Tensor, activation: Activation) -> Result<Tensor> {
        match (&self.weights, activation) {
            (Weights::Packed { .. }, Activation::Gelu) => self.forward_with(xs, Epilogue::Gelu),
            _ => self.forward(xs)?.apply(&activation),
        }
    }

    fn forward_with(&self, xs: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        let dims = xs.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = xs.elem_count() / in_dim.max(1);
        let ys = match &self.weights {
            Weights::Packed { kernel, packed } => {
                let packed = packed.get()?;
                let matmul = |x: &[f32]| gemm::matmul_wt(*kernel, x, rows, packed, epilogue);
                let ys = with_cpu_f32(xs, matmul)?.ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "a packed linear layer takes f32 on the CPU, not {:?} on {:?}",
                        xs.dtype(),
                        xs.device()
                    ))
                })?;
                Tensor::from_vec(ys, (rows, packed.n()), xs.device())?
            }
            Weights::Tensors { weight, bias } => {
                let ys = xs.reshape((rows, in_dim))?.matmul(&weight.t()?)?;
                match bias {
                    Some(b) => ys.broadcast_add(b)?,
                    None => ys,
                }
            }
        };
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("rank >= 1") = ys.dim(1)?;
        ys.reshape(out_dims)
    }
}

impl Linear {
    /// `x Wᵀ + b + residual` (the residual of the output's shape): for a packed layer the
    /// add happens inside the GEMM ([`Epilogue::Residual`]), with the same bits.
    pub fn forward_residual(&self, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if let Weights::Packed { packed, .. } = &self.weights {
            let mut dims = xs.dims().to_vec();
            if let Some(last) = dims.last_mut() {
                *last = packed.get()?.n();
            }
            if residual.dims() != dims {
                candle_core::bail!("a residual of {:?} added to {dims:?}", residual.dims());
            }
            let fused = with_cpu_f32(residual, |r| self.forward_with(xs, Epilogue::Residual(r)))?;
            if let Some(ys) = fused {
                return ys;
            }
        }
        self.forward(xs)? + residual
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_with(xs, Epilogue::None)
    }
}

/// Multi-head scaled dot-product attention, the heads side by side: q (batch, q_len,
/// heads · d) attends to k and v (batch, kv_len, heads · d); out (batch, q_len, heads · d)
/// holds `softmax(q_h k_hᵀ · scale + mask) v_h` in head h's columns. q, k and v may be
/// column ranges of wider tensors (`narrow` of a stacked q/k/v projection): on the CPU in
/// f32 they are read where they lie, and no head is copied out first.
///
/// `mask`: additive, broadcastable to (batch, heads, q_len, kv_len). `kernel`: the
/// [`gemm`] kernel of the two products (a bf16 one rounds q, k, v and the
/// probabilities to bf16 and sums the products in f32; the softmax stays f32), or `None`
/// for candle's batched matmul and softmax (GPUs, half precision, CPUs without a
/// kernel).
pub fn multi_head_attention(
    kernel: Option<Kernel>,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, lq, width) = q.dims3()?;
    let lk = k.dim(1)?;
    if k.dims3()? != (b, lk, width) || v.dims3()? != (b, lk, width) || width % heads != 0 {
        candle_core::bail!(
            "attention of q {:?} with k {:?} and v {:?} in {heads} heads",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let cpu_f32 = q.device().is_cpu() && [q, k, v].iter().all(|t| t.dtype() == DType::F32);
    match kernel {
        Some(kernel) if cpu_f32 && lq > 0 && lk > 0 => {
            attention_packed(kernel, q, k, v, heads, scale, mask)
        }
        _ => {
            let split = |t: &Tensor| {
                let len = t.dim(1)?;
                t.contiguous()?
                    .reshape((b, len, heads, width / heads))?
                    .transpose(1, 2)
            };
            attention_candle(&split(q)?, &split(k)?, &split(v)?, scale, mask)?
                .transpose(1, 2)?
                .reshape((b, lq, width))
        }
    }
}

/// `softmax(q kᵀ · scale + mask) v` through candle, on (batch, heads, len, head_dim).
fn attention_candle(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    probs.matmul(&v.contiguous()?)
}

/// [`multi_head_attention`] on the CPU in f32 through `qseek_kernels::gemm`, one (batch, head)
/// pair per task: `q kᵀ` with the head's keys packed as the weight, read in place
/// ([`PackedWeight::from_rows`]); [`gemm::softmax_rows`] (scale and mask
/// included); then the probabilities times the head's values, packed as the transposed
/// weight from their rows ([`PackedWeight::from_columns`]); the head's output is written
/// straight into its columns. Each row's numbers depend only on its own query and the
/// keys and values: a masked key (a text's padding, zero keys and values) adds exact
/// zeros.
fn attention_packed(
    kernel: Kernel,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    use rayon::prelude::*;
    let (b, lq, width) = q.dims3()?;
    let (lk, d) = (k.dim(1)?, width / heads);
    // (batch · heads, q_len, kv_len): a rank-3 view like q, k and v.
    let mask = match mask {
        Some(m) => Some(
            m.to_dtype(DType::F32)?
                .broadcast_as((b, heads, lq, lk))?
                .contiguous()?
                .reshape((b * heads, lq, lk))?,
        ),
        None => None,
    };
    let mut out = vec![0f32; b * lq * width];
    let format = kernel.format();
    let tensors: Vec<&Tensor> = [q, k, v].into_iter().chain(mask.as_ref()).collect();
    with_cpu_f32_views(&tensors, |views| {
        let (q, k, v) = (views[0], views[1], views[2]);
        let mask = views.get(3).map(|m| m.data);
        let out_ptr = gemm::OutPtr(out.as_mut_ptr());
        (0..b * heads).into_par_iter().for_each(|task| {
            let (bi, hi) = (task / heads, task % heads);
            let keys = PackedWeight::from_rows(format, k.rows(bi, hi * d, lk, d), None);
            let mut probs =
                gemm::matmul_rows(kernel, q.rows(bi, hi * d, lq, d), &keys, Epilogue::None);
            let mask = mask.map(|m| &m[task * lq * lk..(task + 1) * lq * lk]);
            softmax_rows(kernel, &mut probs, lk, scale as f32, mask);
            let values = PackedWeight::from_columns(format, v.rows(bi, hi * d, lk, d));
            let ys = gemm::matmul_wt(kernel, &probs, lq, &values, Epilogue::None);
            for (i, y) in ys.chunks_exact(d).enumerate() {
                // SAFETY: bi < b, i < lq (`ys` is lq × d) and hi·d + d ≤ heads·d ≤ width:
                // the d floats at row i of batch bi, head hi's columns, lie in `out` (b × lq
                // × width, f32-aligned), and are written by this task alone (its batch and
                // head); `out` outlives the tasks, and `y` (d floats of this task's own
                // `ys`) does not overlap it.
                unsafe {
                    let at = out_ptr.get().add((bi * lq + i) * width + hi * d);
                    std::ptr::copy_nonoverlapping(y.as_ptr(), at, d);
                }
            }
        });
    })?;
    Tensor::from_vec(out, (b, lq, width), q.device())
}

/// A rank-3 f32 CPU tensor read in place: its storage from its first value, and its
/// batch and row strides (the last dimension is contiguous).
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    batch: usize,
    row: usize,
}

impl<'a> View<'a> {
    /// Columns `column..column + width` of the first `len` rows of batch `b`.
    fn rows(self, b: usize, column: usize, len: usize, width: usize) -> gemm::Rows<'a> {
        gemm::Rows::strided(&self.data[b * self.batch + column..], len, width, self.row)
    }
}

/// Each rank-3 tensor as a [`View`] of its f32 CPU storage, given to `f` (one whose last
/// dimension is strided is made contiguous first); an error unless each is f32 on the
/// CPU.
fn with_cpu_f32_views<T>(xs: &[&Tensor], f: impl FnOnce(&[View]) -> T) -> Result<T> {
    let owned: Vec<Tensor> = xs
        .iter()
        .map(|x| {
            if x.rank() == 3 && x.stride()[2] == 1 {
                Ok((*x).clone())
            } else {
                x.contiguous()
            }
        })
        .collect::<Result<_>>()?;
    let held: Vec<_> = owned.iter().map(|x| x.storage_and_layout()).collect();
    let mut views = Vec::with_capacity(xs.len());
    for (storage, layout) in &held {
        let candle_core::Storage::Cpu(cpu) = &**storage else {
            candle_core::bail!("expected f32 tensors on the CPU");
        };
        let stride = layout.stride();
        views.push(View {
            data: &cpu.as_slice::<f32>()?[layout.start_offset()..],
            batch: stride[0],
            row: stride[1],
        });
    }
    Ok(f(&views))
}

/// The f32 CPU storage of each tensor, as slices, given to `f`; an error unless each is
/// a contiguous f32 tensor on the CPU.
fn with_cpu_f32s<T>(xs: &[Tensor], f: impl FnOnce(&[&[f32]]) -> T) -> Result<T> {
    let held: Vec<_> = xs.iter().map(|x| x.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(xs.len());
    for (storage, layout) in &held {
        let (candle_core::Storage::Cpu(cpu), Some((start, end))) =
            (&**storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("expected contiguous f32 tensors on the CPU");
        };
        slices.push(&cpu.as_slice::<f32>()?[start..end]);
    }
    Ok(f(&slices))
}

/// `F.normalize(x, dim=-1)`: divide by the L2 norm, at least 1e-12.
pub fn l2_normalize(xs: &Tensor) -> Result<Tensor> {
    let norm = xs
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    xs.broadcast_div(&norm)
}

/// Additive attention mask from a 0/1 mask of shape (batch, len): 0 where attended,
/// a large negative number where padded; shape (batch, 1, 1, len).
pub fn additive_mask(mask01: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, l) = mask01.dims2()?;
    let keep = mask01.to_dtype(DType::F32)?;
    // transformers uses finfo(dtype).min; any value that underflows exp() to 0 is the same.
    let neg = ((keep - 1.0)? * 1e30)?;
    neg.reshape((b, 1, 1, l))?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use qseek_kernels::activations::gelu_in_place;
    use qseek_kernels::gemm::{Format, Kernels};

    /// Every kernel of the bf16 and f32 formats this CPU runs.
    fn every_kernel() -> Vec<Kernel> {
        let mut kernels = Kernel::available(Format::Bf16);
        kernels.extend(Kernel::available(Format::F32));
        kernels
    }

    #[test]
    fn gelu_matches_candles_exact_gelu() {
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
    fn packed_attention_matches_candles_with_and_without_a_mask() {
        let dev = Device::Cpu;
        let f32 = Kernels::chosen().f32;
        let bf16 = Kernels::chosen().bf16;
        // (kernel, tolerance): f32 differs from candle's by summation order; bf16 by the
        // rounding of q, k, v and the probabilities to 8-bit mantissas.
        let kernels = [(f32, 1e-5), (bf16, 0.03)];
        // (batch, heads, q_len, kv_len, head_dim): ViT-like, text-like with odd sizes,
        // and cross-attention (fewer queries than keys).
        for (b, h, lq, lk, d) in [(1, 2, 7, 7, 8), (3, 3, 13, 13, 20), (2, 4, 5, 19, 88)] {
            let w = h * d;
            // q, k and v as column ranges of one stacked tensor (as a fused projection
            // gives them), q the first rows only when it is shorter.
            let qkv = Tensor::randn(0f32, 1.0, (b, lk.max(lq), 3 * w), &dev).unwrap();
            let part =
                |i: usize, len: usize| qkv.narrow(2, i * w, w).unwrap().narrow(1, 0, len).unwrap();
            let (q, k, v) = (part(0, lq), part(1, lk), part(2, lk));
            let keep: Vec<u32> = (0..b * lk)
                .map(|i| u32::from(i % lk < lk - i / lk))
                .collect();
            let mask =
                additive_mask(&Tensor::from_vec(keep, (b, lk), &dev).unwrap(), DType::F32).unwrap();
            for mask in [None, Some(&mask)] {
                let want = multi_head_attention(None, &q, &k, &v, h, 0.125, mask).unwrap();
                for (kernel, tolerance) in kernels {
                    let Some(kernel) = kernel else { continue };
                    let ours =
                        multi_head_attention(Some(kernel), &q, &k, &v, h, 0.125, mask).unwrap();
                    assert_eq!(ours.dims(), [b, lq, w]);
                    let diff = (ours - &want)
                        .unwrap()
                        .abs()
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .max(0)
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    assert!(
                        diff < tolerance,
                        "{kernel:?} ({b}, {h}, {lq}, {lk}, {d}): {diff}"
                    );
                }
            }
        }
    }
}
