//! Dense attention with a per-key validity mask, over query chunks.
//!
//! Joint video + text attention (HunyuanVideo 1.5's dual-stream blocks, its token refiner) pads
//! the text of each sample to a common length; padded keys must get exactly zero weight. The mask
//! is one flag per (sample, key): it is the same for every head and every query, so it enters the
//! scores as an additive bias row (0 or −∞) and no `L × L` mask or score matrix is ever built.
//! Memory is O(chunk × Lk) per (sample, head): the chunk is sized so that all heads' scores of
//! one chunk stay under [`MAX_SCORE_ELEMENTS`].
//!
//! Without a mask (every key valid) this is [`crate::dense_self_attention`] for self-attention
//! (the fast CPU and CUDA kernels) and [`crate::dense_attention`] otherwise. With a mask, CUDA
//! gathers each sample's valid keys and runs the fused cross-attention kernel over them
//! (`masked_by_gathering`); elsewhere the masked path is candle ops. The sparse variant for
//! joint video + text sequences (video blocks predicted, text band dense) is [`crate::joint`].

use candle_core::{DType, Tensor, D};

use crate::{Error, Result};

/// Largest number of score elements (batch × heads × chunk rows × keys) materialised at once:
/// 2^27 f32 = 512 MiB, as [`crate::dense_attention`].
const MAX_SCORE_ELEMENTS: usize = 1 << 27;

/// `softmax(q·kᵀ·scale + bias)·v` with `bias[b, j]` = 0 where key j of sample b is valid and −∞
/// where it is not; scores and softmax in f32.
///
/// - q: `[B, H, Lq, D]`; k, v: `[B, H, Lk, D]` → `[B, H, Lq, D]` in q's dtype.
/// - `key_valid`: `[B, Lk]`, any dtype, non-zero = valid; `None` = every key valid.
///
/// A query of a sample with no valid key gets a zero output (not NaN).
pub fn key_masked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_valid: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    key_masked_attention_chunked(q, k, v, key_valid, scale, MAX_SCORE_ELEMENTS)
}

/// [`key_masked_attention`] with a chosen bound on the scores of one chunk (tests use small
/// bounds to run many chunks on small inputs).
pub(crate) fn key_masked_attention_chunked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_valid: Option<&Tensor>,
    scale: f64,
    max_score_elements: usize,
) -> Result<Tensor> {
    let (b, h, lq, d) = q.dims4()?;
    let (bk, hk, lk, dk) = k.dims4()?;
    if (bk, hk, dk) != (b, h, d) || v.dims4()? != (bk, hk, lk, dk) {
        return Err(Error::ShapeMismatch {
            q: q.shape().clone(),
            k: k.shape().clone(),
            v: v.shape().clone(),
        });
    }
    let Some(key_valid) = key_valid else {
        return if lq == lk {
            crate::dense_self_attention(q, k, v, scale)
        } else {
            crate::dense_attention(q, k, v, scale)
        };
    };
    if key_valid.dims() != [b, lk] {
        return Err(Error::InvalidConfig(format!(
            "key validity mask is {:?}, expected [{b}, {lk}] (batch, keys)",
            key_valid.dims()
        )));
    }
    #[cfg(feature = "cuda")]
    if crate::cuda::is_supported(q, 128) {
        return masked_by_gathering(q, k, v, key_valid, scale);
    }
    let device = q.device();
    // [B, 1, 1, Lk]: 0 on valid keys, −∞ on padded ones; broadcast over heads and queries.
    let zeros = Tensor::zeros((b, lk), DType::F32, device)?;
    let minus_inf = Tensor::full(f32::NEG_INFINITY, (b, lk), device)?;
    let bias = key_valid
        .to_device(device)?
        .ne(0f64)?
        .where_cond(&zeros, &minus_inf)?
        .reshape((b, 1, 1, lk))?;

    let out_dtype = q.dtype();
    let k_t = k.to_dtype(DType::F32)?.transpose(2, 3)?.contiguous()?; // [B, H, D, Lk]
    let v = v.to_dtype(DType::F32)?.contiguous()?; // [B, H, Lk, D]
    let chunk = (max_score_elements / (b * h * lk).max(1)).clamp(1, lq.max(1));
    let mut outs = Vec::with_capacity(lq.div_ceil(chunk));
    let mut start = 0;
    while start < lq {
        let len = chunk.min(lq - start);
        let q_chunk = (q.narrow(2, start, len)?.to_dtype(DType::F32)? * scale)?;
        let scores = q_chunk.contiguous()?.matmul(&k_t)?.broadcast_add(&bias)?; // [B, H, len, Lk]
                                                                                // A row with no valid key has max −∞; a finite stand-in makes every exp 0 (not NaN),
                                                                                // and the floor on the sum turns 0/0 into 0.
        let max = scores.max_keepdim(D::Minus1)?.maximum(f32::MIN as f64)?;
        let exp = scores.broadcast_sub(&max)?.exp()?;
        let sum = exp
            .sum_keepdim(D::Minus1)?
            .maximum(f32::MIN_POSITIVE as f64)?;
        let out = exp.matmul(&v)?.broadcast_div(&sum)?; // [B, H, len, D]
        outs.push(out.to_dtype(out_dtype)?);
        start += len;
    }
    Ok(Tensor::cat(&outs, 2)?)
}

/// CUDA: each sample's valid keys gathered into one run and attended by the fused
/// cross-attention kernel (every query row over the valid keys only): the same softmax over the
/// same keys as the bias row gives, without the candle-ops chunks. Gathering rather than a flag
/// argument in the kernel: one copy of a sample's k and v, against a flag read in every variant
/// of the kernel; the copy is O(Lk·D) per head beside the O(Lq·Lk·D) attention.
///
/// q: `[B, H, Lq, D]`; k, v: `[B, H, Lk, D]`; `key_valid`: `[B, Lk]` → `[B, H, Lq, D]`.
#[cfg(feature = "cuda")]
fn masked_by_gathering(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_valid: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    use crate::cuda::{cross_attention, OutputLayout};
    let flags = key_valid
        .to_device(&candle_core::Device::Cpu)?
        .ne(0f64)?
        .to_vec2::<u8>()?;
    let mut outs = Vec::with_capacity(flags.len());
    for (sample, row) in flags.iter().enumerate() {
        let qs = q.narrow(0, sample, 1)?;
        let valid: Vec<u32> = (0..row.len() as u32)
            .filter(|&j| row[j as usize] != 0)
            .collect();
        if valid.is_empty() {
            // No key to attend to: zeros, as the bias path gives.
            outs.push(qs.zeros_like()?);
            continue;
        }
        let (ks, vs) = (k.narrow(0, sample, 1)?, v.narrow(0, sample, 1)?);
        let (ks, vs) = if valid.len() == row.len() {
            (ks, vs)
        } else {
            let index = Tensor::new(valid.as_slice(), q.device())?;
            (ks.index_select(&index, 2)?, vs.index_select(&index, 2)?)
        };
        outs.push(cross_attention(&qs, &ks, &vs, scale, OutputLayout::Bhld)?);
    }
    Ok(Tensor::cat(&outs, 0)?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::reference::relative_error;

    /// Deterministic values in [−1, 1] (no RNG, so a failure reproduces).
    fn wavy(shape: (usize, usize, usize, usize), phase: f32) -> Tensor {
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let values: Vec<f32> = (0..n)
            .map(|i| ((i as f32) * 0.731 + phase).sin() * ((i as f32) * 0.117).cos())
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    /// The masked softmax written out in f64, one score row at a time.
    fn naive(q: &Tensor, k: &Tensor, v: &Tensor, valid: &[Vec<bool>], scale: f64) -> Tensor {
        let h = q.dim(1).unwrap();
        crate::reference::attention_reference_where(q, k, v, scale, |bh, _, j| valid[bh / h][j])
            .unwrap()
    }

    fn mask_tensor(valid: &[Vec<bool>]) -> Tensor {
        let lk = valid[0].len();
        let values: Vec<u8> = valid.iter().flatten().map(|&v| v as u8).collect();
        Tensor::from_vec(values, (valid.len(), lk), &Device::Cpu).unwrap()
    }

    #[test]
    fn padded_keys_get_no_weight_and_chunks_agree() {
        let (b, h, l, d) = (3, 2, 13, 8);
        let (q, k, v) = (
            wavy((b, h, l, d), 0.0),
            wavy((b, h, l, d), 1.3),
            wavy((b, h, l, d), 2.9),
        );
        // Sample 0 all valid, sample 1 padded at the end, sample 2 with holes.
        let valid: Vec<Vec<bool>> = vec![
            vec![true; l],
            (0..l).map(|j| j < 9).collect(),
            (0..l).map(|j| j % 3 != 1).collect(),
        ];
        let scale = 1.0 / (d as f64).sqrt();
        let expected = naive(&q, &k, &v, &valid, scale);
        let mask = mask_tensor(&valid);
        let whole = key_masked_attention(&q, &k, &v, Some(&mask), scale).unwrap();
        assert!(relative_error(&whole, &expected).unwrap() < 1e-6);
        // 2·2·13 scores per query row: a bound of 100 gives one-row chunks.
        let chunked = key_masked_attention_chunked(&q, &k, &v, Some(&mask), scale, 100).unwrap();
        assert!(relative_error(&chunked, &expected).unwrap() < 1e-6);

        // Changing padded keys and values changes nothing.
        let noise = (wavy((b, h, l, d), 7.0) * 50.0).unwrap();
        let keep = mask
            .to_dtype(DType::F32)
            .unwrap()
            .reshape((b, 1, l, 1))
            .unwrap()
            .broadcast_as((b, h, l, d))
            .unwrap();
        let scramble = |x: &Tensor| -> Tensor {
            let padded_part = (noise.clone() * (1.0 - &keep).unwrap()).unwrap();
            ((x * &keep).unwrap() + padded_part).unwrap()
        };
        let moved =
            key_masked_attention(&q, &scramble(&k), &scramble(&v), Some(&mask), scale).unwrap();
        assert_eq!(relative_error(&moved, &whole).unwrap(), 0.0);
    }

    #[test]
    fn no_valid_key_gives_zeros_and_no_mask_is_plain_attention() {
        let (b, h, lq, lk, d) = (2, 1, 5, 7, 4);
        let q = wavy((b, h, lq, d), 0.5);
        let k = wavy((b, h, lk, d), 1.5);
        let v = wavy((b, h, lk, d), 2.5);
        let valid = vec![vec![false; lk], (0..lk).map(|j| j < 4).collect::<Vec<_>>()];
        let out = key_masked_attention(&q, &k, &v, Some(&mask_tensor(&valid)), 0.5).unwrap();
        let first = out.get(0).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(first.to_scalar::<f32>().unwrap(), 0.0);
        let expected = naive(&q, &k, &v, &valid, 0.5);
        assert!(relative_error(&out, &expected).unwrap() < 1e-6);

        let all = vec![vec![true; lk]; b];
        let unmasked = key_masked_attention(&q, &k, &v, None, 0.5).unwrap();
        assert!(relative_error(&unmasked, &naive(&q, &k, &v, &all, 0.5)).unwrap() < 1e-6);
        let bad = Tensor::ones((b, lk + 1), DType::U8, &Device::Cpu).unwrap();
        assert!(key_masked_attention(&q, &k, &v, Some(&bad), 0.5).is_err());
    }
}
