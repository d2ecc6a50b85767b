//! The public Wan VAE encoder: video in [−1, 1] → the posterior mean of its latents, raw or
//! normalised the way the image-to-video pipelines condition on it.
//!
//! Time is encoded in chunks, as diffusers' `AutoencoderKLWan._encode` does: the first frame
//! alone, then 4 frames at a time, every temporal conv carrying its last input frames across
//! chunks in a [`FeatureCache`]. Each chunk gives one latent frame, so a video of 1 + 4k frames
//! gives 1 + k latent frames and memory stays that of one chunk of the encoder's activations.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::config::WanVaeConfig;
use super::encoder::Encoder3d;
use super::keys::{self, VaeKeyDialect};
use super::layers::{stage, CausalConv3d, FeatureCache, SlotCounter};
use super::patchify;
use crate::error::{ModelError, Result};
use crate::profile::span;
use crate::weights::{RandomWeights, WeightFiles, WeightsError};

/// Video frames of the first chunk and of every later one.
const FIRST_CHUNK_FRAMES: usize = 1;
const CHUNK_FRAMES: usize = 4;

/// The error for a checkpoint that has no Wan VAE encoder in either key dialect.
fn not_an_encoder(files: String) -> ModelError {
    WeightsError::MissingTensor {
        key: "encoder.conv_in.weight (diffusers) or encoder.conv1.weight (Wan2.1_VAE / \
              Wan2.2_VAE); a VAE checkpoint with only its decoder cannot encode images"
            .into(),
        expected: None,
        files,
    }
    .into()
}

/// The error for a checkpoint whose down-block layout is not the config's VAE family.
fn wrong_family(files: String, cfg: &WanVaeConfig) -> ModelError {
    let (file_family, config_family, preset) = if cfg.is_residual {
        ("Wan2.1", "Wan2.2", "wan2_1")
    } else {
        ("Wan2.2", "Wan2.1", "wan2_2")
    };
    ModelError::UnsupportedCheckpoint {
        files,
        reason: format!(
            "its encoder down blocks have the {file_family} VAE layout but the config describes \
             a {config_family} VAE (is_residual = {}); use the checkpoint's own config.json or \
             WanVaeConfig::{preset}()",
            cfg.is_residual
        ),
    }
}

/// The Wan VAE encoder (Wan2.1: z 16, ×8 in space; Wan2.2: z 48, 2×2 patchify, ×16 in space;
/// both ×4 in time after the first frame) with `quant_conv` and the latent normalisation.
#[derive(Debug, Clone)]
pub struct WanVaeEncoder {
    encoder: Encoder3d,
    quant_conv: CausalConv3d,
    config: WanVaeConfig,
    dialect: VaeKeyDialect,
    /// `[1, z, 1, 1, 1]` f32: normalised latents are `(mean − latents_mean) · (1 / latents_std)`.
    latents_mean: Tensor,
    latents_inv_std: Tensor,
    dtype: DType,
    device: Device,
}

impl WanVaeEncoder {
    /// Builds the encoder from a safetensors checkpoint in diffusers or original (Wan2.1_VAE /
    /// Wan2.2_VAE / ComfyUI) key names, detected from the file. Only the encoder and `quant_conv`
    /// are read (a pipeline loads the encoder, encodes its image, and frees it before the
    /// transformer runs). `cfg` says which VAE it is; a checkpoint of the other family is an error.
    pub fn load(
        files: &Arc<WeightFiles>,
        cfg: &WanVaeConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let files_list = || files.files_description();
        let (dialect, prefix) = keys::detect_encoder_dialect(files.keys())
            .ok_or_else(|| not_an_encoder(files_list()))?;
        if keys::encoder_residual_layout(files.keys()).is_some_and(|r| r != cfg.is_residual) {
            return Err(wrong_family(files_list(), cfg));
        }
        let key_map = keys::key_map(dialect, &prefix, cfg.num_res_blocks, cfg.is_residual);
        Self::build(
            files.var_builder(key_map, dtype, device),
            cfg,
            dialect,
            dtype,
            device,
        )
    }

    /// Builds the encoder from Wan's own `Wan2.1_VAE.pth` or `Wan2.2_VAE.pth` (a PyTorch
    /// state_dict, read through candle's pickle reader). Either key dialect is accepted.
    pub fn load_pth(
        path: &Path,
        cfg: &WanVaeConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let tensors = candle_core::pickle::PthTensors::new(path, None).map_err(|e| {
            ModelError::InvalidInput(format!(
                "cannot read {} as a PyTorch checkpoint: {e}",
                path.display()
            ))
        })?;
        let names: Vec<&str> = tensors.tensor_infos().keys().map(String::as_str).collect();
        let (dialect, prefix) = keys::detect_encoder_dialect(names.iter().copied())
            .ok_or_else(|| not_an_encoder(path.display().to_string()))?;
        if keys::encoder_residual_layout(names.iter().copied())
            .is_some_and(|r| r != cfg.is_residual)
        {
            return Err(wrong_family(path.display().to_string(), cfg));
        }
        let key_map = keys::key_map(dialect, &prefix, cfg.num_res_blocks, cfg.is_residual);
        let vb = VarBuilder::from_backend(Box::new(tensors), dtype, device.clone())
            .rename_f(move |k: &str| key_map.map(k));
        Self::build(vb, cfg, dialect, dtype, device)
    }

    /// An encoder of `cfg`'s shape with random weights drawn on `device` (see
    /// [`crate::weights::RandomWeights`]): for benchmarks at the real size without a checkpoint.
    pub fn random(cfg: &WanVaeConfig, dtype: DType, device: &Device) -> Result<Self> {
        let vb = RandomWeights::var_builder(dtype, device);
        Self::build(vb, cfg, VaeKeyDialect::Diffusers, dtype, device)
    }

    /// `vb` answers diffusers names (`quant_conv.*`, `encoder.*`).
    fn build(
        vb: VarBuilder,
        cfg: &WanVaeConfig,
        dialect: VaeKeyDialect,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate().map_err(|reason| ModelError::Config {
            path: "WanVaeConfig".into(),
            reason,
        })?;
        let moments = 2 * cfg.z_dim;
        let quant_conv = CausalConv3d::new(
            vb.pp("quant_conv"),
            moments,
            moments,
            (1, 1),
            &mut SlotCounter::default(),
            stage::POINTWISE_CONV,
        )?;
        let encoder = Encoder3d::new(vb.pp("encoder"), cfg)?;
        let table = |values: &[f64]| -> Result<Tensor> {
            let values: Vec<f32> = values.iter().map(|v| *v as f32).collect();
            Ok(Tensor::from_vec(values, (1, cfg.z_dim, 1, 1, 1), device)?)
        };
        Ok(Self {
            encoder,
            quant_conv,
            config: cfg.clone(),
            dialect,
            latents_mean: table(&cfg.latents_mean)?,
            // the reciprocal first, then a product, as WanImageToVideoPipeline.prepare_latents
            latents_inv_std: table(&cfg.latents_std)?.recip()?,
            dtype,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &WanVaeConfig {
        &self.config
    }

    /// The key naming the checkpoint was read with.
    pub fn dialect(&self) -> VaeKeyDialect {
        self.dialect
    }

    /// Latent channels this VAE encodes to (16 for Wan2.1, 48 for Wan2.2).
    pub fn z_dim(&self) -> usize {
        self.config.z_dim
    }

    /// Video pixels per latent pixel along height and width (8 for Wan2.1, 16 for Wan2.2).
    pub fn spatial_compression(&self) -> usize {
        self.config.spatial_scale()
    }

    /// Video frames per latent frame after the first (4 for both).
    pub fn temporal_compression(&self) -> usize {
        self.config.temporal_scale()
    }

    /// video `[B, 3, F, H, W]` in [−1, 1] (any float dtype), F = 1 + 4k, H and W multiples of
    /// [`spatial_compression`](Self::spatial_compression) s → the posterior mean
    /// `[B, z, 1 + k, H/s, W/s]` f32 (diffusers' `retrieve_latents(vae.encode(x), sample_mode =
    /// "argmax")`), not normalised.
    pub fn encode_mean(&self, video: &Tensor) -> Result<Tensor> {
        let moments = self.encode_moments(video)?; // [B, 2z, F', h, w] f32
        Ok(moments.narrow(1, 0, self.config.z_dim)?.contiguous()?)
    }

    /// [`encode_mean`](Self::encode_mean) normalised per channel,
    /// `(mean − latents_mean) · (1 / latents_std)`: the latent condition of
    /// `WanImageToVideoPipeline.prepare_latents` (and TI2V's first-frame latent), in the space the
    /// transformer's latents live in. `[B, z, F', H/s, W/s]` f32.
    pub fn encode_normalized(&self, video: &Tensor) -> Result<Tensor> {
        let mean = self.encode_mean(video)?;
        Ok(mean
            .broadcast_sub(&self.latents_mean)?
            .broadcast_mul(&self.latents_inv_std)?)
    }

    /// Why `video` cannot be encoded, if it cannot: `[B, 3, 1 + 4k, sH, sW]`, nothing empty.
    fn check_video(&self, video: &Tensor) -> Result<()> {
        let channels = self.config.encoder_video_channels();
        let scale = self.config.spatial_scale();
        let step = self.config.temporal_scale();
        let dims = video.dims();
        let shape_error = |why: String| {
            ModelError::InvalidInput(format!(
                "the {} VAE encoder takes video [batch, {channels}, 1 + {step}k frames, height, \
                 width] with height and width multiples of {scale}; got {dims:?}: {why}",
                self.config.family()
            ))
        };
        if dims.len() != 5 || dims.contains(&0) {
            return Err(shape_error("not 5 non-empty axes".into()));
        }
        if dims[1] != channels {
            return Err(shape_error(format!(
                "{} channels, expected {channels}",
                dims[1]
            )));
        }
        if !(dims[2] - 1).is_multiple_of(step) {
            let below = 1 + (dims[2] - 1) / step * step;
            return Err(shape_error(format!(
                "{} frames is not 1 + {step}k (the nearest below is {below})",
                dims[2]
            )));
        }
        if !dims[3].is_multiple_of(scale) || !dims[4].is_multiple_of(scale) {
            return Err(shape_error(format!(
                "{}×{} is not a multiple of {scale}",
                dims[3], dims[4]
            )));
        }
        if !video.dtype().is_float() {
            return Err(shape_error(format!(
                "dtype {:?} is not a float type",
                video.dtype()
            )));
        }
        Ok(())
    }

    /// The encoder's output after `quant_conv`: mean and log-variance stacked along channels,
    /// `[B, 2z, F', h, w]` f32.
    fn encode_moments(&self, video: &Tensor) -> Result<Tensor> {
        self.check_video(video)?;
        let frames = video.dim(2)?;
        // [B, 3, F, H, W] → (Wan2.2) [B, 3p², F, H/p, W/p] → frames-major [B, F, C, h, w]
        let x = span(stage::PRE_PROCESSING, &self.device, || {
            let x = video.to_device(&self.device)?.to_dtype(self.dtype)?;
            let x = patchify::patchify(&x, self.config.patch())?;
            Ok(x.permute((0, 2, 1, 3, 4))?.contiguous()?)
        })?;
        let mut cache = self.encoder.new_cache();
        let mut chunks = Vec::with_capacity(1 + (frames - 1) / CHUNK_FRAMES);
        let mut start = 0;
        while start < frames {
            let len = if start == 0 {
                FIRST_CHUNK_FRAMES
            } else {
                CHUNK_FRAMES
            };
            let out = self
                .encoder
                .forward_chunk(&x.narrow(1, start, len)?, &mut cache)?; // [B, 1, 2z, h, w]
            chunks.push(out);
            start += len;
        }
        let moments = Tensor::cat(&chunks, 1)?;
        // quant_conv is pointwise: one pass over all latent frames, no history
        let moments = self
            .quant_conv
            .forward(&moments, &mut FeatureCache::new(0))?;
        span(stage::POST_PROCESSING, &self.device, || {
            Ok(moments
                .permute((0, 2, 1, 3, 4))?
                .to_dtype(DType::F32)?
                .contiguous()?)
        })
    }
}
