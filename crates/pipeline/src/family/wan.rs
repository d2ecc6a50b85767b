//! The Wan families. All share umT5-XXL and the Wan DiT architecture:
//! - Wan2.1 text-to-video: one transformer for every step, the Wan2.1 VAE (16 channels, 4× in
//!   time, 8× in space), one timestep per sample, and generate.py's defaults.
//! - Wan2.2 T2V-A14B: two Wan2.1-14B-shaped experts, the high-noise one while t ≥ 875 and the
//!   low-noise one below, each with its own guidance scale; the Wan2.1 VAE.
//! - Wan2.2 TI2V-5B: one 48-channel transformer taking a timestep per latent token, the Wan2.2
//!   VAE (48 channels, 16× in space).

use super::{
    ExpertRule, FamilyDefaults, FamilyFlag, GuidanceSource, LatentSpace, ModelFamily,
    TextEncoderKind, TextEncoderSpec, TimestepForm, TimestepRange, TransformerKind, VaeKind,
};
use crate::sampling::SamplerKind;

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
};

/// Wan2.2 TI2V-5B, text to video: one 48-channel transformer with a timestep per latent token
/// (diffusers' `expand_timesteps`), the Wan2.2 VAE (4× in time, 16× in space). Defaults of
/// Wan2.2's `wan_ti2v_5B.py`: 1280×704, 121 frames at 24 fps, 50 steps, shift 5, guidance 5.
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
};
