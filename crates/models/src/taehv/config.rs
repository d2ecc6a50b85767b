//! The shape of a TAEHV decoder, read from its weights: latent channels, channel widths and the
//! pixel-shuffle patch. One loader serves taew2_1 (16 channels), taew2_2 (48 channels, patch 2)
//! and the small fixtures, since nothing about the shape is assumed from a file name.

use crate::error::{ModelError, Result};
use crate::weights::WeightFiles;

/// Keys (as the published files and TAEHV's `state_dict` spell them) of the decoder's layers,
/// by position in its `nn.Sequential`. Positions without weights are the clamp, the ReLUs and
/// the nearest-neighbour upsamplings.
pub(crate) mod index {
    /// `conv(latent_channels, widths[0])`, with bias, after the input clamp.
    pub const CONV_IN: usize = 1;
    /// The three groups of three MemBlocks, one group per width.
    pub const MEM_BLOCKS: [[usize; 3]; 3] = [[3, 4, 5], [9, 10, 11], [15, 16, 17]];
    /// The temporal upsampling (1×1 conv to `stride` frames' channels) of each group.
    pub const TIME_GROW: [usize; 3] = [7, 13, 19];
    /// `conv(widths[g], widths[g + 1])` without bias, after each group.
    pub const CONV_NEXT: [usize; 3] = [8, 14, 20];
    /// `conv(widths[3], 3 · patch²)`, with bias, after a ReLU.
    pub const CONV_OUT: usize = 22;
}

/// What a TAEHV decoder looks like. Build it with [`TaehvConfig::from_weights`] for a file, or
/// with [`TaehvConfig::taew2_1`] / [`TaehvConfig::taew2_2`] for the published shapes (random
/// weights in benchmarks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaehvConfig {
    /// Channels of the latents it decodes: 16 (Wan2.1 VAE latents) or 48 (Wan2.2's).
    pub latent_channels: usize,
    /// Widths of the three MemBlock groups and of the last conv's input (`[256, 128, 64, 64]`
    /// in the published decoders).
    pub widths: [usize; 4],
    /// Pixel-shuffle factor of the output: 1 for taew2_1, 2 for taew2_2 (×16 in space overall,
    /// like the Wan2.2 VAE).
    pub patch_size: usize,
    /// Whether each group doubles the frame count. TAEHV's default for every Wan decoder is
    /// `[false, true, true]`: ×4 in time, matching the Wan VAEs.
    pub time_upscale: [bool; 3],
}

impl TaehvConfig {
    /// The shape of `taew2_1.safetensors` (Wan2.1 and Wan2.2 A14B latents).
    pub fn taew2_1() -> Self {
        Self {
            latent_channels: 16,
            widths: [256, 128, 64, 64],
            patch_size: 1,
            time_upscale: [false, true, true],
        }
    }

    /// The shape of `taew2_2.safetensors` (Wan2.2 TI2V 5B latents).
    pub fn taew2_2() -> Self {
        Self {
            latent_channels: 48,
            patch_size: 2,
            ..Self::taew2_1()
        }
    }

    /// The published decoder for `latent_channels`-channel latents, if there is one.
    pub fn for_latent_channels(latent_channels: usize) -> Option<Self> {
        match latent_channels {
            16 => Some(Self::taew2_1()),
            48 => Some(Self::taew2_2()),
            _ => None,
        }
    }

    /// The published file name of the decoder for `latent_channels`-channel latents.
    pub fn published_file(latent_channels: usize) -> Option<&'static str> {
        match latent_channels {
            16 => Some("taew2_1.safetensors"),
            48 => Some("taew2_2.safetensors"),
            _ => None,
        }
    }

    /// Reads the shape from the headers of `files` (no tensor is read): latent channels and
    /// widths from the convs, the patch from the output conv's `3 · patch²` channels.
    pub fn from_weights(files: &WeightFiles) -> Result<Self> {
        let shape_of = |position: usize| {
            let key = format!("decoder.{position}.weight");
            files.shape(&key).ok_or_else(|| not_taehv(files, &key))
        };
        if files.contains("decoder.0.weight") {
            // The "super" decoders start with a 1×1 conv and use another block.
            return Err(ModelError::UnsupportedCheckpoint {
                files: files.files_description(),
                reason: "a TAEHV \"super\" decoder (decoder.0.weight present); only the base \
                         decoders (taew2_1, taew2_2) are supported"
                    .into(),
            });
        }
        let conv_in = shape_of(index::CONV_IN)?;
        let conv_out = shape_of(index::CONV_OUT)?;
        let mut widths = [conv_in[0], 0, 0, 0];
        for (group, position) in index::CONV_NEXT.iter().enumerate() {
            widths[group + 1] = shape_of(*position)?[0];
        }
        let patch_size = (1..=8).find(|p| 3 * p * p == conv_out[0]).ok_or_else(|| {
            ModelError::UnsupportedCheckpoint {
                files: files.files_description(),
                reason: format!(
                    "decoder.{}.weight has {} output channels, not 3·patch² for an RGB output",
                    index::CONV_OUT,
                    conv_out[0]
                ),
            }
        })?;
        Ok(Self {
            latent_channels: conv_in[1],
            widths,
            patch_size,
            time_upscale: [false, true, true],
        })
    }

    /// Frames out per latent frame (before the first frames are trimmed): 4 for the Wan decoders.
    pub fn temporal_upscale(&self) -> usize {
        self.time_upscale
            .iter()
            .map(|&up| if up { 2 } else { 1 })
            .product()
    }

    /// Video pixels per latent pixel along height and width: 8 × patch.
    pub fn spatial_upscale(&self) -> usize {
        8 * self.patch_size
    }

    /// Output frames for `latent_frames` latent frames: `upscale · F − (upscale − 1)`, the
    /// first `upscale − 1` being trimmed (TAEHV's alignment with the causal VAE: 1 + 4(F − 1)).
    pub fn output_frames(&self, latent_frames: usize) -> usize {
        let up = self.temporal_upscale();
        (up * latent_frames).saturating_sub(up - 1)
    }
}

fn not_taehv(files: &WeightFiles, key: &str) -> ModelError {
    ModelError::UnrecognizedCheckpoint {
        model: "TAEHV decoder",
        files: files.files_description(),
        expected: format!("{key}, as in madebyollin/taehv's taew2_1 / taew2_2 safetensors"),
    }
}
