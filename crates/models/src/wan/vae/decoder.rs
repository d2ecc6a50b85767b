//! The Wan VAE's 3D decoder (`WanDecoder3d` / original `Decoder3d`), run one latent frame at a time.
//! Wan2.1 and Wan2.2 differ only in their up blocks (see [`super::residual_up`]).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::blocks::{AttentionBlock, ResidualBlock, Upsample};
use super::config::WanVaeConfig;
use super::layers::{stage, CausalConv3d, ChannelRmsNorm, FeatureCache, SlotCounter};
use super::residual_up::ResidualUpBlock;
use crate::error::Result;
use crate::profile::span;

#[derive(Debug, Clone)]
struct UpBlock {
    resnets: Vec<ResidualBlock>,
    upsample: Option<Upsample>,
}

/// One up block: Wan2.1's plain one or Wan2.2's residual one.
#[derive(Debug, Clone)]
enum UpStage {
    Plain(UpBlock),
    Residual(ResidualUpBlock),
}

/// conv_in → mid (res, attention, res) → up blocks → norm, SiLU, conv_out.
#[derive(Debug, Clone)]
pub struct Decoder3d {
    conv_in: CausalConv3d,
    mid_resnets: [ResidualBlock; 2],
    mid_attention: AttentionBlock,
    up_blocks: Vec<UpStage>,
    norm_out: ChannelRmsNorm,
    conv_out: CausalConv3d,
    num_cache_slots: usize,
    /// conv_in's cache slot: still fresh exactly while the first latent frame is decoded.
    first_slot: usize,
}

impl Decoder3d {
    /// `vb` at the `decoder` prefix (diffusers names).
    pub fn new(vb: VarBuilder, cfg: &WanVaeConfig) -> Result<Self> {
        let base = cfg.decoder_dim();
        let mult = &cfg.dim_mult;
        // widths: deepest first; for base 96: [384, 384, 384, 192, 96]
        let dims: Vec<usize> = std::iter::once(mult[mult.len() - 1])
            .chain(mult.iter().rev().copied())
            .map(|m| base * m)
            .collect();
        let temporal = cfg.temporal_upsample();
        let mut slots = SlotCounter::default();
        let first_slot = slots.count();

        let conv_in = CausalConv3d::new(
            vb.pp("conv_in"),
            cfg.z_dim,
            dims[0],
            (3, 3),
            &mut slots,
            stage::conv3d(0),
        )?;
        let mid = vb.pp("mid_block");
        let mid_resnets = [
            ResidualBlock::new(mid.pp("resnets.0"), dims[0], dims[0], 0, &mut slots)?,
            ResidualBlock::new(mid.pp("resnets.1"), dims[0], dims[0], 0, &mut slots)?,
        ];
        let mid_attention = AttentionBlock::new(mid.pp("attentions.0"), dims[0])?;

        let mut up_blocks = Vec::with_capacity(mult.len());
        for i in 0..mult.len() {
            // resolution level: every up block but the last ends with a spatial upsampler
            let level = i;
            let vb_up = vb.pp(format!("up_blocks.{i}"));
            if cfg.is_residual {
                // Wan2.2: upsamplers keep the width, so each block starts at the previous width
                let upsample = (i + 1 < mult.len()).then(|| temporal[i]);
                up_blocks.push(UpStage::Residual(ResidualUpBlock::new(
                    vb_up,
                    dims[i],
                    dims[i + 1],
                    cfg.num_res_blocks,
                    upsample,
                    level,
                    &mut slots,
                )?));
                continue;
            }
            // every upsampler halves the channels, so later blocks start from half the width
            let mut in_dim = if i > 0 { dims[i] / 2 } else { dims[i] };
            let out_dim = dims[i + 1];
            let mut resnets = Vec::with_capacity(cfg.num_res_blocks + 1);
            for r in 0..=cfg.num_res_blocks {
                resnets.push(ResidualBlock::new(
                    vb_up.pp(format!("resnets.{r}")),
                    in_dim,
                    out_dim,
                    level,
                    &mut slots,
                )?);
                in_dim = out_dim;
            }
            let upsample = if i + 1 < mult.len() {
                Some(Upsample::new(
                    vb_up.pp("upsamplers.0"),
                    out_dim,
                    out_dim / 2,
                    temporal[i],
                    level,
                    &mut slots,
                )?)
            } else {
                None
            };
            up_blocks.push(UpStage::Plain(UpBlock { resnets, upsample }));
        }
        let out_dim = dims[mult.len()];
        let norm_out = ChannelRmsNorm::new(vb.pp("norm_out"), out_dim, false)?;
        let conv_out = CausalConv3d::new(
            vb.pp("conv_out"),
            out_dim,
            cfg.out_channels,
            (3, 3),
            &mut slots,
            stage::HEAD_CONV,
        )?;
        Ok(Self {
            conv_in,
            mid_resnets,
            mid_attention,
            up_blocks,
            norm_out,
            conv_out,
            num_cache_slots: slots.count(),
            first_slot,
        })
    }

    /// A fresh cache for decoding one video (or one spatial tile of it) from its first latent frame.
    pub fn new_cache(&self) -> FeatureCache {
        FeatureCache::new(self.num_cache_slots)
    }

    /// One chunk of latent frames `[B, t, z, h, w]` (after post_quant_conv) → `[B, t', out, 8h, 8w]`
    /// (out = 3, or 12 still patchified for Wan2.2), continuing the stream held in `cache`.
    pub fn forward_chunk(&self, z: &Tensor, cache: &mut FeatureCache) -> Result<Tensor> {
        let first_chunk = cache.is_fresh(self.first_slot);
        let mut x = self.conv_in.forward(z, cache)?;
        x = self.mid_resnets[0].forward(&x, cache)?;
        x = self.mid_attention.forward(&x)?;
        x = self.mid_resnets[1].forward(&x, cache)?;
        for stage in &self.up_blocks {
            match stage {
                UpStage::Plain(block) => {
                    for resnet in &block.resnets {
                        x = resnet.forward(&x, cache)?;
                    }
                    if let Some(upsample) = &block.upsample {
                        x = upsample.forward(&x, cache)?;
                    }
                }
                UpStage::Residual(block) => x = block.forward(&x, cache, first_chunk)?,
            }
        }
        let x = span(stage::HEAD_NORM, x.device(), || {
            self.norm_out.forward_video_silu(&x, None)
        })?;
        self.conv_out.forward(&x, cache)
    }
}
