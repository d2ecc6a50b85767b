//! One clip from already loaded networks: what `vdit compare` and `vdit eval` run many times on
//! one load (sample, decode, time), and the untimed warm-up pass before timed runs.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rainfusion::DenseAttention;

use crate::decoder::VideoDecoder;
use crate::denoise::{guided_velocity, VelocityModel};
use crate::error::Result;
use crate::image_cond::ImageCondition;
use crate::settings::GenerateSettings;
use crate::stages::{sample_latents_with, TextConditioning};
use crate::step_cache::CacheStats;
use crate::video::{frames_from_tensor, VideoFrames};

/// One sampled and decoded clip, with what its run measured.
pub struct Clip {
    /// Final latents `[1, 16, F', H/8, W/8]` f32.
    pub latents: Tensor,
    pub frames: VideoFrames,
    /// Wall time of the sampling loop (all steps), seconds.
    pub denoise_s: f64,
    pub seconds_per_step: f64,
    pub effective_density: f64,
    /// Transformer passes asked for and skipped by the step cache.
    pub step_cache: CacheStats,
}

/// Samples `settings` on the loaded `transformers` (the family's, in order) and decodes the result
/// with the loaded `decoder` (`vdit compare` and `vdit eval` load both once for all their runs);
/// an image-to-video run is conditioned on `image` (encoded once for all runs).
pub fn generate_clip<M: VelocityModel>(
    transformers: &[M],
    decoder: &VideoDecoder,
    settings: &GenerateSettings,
    device: &Device,
    text: &TextConditioning,
    image: Option<&ImageCondition>,
) -> Result<Clip> {
    let start = Instant::now();
    let sampled = sample_latents_with(transformers, settings, device, text, image)
        .map_err(|e| e.with_dtype_hint(settings.dtype))?;
    let denoise_s = start.elapsed().as_secs_f64();
    let video = decoder.decode(&sampled.latents, settings.vae_tiling)?;
    Ok(Clip {
        latents: sampled.latents,
        frames: frames_from_tensor(&video)?,
        denoise_s,
        seconds_per_step: sampled.seconds_per_step,
        effective_density: sampled.effective_density,
        step_cache: sampled.step_cache,
    })
}

/// One untimed transformer pass at the runs' latent shape, so that the first timed run (dense)
/// does not pay one-off costs (allocator growth, thread-pool start, GPU kernel loading) and the
/// speedups are not inflated by them.
pub fn warm_up(
    transformer: &dyn VelocityModel,
    settings: &GenerateSettings,
    device: &Device,
    text: &TextConditioning,
    image: Option<&ImageCondition>,
) -> Result<()> {
    let channels = transformer
        .out_channels()
        .unwrap_or(settings.family.latent.channels);
    let (b, c, f, h, w) = settings.latent_shape(channels);
    let latents = Tensor::zeros((b, c, f, h, w), DType::F32, device)?;
    let input = match image {
        Some(image) => image.latent.model_input(&latents)?,
        None => latents,
    };
    let tokens = settings.family.latent.tokens(input.dims());
    let timesteps = match settings.family.timesteps {
        crate::family::TimestepForm::PerSample => Tensor::full(500f32, b, device)?,
        crate::family::TimestepForm::PerToken => Tensor::full(500f32, (b, tokens), device)?,
    };
    guided_velocity(
        transformer,
        &input,
        &|_| Ok(timesteps.clone()),
        &text.cond,
        None,
        image.and_then(|i| i.features.as_ref()),
        1.0,
        &mut DenseAttention,
        None,
    )?;
    Ok(())
}
