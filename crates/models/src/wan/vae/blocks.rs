//! The Wan VAE decoder's blocks: residual block, mid attention block, spatial / spatio-temporal
//! upsampling. All take and return frames-major video `[B, T, C, H, W]`.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::layers::{
    add_channel_bias, fused_channel_kernels, silu, single_head_attention, stage, CausalConv3d,
    ChannelRmsNorm, Conv2d, FeatureCache, SlotCounter,
};
use crate::error::Result;
use crate::profile::span;

/// norm → SiLU → conv3 → norm → SiLU → conv3, plus a shortcut (1×1×1 conv when the width changes).
#[derive(Debug, Clone)]
pub struct ResidualBlock {
    norm1: ChannelRmsNorm,
    conv1: CausalConv3d,
    norm2: ChannelRmsNorm,
    conv2: CausalConv3d,
    shortcut: Option<CausalConv3d>,
}

impl ResidualBlock {
    /// `level`: the resolution level it runs at (0 = latent resolution), for profiles.
    pub fn new(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        level: usize,
        slots: &mut SlotCounter,
    ) -> Result<Self> {
        let conv_stage = stage::conv3d(level);
        let norm1 = ChannelRmsNorm::new(vb.pp("norm1"), in_dim, false)?;
        let conv1 = CausalConv3d::new(vb.pp("conv1"), in_dim, out_dim, (3, 3), slots, conv_stage)?;
        let norm2 = ChannelRmsNorm::new(vb.pp("norm2"), out_dim, false)?;
        let conv2 = CausalConv3d::new(vb.pp("conv2"), out_dim, out_dim, (3, 3), slots, conv_stage)?;
        let shortcut = if in_dim != out_dim {
            Some(CausalConv3d::new(
                vb.pp("conv_shortcut"),
                in_dim,
                out_dim,
                (1, 1),
                slots,
                stage::POINTWISE_CONV,
            )?)
        } else {
            None
        };
        Ok(Self {
            norm1,
            conv1,
            norm2,
            conv2,
            shortcut,
        })
    }

    /// A block from its layers (HunyuanVideo 1.5's resnets: the same computation, with
    /// replicate-padded convs stored under other names).
    pub fn from_parts(
        norm1: ChannelRmsNorm,
        conv1: CausalConv3d,
        norm2: ChannelRmsNorm,
        conv2: CausalConv3d,
        shortcut: Option<CausalConv3d>,
    ) -> Self {
        Self {
            norm1,
            conv1,
            norm2,
            conv2,
            shortcut,
        }
    }

    /// Where rainfusion's fused channel kernels run (CUDA), each conv's bias rides on the next
    /// pass over its output: conv1's in norm2's kernel (with the SiLU), conv2's in the residual
    /// add; the "rms norm" and "residual add" profile stages then include that work.
    pub fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Result<Tensor> {
        let identity = match &self.shortcut {
            Some(conv) => conv.forward(x, cache)?,
            None => x.clone(),
        };
        let dev = x.device();
        // x: [B, T, C, H, W]; input_bias: [C] f32 that the conv before left out of x
        let norm_silu =
            |norm: &ChannelRmsNorm, x: &Tensor, input_bias: Option<&Tensor>| -> Result<Tensor> {
                if fused_channel_kernels(x) {
                    span(stage::RMS_NORM, dev, || {
                        norm.forward_video_silu(x, input_bias)
                    })
                } else {
                    let x = match input_bias {
                        Some(bias) => span(stage::CONV_BIAS, dev, || video_bias(x, bias, None))?,
                        None => x.clone(),
                    };
                    let normed = span(stage::RMS_NORM, dev, || norm.forward_video(&x))?;
                    span(stage::SILU, dev, || silu(&normed))
                }
            };
        // Each intermediate is freed as soon as the next is made (shadowed bindings would keep
        // all four full-size activations alive until the block returns).
        let normed = norm_silu(&self.norm1, x, None)?;
        let (conv1, conv1_bias) = self.conv1.forward_deferring_bias(&normed, cache)?;
        drop(normed);
        let normed = norm_silu(&self.norm2, &conv1, conv1_bias)?;
        drop(conv1);
        let (h, conv2_bias) = self.conv2.forward_deferring_bias(&normed, cache)?;
        drop(normed);
        span(stage::RESIDUAL_ADD, dev, || match conv2_bias {
            Some(bias) => video_bias(&h, bias, Some(&identity)),
            None => Ok((&h + &identity)?),
        })
    }
}

/// [`add_channel_bias`] on frames-major video `[B, T, C, H, W]` (bias `[C]` f32, residual of x's
/// shape).
fn video_bias(x: &Tensor, bias: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
    let (b, t, c, h, w) = x.dims5()?;
    let frames = |v: &Tensor| v.reshape((b * t, c, h * w));
    let residual = residual.map(frames).transpose()?;
    Ok(add_channel_bias(&frames(x)?, bias, residual.as_ref())?.reshape((b, t, c, h, w))?)
}

/// Single-head self-attention over the pixels of each frame (mid block only), with a residual.
#[derive(Debug, Clone)]
pub struct AttentionBlock {
    norm: ChannelRmsNorm,
    to_qkv: Conv2d,
    proj: Conv2d,
    dim: usize,
}

impl AttentionBlock {
    pub fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Self {
            norm: ChannelRmsNorm::new(vb.pp("norm"), dim, true)?,
            to_qkv: Conv2d::new(vb.pp("to_qkv"), dim, 3 * dim, 1, 0)?,
            proj: Conv2d::new(vb.pp("proj"), dim, dim, 1, 0)?,
            dim,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        span(stage::ATTENTION, x.device(), || self.forward_unprofiled(x))
    }

    fn forward_unprofiled(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        let frames = x.reshape((b * t, c, h, w))?;
        let qkv = self.to_qkv.forward(&self.norm.forward(&frames)?)?; // [N, 3C, H, W]
        let qkv = qkv.reshape((b * t, 3 * c, h * w))?.to_dtype(DType::F32)?;
        // q, k, v are the channel thirds; tokens are pixels: [N, H·W, C]
        let part = |i: usize| -> Result<Tensor> {
            Ok(qkv.narrow(1, i * self.dim, self.dim)?.transpose(1, 2)?)
        };
        let attended = single_head_attention(&part(0)?, &part(1)?, &part(2)?)?; // [N, H·W, C]
        let attended = attended
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * t, c, h, w))?
            .to_dtype(x.dtype())?;
        let out = self.proj.forward(&attended)?.reshape((b, t, c, h, w))?;
        Ok((out + x)?)
    }
}

/// Wan's Resample in upsampling mode: optionally double time with `time_conv` (upsample3d), then
/// double space (nearest) and a 3×3 conv, frame by frame. The conv halves the channels in Wan2.1
/// and keeps them in Wan2.2's residual up blocks.
#[derive(Debug, Clone)]
pub struct Upsample {
    time_conv: Option<CausalConv3d>,
    time_slot: Option<usize>,
    conv: Conv2d,
    out_dim: usize,
    /// Profiler stage of `conv` (by its output resolution).
    conv_stage: &'static str,
}

impl Upsample {
    /// `temporal`: upsample3d (true) or upsample2d (false). Output channels `out_dim` (`dim / 2`
    /// in Wan2.1). `level`: the resolution level of the input (the output is one level up).
    pub fn new(
        vb: VarBuilder,
        dim: usize,
        out_dim: usize,
        temporal: bool,
        level: usize,
        slots: &mut SlotCounter,
    ) -> Result<Self> {
        let (time_conv, time_slot) = if temporal {
            // the conv's own history slot doubles as the "first chunk seen" marker
            let slot_before = slots.count();
            let conv = CausalConv3d::new(
                vb.pp("time_conv"),
                dim,
                2 * dim,
                (3, 1),
                slots,
                stage::UPSAMPLE_TEMPORAL_CONV,
            )?;
            (Some(conv), Some(slot_before))
        } else {
            (None, None)
        };
        let conv = Conv2d::new(vb.pp("resample.1"), dim, out_dim, 3, 1)?;
        Ok(Self {
            time_conv,
            time_slot,
            conv,
            out_dim,
            conv_stage: stage::upsample_conv(level + 1),
        })
    }

    /// `[B, T, C, H, W]` → `[B, T', out_dim, 2H, 2W]` with T' = 2T, or T on the first chunk and for upsample2d.
    pub fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Result<Tensor> {
        let mut x = x.clone();
        if let (Some(time_conv), Some(slot)) = (&self.time_conv, self.time_slot) {
            if cache.is_fresh(slot) {
                // The first latent frame stays one frame: no temporal step for it (as in Wan and
                // diffusers); later chunks see zeros, not this frame, as their history.
                cache.mark_skipped_first_chunk(slot);
            } else {
                let (b, t, c, h, w) = x.dims5()?;
                let doubled = time_conv.forward(&x, cache)?; // [B, T, 2C, H, W]
                                                             // channel halves [0:C] and [C:2C] become frames 2k and 2k+1
                x = doubled
                    .reshape((b, t, 2, c, h, w))?
                    .reshape((b, 2 * t, c, h, w))?;
            }
        }
        let (b, t, c, h, w) = x.dims5()?;
        let frames = x.reshape((b * t, c, h, w))?;
        drop(x);
        // nearest 2× ("nearest-exact" equals plain duplication at factor 2), then the conv
        let y = self
            .conv
            .forward_nearest_2x(&frames, stage::UPSAMPLE_SPATIAL, self.conv_stage)?;
        Ok(y.reshape((b, t, self.out_dim, 2 * h, 2 * w))?)
    }
}
