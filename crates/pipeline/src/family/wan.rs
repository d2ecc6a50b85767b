//! Wan2.1 text-to-video: umT5-XXL, one Wan DiT for every step, the Wan2.1 VAE (16 channels,
//! 4× in time, 8× in space), one timestep per sample, and generate.py's defaults.

use super::{
    ExpertRule, FamilyDefaults, GuidanceSource, LatentSpace, ModelFamily, TextEncoderKind,
    TextEncoderSpec, TimestepForm, TimestepRange, TransformerKind, VaeKind,
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
        guidance: GuidanceSource::First,
        timesteps: TimestepRange::ALL,
    }],
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
        shift: wan_defaults::SHIFT,
        fps: wan_defaults::FPS,
        sampler: SamplerKind::Unipc,
        negative_prompt: WAN_NEGATIVE_PROMPT,
    },
    flags: &[],
};
