//! The Wan VAE configuration: diffusers' `vae/config.json` (AutoencoderKLWan) and the Wan2.1_VAE preset.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// The architecture of a Wan2.1 VAE, spelled as diffusers' `AutoencoderKLWan` config.
///
/// Only the decoder is built from it. Unknown fields (`_class_name`, ...) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WanVaeConfig {
    #[serde(default = "default_base_dim")]
    pub base_dim: usize,
    /// Channel base of the decoder when it differs from the encoder's (`None` = `base_dim`).
    #[serde(default)]
    pub decoder_base_dim: Option<usize>,
    #[serde(default = "default_z_dim")]
    pub z_dim: usize,
    #[serde(default = "default_dim_mult")]
    pub dim_mult: Vec<usize>,
    #[serde(default = "default_num_res_blocks")]
    pub num_res_blocks: usize,
    /// Scales with attention inside the up blocks; Wan2.1 has none (attention only in the mid block).
    #[serde(default)]
    pub attn_scales: Vec<f64>,
    /// Per encoder stage; the decoder upsamples in time where the reversed list is true.
    #[serde(default = "default_temperal_downsample")]
    pub temperal_downsample: Vec<bool>,
    #[serde(default = "default_latents_mean")]
    pub latents_mean: Vec<f64>,
    #[serde(default = "default_latents_std")]
    pub latents_std: Vec<f64>,
    /// Wan2.2's residual VAE variant (not supported).
    #[serde(default)]
    pub is_residual: bool,
    #[serde(default = "default_out_channels")]
    pub out_channels: usize,
    /// Wan2.2's patchified VAE (not supported).
    #[serde(default)]
    pub patch_size: Option<usize>,
}

fn default_base_dim() -> usize {
    96
}
fn default_z_dim() -> usize {
    16
}
fn default_dim_mult() -> Vec<usize> {
    vec![1, 2, 4, 4]
}
fn default_num_res_blocks() -> usize {
    2
}
fn default_temperal_downsample() -> Vec<bool> {
    vec![false, true, true]
}
fn default_out_channels() -> usize {
    3
}
fn default_latents_mean() -> Vec<f64> {
    vec![
        -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715,
        0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
    ]
}
fn default_latents_std() -> Vec<f64> {
    vec![
        2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652,
        1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
    ]
}

impl Default for WanVaeConfig {
    fn default() -> Self {
        Self::wan2_1()
    }
}

impl WanVaeConfig {
    /// `Wan2.1_VAE` (used by Wan2.1 T2V 1.3B and 14B): base 96, z 16, ×4 time, ×8 space.
    pub fn wan2_1() -> Self {
        Self {
            base_dim: default_base_dim(),
            decoder_base_dim: None,
            z_dim: default_z_dim(),
            dim_mult: default_dim_mult(),
            num_res_blocks: default_num_res_blocks(),
            attn_scales: Vec::new(),
            temperal_downsample: default_temperal_downsample(),
            latents_mean: default_latents_mean(),
            latents_std: default_latents_std(),
            is_residual: false,
            out_channels: default_out_channels(),
            patch_size: None,
        }
    }

    /// Reads a diffusers `vae/config.json` and checks that vdit can build it.
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

    /// Why this config cannot be built, if it cannot.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.is_residual || self.patch_size.is_some() {
            return Err("this is a Wan2.2-style VAE (is_residual / patch_size); only Wan2.1_VAE is supported".into());
        }
        if !self.attn_scales.is_empty() {
            return Err(
                "attn_scales must be empty (Wan2.1_VAE has attention only in the mid block)".into(),
            );
        }
        if self.dim_mult.is_empty() || self.dim_mult.contains(&0) {
            return Err(format!(
                "dim_mult must be non-empty and positive, got {:?}",
                self.dim_mult
            ));
        }
        if self.temperal_downsample.len() + 1 != self.dim_mult.len() {
            return Err(format!(
                "temperal_downsample has {} entries, expected {} (one per stage transition of dim_mult {:?})",
                self.temperal_downsample.len(),
                self.dim_mult.len() - 1,
                self.dim_mult
            ));
        }
        if self.decoder_dim() < 2
            || self.decoder_dim() & 1 != 0
            || self.z_dim == 0
            || self.out_channels == 0
        {
            return Err(
                "decoder base dim must be even and positive; z_dim and out_channels positive"
                    .into(),
            );
        }
        if self.latents_mean.len() != self.z_dim || self.latents_std.len() != self.z_dim {
            return Err(format!(
                "latents_mean ({}) and latents_std ({}) must have z_dim = {} entries",
                self.latents_mean.len(),
                self.latents_std.len(),
                self.z_dim
            ));
        }
        if self.latents_std.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return Err("latents_std entries must be finite and non-zero".into());
        }
        Ok(())
    }

    /// The decoder's channel base.
    pub fn decoder_dim(&self) -> usize {
        self.decoder_base_dim.unwrap_or(self.base_dim)
    }

    /// Whether each decoder up block doubles time: the encoder's list reversed.
    pub fn temporal_upsample(&self) -> Vec<bool> {
        self.temperal_downsample.iter().rev().copied().collect()
    }

    /// Spatial factor between latent and video pixels (8 for Wan2.1).
    pub fn spatial_scale(&self) -> usize {
        1 << (self.dim_mult.len() - 1)
    }

    /// Video frames from `latent_frames`: the first latent frame gives one frame, every other one
    /// `2^(temporal upsamplings)` frames (1 + 4·(F−1) for Wan2.1).
    pub fn video_frames(&self, latent_frames: usize) -> usize {
        let per_chunk = 1usize << self.temperal_downsample.iter().filter(|t| **t).count();
        if latent_frames == 0 {
            0
        } else {
            1 + per_chunk * (latent_frames - 1)
        }
    }
}
