//! The Wan VAE's 3D encoder (`WanEncoder3d` / original `Encoder3d`), run one time chunk at a time.
//! Wan2.1 and Wan2.2 differ only in their down stages: Wan2.1's are a flat list of residual
//! blocks and downsamplers, Wan2.2's are [`ResidualDownBlock`]s with an averaging shortcut.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::blocks::{AttentionBlock, ResidualBlock};
use super::config::WanVaeConfig;
use super::downsample::Downsample;
use super::layers::{stage, CausalConv3d, ChannelRmsNorm, FeatureCache, SlotCounter};
use super::residual_down::ResidualDownBlock;
use crate::error::Result;
use crate::profile::span;

/// One entry of Wan2.1's flat `down_blocks` list.
#[derive(Debug, Clone)]
enum DownLayer {
    Residual(Box<ResidualBlock>),
    Downsample(Downsample),
}

/// The down stages: Wan2.1's flat list or Wan2.2's residual down blocks.
#[derive(Debug, Clone)]
enum DownStages {
    Plain(Vec<DownLayer>),
    Residual(Vec<ResidualDownBlock>),
}

/// conv_in → down stages → mid (res, attention, res) → norm, SiLU, conv_out (to 2·z channels:
/// the posterior's mean, then its log-variance).
#[derive(Debug, Clone)]
pub struct Encoder3d {
    conv_in: CausalConv3d,
    down: DownStages,
    mid_resnets: [ResidualBlock; 2],
    mid_attention: AttentionBlock,
    norm_out: ChannelRmsNorm,
    conv_out: CausalConv3d,
    num_cache_slots: usize,
}

impl Encoder3d {
    /// `vb` at the `encoder` prefix (diffusers names).
    pub fn new(vb: VarBuilder, cfg: &WanVaeConfig) -> Result<Self> {
        let base = cfg.base_dim;
        let stages = cfg.dim_mult.len();
        // widths: shallowest first; for base 96: [96, 96, 192, 384, 384]
        let dims: Vec<usize> = std::iter::once(1)
            .chain(cfg.dim_mult.iter().copied())
            .map(|m| base * m)
            .collect();
        // profile levels count spatial halvings still to come, as the decoder's count those
        // done: stage i runs at level `stages − 1 − i`, the mid block at 0 (latent resolution)
        let level = |i: usize| stages - 1 - i;
        let mut slots = SlotCounter::default();
        let conv_in = CausalConv3d::new(
            vb.pp("conv_in"),
            cfg.encoder_in_channels(),
            dims[0],
            (3, 3),
            &mut slots,
            stage::conv3d(level(0)),
        )?;
        let vb_down = vb.pp("down_blocks");
        let down = if cfg.is_residual {
            let mut blocks = Vec::with_capacity(stages);
            for i in 0..stages {
                // every stage but the last halves space; temperal_downsample says which halve time
                let downsample = (i + 1 < stages).then(|| cfg.temperal_downsample[i]);
                blocks.push(ResidualDownBlock::new(
                    vb_down.pp(i),
                    dims[i],
                    dims[i + 1],
                    cfg.num_res_blocks,
                    downsample,
                    level(i),
                    &mut slots,
                )?);
            }
            DownStages::Residual(blocks)
        } else {
            // one flat list: each stage's residual blocks, then its downsampler
            let mut layers = Vec::with_capacity(stages * (cfg.num_res_blocks + 1));
            for i in 0..stages {
                let mut in_dim = dims[i];
                for _ in 0..cfg.num_res_blocks {
                    layers.push(DownLayer::Residual(Box::new(ResidualBlock::new(
                        vb_down.pp(layers.len()),
                        in_dim,
                        dims[i + 1],
                        level(i),
                        &mut slots,
                    )?)));
                    in_dim = dims[i + 1];
                }
                if i + 1 < stages {
                    layers.push(DownLayer::Downsample(Downsample::new(
                        vb_down.pp(layers.len()),
                        dims[i + 1],
                        cfg.temperal_downsample[i],
                        &mut slots,
                    )?));
                }
            }
            DownStages::Plain(layers)
        };
        let deepest = dims[stages];
        let mid = vb.pp("mid_block");
        let mid_resnets = [
            ResidualBlock::new(mid.pp("resnets.0"), deepest, deepest, 0, &mut slots)?,
            ResidualBlock::new(mid.pp("resnets.1"), deepest, deepest, 0, &mut slots)?,
        ];
        let mid_attention = AttentionBlock::new(mid.pp("attentions.0"), deepest)?;
        let norm_out = ChannelRmsNorm::new(vb.pp("norm_out"), deepest, false)?;
        let conv_out = CausalConv3d::new(
            vb.pp("conv_out"),
            deepest,
            2 * cfg.z_dim,
            (3, 3),
            &mut slots,
            stage::HEAD_CONV,
        )?;
        Ok(Self {
            conv_in,
            down,
            mid_resnets,
            mid_attention,
            norm_out,
            conv_out,
            num_cache_slots: slots.count(),
        })
    }

    /// A fresh cache for encoding one video from its first frame.
    pub fn new_cache(&self) -> FeatureCache {
        FeatureCache::new(self.num_cache_slots)
    }

    /// One chunk of video frames `[B, t, C_in, H, W]` (patchified for Wan2.2) → the moments
    /// `[B, t', 2·z, H/8, W/8]`, continuing the stream held in `cache`. The first chunk is one
    /// frame (t' = 1), every later one four frames (t' = 1 with two temporal downsamplers).
    pub fn forward_chunk(&self, x: &Tensor, cache: &mut FeatureCache) -> Result<Tensor> {
        let mut x = self.conv_in.forward(x, cache)?;
        match &self.down {
            DownStages::Plain(layers) => {
                for layer in layers {
                    x = match layer {
                        DownLayer::Residual(block) => block.forward(&x, cache)?,
                        DownLayer::Downsample(down) => down.forward(&x, cache)?,
                    };
                }
            }
            DownStages::Residual(blocks) => {
                for block in blocks {
                    x = block.forward(&x, cache)?;
                }
            }
        }
        x = self.mid_resnets[0].forward(&x, cache)?;
        x = self.mid_attention.forward(&x)?;
        x = self.mid_resnets[1].forward(&x, cache)?;
        let x = span(stage::HEAD_NORM, x.device(), || {
            self.norm_out.forward_video_silu(&x, None)
        })?;
        self.conv_out.forward(&x, cache)
    }
}
