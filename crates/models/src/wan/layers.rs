//! Small building blocks of the Wan transformer: a weight source bound to a checkpoint's key
//! dialect, a linear layer, and the two norms (computed in f32 whatever the run dtype).

use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor, D};

use crate::error::Result;
use crate::lora::{LoraMode, LoraSet};
use crate::weights::{KeyMap, RandomWeights, WeightFiles};

/// Reads tensors by canonical (diffusers) name from a checkpoint, in a requested dtype; or draws
/// them at random (benchmarks at the real size without a checkpoint); with LoRA updates applied.
pub(crate) struct WeightSource {
    origin: Origin,
    device: Device,
    lora: Option<Arc<LoraSet>>,
}

enum Origin {
    Checkpoint {
        files: Arc<WeightFiles>,
        keys: KeyMap,
    },
    Random,
}

impl WeightSource {
    pub(crate) fn new(files: Arc<WeightFiles>, keys: KeyMap, device: Device) -> Self {
        Self {
            origin: Origin::Checkpoint { files, keys },
            device,
            lora: None,
        }
    }

    /// Applies `lora` to every tensor read from here on (see [`crate::lora`]).
    pub(crate) fn with_lora(mut self, lora: Option<Arc<LoraSet>>) -> Self {
        self.lora = lora.filter(|l| !l.is_empty());
        self
    }

    /// Every tensor asked for is random (see [`RandomWeights`]).
    pub(crate) fn random(device: Device) -> Self {
        Self {
            origin: Origin::Random,
            device,
            lora: None,
        }
    }

    /// Loads `key` (canonical name) with the given shape, cast to `dtype`. Errors name the key
    /// as stored in the file, both shapes and the file (see `WeightFiles::load`).
    /// A LoRA update of the tensor is added first, in f32 (every kind of update).
    pub(crate) fn get(&self, key: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        self.get_patched(key, shape, dtype, true)
    }

    /// [`Self::get`], adding low-rank LoRA terms only if `with_low_rank` (full deltas always).
    fn get_patched(
        &self,
        key: &str,
        shape: &[usize],
        dtype: DType,
        with_low_rank: bool,
    ) -> Result<Tensor> {
        let shape = Shape::from(shape);
        let read = |dtype: DType| -> Result<Tensor> {
            Ok(match &self.origin {
                Origin::Checkpoint { files, keys } => {
                    files.load(&keys.map(key), Some(&shape), dtype, &self.device)?
                }
                Origin::Random => RandomWeights::tensor(key, &shape, dtype, &self.device)?,
            })
        };
        let patch = self.lora.as_ref().and_then(|l| l.patch(key));
        let Some(delta) = patch
            .map(|p| p.delta(key, &shape, with_low_rank, &self.device))
            .transpose()?
            .flatten()
        else {
            return read(dtype);
        };
        // Merge in f32, then cast once: a bf16 add would round the update away.
        Ok((read(DType::F32)? + delta)?.to_dtype(dtype)?)
    }

    /// A linear layer `prefix.weight` [out, in] + `prefix.bias` [out], computing in `dtype`.
    pub(crate) fn linear(
        &self,
        prefix: &str,
        input: usize,
        output: usize,
        dtype: DType,
    ) -> Result<Linear> {
        let weight_key = format!("{prefix}.weight");
        let runtime = self
            .lora
            .as_ref()
            .is_some_and(|l| l.mode() == LoraMode::Runtime);
        let adapter = match self.lora.as_ref().and_then(|l| l.patch(&weight_key)) {
            Some(patch) if runtime => {
                patch.adapter(&weight_key, output, input, dtype, &self.device)?
            }
            _ => None,
        };
        Ok(Linear {
            weight: self.get_patched(&weight_key, &[output, input], dtype, !runtime)?,
            bias: self.get(&format!("{prefix}.bias"), &[output], dtype)?,
            adapter,
        })
    }
}

/// `y = x·Wᵀ + b` over the last axis, computed in the dtype the weights were loaded in; with a
/// LoRA kept unmerged, `+ (x·Aᵀ)·Bᵀ`.
pub(crate) struct Linear {
    weight: Tensor, // [out, in]
    bias: Tensor,   // [out]
    /// Unmerged LoRA factors (down A [r, in], up B [out, r] with the scale folded in).
    adapter: Option<(Tensor, Tensor)>,
}

impl Linear {
    /// Builds a linear layer from an already-shaped weight [out, in] and bias [out].
    pub(crate) fn from_parts(weight: Tensor, bias: Tensor) -> Self {
        Self {
            weight,
            bias,
            adapter: None,
        }
    }

    /// x: [..., in] in any float dtype → [..., out] in the weights' dtype.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.matmul(x)?.broadcast_add(&self.bias)?)
    }

    /// `x·Wᵀ` without the bias (fused kernels add it later): x [..., in] → [..., out] in the
    /// weights' dtype, contiguous.
    pub(crate) fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let input = dims[dims.len() - 1];
        let rows = x.elem_count() / input.max(1);
        // One 2-D matmul over all leading axes: a single large GEMM instead of a batched one.
        let x2 = x
            .to_dtype(self.weight.dtype())?
            .contiguous()?
            .reshape((rows, input))?;
        let mut y = x2.matmul(&self.weight.t()?)?;
        if let Some((down, up)) = &self.adapter {
            y = (y + x2.matmul(&down.t()?)?.matmul(&up.t()?)?)?;
        }
        let mut out_dims = dims;
        *out_dims.last_mut().expect("x has at least one axis") = self.weight.dim(0)?;
        Ok(y.reshape(out_dims)?)
    }

    /// The weight [out, in], in the run dtype, without any unmerged LoRA (see
    /// [`Self::has_adapter`]).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Whether an unmerged LoRA adds to [`Self::weight`]: kernels that read the weight
    /// directly must not serve this layer.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn has_adapter(&self) -> bool {
        self.adapter.is_some()
    }

    /// `x·(W + ΔW)ᵀ` in f32 for a few rows x [n, in] (no bias): for folding biases.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn project_f32(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        let mut y = x.matmul(&self.weight.to_dtype(DType::F32)?.t()?)?;
        if let Some((down, up)) = &self.adapter {
            let (down, up) = (down.to_dtype(DType::F32)?, up.to_dtype(DType::F32)?);
            y = (y + x.matmul(&down.t()?)?.matmul(&up.t()?)?)?;
        }
        Ok(y)
    }

    /// The bias [out], in the weights' dtype.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn bias(&self) -> &Tensor {
        &self.bias
    }
}

/// LayerNorm over the last axis without affine parameters, in f32: (x − mean)/√(var + eps).
/// Two passes (mean, then variance of the centred values) so that a residual stream with a large
/// common offset keeps its precision; candle's fused kernel uses E[x²] − E[x]².
pub(crate) fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(centred.broadcast_div(&(variance + eps)?.sqrt()?)?)
}

/// Affine LayerNorm (the cross-attention norm): `layer_norm(x)·weight + bias`, in f32.
pub(crate) struct AffineLayerNorm {
    weight: Tensor, // [dim] f32
    bias: Tensor,   // [dim] f32
    eps: f64,
}

impl AffineLayerNorm {
    pub(crate) fn load(src: &WeightSource, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: src.get(&format!("{prefix}.weight"), &[dim], DType::F32)?,
            bias: src.get(&format!("{prefix}.bias"), &[dim], DType::F32)?,
            eps,
        })
    }

    /// x: [..., dim] → [..., dim] f32.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(layer_norm(x, self.eps)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?)
    }

    /// (weight [dim] f32, bias [dim] f32, eps), for the fused CUDA kernel.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn parts(&self) -> (&Tensor, &Tensor, f64) {
        (&self.weight, &self.bias, self.eps)
    }
}

/// RMSNorm over the last axis with a learned scale, in f32: x·rsqrt(mean(x²) + eps)·weight.
pub(crate) struct RmsNorm {
    weight: Tensor, // [dim] f32
    eps: f64,
}

impl RmsNorm {
    pub(crate) fn load(src: &WeightSource, key: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: src.get(key, &[dim], DType::F32)?,
            eps,
        })
    }

    /// x: [..., dim] → [..., dim] f32.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        Ok(candle_nn::ops::rms_norm(&x, &self.weight, self.eps as f32)?)
    }

    /// (weight [dim] f32, eps), for the fused CUDA kernel.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn parts(&self) -> (&Tensor, f64) {
        (&self.weight, self.eps)
    }
}

/// `x·(1 + scale) + shift`, the adaptive modulation; x [B, L, dim], shift/scale [B, 1, dim], f32.
pub(crate) fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_keeps_precision_under_a_large_offset() {
        // Values 1e3 + small wiggles: E[x²] − E[x]² in f32 would cancel to noise here.
        let wiggle: Vec<f32> = (0..64)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.01)
            .collect();
        let shifted: Vec<f32> = wiggle.iter().map(|v| v + 1.0e3).collect();
        let a = layer_norm(&Tensor::new(wiggle.as_slice(), &Device::Cpu).unwrap(), 1e-6).unwrap();
        let b = layer_norm(
            &Tensor::new(shifted.as_slice(), &Device::Cpu).unwrap(),
            1e-6,
        )
        .unwrap();
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-2, "max difference {diff}");
    }
}
