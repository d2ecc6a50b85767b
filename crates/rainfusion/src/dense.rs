//! Dense softmax attention over query chunks, built from candle ops so it runs on every device.

use candle_core::{DType, Tensor, D};

use crate::{Error, Result, SelfAttention, VideoLayout};

/// Largest number of score elements (chunk rows × keys × heads × batch) materialised at once.
/// 2^27 f32 scores = 512 MiB.
const MAX_SCORE_ELEMENTS: usize = 1 << 27;

/// Plain softmax attention, `softmax(q·kᵀ·scale)·v`, with f32 scores and softmax.
///
/// q: `[B, H, Lq, D]`, k and v: `[B, H, Lk, D]` → `[B, H, Lq, D]` in q's dtype.
/// Queries are processed in chunks so the score matrix of all heads is never whole in memory.
pub fn dense_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, h, lq, d) = q.dims4()?;
    let (bk, hk, lk, dk) = k.dims4()?;
    if (bk, hk, dk) != (b, h, d) || v.dims4()? != (bk, hk, lk, dk) {
        return Err(Error::ShapeMismatch {
            q: q.shape().clone(),
            k: k.shape().clone(),
            v: v.shape().clone(),
        });
    }
    let out_dtype = q.dtype();
    let k_t = k.to_dtype(DType::F32)?.transpose(2, 3)?.contiguous()?; // [B,H,D,Lk]
    let v = v.to_dtype(DType::F32)?.contiguous()?; // [B,H,Lk,D]
    let chunk = (MAX_SCORE_ELEMENTS / (b * h * lk).max(1)).clamp(1, lq.max(1));
    let mut outs = Vec::with_capacity(lq.div_ceil(chunk));
    let mut start = 0;
    while start < lq {
        let len = chunk.min(lq - start);
        let q_chunk = (q.narrow(2, start, len)?.to_dtype(DType::F32)? * scale)?;
        let scores = q_chunk.contiguous()?.matmul(&k_t)?; // [B,H,len,Lk]
        let max = scores.max_keepdim(D::Minus1)?;
        let exp = scores.broadcast_sub(&max)?.exp()?;
        let sum = exp.sum_keepdim(D::Minus1)?;
        let out = exp.matmul(&v)?.broadcast_div(&sum)?; // [B,H,len,D]
        outs.push(out.to_dtype(out_dtype)?);
        start += len;
    }
    Ok(Tensor::cat(&outs, 2)?)
}

/// Dense self-attention for every layer: the reference every sparse mode is measured against.
#[derive(Debug, Clone, Copy, Default)]
pub struct DenseAttention;

impl SelfAttention for DenseAttention {
    fn attend(
        &mut self,
        _layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        layout: &VideoLayout,
    ) -> Result<Tensor> {
        let scale = checked_scale(q, layout)?;
        dense_self_attention_as(q, k, v, scale, false)
    }

    fn attend_tokens(
        &mut self,
        _layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        layout: &VideoLayout,
    ) -> Result<Tensor> {
        let scale = checked_scale(q, layout)?;
        dense_self_attention_as(q, k, v, scale, true)
    }
}

/// `1/√head_dim` for q `[B, H, L, D]`, after checking that L is the layout's token count.
fn checked_scale(q: &Tensor, layout: &VideoLayout) -> Result<f64> {
    let (_, _, tokens, head_dim) = q.dims4()?;
    if tokens != layout.total_tokens() {
        return Err(Error::LayoutMismatch {
            layout_tokens: layout.total_tokens(),
            tensor_tokens: tokens,
        });
    }
    Ok(1.0 / (head_dim as f64).sqrt())
}

/// Dense self-attention on the fastest path for the device: the CPU block kernel with every
/// block kept on the CPU (about 3× faster than the candle-ops path there, see BENCHMARKS.md),
/// [`dense_attention`] elsewhere. q, k, v: `[B, H, L, D]` → `[B, H, L, D]` in q's dtype.
pub fn dense_self_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    dense_self_attention_as(q, k, v, scale, false)
}

/// [`dense_self_attention`], returning `[B, H, L, D]`, or contiguous `[B, L, H, D]` when
/// `tokens_major` (the CUDA kernel writes that layout directly; elsewhere it is one copy).
fn dense_self_attention_as(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    tokens_major: bool,
) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::cuda::is_supported(q, 128) && q.dims4()? == k.dims4()? {
        let layout = if tokens_major {
            crate::cuda::OutputLayout::Blhd
        } else {
            crate::cuda::OutputLayout::Bhld
        };
        return crate::cuda::flash_attention_with_layout(q, k, v, scale, layout);
    }
    let cpu_kernel_dtype = matches!(q.dtype(), DType::F32 | DType::BF16 | DType::F16);
    let out = if q.device().is_cpu() && cpu_kernel_dtype {
        crate::sparse_cpu::dense_attention_cpu(q, k, v, scale)?
    } else {
        dense_attention(q, k, v, scale)?
    };
    if tokens_major {
        Ok(out.transpose(1, 2)?.contiguous()?)
    } else {
        Ok(out)
    }
}
