//! The Wan VAE configuration: diffusers' `vae/config.json` (AutoencoderKLWan) and the presets of
//! Wan2.1_VAE and Wan2.2_VAE.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// The architecture of a Wan VAE (Wan2.1 or Wan2.2), spelled as diffusers' `AutoencoderKLWan` config.
///
/// Both the decoder and the encoder are built from it. Unknown fields (`_class_name`, `dropout`,
/// ...) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WanVaeConfig {
    /// Channel base of the encoder (and of the decoder unless `decoder_base_dim` is given).
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
    /// Wan2.2's residual up blocks: channels kept through the upsamplers and a parameter-free
    /// duplicate-up shortcut around each up block.
    #[serde(default)]
    pub is_residual: bool,
    /// Channels of the decoder's last conv: 3 for Wan2.1, 3·p² (12) for Wan2.2, which unpatchifies
    /// them into 3 channels at p× the resolution.
    #[serde(default = "default_out_channels")]
    pub out_channels: usize,
    /// Channels of the encoder's first conv: 3 for Wan2.1, 3·p² (12) for Wan2.2, whose encoder
    /// patchifies the video first. `None` = 3·p².
    #[serde(default)]
    pub in_channels: Option<usize>,
    /// Wan2.2's pixel patch p (2): the decoder's output is unpatchified p×p in space, and the
    /// encoder's input patchified likewise.
    #[serde(default)]
    pub patch_size: Option<usize>,
    /// Stated video/latent factors, checked against the architecture when present.
    #[serde(default)]
    pub scale_factor_spatial: Option<usize>,
    #[serde(default)]
    pub scale_factor_temporal: Option<usize>,
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

/// Wan2.2_VAE's per-channel latent statistics (diffusers' Wan2.2 VAE config).
const WAN22_LATENTS_MEAN: [f64; 48] = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813,
    0.0891, 0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108,
    -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313,
    -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944,
    0.3573, -0.0548, -0.1681, -0.0667,
];
const WAN22_LATENTS_STD: [f64; 48] = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
];

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
            in_channels: Some(3),
            patch_size: None,
            scale_factor_spatial: None,
            scale_factor_temporal: None,
        }
    }

    /// `Wan2.2_VAE` (Wan2.2 TI2V 5B): decoder base 256, z 48, residual up blocks, 2×2 unpatchify;
    /// ×4 time, ×16 space. Values of diffusers' Wan2.2 VAE conversion (`vae22_diffusers_config`).
    pub fn wan2_2() -> Self {
        Self {
            base_dim: 160,
            decoder_base_dim: Some(256),
            z_dim: 48,
            dim_mult: default_dim_mult(),
            num_res_blocks: default_num_res_blocks(),
            attn_scales: Vec::new(),
            temperal_downsample: default_temperal_downsample(),
            latents_mean: WAN22_LATENTS_MEAN.to_vec(),
            latents_std: WAN22_LATENTS_STD.to_vec(),
            is_residual: true,
            out_channels: 12,
            in_channels: Some(12),
            patch_size: Some(2),
            scale_factor_spatial: Some(16),
            scale_factor_temporal: Some(4),
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
                "latents_mean ({}) and latents_std ({}) must have z_dim = {} entries \
                 (16 for the Wan2.1 VAE, 48 for the Wan2.2 VAE)",
                self.latents_mean.len(),
                self.latents_std.len(),
                self.z_dim
            ));
        }
        let patch = self.patch();
        if patch == 0 || !self.out_channels.is_multiple_of(patch * patch) {
            return Err(format!(
                "out_channels {} must be a positive multiple of patch_size² = {}",
                self.out_channels,
                patch * patch
            ));
        }
        if self.base_dim == 0 {
            return Err("base_dim (the encoder's channel base) must be positive".into());
        }
        if let Some(c) = self.in_channels {
            if c == 0 || !c.is_multiple_of(patch * patch) {
                return Err(format!(
                    "in_channels {c} must be a positive multiple of patch_size² = {}",
                    patch * patch
                ));
            }
        }
        if let Some(stated) = self.scale_factor_spatial {
            if stated != self.spatial_scale() {
                return Err(format!(
                    "scale_factor_spatial {stated} does not match the architecture: 2^{} \
                     upsamplings × patch {patch} = {}",
                    self.dim_mult.len() - 1,
                    self.spatial_scale()
                ));
            }
        }
        if let Some(stated) = self.scale_factor_temporal {
            if stated != self.temporal_scale() {
                return Err(format!(
                    "scale_factor_temporal {stated} does not match temperal_downsample {:?} (×{})",
                    self.temperal_downsample,
                    self.temporal_scale()
                ));
            }
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

    /// Channels of the encoder's first conv (3 for Wan2.1, 12 for Wan2.2).
    pub fn encoder_in_channels(&self) -> usize {
        self.in_channels.unwrap_or(3 * self.patch() * self.patch())
    }

    /// Channels of the video the encoder takes (3): its first conv's channels before patchifying.
    pub fn encoder_video_channels(&self) -> usize {
        self.encoder_in_channels() / (self.patch() * self.patch())
    }

    /// Whether each decoder up block doubles time: the encoder's list reversed.
    pub fn temporal_upsample(&self) -> Vec<bool> {
        self.temperal_downsample.iter().rev().copied().collect()
    }

    /// The pixel patch the decoder's output is unpatchified with (1 = none, Wan2.1; 2 for Wan2.2).
    pub fn patch(&self) -> usize {
        self.patch_size.unwrap_or(1)
    }

    /// Spatial factor between latent and video pixels: the decoder's upsamplings times the patch
    /// (8 for Wan2.1, 16 for Wan2.2).
    pub fn spatial_scale(&self) -> usize {
        (1 << (self.dim_mult.len() - 1)) * self.patch()
    }

    /// Video frames per later latent frame: 2^(temporal upsamplings) (4 for Wan2.1 and Wan2.2).
    pub fn temporal_scale(&self) -> usize {
        1usize << self.temperal_downsample.iter().filter(|t| **t).count()
    }

    /// Channels of the decoded video (3): the decoder's `out_channels` after unpatchifying.
    pub fn video_channels(&self) -> usize {
        self.out_channels / (self.patch() * self.patch())
    }

    /// A short name of the VAE family this config describes, for messages.
    pub fn family(&self) -> &'static str {
        if self.is_residual || self.patch_size.is_some() {
            "Wan2.2"
        } else {
            "Wan2.1"
        }
    }

    /// Video frames from `latent_frames`: the first latent frame gives one frame, every other one
    /// `2^(temporal upsamplings)` frames (1 + 4·(F−1) for Wan2.1 and Wan2.2).
    pub fn video_frames(&self, latent_frames: usize) -> usize {
        if latent_frames == 0 {
            0
        } else {
            1 + self.temporal_scale() * (latent_frames - 1)
        }
    }
}
