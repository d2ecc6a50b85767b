//! The image conditioning of the sampling loop, as tensors: what the transformer sees besides
//! the noisy latents, built once per run from the VAE-encoded image video and handed to the
//! denoiser. Which kind a run gets is its family's [`ImageConditioning`](crate::family::ImageConditioning);
//! the step loop only calls [`LatentCondition::model_input`], [`LatentCondition::token_timesteps`]
//! and [`LatentCondition::finish`].
//!
//! As diffusers' `WanImageToVideoPipeline` (`prepare_latents` and its loop) builds them:
//!
//! ```text
//! masked video channels (Wan2.1 I2V, FLF2V, Wan2.2 I2V-A14B)
//!   video [1, 3, F, H, W] = [image, 0, …, 0]            (FLF2V: [first, 0, …, 0, last])
//!   ──VAE encode, (mean − latents_mean) / latents_std──► y [1, 16, F', H', W']
//!   mask [1, 4, F', H', W']: latent frame 0 all ones (its 4 video frames are the image);
//!                            FLF2V also channel 3 of the last latent frame (the last video frame)
//!   model input = cat(latents [B, 16, …], mask, y) along channels = [B, 36, F', H', W']
//!
//! first frame latent (Wan2.2 TI2V-5B)
//!   image [1, 3, 1, H, W] ──VAE encode, normalise──► y [1, 48, 1, H', W']
//!   model input = latents with frame 0 replaced by y; the tokens of frame 0 get timestep 0
//!   ([B, L] per token); after the last step frame 0 is y again
//! ```
//!
//! diffusers composes the TI2V model input from its latents before every step and puts the
//! first frame back once after the loop; the solvers work element by element, so the frame the
//! solver carries underneath never reaches another position and the result is the same as
//! putting it back after every step.

use candle_core::{DType, Tensor};

use crate::error::{Result, VditError};

/// Channels of the frame mask: the VAE's temporal compression (4 video frames per latent frame).
pub const MASK_CHANNELS: usize = 4;

/// What the transformer sees besides the noisy latents.
#[derive(Debug, Clone)]
pub enum LatentCondition {
    /// `[1, 4 + z, F', H', W']` f32 (frame mask, then the encoded video), appended to the
    /// latents along channels.
    Channels(Tensor),
    /// The first latent frame, held at t = 0.
    FirstFrame {
        /// `[1, z, 1, H', W']` f32.
        latent: Tensor,
        /// `[1, L]` f32: 0 for the tokens of the first latent frame, 1 for the rest; a token's
        /// timestep is the step's times this.
        token_scale: Tensor,
    },
}

impl LatentCondition {
    /// The masked-video condition from the normalised encoding `video_latent` `[1, z, F', H', W']`
    /// of [image, zeros…] (or [first, zeros…, last] when `last_frame`).
    pub fn masked_video(video_latent: &Tensor, last_frame: bool) -> Result<Self> {
        let (_, _, frames, h, w) = video_latent.dims5()?;
        let device = video_latent.device();
        // Per latent frame, which of its 4 video frames are given: frame 0's all four (the image
        // is repeated over the first latent frame's slots), the last frame's last slot.
        let mut mask = vec![0f32; MASK_CHANNELS * frames];
        for channel in 0..MASK_CHANNELS {
            mask[channel * frames] = 1.0;
        }
        if last_frame {
            if frames < 2 {
                return Err(VditError::InvalidSetting(
                    "a first and a last frame need at least 5 video frames (2 latent frames)"
                        .into(),
                ));
            }
            mask[(MASK_CHANNELS - 1) * frames + frames - 1] = 1.0;
        }
        let mask = Tensor::from_vec(mask, (1, MASK_CHANNELS, frames, 1, 1), device)?
            .broadcast_as((1, MASK_CHANNELS, frames, h, w))?
            .contiguous()?;
        Ok(Self::Channels(Tensor::cat(
            &[mask, video_latent.to_dtype(DType::F32)?],
            1,
        )?))
    }

    /// The first-frame condition from the normalised encoding `image_latent` `[1, z, 1, H', W']`
    /// of the image, for a video of `latent_frames` latent frames and transformer `patch`
    /// (frames, height, width).
    pub fn first_frame(
        image_latent: &Tensor,
        latent_frames: usize,
        patch: (usize, usize, usize),
    ) -> Result<Self> {
        let (_, _, one, h, w) = image_latent.dims5()?;
        let (pf, ph, pw) = patch;
        if one != 1 || pf != 1 {
            return Err(VditError::Sampling(format!(
                "first-frame conditioning takes one latent frame and a patch of one frame (got {one} frames, patch {patch:?})"
            )));
        }
        let per_frame = (h / ph) * (w / pw);
        let tokens = latent_frames * per_frame;
        let scale: Vec<f32> = (0..tokens)
            .map(|i| if i < per_frame { 0.0 } else { 1.0 })
            .collect();
        Ok(Self::FirstFrame {
            latent: image_latent.to_dtype(DType::F32)?,
            token_scale: Tensor::from_vec(scale, (1, tokens), image_latent.device())?,
        })
    }

    /// The transformer's input for `latents` `[B, C, F', H', W']` f32: `[B, C + 4 + z, …]` with
    /// the masked video, the same shape with frame 0 replaced for the first-frame condition.
    pub fn model_input(&self, latents: &Tensor) -> Result<Tensor> {
        let batch = latents.dim(0)?;
        match self {
            Self::Channels(condition) => {
                let (_, c, f, h, w) = condition.dims5()?;
                let condition = condition.broadcast_as((batch, c, f, h, w))?;
                Ok(Tensor::cat(&[latents, &condition], 1)?)
            }
            Self::FirstFrame { latent, .. } => {
                let frames = latents.dim(2)?;
                let (_, c, _, h, w) = latent.dims5()?;
                let first = latent.broadcast_as((batch, c, 1, h, w))?;
                if frames == 1 {
                    return Ok(first.contiguous()?);
                }
                Ok(Tensor::cat(
                    &[&first, &latents.narrow(2, 1, frames - 1)?],
                    2,
                )?)
            }
        }
    }

    /// Per-token timesteps `[batch, L]` at step timestep `t`, when the condition holds some
    /// tokens at 0; `None` when every token shares the step's timestep.
    pub fn token_timesteps(&self, t: f32, batch: usize) -> Result<Option<Tensor>> {
        match self {
            Self::Channels(_) => Ok(None),
            Self::FirstFrame { token_scale, .. } => {
                let tokens = token_scale.dim(1)?;
                Ok(Some(
                    (token_scale * t as f64)?
                        .broadcast_as((batch, tokens))?
                        .contiguous()?,
                ))
            }
        }
    }

    /// The final latents: with the first-frame condition, frame 0 is the image's latent.
    pub fn finish(&self, latents: &Tensor) -> Result<Tensor> {
        match self {
            Self::Channels(_) => Ok(latents.clone()),
            Self::FirstFrame { .. } => self.model_input(latents),
        }
    }
}

/// A run's image conditioning: the latent condition, and the image features passed to every
/// step's image cross-attention (cond and uncond passes alike, as diffusers does).
#[derive(Debug, Clone)]
pub struct ImageCondition {
    pub latent: LatentCondition,
    /// `[1, Li, Di]` f32: CLIP's penultimate hidden states, the first image's tokens then (FLF2V)
    /// the last's (Li = 257 or 514, Di = 1280); `None` for families without image cross-attention.
    pub features: Option<Tensor>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// diffusers' mask for F video frames, built its way: a [F] frame mask with the first frame
    /// repeated 4 times, cut in groups of 4 (latent frames) → [4, F'] (channel-major).
    fn diffusers_mask(video_frames: usize, last: bool) -> Vec<f32> {
        let mut frames = vec![0f32; video_frames];
        frames[0] = 1.0;
        if last {
            frames[video_frames - 1] = 1.0;
        }
        let mut padded = vec![frames[0]; 3];
        padded.extend(frames);
        let latent_frames = padded.len() / 4;
        let mut out = vec![0f32; 4 * latent_frames];
        for (j, v) in padded.iter().enumerate() {
            out[(j % 4) * latent_frames + j / 4] = *v;
        }
        out
    }

    #[test]
    fn masks_match_diffusers_construction() -> Result<()> {
        for (video_frames, last) in [(9, false), (9, true), (17, true), (1, false)] {
            let latent_frames = (video_frames - 1) / 4 + 1;
            let y = Tensor::zeros((1, 2, latent_frames, 1, 1), DType::F32, &Device::Cpu)?;
            let LatentCondition::Channels(c) = LatentCondition::masked_video(&y, last)? else {
                panic!("channels")
            };
            let mask = c.narrow(1, 0, 4)?;
            assert_eq!(
                values(&mask),
                diffusers_mask(video_frames, last),
                "{video_frames} {last}"
            );
        }
        Ok(())
    }

    #[test]
    fn channels_follow_the_latents_and_first_frame_replaces_frame_zero() -> Result<()> {
        let dev = Device::Cpu;
        let latents = Tensor::arange(0f32, 2. * 3. * 2. * 2., &dev)?.reshape((1, 2, 3, 2, 2))?;
        let y = Tensor::full(-7f32, (1, 2, 3, 2, 2), &dev)?;
        let cond = LatentCondition::masked_video(&y, false)?;
        let input = cond.model_input(&Tensor::cat(&[&latents, &latents], 0)?)?;
        assert_eq!(input.dims(), &[2, 2 + 4 + 2, 3, 2, 2]);
        assert_eq!(
            values(&input.narrow(1, 0, 2)?.narrow(0, 1, 1)?),
            values(&latents)
        );
        assert!(values(&input.narrow(1, 6, 2)?).iter().all(|&v| v == -7.0));
        assert!(cond.token_timesteps(500.0, 2)?.is_none());

        let image = Tensor::full(9f32, (1, 2, 1, 2, 2), &dev)?;
        let cond = LatentCondition::first_frame(&image, 3, (1, 2, 2))?;
        let input = cond.model_input(&latents)?;
        assert_eq!(input.dims(), latents.dims());
        assert!(values(&input.narrow(2, 0, 1)?).iter().all(|&v| v == 9.0));
        assert_eq!(
            values(&input.narrow(2, 1, 2)?),
            values(&latents.narrow(2, 1, 2)?)
        );
        // One token per frame (2×2 latent, 2×2 patch): frame 0's at 0.
        let t = cond.token_timesteps(750.0, 2)?.unwrap();
        assert_eq!(t.dims(), &[2, 3]);
        assert_eq!(values(&t), vec![0.0, 750.0, 750.0, 0.0, 750.0, 750.0]);
        assert_eq!(values(&cond.finish(&latents)?), values(&input));
        Ok(())
    }
}
