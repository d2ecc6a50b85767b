//! The HunyuanVideo 1.5 decoder's blocks, on frames-major video `[B, T, C, H, W]` in time chunks:
//! resnets (Wan's [`ResidualBlock`] with replicate-padded convs), the mid block's causal
//! attention over all frames so far, and the depth-to-space upsampler with its channel-repeat
//! shortcut.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::profile::span;
use crate::wan::vae::blocks::ResidualBlock;
use crate::wan::vae::layers::{
    single_head_attention, stage, CausalConv3d, ChannelRmsNorm, Conv2d, ConvPadding, FeatureCache,
    SlotCounter,
};

/// Profiler stage of the upsampler's pixel rearrangement and its shortcut (Wan's upsampler has
/// nearest-neighbour doubling instead).
pub const UPSAMPLE_REARRANGE: &str = "vae: upsample (depth to space, repeat shortcut)";

/// HunyuanVideo 1.5's causal conv: a 3D conv with k_t − 1 frames of history, all padding
/// replicated from the edge (the first frame in time, the border pixels in space), stored under
/// `<name>.conv.weight` (a wrapper module around nn.Conv3d).
pub fn causal_conv(
    vb: VarBuilder,
    in_dim: usize,
    out_dim: usize,
    slots: &mut SlotCounter,
    conv_stage: &'static str,
) -> Result<CausalConv3d> {
    Ok(
        CausalConv3d::new(vb.pp("conv"), in_dim, out_dim, (3, 3), slots, conv_stage)?
            .with_padding(ConvPadding::Replicate),
    )
}

/// norm → SiLU → conv → norm → SiLU → conv, plus the input (through a 1×1×1 conv when the width
/// changes): the same computation as Wan's resnet, so Wan's [`ResidualBlock`] runs it; only the
/// convs' padding (replicate, not zeros) and their key names differ.
pub fn resnet(
    vb: VarBuilder,
    in_dim: usize,
    out_dim: usize,
    level: usize,
    slots: &mut SlotCounter,
) -> Result<ResidualBlock> {
    let conv_stage = stage::conv3d(level);
    let norm1 = ChannelRmsNorm::new(vb.pp("norm1"), in_dim, false)?;
    let conv1 = causal_conv(vb.pp("conv1"), in_dim, out_dim, slots, conv_stage)?;
    let norm2 = ChannelRmsNorm::new(vb.pp("norm2"), out_dim, false)?;
    let conv2 = causal_conv(vb.pp("conv2"), out_dim, out_dim, slots, conv_stage)?;
    let shortcut = if in_dim != out_dim {
        // a plain nn.Conv3d with kernel 1: no padding, no history
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
    Ok(ResidualBlock::from_parts(
        norm1, conv1, norm2, conv2, shortcut,
    ))
}

/// The keys and values of every frame the mid block has seen, `[B, L, C]` f32 (L = frames ×
/// pixels per frame), for the frames of later chunks to attend to.
#[derive(Debug, Clone, Default)]
pub struct AttentionHistory {
    keys_values: Option<(Tensor, Tensor)>,
}

/// Single-head self-attention over all pixels of the current and every earlier frame (diffusers'
/// block-causal mask: a frame sees itself and the frames before it), with a residual.
///
/// Where Wan's mid-block attention differs: Wan attends within each frame only, through one
/// fused `to_qkv` conv2d and a norm stored as `[C, 1, 1]`; here q, k and v are three 1×1×1
/// Conv3d (fused into one 1×1 conv at load) and the attention reaches back through time, so the
/// keys and values of earlier chunks are kept ([`AttentionHistory`]). The score rows are computed
/// by Wan's [`single_head_attention`], in f32 as there.
#[derive(Debug, Clone)]
pub struct CausalAttention {
    norm: ChannelRmsNorm,
    /// to_q, to_k, to_v stacked: `[3C, C, 1, 1]`.
    to_qkv: Conv2d,
    proj_out: Conv2d,
    dim: usize,
}

impl CausalAttention {
    pub fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let pointwise = |name: &str| -> Result<(Tensor, Tensor)> {
            let vb = vb.pp(name);
            let weight = vb.get((dim, dim, 1, 1, 1), "weight")?;
            Ok((weight.reshape((dim, dim, 1, 1))?, vb.get(dim, "bias")?))
        };
        let (q, k, v) = (pointwise("to_q")?, pointwise("to_k")?, pointwise("to_v")?);
        let to_qkv = Conv2d::from_parts(
            Tensor::cat(&[&q.0, &k.0, &v.0], 0)?,
            Tensor::cat(&[&q.1, &k.1, &v.1], 0)?,
            0,
            1,
        )?;
        let (proj_w, proj_b) = pointwise("proj_out")?;
        Ok(Self {
            norm: ChannelRmsNorm::new(vb.pp("norm"), dim, false)?,
            to_qkv,
            proj_out: Conv2d::from_parts(proj_w, proj_b, 0, 1)?,
            dim,
        })
    }

    /// x `[B, T, C, H, W]` (the next T frames of the stream) → same shape; appends the chunk's
    /// keys and values to `history`.
    pub fn forward(&self, x: &Tensor, history: &mut AttentionHistory) -> Result<Tensor> {
        span(stage::ATTENTION, x.device(), || {
            self.forward_unprofiled(x, history)
        })
    }

    fn forward_unprofiled(&self, x: &Tensor, history: &mut AttentionHistory) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        let pixels = h * w;
        let frames = x.reshape((b * t, c, h, w))?;
        let qkv = self.to_qkv.forward(&self.norm.forward(&frames)?)?; // [B·T, 3C, H, W]
        let qkv = qkv.reshape((b, t, 3 * c, pixels))?.to_dtype(DType::F32)?;
        // tokens are pixels, frame by frame: [B, T, H·W, C]
        let part = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(2, i * self.dim, self.dim)?
                .transpose(2, 3)?
                .contiguous()?)
        };
        let queries = part(0)?;
        // keys and values as one token sequence, frame after frame: [B, T·H·W, C]
        let sequence = |i: usize| -> Result<Tensor> { Ok(part(i)?.reshape((b, t * pixels, c))?) };
        let (new_keys, new_values) = (sequence(1)?, sequence(2)?);
        let (keys, values) = match history.keys_values.take() {
            Some((k, v)) => (
                Tensor::cat(&[&k, &new_keys], 1)?,
                Tensor::cat(&[&v, &new_values], 1)?,
            ),
            None => (new_keys, new_values),
        }; // [B, L, C], L = all frames so far × H·W
        let earlier = keys.dim(1)? - t * pixels;
        let mut outputs = Vec::with_capacity(t);
        for i in 0..t {
            // frame i of the chunk sees every earlier frame and itself
            let seen = earlier + (i + 1) * pixels;
            outputs.push(single_head_attention(
                &queries.narrow(1, i, 1)?.squeeze(1)?,
                &keys.narrow(1, 0, seen)?,
                &values.narrow(1, 0, seen)?,
            )?); // [B, H·W, C]
        }
        history.keys_values = Some((keys, values));
        let attended = Tensor::stack(&outputs, 1)? // [B, T, H·W, C]
            .transpose(2, 3)?
            .contiguous()?
            .reshape((b * t, c, h, w))?
            .to_dtype(x.dtype())?;
        let out = self.proj_out.forward(&attended)?.reshape((b, t, c, h, w))?;
        Ok((out + x)?)
    }
}

/// `[B, T, r_t·2·2·C, H, W]` → `[B, r_t·T, C, 2H, 2W]`: each pixel's channels, in groups of C
/// (time offset slowest, then row, then column), become the r_t × 2 × 2 block it upsamples to
/// (diffusers' `_dcae_upsample_rearrange`, frames-major).
fn depth_to_space(x: &Tensor, r_t: usize) -> Result<Tensor> {
    let (b, t, packed, h, w) = x.dims5()?;
    let c = packed / (r_t * 4);
    let x = x.reshape(vec![b, t, r_t, 2, 2, c, h, w])?;
    // [B, T, r_t, C, H, 2, W, 2]
    let x = x.permute(vec![0, 1, 2, 5, 6, 3, 7, 4])?.contiguous()?;
    Ok(x.reshape((b, t * r_t, c, 2 * h, 2 * w))?)
}

/// Each channel repeated `repeats` times in place (torch's `repeat_interleave` on channels):
/// `[B, T, C, H, W]` → `[B, T, C·repeats, H, W]`.
fn repeat_channels(x: &Tensor, repeats: usize) -> Result<Tensor> {
    if repeats == 1 {
        return Ok(x.clone());
    }
    let (b, t, c, h, w) = x.dims5()?;
    Ok(x.unsqueeze(3)?
        .broadcast_as((b, t, c, repeats, h, w))?
        .reshape((b, t, c * repeats, h, w))?)
}

/// HunyuanVideo 1.5's upsampler: a causal conv to `out·4` channels (`out·8` when it also doubles
/// time), rearranged depth-to-space into ×2 height and width (and ×2 time), plus a shortcut that
/// rearranges the input the same way and repeats its channels up to `out`. The clip's first frame
/// is never doubled in time: it keeps half of its channels (conv) or half the repeats (shortcut).
///
/// Where Wan's upsampler differs: Wan doubles space by nearest-neighbour copies and a 2D conv and
/// time by a separate 3×1×1 conv, and has no shortcut.
#[derive(Debug, Clone)]
pub struct DepthToSpaceUpsample {
    conv: CausalConv3d,
    temporal: bool,
    /// Input channel repeats of the shortcut: out·factor / in.
    repeats: usize,
    out_dim: usize,
}

impl DepthToSpaceUpsample {
    /// `level`: the resolution level of the input, for profiles.
    pub fn new(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        temporal: bool,
        level: usize,
        slots: &mut SlotCounter,
    ) -> Result<Self> {
        let factor = if temporal { 8 } else { 4 };
        let conv = causal_conv(
            vb.pp("conv"),
            in_dim,
            out_dim * factor,
            slots,
            stage::conv3d(level),
        )?;
        Ok(Self {
            conv,
            temporal,
            repeats: factor * out_dim / in_dim,
            out_dim,
        })
    }

    /// `[B, T, C, H, W]` → `[B, T', out, 2H, 2W]`: T' = 2T in time (2T − 1 when the chunk starts
    /// the clip, `starts_clip`), else T.
    pub fn forward(
        &self,
        x: &Tensor,
        cache: &mut FeatureCache,
        starts_clip: bool,
    ) -> Result<Tensor> {
        let h = self.conv.forward(x, cache)?; // [B, T, out·factor, H, W]
        span(UPSAMPLE_REARRANGE, x.device(), || {
            if !self.temporal {
                let shortcut = depth_to_space(&repeat_channels(x, self.repeats)?, 1)?;
                return Ok((depth_to_space(&h, 1)? + shortcut)?);
            }
            let t = x.dim(1)?;
            let mut parts = Vec::with_capacity(2);
            let first = usize::from(starts_clip);
            if starts_clip {
                // one frame out of the first: the first `out` of its 2·out channels per pixel
                let conv = depth_to_space(&h.narrow(1, 0, 1)?, 1)?.narrow(2, 0, self.out_dim)?;
                let shortcut =
                    repeat_channels(&depth_to_space(&x.narrow(1, 0, 1)?, 1)?, self.repeats / 2)?;
                parts.push((conv + shortcut)?);
            }
            if t > first {
                let conv = depth_to_space(&h.narrow(1, first, t - first)?, 2)?;
                let shortcut = repeat_channels(
                    &depth_to_space(&x.narrow(1, first, t - first)?, 2)?,
                    self.repeats,
                )?;
                parts.push((conv + shortcut)?);
            }
            Ok(Tensor::cat(&parts, 1)?)
        })
    }
}
