//! The Wan causal 3D VAE (diffusers AutoencoderKLWan): Wan2.1_VAE (z 16, ×8 in space) and
//! Wan2.2_VAE (z 48, residual up/down blocks, 2×2 patch: ×16 in space), both ×4 in time after the
//! first frame. [`WanVaeDecoder`] turns latents into video, [`WanVaeEncoder`] video into latents;
//! each is built from a [`WanVaeConfig`] and loads only its own half of a checkpoint.
//!
//! Both run through time in chunks: every temporal conv keeps the last frames of its input stream
//! in a [`FeatureCache`](layers::FeatureCache), so the result equals a causal conv over the whole
//! video while memory stays that of one chunk. The decoder takes one latent frame at a time (the
//! first gives one video frame, every later one four); the encoder takes the first frame alone,
//! then four at a time, each chunk giving one latent frame. Optional spatial [tiling](VaeTiling)
//! bounds the decoder's memory at 720p.

pub(crate) mod blocks;
pub mod config;
#[cfg(feature = "cudnn")]
mod cudnn_conv;
mod decoder;
mod downsample;
mod encode;
mod encoder;
pub mod keys;
pub(crate) mod layers;
mod patchify;
mod residual_down;
mod residual_up;
pub mod tiling;

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use config::WanVaeConfig;
pub use encode::WanVaeEncoder;
pub use keys::VaeKeyDialect;
pub use tiling::VaeTiling;

use crate::error::{ModelError, Result};
use crate::profile::span;
use crate::weights::{RandomWeights, WeightFiles, WeightsError};
#[cfg(feature = "cudnn")]
pub use cudnn_conv::{conv2d_tensor_ops, conv2d_tensor_ops_accumulate, TENSOR_OPS_ENV};
use decoder::Decoder3d;
use layers::{stage, CausalConv3d, FeatureCache, SlotCounter};
pub use layers::{CONV_ALGO_ENV, FUSED_NORM_ENV};

/// Environment variable: `1` drains the device queue after each decoded chunk, so that candle's
/// stream-ordered memory pool returns the chunk's freed buffers to the device before the next
/// chunk allocates (a memory experiment; off by default).
pub const TRIM_AFTER_CHUNK_ENV: &str = "VDIT_VAE_TRIM";

/// Whether [`TRIM_AFTER_CHUNK_ENV`] is `1` (read once).
fn trim_after_chunk() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var(TRIM_AFTER_CHUNK_ENV).is_ok_and(|v| v.trim() == "1"))
}

/// What [`WanVaeDecoder::decode_with_chunks`] hands each decoded chunk to.
type ChunkConsumer<'a> = dyn FnMut(&Tensor) -> Result<()> + 'a;

/// The error for a checkpoint that has no Wan VAE decoder in either key dialect.
fn not_a_vae(files: String) -> ModelError {
    WeightsError::MissingTensor {
        key: "decoder.conv_in.weight (diffusers) or decoder.conv1.weight (Wan2.1_VAE); \
              is this a Wan VAE checkpoint?"
            .into(),
        expected: None,
        files,
    }
    .into()
}

/// The error for a checkpoint whose up-block layout is not the config's VAE family.
fn wrong_family(files: String, cfg: &WanVaeConfig) -> ModelError {
    let (file_family, config_family) = if cfg.is_residual {
        ("Wan2.1", "Wan2.2")
    } else {
        ("Wan2.2", "Wan2.1")
    };
    ModelError::UnsupportedCheckpoint {
        files,
        reason: format!(
            "its up blocks have the {file_family} VAE layout but the config describes a \
             {config_family} VAE (is_residual = {}); use the checkpoint's own config.json or \
             WanVaeConfig::{}()",
            cfg.is_residual,
            if cfg.is_residual { "wan2_1" } else { "wan2_2" }
        ),
    }
}

/// The Wan VAE decoder (Wan2.1 or Wan2.2) with its latent un-normalisation.
#[derive(Debug, Clone)]
pub struct WanVaeDecoder {
    post_quant_conv: CausalConv3d,
    decoder: Decoder3d,
    config: WanVaeConfig,
    dialect: VaeKeyDialect,
    /// `[1, z, 1, 1, 1]` f32: sampled latents are `(z_raw − mean) / std`.
    latents_mean: Tensor,
    latents_std: Tensor,
    dtype: DType,
    device: Device,
}

impl WanVaeDecoder {
    /// Builds the decoder from a safetensors checkpoint in diffusers or original (Wan2.1_VAE /
    /// Wan2.2_VAE / ComfyUI) key names, detected from the file. Encoder weights, if present, are
    /// not read. `cfg` says which VAE it is ([`WanVaeConfig::wan2_1`], [`WanVaeConfig::wan2_2`] or
    /// the checkpoint's config.json); a checkpoint of the other family is an error.
    pub fn load(
        files: &Arc<WeightFiles>,
        cfg: &WanVaeConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (dialect, key_map) = Self::key_map_for(files, cfg)?;
        Self::build(
            files.var_builder(key_map, dtype, device),
            cfg,
            dialect,
            dtype,
            device,
        )
    }

    /// The checkpoint's key dialect and the map from diffusers names to its keys; an error when
    /// it is no Wan VAE or the other family's.
    fn key_map_for(
        files: &WeightFiles,
        cfg: &WanVaeConfig,
    ) -> Result<(VaeKeyDialect, crate::weights::KeyMap)> {
        let files_list = || files.files_description();
        let (dialect, prefix) =
            keys::detect_dialect(files.keys()).ok_or_else(|| not_a_vae(files_list()))?;
        if keys::residual_layout(files.keys()).is_some_and(|r| r != cfg.is_residual) {
            return Err(wrong_family(files_list(), cfg));
        }
        let key_map = keys::key_map(dialect, &prefix, cfg.num_res_blocks, cfg.is_residual);
        Ok((dialect, key_map))
    }

    /// Checks, from the headers alone, that [`Self::load`] with the same arguments would find
    /// every tensor the decoder needs with its shape (see [`WeightFiles::checking_var_builder`]):
    /// the same errors as a load, in well under a second and with no weights read.
    pub fn check(files: &Arc<WeightFiles>, cfg: &WanVaeConfig) -> Result<()> {
        let (dialect, key_map) = Self::key_map_for(files, cfg)?;
        Self::build(
            files.checking_var_builder(key_map),
            cfg,
            dialect,
            DType::F32,
            &Device::Cpu,
        )
        .map(|_| ())
    }

    /// A decoder of `cfg`'s shape with random weights drawn on `device` (see
    /// [`crate::weights::RandomWeights`]): for benchmarks at the real size without a checkpoint.
    pub fn random(cfg: &WanVaeConfig, dtype: DType, device: &Device) -> Result<Self> {
        let vb = RandomWeights::var_builder(dtype, device);
        Self::build(vb, cfg, VaeKeyDialect::Diffusers, dtype, device)
    }

    /// Builds the decoder from Wan's own `Wan2.1_VAE.pth` or `Wan2.2_VAE.pth` (a PyTorch
    /// state_dict; read without Python, through candle's pickle reader). Either key dialect is
    /// accepted.
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
        let (dialect, prefix) = keys::detect_dialect(names.iter().copied())
            .ok_or_else(|| not_a_vae(path.display().to_string()))?;
        if keys::residual_layout(names.iter().copied()).is_some_and(|r| r != cfg.is_residual) {
            return Err(wrong_family(path.display().to_string(), cfg));
        }
        let key_map = keys::key_map(dialect, &prefix, cfg.num_res_blocks, cfg.is_residual);
        let vb = VarBuilder::from_backend(Box::new(tensors), dtype, device.clone())
            .rename_f(move |k: &str| key_map.map(k));
        Self::build(vb, cfg, dialect, dtype, device)
    }

    /// `vb` answers diffusers names (`post_quant_conv.*`, `decoder.*`).
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
        let mut no_slots = SlotCounter::default();
        let post_quant_conv = CausalConv3d::new(
            vb.pp("post_quant_conv"),
            cfg.z_dim,
            cfg.z_dim,
            (1, 1),
            &mut no_slots,
            stage::POINTWISE_CONV,
        )?;
        let decoder = Decoder3d::new(vb.pp("decoder"), cfg)?;
        let table = |values: &[f64]| -> Result<Tensor> {
            let values: Vec<f32> = values.iter().map(|v| *v as f32).collect();
            Ok(Tensor::from_vec(values, (1, cfg.z_dim, 1, 1, 1), device)?)
        };
        Ok(Self {
            post_quant_conv,
            decoder,
            config: cfg.clone(),
            dialect,
            latents_mean: table(&cfg.latents_mean)?,
            latents_std: table(&cfg.latents_std)?,
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

    /// Latent channels this VAE decodes (16 for Wan2.1, 48 for Wan2.2).
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

    /// latents as sampled (normalised) `[B, z, F, H, W]` → video `[B, 3, 1+4(F−1), sH, sW]` f32 in
    /// [−1, 1], s = [`spatial_compression`](Self::spatial_compression). Un-normalises first
    /// (z·std + mean), for both VAE families. `tiling` None decodes whole frames.
    pub fn decode(&self, latents: &Tensor, tiling: Option<VaeTiling>) -> Result<Tensor> {
        self.decode_with_progress(latents, tiling, &mut |_, _| {})
    }

    /// [`decode`](Self::decode), calling `progress(done, total)` after each latent frame of each
    /// tile (the decode of a 720p video takes a while).
    pub fn decode_with_progress(
        &self,
        latents: &Tensor,
        tiling: Option<VaeTiling>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        let video = self.decode_raw(latents, tiling, progress)?;
        span(stage::POST_PROCESSING, &self.device, || {
            Ok(video.clamp(-1f32, 1f32)?)
        })
    }

    /// [`decode`](Self::decode) handing each decoded chunk `[B, 3, t, sH, sW]` f32 in [−1, 1] to
    /// `on_chunk` as soon as it exists, in frame order, instead of returning the whole video: a
    /// writer can encode while the rest decodes, and only one chunk is held. Whole frames give one
    /// chunk of 1 frame, then one of 4 per later latent frame; the tiled path blends all tiles
    /// first, so it calls `on_chunk` once with the whole video. An error from `on_chunk` stops the
    /// decode and is returned.
    pub fn decode_with_chunks(
        &self,
        latents: &Tensor,
        tiling: Option<VaeTiling>,
        on_chunk: &mut dyn FnMut(&Tensor) -> Result<()>,
    ) -> Result<()> {
        let mut clamped = |chunk: &Tensor| -> Result<()> {
            let chunk = span(stage::POST_PROCESSING, &self.device, || {
                Ok(chunk.clamp(-1f32, 1f32)?)
            })?;
            on_chunk(&chunk)
        };
        self.decode_into(latents, tiling, &mut |_, _| {}, Some(&mut clamped))
            .map(|_| ())
    }

    /// [`decode`](Self::decode) without the final clamp to [−1, 1] (for analysis and tests).
    pub fn decode_unclamped(&self, latents: &Tensor, tiling: Option<VaeTiling>) -> Result<Tensor> {
        self.decode_raw(latents, tiling, &mut |_, _| {})
    }

    fn decode_raw(
        &self,
        latents: &Tensor,
        tiling: Option<VaeTiling>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        let video = self.decode_into(latents, tiling, progress, None)?;
        Ok(video.expect("a decode without a chunk consumer returns the video"))
    }

    /// The decode behind [`decode_raw`](Self::decode_raw) and
    /// [`decode_with_chunks`](Self::decode_with_chunks): with `on_chunk`, the chunks go there
    /// (unclamped) and `None` is returned; without, the whole video.
    fn decode_into(
        &self,
        latents: &Tensor,
        tiling: Option<VaeTiling>,
        progress: &mut dyn FnMut(usize, usize),
        on_chunk: Option<&mut ChunkConsumer>,
    ) -> Result<Option<Tensor>> {
        let z_dim = self.config.z_dim;
        let dims = latents.dims();
        if dims.len() != 5 || dims.contains(&0) {
            return Err(ModelError::InvalidInput(format!(
                "VAE latents must be [batch, {z_dim}, frames, height, width] with no empty axis, got {dims:?}"
            )));
        }
        if dims[1] != z_dim {
            return Err(ModelError::LatentChannels {
                shape: dims.to_vec(),
                got: dims[1],
                expected: z_dim,
                vae: self.config.family(),
            });
        }
        if let Some(t) = &tiling {
            t.validate()?;
        }
        let z = latents.to_device(&self.device)?;
        let z = span(stage::PRE_PROCESSING, &self.device, || {
            let z = z
                .to_dtype(DType::F32)?
                .broadcast_mul(&self.latents_std)?
                .broadcast_add(&self.latents_mean)?;
            // frames-major for the decoder: [B, F, z, H, W]
            Ok(z.to_dtype(self.dtype)?
                .permute((0, 2, 1, 3, 4))?
                .contiguous()?)
        })?;
        let z = self
            .post_quant_conv
            .forward(&z, &mut FeatureCache::new(0))?;
        let (_, _, _, h, w) = z.dims5()?;
        match (tiling, on_chunk) {
            (Some(t), None) if t.tile.0 < h || t.tile.1 < w => {
                self.decode_tiled(&z, t, progress).map(Some)
            }
            (Some(t), Some(on_chunk)) if t.tile.0 < h || t.tile.1 < w => {
                on_chunk(&self.decode_tiled(&z, t, progress)?)?;
                Ok(None)
            }
            (_, None) => {
                let frames = z.dim(1)?;
                self.decode_stream(&z, &mut |i| progress(i, frames))
                    .map(Some)
            }
            (_, Some(on_chunk)) => {
                let frames = z.dim(1)?;
                self.stream_chunks(&z, &mut |i| progress(i, frames), on_chunk)?;
                Ok(None)
            }
        }
    }

    /// All latent frames of one region, one at a time through a fresh cache:
    /// `[B, F, z, h, w]` → `[B, 3, T, sh, sw]` f32. `frame_done(i)` after i latent frames.
    fn decode_stream(&self, z: &Tensor, frame_done: &mut dyn FnMut(usize)) -> Result<Tensor> {
        let mut chunks = Vec::with_capacity(z.dim(1)?);
        self.stream_chunks(z, frame_done, &mut |chunk| {
            chunks.push(chunk.clone());
            Ok(())
        })?;
        span(stage::POST_PROCESSING, &self.device, || {
            Ok(Tensor::cat(&chunks, 2)?)
        })
    }

    /// [`decode_stream`](Self::decode_stream) handing each latent frame's chunk
    /// `[B, 3, t, sh, sw]` f32 (t = 1 for the first, 4 after) to `on_chunk` instead of keeping it.
    fn stream_chunks(
        &self,
        z: &Tensor,
        frame_done: &mut dyn FnMut(usize),
        on_chunk: &mut dyn FnMut(&Tensor) -> Result<()>,
    ) -> Result<()> {
        let mut cache = self.decoder.new_cache();
        let frames = z.dim(1)?;
        for i in 0..frames {
            let out = self
                .decoder
                .forward_chunk(&z.narrow(1, i, 1)?, &mut cache)?; // [B, t, 3·p², 8h, 8w]
                                                                  // channels-first per chunk, in the same pass as the cast to f32: [B, 3·p², t, 8h, 8w];
                                                                  // then Wan2.2's p×p patches spread out: [B, 3, t, 8ph, 8pw]
            let chunk = span(stage::POST_PROCESSING, &self.device, || {
                let out = out
                    .permute((0, 2, 1, 3, 4))?
                    .to_dtype(DType::F32)?
                    .contiguous()?;
                patchify::unpatchify(&out, self.config.patch())
            })?;
            on_chunk(&chunk)?;
            frame_done(i + 1);
            if trim_after_chunk() {
                // drained, the stream-ordered pool hands the chunk's freed buffers back
                self.device.synchronize()?;
            }
        }
        Ok(())
    }

    /// Overlapping spatial tiles, each decoded through all frames, blended linearly.
    fn decode_tiled(
        &self,
        z: &Tensor,
        tiling: VaeTiling,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        let (b, frames, _, h, w) = z.dims5()?;
        let scale = self.config.spatial_scale();
        let rows = tiling::axis_tiles(h, tiling.tile.0, tiling.overlap, scale);
        let cols = tiling::axis_tiles(w, tiling.tile.1, tiling.overlap, scale);
        let out_frames = self.config.video_frames(frames);
        let channels = self.config.video_channels();
        let mut video = Tensor::zeros(
            (b, channels, out_frames, h * scale, w * scale),
            DType::F32,
            &self.device,
        )?;
        let total = rows.spans.len() * cols.spans.len() * frames;
        let mut tiles_done = 0;
        for (&(y0, th), wy) in rows.spans.iter().zip(&rows.weights) {
            for (&(x0, tw), wx) in cols.spans.iter().zip(&cols.weights) {
                let tile = z.narrow(3, y0, th)?.narrow(4, x0, tw)?.contiguous()?;
                let decoded =
                    self.decode_stream(&tile, &mut |i| progress(tiles_done * frames + i, total))?;
                tiles_done += 1;
                // decoded: [B, 3, T, th·s, tw·s], s = spatial scale
                video = span(stage::TILE_BLEND, &self.device, || {
                    let wy = Tensor::from_slice(wy, (th * scale, 1), &self.device)?;
                    let wx = Tensor::from_slice(wx, (1, tw * scale), &self.device)?;
                    let weight = wy.broadcast_mul(&wx)?; // [th·s, tw·s]
                    let (ys, xs) = (y0 * scale..(y0 + th) * scale, x0 * scale..(x0 + tw) * scale);
                    let current =
                        video
                            .narrow(3, ys.start, ys.len())?
                            .narrow(4, xs.start, xs.len())?;
                    let blended = (current + decoded.broadcast_mul(&weight)?)?;
                    Ok(
                        video
                            .slice_assign(&[0..b, 0..channels, 0..out_frames, ys, xs], &blended)?,
                    )
                })?;
            }
        }
        Ok(video)
    }
}
