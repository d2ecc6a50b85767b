//! TAEHV (madebyollin/taehv): a tiny decoder from Wan latents to video, for previews. taew2_1
//! decodes the 16-channel latents of Wan2.1 (and Wan2.2 A14B), taew2_2 the 48-channel latents of
//! Wan2.2 TI2V; both are a few MB against the full VAE's hundreds, and several times faster.
//!
//! The decoder is a stack of 2D convs applied to every frame, with three kinds of layers that
//! matter: MemBlocks (each frame sees the frame before), nearest ×2 spatial upsampling, and
//! temporal "grow" layers (one frame becomes two). It takes the latents exactly as the diffusion
//! model samples them (TAEHV has no latent mean/std), so [`TaehvDecoder`] takes the same input
//! as [`crate::wan::vae::WanVaeDecoder`] and returns the same output:
//! `[B, z, F, h, w]` normalised latents → `[B, 3, 1 + 4(F − 1), s·h, s·w]` f32 in [−1, 1].
//!
//! The decode runs through time in chunks of latent frames; each MemBlock carries its last input
//! frame from one chunk into the next, so the result equals a decode of the whole clip at once
//! (TAEHV's "parallel" mode) while memory stays that of one chunk.

mod blocks;
pub mod config;

use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, VarBuilder};

pub use config::TaehvConfig;

use crate::error::{ModelError, Result};
use crate::weights::{KeyMap, RandomWeights, WeightFiles};
use blocks::{conv3x3, conv3x3_no_bias, MemBlock, TimeGrow};
use config::index;

/// Output pixels (frames × height × width, before trimming) decoded together by
/// [`TaehvDecoder::decode`]: eight 832×480 frames. The last group runs 3×3 convs of 128 → 64
/// channels at full resolution, and candle's convs (without cuDNN) unfold their input 9×: at this
/// budget that buffer is about 7 GB in bf16, while the convs stay large enough to keep a GPU busy.
/// Small videos decode in one chunk.
pub const CHUNK_PIXEL_BUDGET: usize = 8 * 832 * 480;

/// One width's group: three MemBlocks, ×2 nearest in space, the temporal grow, the conv to the
/// next width.
struct Stage {
    mem_blocks: [MemBlock; 3],
    time_grow: TimeGrow,
    conv_next: Conv2d,
}

/// The TAEHV decoder of taew2_1 / taew2_2 (and any file of the same layout).
pub struct TaehvDecoder {
    conv_in: Conv2d,
    stages: [Stage; 3],
    conv_out: Conv2d,
    config: TaehvConfig,
    dtype: DType,
    device: Device,
}

impl TaehvDecoder {
    /// Builds the decoder from a TAEHV safetensors file, its shape read from the file
    /// ([`TaehvConfig::from_weights`]). Only `decoder.*` tensors are read; the encoder's, if
    /// present, are not.
    pub fn load(files: &Arc<WeightFiles>, dtype: DType, device: &Device) -> Result<Self> {
        let config = TaehvConfig::from_weights(files)?;
        let vb = files.var_builder(KeyMap::identity(), dtype, device);
        Self::build(vb, &config, |key| files.shape(key), dtype, device)
    }

    /// Checks from the headers alone that [`Self::load`] would find every tensor with its
    /// shape, and returns the file's shape (the pipeline checks its latent channels against the
    /// model's before sampling).
    pub fn check(files: &Arc<WeightFiles>) -> Result<TaehvConfig> {
        let config = TaehvConfig::from_weights(files)?;
        let vb = files.checking_var_builder(KeyMap::identity());
        Self::build(
            vb,
            &config,
            |key| files.shape(key),
            DType::F32,
            &Device::Cpu,
        )?;
        Ok(config)
    }

    /// A decoder of `config`'s shape with random weights drawn on `device`: for benchmarks at
    /// the real size without the file.
    pub fn random(config: &TaehvConfig, dtype: DType, device: &Device) -> Result<Self> {
        let vb = RandomWeights::var_builder(dtype, device);
        Self::build(vb, config, |_| None, dtype, device)
    }

    /// `stored_shape(key)` gives a file's shape for a key, to read the temporal grow layers'
    /// stored rows (None: exactly what `config` asks for).
    fn build(
        vb: VarBuilder,
        config: &TaehvConfig,
        stored_shape: impl Fn(&str) -> Option<Vec<usize>>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if config.patch_size == 0 || config.widths.contains(&0) || config.latent_channels == 0 {
            return Err(ModelError::Config {
                path: "TaehvConfig".into(),
                reason: format!("zero-sized layer in {config:?}"),
            });
        }
        let vb = vb.pp("decoder");
        let at = |position: usize| vb.pp(position.to_string());
        let widths = config.widths;
        let stage = |group: usize| -> Result<Stage> {
            let width = widths[group];
            let [a, b, c] = index::MEM_BLOCKS[group];
            let grow = index::TIME_GROW[group];
            let stored_rows =
                stored_shape(&format!("decoder.{grow}.conv.weight")).map(|shape| shape[0]);
            Ok(Stage {
                mem_blocks: [
                    MemBlock::new(at(a), width)?,
                    MemBlock::new(at(b), width)?,
                    MemBlock::new(at(c), width)?,
                ],
                time_grow: TimeGrow::new(
                    at(grow),
                    width,
                    if config.time_upscale[group] { 2 } else { 1 },
                    stored_rows,
                )?,
                conv_next: conv3x3_no_bias(at(index::CONV_NEXT[group]), width, widths[group + 1])?,
            })
        };
        Ok(Self {
            conv_in: conv3x3(at(index::CONV_IN), config.latent_channels, widths[0])?,
            stages: [stage(0)?, stage(1)?, stage(2)?],
            conv_out: conv3x3(
                at(index::CONV_OUT),
                widths[3],
                3 * config.patch_size * config.patch_size,
            )?,
            config: config.clone(),
            dtype,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &TaehvConfig {
        &self.config
    }

    /// Latent channels this decoder takes (16 for taew2_1, 48 for taew2_2).
    pub fn latent_channels(&self) -> usize {
        self.config.latent_channels
    }

    /// Video pixels per latent pixel along height and width (8 for taew2_1, 16 for taew2_2).
    pub fn spatial_compression(&self) -> usize {
        self.config.spatial_upscale()
    }

    /// Video frames per latent frame after the first (4).
    pub fn temporal_compression(&self) -> usize {
        self.config.temporal_upscale()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Latent frames per chunk for latents of `h × w`: as many as fit [`CHUNK_PIXEL_BUDGET`]
    /// output pixels, at least one.
    pub fn chunk_latent_frames(&self, h: usize, w: usize) -> usize {
        let s = self.config.spatial_upscale();
        let pixels_per_latent_frame = self.config.temporal_upscale() * (s * h) * (s * w);
        (CHUNK_PIXEL_BUDGET / pixels_per_latent_frame.max(1)).max(1)
    }

    /// Normalised latents `[B, z, F, h, w]` (as sampled; the same input as the full VAE
    /// decoder) → video `[B, 3, 1 + 4(F − 1), s·h, s·w]` f32 in [−1, 1], decoded
    /// [`chunk_latent_frames`](Self::chunk_latent_frames) latent frames at a time.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let (_, _, _, h, w) = latents.dims5()?;
        let mut chunks = Vec::new();
        self.decode_with_chunks(latents, self.chunk_latent_frames(h, w), &mut |chunk| {
            chunks.push(chunk.clone());
            Ok(())
        })?;
        Ok(Tensor::cat(&chunks, 2)?)
    }

    /// [`decode`](Self::decode), handing each chunk of video `[B, 3, t, s·h, s·w]` f32 in
    /// [−1, 1] to `on_chunk` in frame order as soon as it exists, `chunk_latent_frames` latent
    /// frames per chunk (≥ 1). The result does not depend on the chunk size. An error from
    /// `on_chunk` stops the decode and is returned.
    pub fn decode_with_chunks(
        &self,
        latents: &Tensor,
        chunk_latent_frames: usize,
        on_chunk: &mut dyn FnMut(&Tensor) -> Result<()>,
    ) -> Result<()> {
        let (_, channels, frames, _, _) = latents.dims5()?;
        if channels != self.config.latent_channels {
            return Err(ModelError::LatentChannels {
                shape: latents.dims().to_vec(),
                got: channels,
                expected: self.config.latent_channels,
                vae: "TAEHV",
            });
        }
        let chunk = chunk_latent_frames.max(1);
        // Each MemBlock's last input frame, carried from one chunk into the next.
        let mut carried: Vec<Option<Tensor>> = vec![None; 9];
        let mut to_trim = self.config.temporal_upscale() - 1;
        let mut start = 0;
        while start < frames {
            let len = chunk.min(frames - start);
            let part = latents
                .narrow(2, start, len)?
                .to_device(&self.device)?
                .to_dtype(self.dtype)?;
            let mut video = self.decode_frames(&part, &mut carried)?; // [B, 3, t, H, W]
            if to_trim > 0 {
                let t = video.dim(2)?;
                let cut = to_trim.min(t);
                video = video.narrow(2, cut, t - cut)?;
                to_trim -= cut;
            }
            if video.dim(2)? > 0 {
                on_chunk(&video)?;
            }
            start += len;
        }
        Ok(())
    }

    /// One chunk `[B, z, F, h, w]` (the decoder's dtype and device) → `[B, 3, 4F, s·h, s·w]` f32
    /// in [−1, 1], untrimmed.
    fn decode_frames(&self, latents: &Tensor, carried: &mut [Option<Tensor>]) -> Result<Tensor> {
        let (batch, channels, frames, h, w) = latents.dims5()?;
        // [B, z, F, h, w] → [B·F, z, h, w]: every frame an image of the 2D convs.
        let x = latents.permute((0, 2, 1, 3, 4))?.contiguous()?.reshape((
            batch * frames,
            channels,
            h,
            w,
        ))?;
        // TAEHV's input clamp: a soft limit to ±3.
        let x = ((x / 3.0)?.tanh()? * 3.0)?;
        let mut x = self.conv_in.forward(&x)?.relu()?;
        let mut slots = carried.iter_mut();
        for stage in &self.stages {
            for block in &stage.mem_blocks {
                let slot = slots.next().expect("nine MemBlock slots");
                let (y, last) = block.forward(&x, batch, slot.as_ref())?;
                *slot = Some(last);
                x = y;
            }
            let (_, _, h, w) = x.dims4()?;
            x = x.upsample_nearest2d(2 * h, 2 * w)?;
            x = stage.time_grow.forward(&x)?;
            x = stage.conv_next.forward(&x)?;
        }
        let x = self.conv_out.forward(&x.relu()?)?;
        let x = match self.config.patch_size {
            1 => x,
            p => candle_nn::ops::pixel_shuffle(&x, p)?,
        };
        // TAEHV's [0, 1] → the full decoder's [−1, 1].
        let x = x
            .to_dtype(DType::F32)?
            .clamp(0f32, 1f32)?
            .affine(2.0, -1.0)?;
        let (bt, c, oh, ow) = x.dims4()?;
        Ok(x.reshape((batch, bt / batch, c, oh, ow))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?)
    }
}
