//! The few building blocks the BLIP-2 modules share.

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Activation, VarBuilder};

use super::packed_gemm::{self, Epilogue, Kernel, PackedWeight};

/// `nn.Linear`: `y = x Wᵀ + b`, over any number of leading dimensions.
///
/// Flattens the leading dimensions into one GEMM instead of a batched matmul with a
/// broadcast weight: one large GEMM is what the CPU kernels are fastest at.
#[derive(Debug, Clone)]
pub struct Linear {
    weights: Weights,
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
    /// [`packed_gemm`](super::packed_gemm) at the first call: f32 in, f32 out, on the
    /// CPU.
    Packed {
        kernel: Kernel,
        packed: Arc<LazyPacked>,
    },
}

/// A weight packed at its layer's first call, not at load: a text search never runs
/// the ViT, whose packing would add seconds to every one-shot `qseek search`.
#[derive(Debug)]
struct LazyPacked {
    /// The tensors, until they are packed.
    source: Mutex<Option<(Tensor, Option<Tensor>)>>,
    packed: OnceLock<PackedWeight>,
}

impl LazyPacked {
    /// The packed weight, packing it (once; concurrent first calls wait) if needed.
    fn get(&self, kernel: Kernel) -> Result<&PackedWeight> {
        if let Some(p) = self.packed.get() {
            return Ok(p);
        }
        let mut source = self.source.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((weight, bias)) = source.as_ref() {
            let k = weight.dim(1)?;
            let w = weight
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let bias = match bias {
                Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
                None => None,
            };
            let packed = PackedWeight::new(kernel.format(), &w, bias.as_deref(), k);
            let _ = self.packed.set(packed);
            *source = None;
        }
        Ok(self.packed.get().expect("packed under the lock"))
    }
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
    /// theirs side by side, in one GEMM instead of one per layer (with `packed_gemm`, bit
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

    /// This layer computed by [`packed_gemm`] with `kernel` (unchanged if `None`): at
    /// its first call the weight is packed in the kernel's format (bf16 rounds it; the
    /// tensors are then dropped) and the bias kept in f32. The layer then takes and
    /// returns f32 on the CPU.
    pub fn into_packed(self, kernel: Option<Kernel>) -> Self {
        let (Some(kernel), Weights::Tensors { weight, bias }) = (kernel, &self.weights) else {
            return self;
        };
        let packed = Arc::new(LazyPacked {
            source: Mutex::new(Some((weight.clone(), bias.clone()))),
            packed: OnceLock::new(),
        });
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
                let packed = packed.get(*kernel)?;
                let matmul = |x: &[f32]| packed_gemm::matmul_wt(*kernel, x, rows, packed, epilogue);
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
        if let Weights::Packed { kernel, packed } = &self.weights {
            let mut dims = xs.dims().to_vec();
            if let Some(last) = dims.last_mut() {
                *last = packed.get(*kernel)?.n();
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

/// Scaled dot-product attention: `softmax(q kᵀ · scale + mask) v`.
///
/// `q`: (batch, heads, q_len, head_dim); `k`, `v`: (batch, heads, kv_len, head_dim);
/// `mask`: additive, broadcastable to (batch, heads, q_len, kv_len).
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    if q.device().is_cpu() && q.dtype() == DType::F32 && q.elem_count() > 0 && k.elem_count() > 0 {
        if let Some(kernel) = Kernel::chosen(packed_gemm::Format::F32) {
            return attention_packed(kernel, q, k, v, scale, mask);
        }
    }
    attention_candle(q, k, v, scale, mask)
}

/// [`attention`] through candle's batched matmul and softmax (GPUs, half precision,
/// CPUs without a `packed_gemm` kernel, `QSEEK_F32_GEMM=off`).
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

/// [`attention`] on the CPU in f32 through `packed_gemm`, one (batch, head) pair per
/// task: `q kᵀ` with the head's keys packed as the weight, [`packed_gemm::softmax_rows`]
/// (scale and mask included), then the probabilities times the head's values (packed
/// transposed). `examples/parts.rs`, ViT-g bf16, batch 4, 2 cores, interleaved with
/// `QSEEK_F32_GEMM=off` (candle's batched matmul and softmax): attention 1.08–1.18 →
/// 0.54–0.55 s per batch (49–54 → 106 GFLOP/s), 0.547–0.579 → 0.627–0.658 images/s.
/// Each row's numbers depend only on its own query and the keys and values: a masked
/// key (a text's padding, zero keys and values) adds exact zeros.
fn attention_packed(
    kernel: Kernel,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    use rayon::prelude::*;
    let (b, h, lq, d) = q.dims4()?;
    let lk = k.dim(2)?;
    if k.dims4()? != (b, h, lk, d) || v.dims4()? != (b, h, lk, d) {
        candle_core::bail!(
            "attention of q {:?} with k {:?} and v {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let mask = match mask {
        Some(m) => Some(
            m.to_dtype(DType::F32)?
                .broadcast_as((b, h, lq, lk))?
                .contiguous()?,
        ),
        None => None,
    };
    let tensors: Vec<Tensor> = [q, k, v]
        .into_iter()
        .chain(mask.as_ref())
        .map(|t| t.contiguous())
        .collect::<Result<_>>()?;
    let out = with_cpu_f32s(&tensors, |slices| {
        let (q, k, v, mask) = (slices[0], slices[1], slices[2], slices.get(3));
        let mut out = vec![0f32; b * h * lq * d];
        out.par_chunks_mut(lq * d).enumerate().for_each(|(i, out)| {
            let keys = PackedWeight::new(
                packed_gemm::Format::F32,
                &k[i * lk * d..(i + 1) * lk * d],
                None,
                d,
            );
            let q = &q[i * lq * d..(i + 1) * lq * d];
            let mut probs = packed_gemm::matmul_wt(kernel, q, lq, &keys, Epilogue::None);
            let mask = mask.map(|m| &m[i * lq * lk..(i + 1) * lq * lk]);
            packed_gemm::softmax_rows(kernel, &mut probs, lk, scale as f32, mask);
            let v = &v[i * lk * d..(i + 1) * lk * d];
            let mut v_t = vec![0f32; d * lk];
            for (j, row) in v.chunks_exact(d).enumerate() {
                for (c, &x) in row.iter().enumerate() {
                    v_t[c * lk + j] = x;
                }
            }
            let values = PackedWeight::new(packed_gemm::Format::F32, &v_t, None, lk);
            out.copy_from_slice(&packed_gemm::matmul_wt(
                kernel,
                &probs,
                lq,
                &values,
                Epilogue::None,
            ));
        });
        out
    })?;
    Tensor::from_vec(out, (b, h, lq, d), q.device())
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

    #[test]
    fn packed_attention_matches_candles_with_and_without_a_mask() {
        let Some(kernel) = Kernel::chosen(packed_gemm::Format::F32) else {
            return;
        };
        let dev = Device::Cpu;
        // (batch, heads, q_len, kv_len, head_dim): ViT-like, text-like with odd sizes,
        // and cross-attention (fewer queries than keys).
        for (b, h, lq, lk, d) in [(1, 2, 7, 7, 8), (3, 3, 13, 13, 20), (2, 4, 5, 19, 88)] {
            let q = Tensor::randn(0f32, 1.0, (b, h, lq, d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (b, h, lk, d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (b, h, lk, d), &dev).unwrap();
            let keep: Vec<u32> = (0..b * lk)
                .map(|i| u32::from(i % lk < lk - i / lk))
                .collect();
            let mask =
                additive_mask(&Tensor::from_vec(keep, (b, lk), &dev).unwrap(), DType::F32).unwrap();
            for mask in [None, Some(&mask)] {
                let ours = attention_packed(kernel, &q, &k, &v, 0.125, mask).unwrap();
                let want = attention_candle(&q, &k, &v, 0.125, mask).unwrap();
                let diff = (ours - want)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(diff < 1e-5, "({b}, {h}, {lq}, {lk}, {d}): {diff}");
            }
        }
    }
}
