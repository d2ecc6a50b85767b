//! The row kernels' inputs, checked once (`[B, L, dim]` rows of a DiT block) and shared by both
//! forms of the kernels: [`super::rows`] (warp per row) and [`super::rows_cta`] (CTA per row).

use candle_core::{DType, Tensor};

use super::checks::{check_16bit, check_dtype, check_vector};
use crate::{Error, Result};

/// The residual update's checked inputs: `(y + bias)·gate` added to a `[B, L, dim]` stream.
pub(super) struct Residual {
    pub(super) y: Tensor,
    pub(super) bias: Option<Tensor>,
    pub(super) gate: Option<Tensor>,
}

impl Residual {
    pub(super) fn new(
        x: &Tensor,
        y: &Tensor,
        bias: Option<&Tensor>,
        gate: Option<&Tensor>,
    ) -> Result<Self> {
        let (b, _, dim) = x.dims3()?;
        check_16bit(y.dtype(), "gated_residual y")?;
        if y.dims() != x.dims() {
            return Err(Error::InvalidConfig(format!(
                "gated_residual: y {:?} must have x's shape {:?}",
                y.dims(),
                x.dims()
            )));
        }
        let bias = match bias {
            Some(bias) => {
                check_vector(bias, dim, y.dtype(), "bias")?;
                Some(bias.contiguous()?)
            }
            None => None,
        };
        let gate = match gate {
            Some(gate) => {
                check_dtype(gate, DType::F32, "gate")?;
                if gate.dims() != [b, dim] {
                    return Err(Error::InvalidConfig(format!(
                        "gated_residual: gate must be [{b}, {dim}], got {:?}",
                        gate.dims()
                    )));
                }
                Some(gate.contiguous()?)
            }
            None => None,
        };
        Ok(Self {
            y: y.contiguous()?,
            bias,
            gate,
        })
    }
}

/// The LayerNorm's checked inputs: `LayerNorm(v)·a + c` of a `[B, L, dim]` stream, in `dtype`.
pub(super) struct Norm {
    pub(super) a: Tensor,
    pub(super) c: Tensor,
    /// 0 when a and c are `[dim]`, dim when they are `[B, dim]`.
    pub(super) ac_batch_stride: i64,
    pub(super) eps: f32,
    pub(super) dtype: DType,
}

impl Norm {
    pub(super) fn new(x: &Tensor, a: &Tensor, c: &Tensor, eps: f64, dtype: DType) -> Result<Self> {
        let (b, _, dim) = x.dims3()?;
        check_16bit(dtype, "layer_norm_affine output")?;
        let per_batch = |t: &Tensor, name: &str| -> Result<(Tensor, i64)> {
            check_dtype(t, DType::F32, name)?;
            match t.dims() {
                [d] if *d == dim => Ok((t.contiguous()?, 0)),
                [bb, d] if *bb == b && *d == dim => Ok((t.contiguous()?, dim as i64)),
                other => Err(Error::InvalidConfig(format!(
                    "layer_norm_affine: {name} must be [{b}, {dim}] or [{dim}], got {other:?}"
                ))),
            }
        };
        let (a, a_stride) = per_batch(a, "a (scale)")?;
        let (c, c_stride) = per_batch(c, "c (shift)")?;
        if a_stride != c_stride {
            return Err(Error::InvalidConfig(
                "layer_norm_affine: a and c must both be per batch or both per channel".into(),
            ));
        }
        Ok(Self {
            a,
            c,
            ac_batch_stride: a_stride,
            eps: eps as f32,
            dtype,
        })
    }
}

/// The q/k RMSNorm + RoPE's checked inputs: bias `[dim]` in x's dtype, weight `[dim]` f32, the
/// RoPE tables `[tokens, head_dim/2]` f32 (none: no RoPE).
pub(super) struct RmsRope {
    pub(super) bias: Option<Tensor>,
    pub(super) weight: Tensor,
    pub(super) rope: Option<(Tensor, Tensor)>,
    pub(super) head_dim: usize,
    pub(super) tokens: usize,
    pub(super) eps: f32,
}

impl RmsRope {
    pub(super) fn new(
        x: &Tensor,
        bias: Option<&Tensor>,
        weight: &Tensor,
        rope: Option<(&Tensor, &Tensor)>,
        head_dim: usize,
        eps: f64,
    ) -> Result<Self> {
        let (_, l, dim) = x.dims3()?;
        if head_dim == 0 || !head_dim.is_multiple_of(2) || !dim.is_multiple_of(head_dim) {
            return Err(Error::InvalidConfig(format!(
                "rms_norm_rope: head_dim {head_dim} must be even and divide the width {dim}"
            )));
        }
        check_vector(weight, dim, DType::F32, "weight")?;
        let bias = match bias {
            Some(bias) => {
                check_vector(bias, dim, x.dtype(), "bias")?;
                Some(bias.contiguous()?)
            }
            None => None,
        };
        let rope = match rope {
            Some((cos, sin)) => {
                for (t, name) in [(cos, "cos"), (sin, "sin")] {
                    check_dtype(t, DType::F32, name)?;
                    if t.dims() != [l, head_dim / 2] {
                        return Err(Error::InvalidConfig(format!(
                            "rms_norm_rope: {name} must be [{l}, {}], got {:?}",
                            head_dim / 2,
                            t.dims()
                        )));
                    }
                }
                Some((cos.contiguous()?, sin.contiguous()?))
            }
            None => None,
        };
        Ok(Self {
            bias,
            weight: weight.contiguous()?,
            rope,
            head_dim,
            tokens: l,
            eps: eps as f32,
        })
    }
}
