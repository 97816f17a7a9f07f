//! The few building blocks the BLIP-2 modules share.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// `nn.Linear`: `y = x Wᵀ + b`, over any number of leading dimensions.
///
/// Flattens the leading dimensions into one GEMM instead of a batched matmul with a
/// broadcast weight: one large GEMM is what the CPU kernels are fastest at.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `weight` (out, in) and, when present in `vb`, `bias` (out).
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = Some(vb.get(out_dim, "bias")?);
        Ok(Self { weight, bias })
    }

    /// A linear layer from tensors already loaded.
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }
}

impl Linear {
    /// `x Wᵀ` for a few rows of f32 on the CPU (a text query), through
    /// [`skinny_gemm`](super::skinny_gemm), which reads the weight once instead of
    /// packing it; `None` where candle's GEMM is the better one.
    fn skinny(&self, xs: &Tensor, rows: usize, in_dim: usize) -> Result<Option<Tensor>> {
        use super::skinny_gemm::{matmul_wt, Kernel, MAX_ROWS};
        let Some(kernel) = Kernel::chosen() else {
            return Ok(None);
        };
        if rows > MAX_ROWS
            || !xs.device().is_cpu()
            || xs.dtype() != DType::F32
            || self.weight.dtype() != DType::F32
        {
            return Ok(None);
        }
        let (storage, layout) = self.weight.storage_and_layout();
        let (candle_core::Storage::Cpu(cpu), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        else {
            return Ok(None);
        };
        let weight = &cpu.as_slice::<f32>()?[start..end];
        let x = xs.flatten_all()?.to_vec1::<f32>()?;
        let ys = matmul_wt(kernel, &x, weight, rows, in_dim);
        Ok(Some(Tensor::from_vec(
            ys,
            (rows, self.weight.dim(0)?),
            xs.device(),
        )?))
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = xs.elem_count() / in_dim.max(1);
        let out_dim = self.weight.dim(0)?;
        let ys = match self.skinny(xs, rows, in_dim)? {
            Some(ys) => ys,
            None => xs.reshape((rows, in_dim))?.matmul(&self.weight.t()?)?,
        };
        let ys = match &self.bias {
            Some(b) => ys.broadcast_add(b)?,
            None => ys,
        };
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("rank >= 1") = out_dim;
        ys.reshape(out_dims)
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
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    probs.matmul(&v.contiguous()?)
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
