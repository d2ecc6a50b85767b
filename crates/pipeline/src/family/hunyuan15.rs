//! HunyuanVideo 1.5 text-to-video (Tencent, arXiv 2511.18870), as diffusers 0.42.1's
//! `HunyuanVideo15Pipeline` runs it:
//! - text: Qwen2.5-VL-7B's language model on the prompt in a chat template (`text_encoder/`,
//!   `tokenizer/`) and ByT5 on the prompt's quoted text (`text_encoder_2/`, `tokenizer_2/`), two
//!   masked streams ([`crate::hunyuan15`] encodes them);
//! - one 8.3B transformer (`transformer/`), taking the noisy latents, 32 condition channels and
//!   a mask channel (all zero for text-to-video), one timestep per sample;
//! - the HunyuanVideo 1.5 VAE (`vae/`): 32 channels, 4× in time, 16× in space; patch 1×1×1;
//! - Euler on diffusers' flow-matching scheduler, the sigmas 1 − k/N (before the shift) that the
//!   pipeline passes, classifier-free guidance with the negative prompt "".

use super::{
    ExpertRule, FamilyDefaults, GuidanceSource, LatentSpace, ModelFamily, TextEncoderKind,
    TextEncoderSpec, TimestepForm, TimestepRange, TransformerKind, VaeKind,
};
use crate::sampling::{SamplerKind, SigmaGrid};

/// The two text encoders; `text_len` is the pipeline's `tokenizer_max_length` (Qwen tokens kept
/// after the template's prefix is cropped). The glyph stream's folders are
/// [`GLYPH_ENCODER_COMPONENT`] and [`GLYPH_TOKENIZER_COMPONENT`].
pub const QWEN_BYT5_TEXT_ENCODERS: TextEncoderSpec = TextEncoderSpec {
    kind: TextEncoderKind::QwenByT5,
    component: "text_encoder",
    tokenizer: "tokenizer/tokenizer.json",
    text_len: 1000,
};

/// The ByT5 glyph encoder's folder in the diffusers layout.
pub const GLYPH_ENCODER_COMPONENT: &str = "text_encoder_2";
/// The ByT5 tokenizer's folder (its `tokenizer_config.json` or `added_tokens.json` lists the
/// colour and font tokens Glyph-ByT5 adds).
pub const GLYPH_TOKENIZER_COMPONENT: &str = "tokenizer_2";

/// HunyuanVideo 1.5 text-to-video at 480p (the 720p checkpoint's registry entry changes the size
/// and the shift). Where each default comes from:
/// - 848×480: `HunyuanVideo15Pipeline.__call__` without a size takes
///   `calculate_default_height_width(9, 16, target_size)` (16:9 at the transformer's
///   `target_size`, 640 for 480p: 848×480; 960 for 720p: 1280×720);
/// - 121 frames and 50 steps: the defaults of `__call__` (`num_frames`, `num_inference_steps`);
/// - guidance 6.0: the published `guider/` config (`ClassifierFreeGuidance(guidance_scale=6.0)`
///   in diffusers' `convert_hunyuan_video1_5_to_diffusers.py` for every non-distilled model);
/// - shift 5.0: the published `scheduler/` config (`FlowMatchEulerDiscreteScheduler(shift=5.0)`
///   for 480p; 9.0 for 720p text-to-video);
/// - Euler on σ = 1 − k/N: the pipeline's `sigmas = np.linspace(1.0, 0.0, N + 1)[:-1]`, which the
///   scheduler shifts;
/// - negative prompt "": `negative_prompt=None` is encoded as "" by `encode_prompt`;
/// - 24 fps: the rate HunyuanVideo 1.5 generates at (121 frames = 5 s).
pub const HUNYUANVIDEO15_T2V: ModelFamily = ModelFamily {
    name: "hunyuanvideo-1.5-t2v",
    text_encoder: QWEN_BYT5_TEXT_ENCODERS,
    experts: &[ExpertRule {
        component: "transformer",
        original_component: None,
        kind: TransformerKind::HunyuanVideo15,
        guidance: GuidanceSource::First,
        timesteps: TimestepRange::ALL,
    }],
    boundary_ratio: None,
    vae: VaeKind::HunyuanVideo15,
    vae_component: "vae",
    latent: LatentSpace {
        channels: 32,
        temporal_compression: 4,
        spatial_compression: 16,
        patch: (1, 1, 1),
    },
    timesteps: TimestepForm::PerSample,
    sigma_grid: SigmaGrid::Linear,
    defaults: FamilyDefaults {
        width: 848,
        height: 480,
        frames: 121,
        steps: 50,
        guidance_scale: 6.0,
        guidance_scale_2: None,
        shift: 5.0,
        fps: 24,
        sampler: SamplerKind::Euler,
        negative_prompt: "",
    },
    flags: &[],
    image: None,
};
