//! Which network turns the final latents into video: the model's full VAE decoder, or TAEHV's
//! tiny preview decoder (`--decoder tiny`). Both take the sampled (normalised) latents
//! `[1, z, F', h, w]` and give `[1, 3, F, H, W]` in [-1, 1], so the decode stage swaps one for
//! the other and nothing before it changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use vdit_models::hunyuan15::vae::{HunyuanVaeTiling, HunyuanVideo15VaeDecoder};
use vdit_models::taehv::{TaehvConfig, TaehvDecoder};
use vdit_models::wan::vae::{VaeTiling, WanVaeDecoder};
use vdit_models::weights::WeightFiles;

use crate::error::{Result, VditError};
use crate::hub::{HubOptions, ModelFiles, ModelLocation};
use crate::options::DecoderChoice;

/// The hub repo of the published TAEHV decoders.
pub const TAEHV_HUB_REPO: &str = "madebyollin/taehv";

/// The decoder a run uses, as the sidecar records it: `{"kind": "full"}` or
/// `{"kind": "tiny", "weights": "<path of the TAEHV file>"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DecoderSettings {
    /// The model's VAE decoder (or `--vae`).
    #[default]
    Full,
    /// A TAEHV decoder from this safetensors file.
    Tiny { weights: PathBuf },
}

impl DecoderSettings {
    /// Resolves `--decoder` and `--tiny-vae` for a model whose latents have `latent_channels`
    /// channels: `--tiny-vae` a file is used as given; a folder is searched for the published
    /// file for those channels (`taew2_1.safetensors` for 16, `taew2_2.safetensors` for 48, also
    /// under `safetensors/`); no `--tiny-vae` downloads that file from the hub repo
    /// [`TAEHV_HUB_REPO`] (or finds it in the cache). The file's own channels are checked later,
    /// in preflight, from its header.
    pub fn resolve(
        choice: DecoderChoice,
        tiny_vae: Option<&Path>,
        latent_channels: usize,
        hub: &HubOptions,
    ) -> Result<Self> {
        if choice == DecoderChoice::Full {
            if let Some(path) = tiny_vae {
                return Err(VditError::InvalidSetting(format!(
                    "--tiny-vae {} is only read with --decoder tiny",
                    path.display()
                )));
            }
            return Ok(Self::Full);
        }
        if let Some(path) = tiny_vae.filter(|p| p.is_file()) {
            return Ok(Self::Tiny {
                weights: path.to_path_buf(),
            });
        }
        let name = TaehvConfig::published_file(latent_channels).ok_or_else(|| {
            VditError::InvalidSetting(format!(
                "--decoder tiny: no published TAEHV decoder for {latent_channels}-channel latents \
                 (taew2_1: 16, taew2_2: 48); pass one with --tiny-vae FILE"
            ))
        })?;
        let location = match tiny_vae {
            Some(dir) if dir.is_dir() => ModelLocation::Local(dir.to_path_buf()),
            Some(other) => {
                return Err(VditError::InvalidSetting(format!(
                    "--tiny-vae {}: no such file or folder",
                    other.display()
                )))
            }
            None => ModelLocation::Hub {
                repo_id: TAEHV_HUB_REPO.into(),
                revision: "main".into(),
            },
        };
        let where_ = location.to_string();
        let files = ModelFiles::new(location, hub.clone());
        // The hub repo has kept the safetensors both at the top and in safetensors/.
        for candidate in [name.to_string(), format!("safetensors/{name}")] {
            if let Some(weights) = files.optional_file(&candidate)? {
                return Ok(Self::Tiny { weights });
            }
        }
        Err(VditError::Resolve(format!(
            "--decoder tiny: {name} (the TAEHV decoder of {latent_channels}-channel latents) not \
             found in {where_} (looked for {name} and safetensors/{name}{})",
            if hub.offline && tiny_vae.is_none() {
                "; offline: only the cache was searched"
            } else {
                ""
            }
        )))
    }

    /// `"full"` or `"tiny"`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Tiny { .. } => "tiny",
        }
    }
}

/// Checks a TAEHV file from its header before sampling: every tensor the decoder needs, with its
/// shape, and latent channels equal to the model's `latent_channels` (one line otherwise).
pub fn check_tiny(weights: &Path, latent_channels: usize) -> Result<TaehvConfig> {
    let files = Arc::new(WeightFiles::open(weights)?);
    let config = TaehvDecoder::check(&files)
        .map_err(|e| VditError::InvalidSetting(format!("--tiny-vae {}: {e}", weights.display())))?;
    if config.latent_channels != latent_channels {
        let wanted = TaehvConfig::published_file(latent_channels)
            .map(|name| format!("; use {name}"))
            .unwrap_or_default();
        return Err(VditError::InvalidSetting(format!(
            "--tiny-vae {}: a TAEHV decoder of {}-channel latents, but this model's latents have \
             {latent_channels} channels{wanted}",
            weights.display(),
            config.latent_channels
        )));
    }
    Ok(config)
}

/// A loaded decoder of either kind.
pub enum VideoDecoder {
    // Boxed: both hold many layers by value, and a run holds one decoder.
    Full(Box<WanVaeDecoder>),
    /// HunyuanVideo 1.5's VAE decoder (the model's full decoder for that family).
    Hunyuan(Box<HunyuanVideo15VaeDecoder>),
    Tiny(Box<TaehvDecoder>),
}

impl VideoDecoder {
    /// Loads a TAEHV decoder from `weights`.
    pub fn load_tiny(weights: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let files = Arc::new(WeightFiles::open(weights)?);
        Ok(Self::Tiny(Box::new(TaehvDecoder::load(
            &files, dtype, device,
        )?)))
    }

    /// `"full"` or `"tiny"`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Full(_) | Self::Hunyuan(_) => "full",
            Self::Tiny(_) => "tiny",
        }
    }

    /// Latent channels it decodes.
    pub fn latent_channels(&self) -> usize {
        match self {
            Self::Full(vae) => vae.z_dim(),
            Self::Hunyuan(vae) => vae.z_dim(),
            Self::Tiny(tiny) => tiny.latent_channels(),
        }
    }

    /// `[1, z, F', h, w]` as sampled → `[1, 3, F, H, W]` f32 in [-1, 1]. `vae_tiling` applies to
    /// the full VAE (TAEHV decodes whole frames in time chunks, its memory already small).
    pub fn decode(&self, latents: &Tensor, vae_tiling: bool) -> Result<Tensor> {
        Ok(match self {
            Self::Full(vae) => {
                let tiling =
                    vae_tiling.then(|| VaeTiling::for_spatial_scale(vae.spatial_compression()));
                vae.decode(latents, tiling)?
            }
            Self::Hunyuan(vae) => {
                // diffusers' `enable_tiling` tiles at the VAE's own scale.
                let tiling = vae_tiling
                    .then(|| HunyuanVaeTiling::for_spatial_scale(vae.spatial_compression()));
                vae.decode(latents, tiling)?
            }
            Self::Tiny(tiny) => tiny.decode(latents)?,
        })
    }

    /// [`decode`](Self::decode), handing each chunk `[1, 3, t, H, W]` in [-1, 1] to `on_chunk`
    /// in frame order as soon as it exists.
    pub fn decode_with_chunks(
        &self,
        latents: &Tensor,
        vae_tiling: bool,
        on_chunk: &mut dyn FnMut(&Tensor) -> vdit_models::Result<()>,
    ) -> Result<()> {
        match self {
            Self::Full(vae) => {
                // Tiles at the VAE's own scale, as `decode` takes them (Wan2.2's ×16 too).
                let tiling =
                    vae_tiling.then(|| VaeTiling::for_spatial_scale(vae.spatial_compression()));
                vae.decode_with_chunks(latents, tiling, on_chunk)?
            }
            Self::Hunyuan(vae) => {
                let tiling = vae_tiling
                    .then(|| HunyuanVaeTiling::for_spatial_scale(vae.spatial_compression()));
                vae.decode_with_chunks(latents, tiling, on_chunk)?
            }
            Self::Tiny(tiny) => {
                let (_, _, _, h, w) = latents.dims5()?;
                tiny.decode_with_chunks(latents, tiny.chunk_latent_frames(h, w), on_chunk)?
            }
        }
        Ok(())
    }
}
