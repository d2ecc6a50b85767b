//! The HunyuanVideo 1.5 VAE decoder (diffusers `AutoencoderKLHunyuanVideo15`): 32 latent
//! channels, ×16 in space, ×4 in time after the first frame, causal in time.
//!
//! [`HunyuanVideo15VaeDecoder`] takes the latents as the pipeline samples them and returns video
//! in the layout of [`crate::wan::vae::WanVaeDecoder`] (`[B, 3, F, H, W]` f32 in [−1, 1]), so
//! either can sit behind the pipeline's decode stage. It decodes in time chunks with a carried
//! cache ([`decoder`]), which equals diffusers' whole-clip decode, and tiles in space as
//! diffusers' `enable_tiling` does ([`HunyuanVaeTiling`]).
//!
//! Shared with the Wan VAE (`crate::wan::vae::layers`): the causal conv and its cuDNN path
//! (with replicate padding here), the channel RMS norm, the resnet, the single-head attention.

mod blocks;
pub mod config;
mod decoder;
pub mod tiling;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use config::HunyuanVideo15VaeConfig;
pub use tiling::HunyuanVaeTiling;

use crate::error::{ModelError, Result};
use crate::profile::span;
use crate::wan::vae::layers::stage;
use crate::weights::{KeyMap, RandomWeights, WeightFiles};
use decoder::Decoder3d;
use tiling::TileGrid;

/// The HunyuanVideo 1.5 VAE decoder with the pipeline's latent scaling.
#[derive(Debug, Clone)]
pub struct HunyuanVideo15VaeDecoder {
    decoder: Decoder3d,
    config: HunyuanVideo15VaeConfig,
    /// Latent frames per decoder pass (1: the first pass gives one video frame, each later
    /// one four). Any value gives the same video; larger ones batch more work per conv.
    latent_frames_per_chunk: usize,
    dtype: DType,
    device: Device,
}

impl HunyuanVideo15VaeDecoder {
    /// Loads the decoder from a diffusers `vae/` folder: `config.json` for every shape and the
    /// safetensors file(s) beside it, of which only the `decoder.*` tensors are read (the
    /// encoder's need not be there).
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config = HunyuanVideo15VaeConfig::from_json_file(&path.join("config.json"))?;
        let files = Arc::new(WeightFiles::open(path)?);
        Self::load_files(&files, &config, dtype, device)
    }

    /// Builds the decoder from opened checkpoint files (diffusers keys, `decoder.*`) and a config.
    pub fn load_files(
        files: &Arc<WeightFiles>,
        config: &HunyuanVideo15VaeConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let vb = files.var_builder(KeyMap::identity(), dtype, device);
        Self::build(vb, config, dtype, device)
    }

    /// Checks from the headers alone that [`Self::load_files`] would find every tensor with its
    /// shape (see [`WeightFiles::checking_var_builder`]).
    pub fn check(files: &Arc<WeightFiles>, config: &HunyuanVideo15VaeConfig) -> Result<()> {
        let vb = files.checking_var_builder(KeyMap::identity());
        Self::build(vb, config, DType::F32, &Device::Cpu).map(|_| ())
    }

    /// A decoder of `config`'s shape with random weights drawn on `device`, for benchmarks at the
    /// real size without a checkpoint.
    pub fn random(config: &HunyuanVideo15VaeConfig, dtype: DType, device: &Device) -> Result<Self> {
        Self::build(
            RandomWeights::var_builder(dtype, device),
            config,
            dtype,
            device,
        )
    }

    /// `vb` answers diffusers names (`decoder.*`).
    fn build(
        vb: VarBuilder,
        config: &HunyuanVideo15VaeConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        config.validate().map_err(|reason| ModelError::Config {
            path: "HunyuanVideo15VaeConfig".into(),
            reason,
        })?;
        Ok(Self {
            decoder: Decoder3d::new(vb.pp("decoder"), config)?,
            config: config.clone(),
            latent_frames_per_chunk: 1,
            dtype,
            device: device.clone(),
        })
    }

    /// The same decoder running `n` (≥ 1) latent frames per pass.
    pub fn with_latent_frames_per_chunk(mut self, n: usize) -> Self {
        self.latent_frames_per_chunk = n.max(1);
        self
    }

    pub fn config(&self) -> &HunyuanVideo15VaeConfig {
        &self.config
    }

    /// Latent channels it decodes (32 for the published VAE).
    pub fn z_dim(&self) -> usize {
        self.config.latent_channels
    }

    /// Video pixels per latent pixel along height and width (16).
    pub fn spatial_compression(&self) -> usize {
        self.config.spatial_scale()
    }

    /// Video frames per latent frame after the first (4).
    pub fn temporal_compression(&self) -> usize {
        self.config.temporal_scale()
    }

    /// Latents as sampled `[B, z, F, h, w]` → video `[B, 3, 1 + 4(F − 1), 16h, 16w]` f32 in
    /// [−1, 1]. The pipeline samples latents × `scaling_factor` (diffusers'
    /// `HunyuanVideo15Pipeline` divides by it before `vae.decode`); this divides first, where
    /// the Wan decoder un-normalises with its mean and std. `tiling` None decodes whole frames.
    pub fn decode(&self, latents: &Tensor, tiling: Option<HunyuanVaeTiling>) -> Result<Tensor> {
        self.decode_with_progress(latents, tiling, &mut |_, _| {})
    }

    /// [`decode`](Self::decode), calling `progress(done, total)` after each chunk of each tile,
    /// counted in latent frames.
    pub fn decode_with_progress(
        &self,
        latents: &Tensor,
        tiling: Option<HunyuanVaeTiling>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        let video = self.decode_raw(latents, tiling, progress)?;
        span(stage::POST_PROCESSING, &self.device, || {
            Ok(video.clamp(-1f32, 1f32)?)
        })
    }

    /// [`decode`](Self::decode) handing each decoded chunk `[B, 3, t, H, W]` f32 in [−1, 1] to
    /// `on_chunk` in frame order: whole frames as soon as each chunk is decoded (1 frame, then 4
    /// per latent frame), tiled once every tile is decoded (then joined chunk by chunk, so only
    /// one joined chunk exists at a time). An error from `on_chunk` stops the decode.
    pub fn decode_with_chunks(
        &self,
        latents: &Tensor,
        tiling: Option<HunyuanVaeTiling>,
        on_chunk: &mut dyn FnMut(&Tensor) -> Result<()>,
    ) -> Result<()> {
        self.decode_into(latents, tiling, &mut |_, _| {}, &mut |chunk| {
            let chunk = span(stage::POST_PROCESSING, &self.device, || {
                Ok(chunk.clamp(-1f32, 1f32)?)
            })?;
            on_chunk(&chunk)
        })
    }

    /// [`decode`](Self::decode) without the final clamp to [−1, 1] (diffusers' `vae.decode`
    /// output, for analysis and tests).
    pub fn decode_unclamped(
        &self,
        latents: &Tensor,
        tiling: Option<HunyuanVaeTiling>,
    ) -> Result<Tensor> {
        self.decode_raw(latents, tiling, &mut |_, _| {})
    }

    fn decode_raw(
        &self,
        latents: &Tensor,
        tiling: Option<HunyuanVaeTiling>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        let mut chunks = Vec::new();
        self.decode_into(latents, tiling, progress, &mut |chunk| {
            chunks.push(chunk.clone());
            Ok(())
        })?;
        span(stage::POST_PROCESSING, &self.device, || {
            Ok(Tensor::cat(&chunks, 2)?)
        })
    }

    /// The decode behind every public one: chunks of latent frames through every tile, each
    /// chunk's tiles joined and handed to `on_chunk` (`[B, 3, t, H, W]` f32, unclamped).
    fn decode_into(
        &self,
        latents: &Tensor,
        tiling: Option<HunyuanVaeTiling>,
        progress: &mut dyn FnMut(usize, usize),
        on_chunk: &mut dyn FnMut(&Tensor) -> Result<()>,
    ) -> Result<()> {
        let z_dim = self.config.latent_channels;
        let dims = latents.dims();
        if dims.len() != 5 || dims.contains(&0) {
            return Err(ModelError::InvalidInput(format!(
                "VAE latents must be [batch, {z_dim}, frames, height, width] with no empty axis, \
                 got {dims:?}"
            )));
        }
        if dims[1] != z_dim {
            return Err(ModelError::LatentChannels {
                shape: dims.to_vec(),
                got: dims[1],
                expected: z_dim,
                vae: "HunyuanVideo 1.5",
            });
        }
        let scale = self.config.spatial_scale();
        if let Some(t) = &tiling {
            t.validate(scale)?;
        }
        let z = latents.to_device(&self.device)?;
        let z = span(stage::PRE_PROCESSING, &self.device, || {
            let z = (z.to_dtype(DType::F32)? / self.config.scaling_factor)?;
            // frames-major for the decoder: [B, F, z, h, w]
            Ok(z.to_dtype(self.dtype)?
                .permute((0, 2, 1, 3, 4))?
                .contiguous()?)
        })?;
        let (_, frames, _, h, w) = z.dims5()?;
        let grid = TileGrid::new(tiling.as_ref(), h, w, scale);
        let chunk_spans: Vec<(usize, usize)> = (0..frames)
            .step_by(self.latent_frames_per_chunk)
            .map(|start| (start, self.latent_frames_per_chunk.min(frames - start)))
            .collect();
        let total = grid.len() * frames;
        // One tile at a time through every chunk, so that only one tile's cache is alive (all
        // tiles' caches together would take more memory than the untiled decode's). Untiled,
        // each chunk goes out as soon as it is decoded; tiled, each tile's chunks are kept
        // (f32, channels-first) until the last tile is done, then joined chunk by chunk.
        let mut decoded: Vec<VecDeque<Tensor>> = Vec::with_capacity(grid.len());
        let cells = grid
            .rows
            .iter()
            .flat_map(|row| grid.cols.iter().map(move |col| (*row, *col)));
        for (index, ((y0, th), (x0, tw))) in cells.enumerate() {
            let tile = z.narrow(3, y0, th)?.narrow(4, x0, tw)?;
            let mut state = self.decoder.new_state();
            let mut chunks = VecDeque::with_capacity(chunk_spans.len());
            for &(start, len) in &chunk_spans {
                let latents = tile.narrow(1, start, len)?.contiguous()?;
                let out = self.decoder.forward_chunk(&latents, &mut state)?; // [B, T, 3, th·s, tw·s]
                let out = span(stage::POST_PROCESSING, &self.device, || {
                    Ok(out
                        .permute((0, 2, 1, 3, 4))?
                        .to_dtype(DType::F32)?
                        .contiguous()?)
                })?; // [B, 3, T, th·s, tw·s]
                progress(index * frames + start + len, total);
                if grid.len() == 1 {
                    on_chunk(&out)?;
                } else {
                    chunks.push_back(out);
                }
            }
            decoded.push(chunks);
        }
        if grid.len() > 1 {
            for _ in &chunk_spans {
                let tiles = decoded
                    .iter_mut()
                    .map(|chunks| chunks.pop_front().expect("one chunk per span"))
                    .collect();
                let video = span(stage::TILE_BLEND, &self.device, || grid.join(tiles))?;
                on_chunk(&video)?;
            }
        }
        Ok(())
    }
}
