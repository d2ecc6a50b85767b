//! The Wan families. All share umT5-XXL and the Wan DiT architecture:
//! - Wan2.1 text-to-video: one transformer for every step, the Wan2.1 VAE (16 channels, 4× in
//!   time, 8× in space), one timestep per sample, and generate.py's defaults.
//! - Wan2.2 T2V-A14B: two Wan2.1-14B-shaped experts, the high-noise one while t ≥ 875 and the
//!   low-noise one below, each with its own guidance scale; the Wan2.1 VAE.
//! - Wan2.2 TI2V-5B: one 48-channel transformer taking a timestep per latent token, the Wan2.2
//!   VAE (48 channels, 16× in space); an optional image becomes the first latent frame.
//! - Wan2.1 I2V-14B and FLF2V-14B: Wan2.1's transformer with 36 input channels (noise, frame
//!   mask, encoded image video) and image cross-attention on CLIP ViT-H/14 features of the first
//!   (and last) frame.
//! - Wan2.2 I2V-A14B: two experts as T2V-A14B, each taking the 36 channels, without CLIP.

use super::{
    ExpertRule, FamilyDefaults, FamilyFlag, GuidanceSource, ImageConditioning, ImageEncoderKind,
    ImageEncoderSpec, ImageFit, ImageInput, LatentSpace, ModelFamily, TextEncoderKind,
    TextEncoderSpec, TimestepForm, TimestepRange, TransformerKind, VaeKind,
};
use crate::sampling::{SamplerKind, SigmaGrid};

/// Wan2.1's official default negative prompt (its `sample_neg_prompt`), used when neither the
/// user nor the model's registry entry gives one.
pub const WAN_NEGATIVE_PROMPT: &str = "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走";

/// Wan2.1 T2V defaults (generate.py), for settings neither the flags nor the registry give.
pub mod wan_defaults {
    pub const WIDTH: u32 = 832;
    pub const HEIGHT: u32 = 480;
    pub const FRAMES: u32 = 81;
    pub const STEPS: usize = 50;
    pub const GUIDANCE_SCALE: f64 = 5.0;
    pub const SHIFT: f64 = 5.0;
    pub const FPS: u32 = 16;
}

/// umT5-XXL with prompts padded to 512 tokens, as every Wan model uses.
pub const UMT5_TEXT_ENCODER: TextEncoderSpec = TextEncoderSpec {
    kind: TextEncoderKind::Umt5,
    component: "text_encoder",
    tokenizer: "tokenizer/tokenizer.json",
    text_len: 512,
};

/// Wan2.1 text-to-video (1.3B, 14B, and vdit-tiny, which shares the architecture).
pub const WAN21_T2V: ModelFamily = ModelFamily {
    name: "wan2.1-t2v",
    text_encoder: UMT5_TEXT_ENCODER,
    experts: &[ExpertRule {
        component: "transformer",
        kind: TransformerKind::Wan,
        original_component: None,
        guidance: GuidanceSource::First,
        timesteps: TimestepRange::ALL,
    }],
    boundary_ratio: None,
    vae: VaeKind::Wan21,
    vae_component: "vae",
    latent: LatentSpace {
        channels: 16,
        temporal_compression: 4,
        spatial_compression: 8,
        patch: (1, 2, 2),
    },
    timesteps: TimestepForm::PerSample,
    sigma_grid: SigmaGrid::TrainingTable,
    defaults: FamilyDefaults {
        width: wan_defaults::WIDTH,
        height: wan_defaults::HEIGHT,
        frames: wan_defaults::FRAMES,
        steps: wan_defaults::STEPS,
        guidance_scale: wan_defaults::GUIDANCE_SCALE,
        guidance_scale_2: None,
        shift: wan_defaults::SHIFT,
        fps: wan_defaults::FPS,
        sampler: SamplerKind::Unipc,
        negative_prompt: WAN_NEGATIVE_PROMPT,
    },
    flags: &[],
    image: None,
};

/// Wan2.2's boundary for text-to-video (its `wan_t2v_A14B.py`): the high-noise expert runs while
/// t ≥ 0.875 · 1000.
pub const WAN22_T2V_BOUNDARY: f64 = 0.875;

/// Wan2.2 T2V-A14B: the high-noise expert (`transformer`, original `high_noise_model`) guided
/// by `--guidance-scale`, then the low-noise expert (`transformer_2`, `low_noise_model`) guided
/// by `--guidance-scale-2`. Defaults of Wan2.2's `wan_t2v_A14B.py` (shift 12, 40 steps, guidance
/// 4.0 high / 3.0 low, 1280×720, 81 frames at 16 fps), which diffusers' Wan2.2 example also uses.
pub const WAN22_T2V_A14B: ModelFamily = ModelFamily {
    name: "wan2.2-t2v-a14b",
    text_encoder: UMT5_TEXT_ENCODER,
    experts: &[
        ExpertRule {
            component: "transformer",
            original_component: Some("high_noise_model"),
            kind: TransformerKind::Wan,
            guidance: GuidanceSource::First,
            timesteps: TimestepRange {
                from: (WAN22_T2V_BOUNDARY * 1000.0) as f32,
                below: f32::INFINITY,
            },
        },
        ExpertRule {
            component: "transformer_2",
            original_component: Some("low_noise_model"),
            kind: TransformerKind::Wan,
            guidance: GuidanceSource::Second,
            timesteps: TimestepRange {
                from: f32::NEG_INFINITY,
                below: (WAN22_T2V_BOUNDARY * 1000.0) as f32,
            },
        },
    ],
    boundary_ratio: Some(WAN22_T2V_BOUNDARY),
    vae: VaeKind::Wan21,
    vae_component: "vae",
    latent: WAN21_T2V.latent,
    timesteps: TimestepForm::PerSample,
    sigma_grid: SigmaGrid::TrainingTable,
    defaults: FamilyDefaults {
        width: 1280,
        height: 720,
        frames: 81,
        steps: 40,
        guidance_scale: 4.0,
        guidance_scale_2: Some(3.0),
        shift: 12.0,
        fps: 16,
        sampler: SamplerKind::Unipc,
        negative_prompt: WAN_NEGATIVE_PROMPT,
    },
    flags: &[FamilyFlag::GuidanceScale2, FamilyFlag::KeepExpertsLoaded],
    image: None,
};

/// Wan2.2 TI2V-5B, text (and optionally image) to video: one 48-channel transformer with a
/// timestep per latent token (diffusers' `expand_timesteps`), the Wan2.2 VAE (4× in time, 16× in
/// space). Defaults of Wan2.2's `wan_ti2v_5B.py`: 1280×704, 121 frames at 24 fps, 50 steps,
/// shift 5, guidance 5. With `--image` the image's latent is the first latent frame, held at
/// t = 0; an image of another aspect ratio is resized to cover the video and centre-cropped, as
/// Wan2.2's `textimage2video.py` does.
pub const WAN22_TI2V_5B: ModelFamily = ModelFamily {
    name: "wan2.2-ti2v-5b",
    text_encoder: UMT5_TEXT_ENCODER,
    experts: WAN21_T2V.experts,
    boundary_ratio: None,
    vae: VaeKind::Wan22,
    vae_component: "vae",
    latent: LatentSpace {
        channels: 48,
        temporal_compression: 4,
        spatial_compression: 16,
        patch: (1, 2, 2),
    },
    timesteps: TimestepForm::PerToken,
    sigma_grid: SigmaGrid::TrainingTable,
    defaults: FamilyDefaults {
        width: 1280,
        height: 704,
        frames: 121,
        steps: 50,
        guidance_scale: 5.0,
        guidance_scale_2: None,
        shift: 5.0,
        fps: 24,
        sampler: SamplerKind::Unipc,
        negative_prompt: WAN_NEGATIVE_PROMPT,
    },
    flags: &[],
    image: Some(ImageInput {
        conditioning: ImageConditioning::FirstFrameLatent,
        required: false,
        last_image: false,
        encoder: None,
        fit: ImageFit::CoverAndCrop,
    }),
};

/// CLIP ViT-H/14's vision tower as the diffusers I2V pipelines keep it.
pub const CLIP_IMAGE_ENCODER: ImageEncoderSpec = ImageEncoderSpec {
    kind: ImageEncoderKind::ClipVisionH14,
    component: "image_encoder",
};

/// Wan2.1 I2V-14B (480P and 720P checkpoints): one transformer taking noise, the frame mask and
/// the encoded [image, zeros…] video (36 channels), with CLIP features of the image in every
/// block's cross-attention. Defaults of Wan2.1's generate.py for i2v-14B at 480p (832×480, 81
/// frames, 40 steps, guidance 5, shift 3 — 5 at 720p, which its registry entry sets); without
/// `--size` the video takes the image's aspect ratio at 832·480 pixels.
pub const WAN21_I2V: ModelFamily = ModelFamily {
    name: "wan2.1-i2v",
    text_encoder: UMT5_TEXT_ENCODER,
    experts: WAN21_T2V.experts,
    boundary_ratio: None,
    vae: VaeKind::Wan21,
    vae_component: "vae",
    latent: WAN21_T2V.latent,
    timesteps: TimestepForm::PerSample,
    sigma_grid: SigmaGrid::TrainingTable,
    defaults: FamilyDefaults {
        width: 832,
        height: 480,
        frames: 81,
        steps: 40,
        guidance_scale: 5.0,
        guidance_scale_2: None,
        shift: 3.0,
        fps: 16,
        sampler: SamplerKind::Unipc,
        negative_prompt: WAN_NEGATIVE_PROMPT,
    },
    flags: &[],
    image: Some(ImageInput {
        conditioning: ImageConditioning::MaskedVideoChannels,
        required: true,
        last_image: false,
        encoder: Some(CLIP_IMAGE_ENCODER),
        fit: ImageFit::Stretch,
    }),
};

/// Wan2.1 FLF2V-14B-720P: Wan2.1 I2V with a first and a last frame ([first, zeros…, last]
/// encoded, both frames marked in the mask, both images' CLIP features side by side). Defaults of
/// Wan2.1's generate.py for flf2v-14B: 1280×720, 81 frames, 50 steps, guidance 5, shift 16.
pub const WAN21_FLF2V: ModelFamily = ModelFamily {
    name: "wan2.1-flf2v",
    defaults: FamilyDefaults {
        width: 1280,
        height: 720,
        steps: 50,
        shift: 16.0,
        ..WAN21_I2V.defaults
    },
    image: Some(ImageInput {
        conditioning: ImageConditioning::MaskedVideoChannels,
        required: true,
        last_image: true,
        encoder: Some(CLIP_IMAGE_ENCODER),
        fit: ImageFit::Stretch,
    }),
    ..WAN21_I2V
};

/// Wan2.2's boundary for image-to-video (its `wan_i2v_A14B.py`): the high-noise expert runs while
/// t ≥ 0.9 · 1000.
pub const WAN22_I2V_BOUNDARY: f64 = 0.9;

/// Wan2.2 I2V-A14B: two experts as T2V-A14B, split at 0.9, each taking noise, the frame mask and
/// the encoded [image, zeros…] video (36 channels); no CLIP. Defaults of Wan2.2's
/// `wan_i2v_A14B.py`: 1280×720, 81 frames at 16 fps, 40 steps, guidance 3.5 for both experts,
/// shift 5.
pub const WAN22_I2V_A14B: ModelFamily = ModelFamily {
    name: "wan2.2-i2v-a14b",
    experts: &[
        ExpertRule {
            timesteps: TimestepRange {
                from: (WAN22_I2V_BOUNDARY * 1000.0) as f32,
                below: f32::INFINITY,
            },
            ..WAN22_T2V_A14B.experts[0]
        },
        ExpertRule {
            timesteps: TimestepRange {
                from: f32::NEG_INFINITY,
                below: (WAN22_I2V_BOUNDARY * 1000.0) as f32,
            },
            ..WAN22_T2V_A14B.experts[1]
        },
    ],
    boundary_ratio: Some(WAN22_I2V_BOUNDARY),
    defaults: FamilyDefaults {
        width: 1280,
        height: 720,
        frames: 81,
        steps: 40,
        guidance_scale: 3.5,
        guidance_scale_2: Some(3.5),
        shift: 5.0,
        fps: 16,
        sampler: SamplerKind::Unipc,
        negative_prompt: WAN_NEGATIVE_PROMPT,
    },
    image: Some(ImageInput {
        conditioning: ImageConditioning::MaskedVideoChannels,
        required: true,
        last_image: false,
        encoder: None,
        fit: ImageFit::Stretch,
    }),
    ..WAN22_T2V_A14B
};
