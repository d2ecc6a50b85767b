//! Pieces shared by the token refiner and the dual-stream blocks: head split and merge, the
//! feed-forward network, and the masked attention call.

use candle_core::{DType, Tensor};

use crate::error::Result;
use crate::wan::layers::{Linear, WeightSource};
use crate::wan::tensor_map::TensorMap;

/// `[B, L, heads·head_dim]` → `[B, heads, L, head_dim]` (contiguous).
pub(crate) fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, l, width) = x.dims3()?;
    Ok(x.reshape((b, l, heads, width / heads))?
        .transpose(1, 2)?
        .contiguous()?)
}

/// `[B, heads, L, head_dim]` → `[B, L, heads·head_dim]`.
pub(crate) fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, l, d) = x.dims4()?;
    Ok(x.transpose(1, 2)?.contiguous()?.reshape((b, l, h * d))?)
}

/// Softmax attention of q over k, v (`[B, heads, L, head_dim]` each, f32 or the run dtype),
/// padded keys excluded by `key_valid` (`[B, L]`, 1 valid / 0 padded; `None`: all valid) →
/// `[B, heads, L, head_dim]`. Dense, through rainfusion's chunked masked kernel: no L × L matrix.
pub(crate) fn masked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_valid: Option<&Tensor>,
) -> Result<Tensor> {
    let head_dim = q.dim(3)?;
    Ok(rainfusion::key_masked_attention(
        q,
        k,
        v,
        key_valid,
        1.0 / (head_dim as f64).sqrt(),
    )?)
}

/// The feed-forward network's activation.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Activation {
    /// The token refiner's (`linear-silu`).
    Silu,
    /// The dual-stream blocks' (`gelu-approximate`: tanh GELU).
    GeluTanh,
}

/// diffusers' `FeedForward`: `net.0.proj` (dim → hidden), the activation, `net.2` (hidden → dim).
pub(crate) struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
    activation: Activation,
}

impl FeedForward {
    pub(crate) fn load(
        src: &WeightSource,
        prefix: &str,
        dim: usize,
        hidden: usize,
        activation: Activation,
        dtype: DType,
    ) -> Result<Self> {
        Ok(Self {
            proj_in: src.linear(&format!("{prefix}.net.0.proj"), dim, hidden, dtype)?,
            proj_out: src.linear(&format!("{prefix}.net.2"), hidden, dim, dtype)?,
            activation,
        })
    }

    /// This feed-forward rebuilt from `map` applied to its tensors (block streaming).
    pub(crate) fn map_tensors(&self, map: &mut dyn TensorMap) -> Result<Self> {
        Ok(Self {
            proj_in: self.proj_in.map_tensors(map)?,
            proj_out: self.proj_out.map_tensors(map)?,
            activation: self.activation,
        })
    }

    /// x `[B, L, dim]` (any float dtype) → `[B, L, dim]` in the run dtype.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.proj_in.forward(x)?;
        let h = match self.activation {
            Activation::Silu => h.silu()?,
            Activation::GeluTanh => h.gelu()?,
        };
        self.proj_out.forward(&h)
    }
}
