//! Slow, obviously-correct block-sparse attention: an explicit masked softmax in f64.
//!
//! Every fast kernel (CPU, candle ops, CUDA) is tested against this on small shapes.
//! It materialises nothing larger than one score row, but costs O(L²·D) scalar f64 work.

use candle_core::{DType, Device, Tensor};

use crate::{BlockMask, Result};

/// `softmax(q·kᵀ·scale + M)·v` where `M` is 0 for token pairs whose blocks `mask` keeps and
/// −∞ elsewhere. A query whose row keeps nothing gets a zero output.
///
/// q, k, v: `[B, H, L, D]` (any float dtype) → `[B, H, L, D]` f32 on the CPU.
pub fn masked_attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &BlockMask,
    scale: f64,
) -> Result<Tensor> {
    let (b, h, l, _) = q.dims4()?;
    crate::inputs::check_self_attention(q, k, v)?;
    mask.check_covers(b, h, l)?;
    let bs = mask.block_size;
    attention_reference_where(q, k, v, scale, |bh, i, j| {
        mask.row(bh / h, bh % h, i / bs)
            .binary_search(&((j / bs) as u32))
            .is_ok()
    })
}

/// `softmax(q·kᵀ·scale + M)·v` in f64, where `M` is 0 where `allowed(bh, i, j)` (bh = batch ·
/// heads + head, i the query, j the key) and −∞ elsewhere: any mask, token by token (block
/// masks, padded keys, a joint sequence's text band). A query that may see no key gets a zero
/// output.
///
/// q: `[B, H, Lq, D]`, k and v: `[B, H, Lk, D]` (any float dtype) → `[B, H, Lq, D]` f32 on the CPU.
pub fn attention_reference_where(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    allowed: impl Fn(usize, usize, usize) -> bool,
) -> Result<Tensor> {
    let (b, h, lq, d) = q.dims4()?;
    let lk = k.dim(2)?;
    let flat = |x: &Tensor| -> Result<Vec<f64>> {
        Ok(x.to_device(&Device::Cpu)?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?)
    };
    let (q, k, v) = (flat(q)?, flat(k)?, flat(v)?);
    let mut out = vec![0f32; b * h * lq * d];
    let mut weights = vec![0f64; lk];
    for bh in 0..b * h {
        let (base_q, base_k) = (bh * lq * d, bh * lk * d);
        for i in 0..lq {
            let qi = &q[base_q + i * d..base_q + (i + 1) * d];
            let mut max = f64::NEG_INFINITY;
            for (j, w) in weights.iter_mut().enumerate() {
                *w = if allowed(bh, i, j) {
                    let kj = &k[base_k + j * d..base_k + (j + 1) * d];
                    qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() * scale
                } else {
                    f64::NEG_INFINITY
                };
                max = max.max(*w);
            }
            if max == f64::NEG_INFINITY {
                continue;
            }
            let mut total = 0.0;
            let mut acc = vec![0f64; d];
            for (j, &w) in weights.iter().enumerate() {
                if w == f64::NEG_INFINITY {
                    continue;
                }
                let p = (w - max).exp();
                total += p;
                for (a, &vj) in acc.iter_mut().zip(&v[base_k + j * d..base_k + (j + 1) * d]) {
                    *a += p * vj;
                }
            }
            for (o, a) in out[base_q + i * d..base_q + (i + 1) * d]
                .iter_mut()
                .zip(&acc)
            {
                *o = (a / total) as f32;
            }
        }
    }
    Ok(Tensor::from_vec(out, (b, h, lq, d), &Device::Cpu)?)
}

/// `max |a − b|` over all elements, in f64 on the CPU (any float dtypes, any devices); tensors
/// of different shapes are an error. For checks that state an absolute bound.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.dims() != b.dims() {
        return Err(crate::Error::InvalidConfig(format!(
            "max_abs_diff: shapes {:?} and {:?} differ",
            a.dims(),
            b.dims()
        )));
    }
    let on_cpu =
        |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F64)?) };
    Ok((on_cpu(a)? - on_cpu(b)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()?)
}

/// `‖a − b‖ / ‖b‖` over all elements, in f64 on the CPU (any float dtypes, any devices): the
/// error measure every parity test and kernel check of the workspace states its tolerance in.
/// Tensors of different shapes are an error.
pub fn relative_error(a: &Tensor, b: &Tensor) -> Result<f64> {
    if a.dims() != b.dims() {
        return Err(crate::Error::InvalidConfig(format!(
            "relative_error: shapes {:?} and {:?} differ",
            a.dims(),
            b.dims()
        )));
    }
    let on_cpu =
        |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F64)?) };
    let (a, b) = (on_cpu(a)?, on_cpu(b)?);
    let diff = (&a - &b)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
    let norm = b.sqr()?.sum_all()?.to_scalar::<f64>()?;
    Ok((diff / norm).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error_is_the_norm_ratio_and_refuses_other_shapes() {
        let b = Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap();
        let a = Tensor::new(&[3f32, 5.0], &Device::Cpu).unwrap();
        assert!((relative_error(&a, &b).unwrap() - 0.2).abs() < 1e-12);
        assert_eq!(relative_error(&b, &b).unwrap(), 0.0);
        let bf16 = b.to_dtype(DType::BF16).unwrap();
        assert_eq!(relative_error(&bf16, &b).unwrap(), 0.0);
        let other = Tensor::new(&[[3f32, 4.0]], &Device::Cpu).unwrap();
        assert!(relative_error(&other, &b).is_err());
    }
}
