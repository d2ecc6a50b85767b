//! The HunyuanVideo 1.5 VAE configuration: diffusers' `vae/config.json`
//! (`AutoencoderKLHunyuanVideo15`), and the decoder layout that follows from it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// `AutoencoderKLHunyuanVideo15`'s config as diffusers writes it. Unknown fields (`_class_name`,
/// ...) are ignored; missing ones take diffusers' defaults (the published 8.3B model's VAE).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HunyuanVideo15VaeConfig {
    /// Video channels the encoder takes (3).
    #[serde(default = "default_rgb")]
    pub in_channels: usize,
    /// Video channels the decoder gives (3).
    #[serde(default = "default_rgb")]
    pub out_channels: usize,
    #[serde(default = "default_latent_channels")]
    pub latent_channels: usize,
    /// Encoder widths, shallowest first; the decoder runs them reversed.
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block; decoder up blocks have one more.
    #[serde(default = "default_layers_per_block")]
    pub layers_per_block: usize,
    #[serde(default = "default_spatial_ratio")]
    pub spatial_compression_ratio: usize,
    #[serde(default = "default_temporal_ratio")]
    pub temporal_compression_ratio: usize,
    /// Encoder only; kept so a config round-trips.
    #[serde(default = "default_true")]
    pub downsample_match_channel: bool,
    /// Each upsampler outputs the next up block's width (true) or keeps its own.
    #[serde(default = "default_true")]
    pub upsample_match_channel: bool,
    /// The pipeline samples latents × this; the decoder divides by it first.
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
}

fn default_rgb() -> usize {
    3
}
fn default_latent_channels() -> usize {
    32
}
fn default_block_out_channels() -> Vec<usize> {
    vec![128, 256, 512, 1024, 1024]
}
fn default_layers_per_block() -> usize {
    2
}
fn default_spatial_ratio() -> usize {
    16
}
fn default_temporal_ratio() -> usize {
    4
}
fn default_true() -> bool {
    true
}
fn default_scaling_factor() -> f64 {
    1.03682
}

impl Default for HunyuanVideo15VaeConfig {
    /// The VAE of HunyuanVideo 1.5 (diffusers' defaults): 32 latent channels, ×16 space, ×4 time.
    fn default() -> Self {
        Self {
            in_channels: default_rgb(),
            out_channels: default_rgb(),
            latent_channels: default_latent_channels(),
            block_out_channels: default_block_out_channels(),
            layers_per_block: default_layers_per_block(),
            spatial_compression_ratio: default_spatial_ratio(),
            temporal_compression_ratio: default_temporal_ratio(),
            downsample_match_channel: true,
            upsample_match_channel: true,
            scaling_factor: default_scaling_factor(),
        }
    }
}

/// One decoder up block as the config lays it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpBlockPlan {
    /// Channels into the block's first resnet.
    pub in_channels: usize,
    /// Channels of its resnets.
    pub channels: usize,
    /// Its upsampler, if any: (output channels, whether it also doubles time).
    pub upsample: Option<(usize, bool)>,
}

impl HunyuanVideo15VaeConfig {
    /// Reads a diffusers `vae/config.json` and checks that vdit can build its decoder.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let err = |reason: String| ModelError::Config {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        cfg.validate().map_err(err)?;
        Ok(cfg)
    }

    /// Decoder widths, deepest first: `block_out_channels` reversed.
    pub fn decoder_widths(&self) -> Vec<usize> {
        self.block_out_channels.iter().rev().copied().collect()
    }

    /// The decoder's up blocks. As in diffusers, block i upsamples in space while
    /// i < log2(spatial ratio) and also in time while i < log2(temporal ratio); every upsampler
    /// doubles height and width.
    pub fn up_blocks(&self) -> Vec<UpBlockPlan> {
        let widths = self.decoder_widths();
        let spatial_steps = (self.spatial_compression_ratio as f64).log2();
        let temporal_steps = (self.temporal_compression_ratio as f64).log2();
        let mut input = widths.first().copied().unwrap_or(0);
        let mut plans = Vec::with_capacity(widths.len());
        for (i, &channels) in widths.iter().enumerate() {
            let spatial = (i as f64) < spatial_steps;
            let temporal = (i as f64) < temporal_steps;
            let upsample = (spatial || temporal).then(|| {
                let out = if self.upsample_match_channel {
                    widths.get(i + 1).copied().unwrap_or(0)
                } else {
                    channels
                };
                (out, temporal)
            });
            plans.push(UpBlockPlan {
                in_channels: input,
                channels,
                upsample,
            });
            input = upsample.map_or(channels, |(out, _)| out);
        }
        plans
    }

    /// Video pixels per latent pixel: 2 per upsampler (16 for the published VAE).
    pub fn spatial_scale(&self) -> usize {
        1 << self
            .up_blocks()
            .iter()
            .filter(|b| b.upsample.is_some())
            .count()
    }

    /// Video frames per latent frame after the first: 2 per temporal upsampler (4).
    pub fn temporal_scale(&self) -> usize {
        1 << self
            .up_blocks()
            .iter()
            .filter(|b| matches!(b.upsample, Some((_, true))))
            .count()
    }

    /// Video frames from `latent_frames`: 1 + 4·(F − 1) for the published VAE.
    pub fn video_frames(&self, latent_frames: usize) -> usize {
        if latent_frames == 0 {
            0
        } else {
            1 + self.temporal_scale() * (latent_frames - 1)
        }
    }

    /// Why the decoder of this config cannot be built, if it cannot.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let widths = self.decoder_widths();
        if widths.is_empty() || widths.contains(&0) {
            return Err(format!(
                "block_out_channels must be non-empty and positive, got {:?}",
                self.block_out_channels
            ));
        }
        if self.latent_channels == 0 || self.out_channels == 0 {
            return Err("latent_channels and out_channels must be positive".into());
        }
        for (name, ratio) in [
            ("spatial_compression_ratio", self.spatial_compression_ratio),
            (
                "temporal_compression_ratio",
                self.temporal_compression_ratio,
            ),
        ] {
            if !ratio.is_power_of_two() {
                return Err(format!("{name} must be a power of two, got {ratio}"));
            }
        }
        if self.temporal_compression_ratio > self.spatial_compression_ratio {
            return Err(format!(
                "temporal_compression_ratio {} above spatial_compression_ratio {}: every \
                 upsampler doubles space, so time cannot be upsampled more",
                self.temporal_compression_ratio, self.spatial_compression_ratio
            ));
        }
        let upsamplers = self.spatial_compression_ratio.trailing_zeros() as usize;
        if widths.len() <= upsamplers && self.upsample_match_channel {
            return Err(format!(
                "block_out_channels {:?} has {} entries; ×{} space needs {} upsamplers, each \
                 into a next block",
                self.block_out_channels,
                widths.len(),
                self.spatial_compression_ratio,
                upsamplers
            ));
        }
        if widths.len() < upsamplers {
            return Err(format!(
                "block_out_channels {:?}: too few blocks for ×{} space",
                self.block_out_channels, self.spatial_compression_ratio
            ));
        }
        if !widths[0].is_multiple_of(self.latent_channels) {
            return Err(format!(
                "the decoder's first width {} must be a multiple of latent_channels {} (conv_in's \
                 shortcut repeats each latent channel)",
                widths[0], self.latent_channels
            ));
        }
        for (i, block) in self.up_blocks().iter().enumerate() {
            let Some((out, temporal)) = block.upsample else {
                continue;
            };
            let (cin, factor) = (block.channels, if temporal { 8 } else { 4 });
            // The shortcut repeats each input channel `repeats` times into the conv's
            // out·factor channels; in time it first packs 2×2 (first frame) or 2×2×2 pixels
            // into channels, and the first frame takes half the repeats.
            let repeats_exact = (factor * out).is_multiple_of(cin);
            let repeats = factor * out / cin;
            let ok = repeats_exact
                && repeats > 0
                && (!temporal || (cin.is_multiple_of(8) && repeats.is_multiple_of(2)));
            if !ok {
                return Err(format!(
                    "up block {i}: an upsampler from {cin} to {out} channels{} has no whole \
                     channel repeat for its shortcut",
                    if temporal { " (in time)" } else { "" }
                ));
            }
        }
        if !self.scaling_factor.is_finite() || self.scaling_factor == 0.0 {
            return Err(format!(
                "scaling_factor must be finite and non-zero, got {}",
                self.scaling_factor
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_layout() {
        let cfg = HunyuanVideo15VaeConfig::default();
        cfg.validate().unwrap();
        assert_eq!((cfg.spatial_scale(), cfg.temporal_scale()), (16, 4));
        assert_eq!(cfg.video_frames(31), 121);
        let blocks = cfg.up_blocks();
        let plan = |in_channels, channels, upsample| UpBlockPlan {
            in_channels,
            channels,
            upsample,
        };
        assert_eq!(
            blocks,
            vec![
                plan(1024, 1024, Some((1024, true))),
                plan(1024, 1024, Some((512, true))),
                plan(512, 512, Some((256, false))),
                plan(256, 256, Some((128, false))),
                plan(128, 128, None),
            ]
        );
    }

    #[test]
    fn bad_configs_are_refused() {
        let base = HunyuanVideo15VaeConfig::default();
        let cases = [
            HunyuanVideo15VaeConfig {
                temporal_compression_ratio: 32,
                ..base.clone()
            },
            HunyuanVideo15VaeConfig {
                spatial_compression_ratio: 12,
                ..base.clone()
            },
            HunyuanVideo15VaeConfig {
                block_out_channels: vec![128, 256, 512, 1024],
                ..base.clone()
            },
            HunyuanVideo15VaeConfig {
                latent_channels: 48,
                ..base.clone()
            },
            HunyuanVideo15VaeConfig {
                block_out_channels: vec![128, 256, 512, 1020, 1020],
                ..base.clone()
            },
        ];
        for cfg in cases {
            assert!(cfg.validate().is_err(), "{cfg:?}");
        }
    }
}
