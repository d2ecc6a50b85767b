//! The HunyuanVideo 1.5 VAE's 3D decoder (`HunyuanVideo15Decoder3D`), run through time in chunks
//! of latent frames with a carried cache.
//!
//! diffusers decodes the whole clip at once, but every layer is causal in time: convs see only
//! earlier frames (replicate padding before the first), the mid-block attention is block-causal
//! over frames, norms are per pixel, and the upsamplers treat the clip's first frame apart. So a
//! decode in chunks that carries each conv's last frames ([`FeatureCache`]), the attention's keys
//! and values ([`AttentionHistory`]) and whether the clip has started, gives the whole-clip result
//! while activations stay those of one chunk.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::blocks::{causal_conv, resnet, AttentionHistory, CausalAttention, DepthToSpaceUpsample};
use super::config::HunyuanVideo15VaeConfig;
use crate::error::Result;
use crate::profile::span;
use crate::wan::vae::blocks::ResidualBlock;
use crate::wan::vae::layers::{stage, CausalConv3d, ChannelRmsNorm, FeatureCache, SlotCounter};

#[derive(Debug, Clone)]
struct UpBlock {
    resnets: Vec<ResidualBlock>,
    upsample: Option<DepthToSpaceUpsample>,
}

/// What the decoder carries from one chunk of latent frames to the next. One per spatial tile.
#[derive(Debug, Clone)]
pub struct DecoderState {
    convs: FeatureCache,
    attention: AttentionHistory,
    /// Latent frames decoded so far (0: the next chunk starts the clip).
    latent_frames_done: usize,
}

/// conv_in (+ channel-repeat shortcut) → mid (resnet, attention, resnet) → up blocks → norm,
/// SiLU, conv_out.
#[derive(Debug, Clone)]
pub struct Decoder3d {
    conv_in: CausalConv3d,
    /// conv_in's shortcut repeats each latent channel this many times (first width / z).
    repeat: usize,
    mid_resnets: [ResidualBlock; 2],
    mid_attention: CausalAttention,
    up_blocks: Vec<UpBlock>,
    norm_out: ChannelRmsNorm,
    conv_out: CausalConv3d,
    num_cache_slots: usize,
}

impl Decoder3d {
    /// `vb` at the `decoder` prefix (diffusers names); `cfg` validated.
    pub fn new(vb: VarBuilder, cfg: &HunyuanVideo15VaeConfig) -> Result<Self> {
        let widths = cfg.decoder_widths();
        let mut slots = SlotCounter::default();
        let conv_in = causal_conv(
            vb.pp("conv_in"),
            cfg.latent_channels,
            widths[0],
            &mut slots,
            stage::conv3d(0),
        )?;
        let mid = vb.pp("mid_block");
        let mid_resnets = [
            resnet(mid.pp("resnets.0"), widths[0], widths[0], 0, &mut slots)?,
            resnet(mid.pp("resnets.1"), widths[0], widths[0], 0, &mut slots)?,
        ];
        let mid_attention = CausalAttention::new(mid.pp("attentions.0"), widths[0])?;

        let mut up_blocks = Vec::with_capacity(widths.len());
        let mut level = 0;
        for (i, plan) in cfg.up_blocks().into_iter().enumerate() {
            let vb_up = vb.pp(format!("up_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block + 1)
                .map(|j| {
                    let in_dim = if j == 0 {
                        plan.in_channels
                    } else {
                        plan.channels
                    };
                    resnet(
                        vb_up.pp(format!("resnets.{j}")),
                        in_dim,
                        plan.channels,
                        level,
                        &mut slots,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let upsample = match plan.upsample {
                Some((out, temporal)) => {
                    let up = DepthToSpaceUpsample::new(
                        vb_up.pp("upsamplers.0"),
                        plan.channels,
                        out,
                        temporal,
                        level,
                        &mut slots,
                    )?;
                    level += 1;
                    Some(up)
                }
                None => None,
            };
            up_blocks.push(UpBlock { resnets, upsample });
        }
        let last = *widths.last().expect("validated: widths non-empty");
        let norm_out = ChannelRmsNorm::new(vb.pp("norm_out"), last, false)?;
        let conv_out = causal_conv(
            vb.pp("conv_out"),
            last,
            cfg.out_channels,
            &mut slots,
            stage::HEAD_CONV,
        )?;
        Ok(Self {
            conv_in,
            repeat: widths[0] / cfg.latent_channels,
            mid_resnets,
            mid_attention,
            up_blocks,
            norm_out,
            conv_out,
            num_cache_slots: slots.count(),
        })
    }

    /// A fresh state: the next chunk starts the clip.
    pub fn new_state(&self) -> DecoderState {
        DecoderState {
            convs: FeatureCache::new(self.num_cache_slots),
            attention: AttentionHistory::default(),
            latent_frames_done: 0,
        }
    }

    /// The next `t` latent frames of the clip, `[B, t, z, h, w]` (frames-major, un-normalised) →
    /// their video frames `[B, T, 3, s·h, s·w]` in the decoder's dtype: T = 1 + 4(t − 1) for the
    /// chunk that starts the clip, 4t after (for the published ×4 in time).
    pub fn forward_chunk(&self, z: &Tensor, state: &mut DecoderState) -> Result<Tensor> {
        let starts_clip = state.latent_frames_done == 0;
        let cache = &mut state.convs;
        let x = self.conv_in.forward(z, cache)?;
        let x = span(stage::RESIDUAL_ADD, z.device(), || {
            let (b, t, c, h, w) = z.dims5()?;
            // torch's repeat_interleave on channels: each latent channel `repeat` times in place
            let shortcut = z
                .unsqueeze(3)?
                .broadcast_as((b, t, c, self.repeat, h, w))?
                .reshape((b, t, c * self.repeat, h, w))?;
            Ok((x + shortcut)?)
        })?;
        let x = self.mid_resnets[0].forward(&x, cache)?;
        let x = self.mid_attention.forward(&x, &mut state.attention)?;
        let mut x = self.mid_resnets[1].forward(&x, cache)?;
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(&x, cache)?;
            }
            if let Some(up) = &block.upsample {
                x = up.forward(&x, cache, starts_clip)?;
            }
        }
        let x = span(stage::HEAD_NORM, x.device(), || {
            self.norm_out.forward_video_silu(&x, None)
        })?;
        let out = self.conv_out.forward(&x, cache)?;
        state.latent_frames_done += z.dim(1)?;
        Ok(out)
    }
}
