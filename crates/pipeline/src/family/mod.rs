//! Model families, each described in one place: which text encoder, which transformer(s) and when
//! each runs, which VAE, the latent space (channels, temporal and spatial compression), the form
//! of the timesteps the transformer takes, the sampling defaults and the flags that apply.
//!
//! The stages read a [`ModelFamily`] and never a family's name: adding a family means a module
//! here (a `ModelFamily` value and its [`ExpertRule`]s), a network in vdit-models and a registry
//! file naming it (`family = "..."`); the step loop, guidance and the video writer stay as they are.
//! A family whose networks are of a new kind also brings what the stages dispatch to for that kind
//! (HunyuanVideo 1.5: [`crate::hunyuan15`], its text encoders, transformer and VAE), and passes its
//! text to the transformer as a [`crate::context::TextContext`] of as many masked streams as it has.
//!
//! ```text
//! family ─► text encoder(s) ─► text context (one or more [B, L, D] streams, optional masks)
//!        ─► experts: [(transformer slot, guidance scale, timestep range)] ─► ExpertDenoiser ─► denoise
//!        ─► VAE (channels, compression) ─► frames
//! ```

pub mod hunyuan15;
pub mod wan;

use crate::error::{Result, VditError};
use crate::sampling::{SamplerKind, SigmaGrid};

/// The families vdit knows, by the name a registry file gives (`family = "wan2.1-t2v"`).
pub const FAMILIES: &[&ModelFamily] = &[
    &wan::WAN21_T2V,
    &wan::WAN21_I2V,
    &wan::WAN21_FLF2V,
    &wan::WAN22_T2V_A14B,
    &wan::WAN22_I2V_A14B,
    &wan::WAN22_TI2V_5B,
    &hunyuan15::HUNYUANVIDEO15_T2V,
];

/// The family of a model whose registry entry names none (hub ids and directories outside the
/// registry): Wan2.1 text-to-video.
pub const DEFAULT_FAMILY: &ModelFamily = &wan::WAN21_T2V;

/// The family named `name`, or an error listing the known ones.
pub fn family_by_name(name: &str) -> Result<&'static ModelFamily> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
            VditError::Resolve(format!(
                "unknown model family `{name}` (known: {})",
                known.join(", ")
            ))
        })
}

/// The family of a model outside the registry, from its diffusers `model_index.json` (when it has
/// one), which expert folders it has and its first transformer's `config.json`:
/// - a second transformer (`transformer_2`, or the original layout's `low_noise_model`) or a
///   `boundary_ratio` means Wan2.2 A14B: image-to-video when the transformer takes 36 input
///   channels (noise + frame mask + encoded image), else text-to-video;
/// - `expand_timesteps` means Wan2.2 TI2V;
/// - an `image_encoder` or 36 input channels means Wan2.1 image-to-video, first-and-last-frame
///   when the transformer has a position embedding for two images (`pos_embed_seq_len`);
/// - a `HunyuanVideo15Pipeline` (the index's `_class_name`), or without an index a
///   `HunyuanVideo15Transformer3DModel` transformer for text-to-video, is HunyuanVideo 1.5;
/// - anything else is Wan2.1 text-to-video.
pub fn detect_family(
    model_index: Option<&serde_json::Value>,
    has_component: &dyn Fn(&str) -> bool,
    transformer_config: Option<&serde_json::Value>,
) -> &'static ModelFamily {
    // diffusers writes an absent component as `[null, null]` and unset options as null/false.
    let says = |json: Option<&serde_json::Value>, key: &str| {
        json.and_then(|m| m.get(key)).is_some_and(|v| match v {
            serde_json::Value::Null | serde_json::Value::Bool(false) => false,
            serde_json::Value::Array(items) => items.iter().any(|i| !i.is_null()),
            _ => true,
        })
    };
    let index_says = |key: &str| says(model_index, key);
    let class_name = |json: Option<&serde_json::Value>| {
        json.and_then(|j| j.get("_class_name")?.as_str().map(String::from))
    };
    let hunyuan_t2v_transformer = class_name(transformer_config).as_deref()
        == Some("HunyuanVideo15Transformer3DModel")
        && transformer_config
            .and_then(|c| c.get("task_type")?.as_str())
            .is_none_or(|task| task == "t2v");
    match class_name(model_index).as_deref() {
        Some("HunyuanVideo15Pipeline") => return &hunyuan15::HUNYUANVIDEO15_T2V,
        None if hunyuan_t2v_transformer => return &hunyuan15::HUNYUANVIDEO15_T2V,
        _ => {}
    }
    // diffusers names it `in_channels`, Wan-AI's own config.json `in_dim`.
    let in_channels = ["in_channels", "in_dim"]
        .iter()
        .find_map(|key| transformer_config?.get(*key)?.as_u64());
    let takes_image_channels = in_channels == Some(MASKED_VIDEO_IN_CHANNELS as u64);
    let two_experts = wan::WAN22_T2V_A14B.experts[1..].iter().any(|rule| {
        has_component(rule.component) || rule.original_component.is_some_and(has_component)
    });
    if index_says("transformer_2") || index_says("boundary_ratio") || two_experts {
        if takes_image_channels {
            &wan::WAN22_I2V_A14B
        } else {
            &wan::WAN22_T2V_A14B
        }
    } else if index_says("expand_timesteps") {
        &wan::WAN22_TI2V_5B
    } else if index_says("image_encoder") || takes_image_channels {
        if says(transformer_config, "pos_embed_seq_len") {
            &wan::WAN21_FLF2V
        } else {
            &wan::WAN21_I2V
        }
    } else {
        DEFAULT_FAMILY
    }
}

/// Input channels of a transformer conditioned by [`ImageConditioning::MaskedVideoChannels`]:
/// 16 of noise, 4 of frame mask, 16 of encoded video.
pub const MASKED_VIDEO_IN_CHANNELS: usize = 36;

/// Which network a component folder holds, so the stages know how to load it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoderKind {
    /// umT5-XXL encoder (Wan2.1, Wan2.2): prompts padded to `text_len` tokens.
    Umt5,
    /// HunyuanVideo 1.5's pair: Qwen2.5-VL's language model on the prompt in its chat template
    /// (`text_encoder/`, `tokenizer/`; at most `text_len` tokens after the template's prefix)
    /// and ByT5 on the prompt's quoted text (`text_encoder_2/`, `tokenizer_2/`): two masked
    /// streams.
    QwenByT5,
}

/// A text encoder of the family and where its files live in the diffusers layout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextEncoderSpec {
    pub kind: TextEncoderKind,
    /// Component folder of the weights (`text_encoder`).
    pub component: &'static str,
    /// The tokenizer file (`tokenizer/tokenizer.json`).
    pub tokenizer: &'static str,
    /// Tokens the transformer's cross-attention sees per prompt (padded).
    pub text_len: usize,
}

/// The transformer network of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransformerKind {
    /// The Wan DiT (Wan2.1; Wan2.2 A14B's experts and TI2V-5B share the architecture).
    Wan,
    /// HunyuanVideo 1.5's dual-stream transformer: latents, condition latents and a mask channel
    /// in; the prompt and glyph streams with their masks.
    HunyuanVideo15,
}

/// The VAE of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaeKind {
    /// Wan2.1's causal 3D VAE: 16 channels, 4× in time, 8× in space.
    Wan21,
    /// Wan2.2's VAE: 48 channels, 4× in time, 16× in space (TI2V-5B).
    Wan22,
    /// HunyuanVideo 1.5's causal 3D VAE: 32 channels, 4× in time, 16× in space; the sampled
    /// latents are the VAE's times its `scaling_factor`.
    HunyuanVideo15,
}

/// The latent space the transformer samples in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentSpace {
    pub channels: usize,
    /// Video frames per latent frame after the first (F = 1 + t·(F' − 1)).
    pub temporal_compression: usize,
    /// Pixels per latent pixel along each side.
    pub spatial_compression: usize,
    /// The transformer's patch (frames, height, width), to count tokens.
    pub patch: (usize, usize, usize),
}

impl LatentSpace {
    /// Latent frames of a video of `frames` frames.
    pub fn latent_frames(&self, frames: u32) -> usize {
        (frames as usize - 1) / self.temporal_compression + 1
    }

    /// `[1, C, F', H/s, W/s]` for a `width`×`height` video of `frames` frames.
    pub fn shape(&self, width: u32, height: u32, frames: u32) -> [usize; 5] {
        let s = self.spatial_compression;
        [
            1,
            self.channels,
            self.latent_frames(frames),
            height as usize / s,
            width as usize / s,
        ]
    }

    /// Transformer tokens of a latent of shape `[B, C, F', H', W']`.
    pub fn tokens(&self, shape: &[usize]) -> usize {
        let (pf, ph, pw) = self.patch;
        shape[2] / pf * (shape[3] / ph) * (shape[4] / pw)
    }
}

/// What the transformer takes as timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepForm {
    /// `[B]`: one timestep per sample (Wan2.1, Wan2.2 A14B).
    PerSample,
    /// `[B, L]`: one per latent token, so conditioning tokens (TI2V's first frame) can be held
    /// at t = 0 while the rest are noised (Wan2.2 TI2V-5B).
    PerToken,
}

/// The timesteps a transformer of the family serves, by value in 0..=1000:
/// `from ≤ t < below`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimestepRange {
    pub from: f32,
    pub below: f32,
}

impl TimestepRange {
    /// Every timestep.
    pub const ALL: Self = Self {
        from: f32::NEG_INFINITY,
        below: f32::INFINITY,
    };

    /// `t ≥ boundary` (a high-noise expert).
    pub fn at_or_above(boundary: f32) -> Self {
        Self {
            from: boundary,
            below: f32::INFINITY,
        }
    }

    /// `t < boundary` (a low-noise expert).
    pub fn below(boundary: f32) -> Self {
        Self {
            from: f32::NEG_INFINITY,
            below: boundary,
        }
    }

    pub fn contains(&self, t: f32) -> bool {
        self.from <= t && t < self.below
    }
}

/// Which guidance-scale setting an expert uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuidanceSource {
    /// `--guidance-scale`.
    First,
    /// `--guidance-scale-2`, falling back to `--guidance-scale` when absent (Wan2.2 A14B's
    /// low-noise expert).
    Second,
}

/// One transformer of a family and when it runs: the family's part of an expert, before the
/// run's settings give its guidance scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpertRule {
    /// Component folder in the diffusers layout (`transformer`, `transformer_2`).
    pub component: &'static str,
    /// Its folder in the original (Wan-AI) layout, where that differs (`high_noise_model`,
    /// `low_noise_model`).
    pub original_component: Option<&'static str>,
    pub kind: TransformerKind,
    pub guidance: GuidanceSource,
    /// The timesteps it serves at the family's default boundary; a model's own `boundary_ratio`
    /// moves the split (see [`ModelFamily::expert_timesteps`]).
    pub timesteps: TimestepRange,
}

/// The defaults of a family, for settings neither the flags nor the registry give.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FamilyDefaults {
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    pub steps: usize,
    pub guidance_scale: f64,
    /// The second expert's guidance scale (two-expert families).
    pub guidance_scale_2: Option<f64>,
    pub shift: f64,
    pub fps: u32,
    pub sampler: SamplerKind,
    pub negative_prompt: &'static str,
}

/// A flag of `vdit generate` that only some families take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyFlag {
    /// `--guidance-scale-2` (two experts).
    GuidanceScale2,
    /// Keep every expert on the device instead of swapping at the boundary.
    KeepExpertsLoaded,
    /// An input image (`--image`, image-to-video); what the family does with it is its
    /// [`ModelFamily::image`].
    Image,
    /// A last frame (`--last-image`, first-and-last-frame to video).
    LastImage,
}

/// How a family's transformer takes an input image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageConditioning {
    /// The VAE encoding of the video [image, zeros…] (with a last image: [first, zeros…, last])
    /// and a 4-channel frame mask, concatenated to the noise along channels: the transformer
    /// takes 16 + 4 + 16 = 36 channels and returns 16 (Wan2.1 I2V, FLF2V, Wan2.2 I2V-A14B).
    MaskedVideoChannels,
    /// The image's latent replaces the first latent frame of the noise, and those tokens get
    /// timestep 0 (a timestep per token); the frame is put back after the last step (Wan2.2
    /// TI2V-5B).
    FirstFrameLatent,
}

/// How an image whose aspect ratio is not the video's is made to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFit {
    /// Resized to the video's size, aspect ratio not kept (diffusers' `VideoProcessor.preprocess`
    /// default resize).
    Stretch,
    /// Resized to cover the video's size, aspect ratio kept, then cropped about the centre
    /// (Wan2.2's TI2V).
    CoverAndCrop,
}

/// The image encoder of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageEncoderKind {
    /// CLIP ViT-H/14's vision tower: its penultimate hidden states, 257 tokens × 1280 per image.
    ClipVisionH14,
}

/// An image encoder and where its files live in the diffusers layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageEncoderSpec {
    pub kind: ImageEncoderKind,
    /// Component folder of the weights and config (`image_encoder`). Its preprocessing
    /// (`image_processor/`) is CLIP's standard one for ViT-H/14, built into the encoder.
    pub component: &'static str,
}

/// What a family does with input images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInput {
    pub conditioning: ImageConditioning,
    /// Without `--image` the family cannot run (I2V); TI2V-5B also runs from text alone.
    pub required: bool,
    /// The family takes (and then needs) a last frame (FLF2V).
    pub last_image: bool,
    /// The image embedding passed to every step, when the transformer has image cross-attention.
    pub encoder: Option<ImageEncoderSpec>,
    pub fit: ImageFit,
}

/// One model family, described in one place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelFamily {
    /// The registry's name for it (`wan2.1-t2v`).
    pub name: &'static str,
    pub text_encoder: TextEncoderSpec,
    /// The transformers in the order they run (high noise first); their timestep ranges cover
    /// 0..=1000 without overlap.
    pub experts: &'static [ExpertRule],
    /// For two experts: the switch from the first to the second at t = boundary_ratio · 1000,
    /// unless the model's `model_index.json` gives its own `boundary_ratio`.
    pub boundary_ratio: Option<f64>,
    pub vae: VaeKind,
    /// Component folder of the VAE (`vae`).
    pub vae_component: &'static str,
    pub latent: LatentSpace,
    pub timesteps: TimestepForm,
    /// The sigmas the Euler and LCM solvers step through (UniPC builds its own).
    pub sigma_grid: SigmaGrid,
    pub defaults: FamilyDefaults,
    /// Flags beyond the common ones that this family takes.
    pub flags: &'static [FamilyFlag],
    /// What it does with `--image` (and `--last-image`); `None` for text-only families.
    pub image: Option<ImageInput>,
}

impl ModelFamily {
    /// Whether this family takes `flag`.
    pub fn takes(&self, flag: FamilyFlag) -> bool {
        match flag {
            FamilyFlag::Image => self.image.is_some(),
            FamilyFlag::LastImage => self.image.is_some_and(|i| i.last_image),
            _ => self.flags.contains(&flag),
        }
    }

    /// The expert serving timestep `t`.
    pub fn expert_at(&self, t: f32) -> Option<&ExpertRule> {
        self.experts.iter().find(|e| e.timesteps.contains(t))
    }

    /// The timesteps each expert serves (in the family's order) when the switch is at
    /// `boundary_ratio` · 1000: the first expert t ≥ boundary, the second below. One expert
    /// serves everything.
    pub fn expert_timesteps(&self, boundary_ratio: Option<f64>) -> Vec<TimestepRange> {
        match (self.experts.len(), boundary_ratio.or(self.boundary_ratio)) {
            (2, Some(ratio)) => {
                let boundary = (ratio * 1000.0) as f32;
                vec![
                    TimestepRange::at_or_above(boundary),
                    TimestepRange::below(boundary),
                ]
            }
            _ => self.experts.iter().map(|e| e.timesteps).collect(),
        }
    }

    /// Video width and height must be multiples of this: the VAE's spatial compression times
    /// the transformer's patch (16 for Wan2.1, 32 for Wan2.2 TI2V).
    pub fn pixel_multiple(&self) -> u32 {
        let (_, ph, pw) = self.latent.patch;
        (self.latent.spatial_compression * ph.max(pw)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(json: &str) -> serde_json::Value {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn families_are_found_from_model_index_and_folders() {
        let none = |_: &str| false;
        let wan21 = index(
            r#"{"transformer": ["diffusers", "WanTransformer3DModel"], "transformer_2": [null, null], "boundary_ratio": null, "expand_timesteps": false}"#,
        );
        assert_eq!(detect_family(Some(&wan21), &none, None).name, "wan2.1-t2v");
        let a14b = index(
            r#"{"transformer_2": ["diffusers", "WanTransformer3DModel"], "boundary_ratio": 0.875}"#,
        );
        assert_eq!(
            detect_family(Some(&a14b), &none, None).name,
            "wan2.2-t2v-a14b"
        );
        let ti2v = index(
            r#"{"transformer_2": [null, null], "boundary_ratio": null, "expand_timesteps": true}"#,
        );
        assert_eq!(
            detect_family(Some(&ti2v), &none, None).name,
            "wan2.2-ti2v-5b"
        );
        // Wan-AI's own layout has no model_index.json.
        let original = |c: &str| c == "high_noise_model" || c == "low_noise_model";
        assert_eq!(detect_family(None, &original, None).name, "wan2.2-t2v-a14b");
        assert_eq!(detect_family(None, &none, None).name, "wan2.1-t2v");
    }

    #[test]
    fn image_families_are_found_from_the_image_encoder_and_input_channels() {
        let none = |_: &str| false;
        let i2v_index = index(
            r#"{"_class_name": "WanImageToVideoPipeline", "image_encoder": ["transformers", "CLIPVisionModel"], "transformer_2": [null, null], "boundary_ratio": null, "expand_timesteps": false}"#,
        );
        let i2v = index(r#"{"in_channels": 36, "image_dim": 1280}"#);
        let flf2v = index(r#"{"in_channels": 36, "image_dim": 1280, "pos_embed_seq_len": 514}"#);
        assert_eq!(
            detect_family(Some(&i2v_index), &none, Some(&i2v)).name,
            "wan2.1-i2v"
        );
        assert_eq!(
            detect_family(Some(&i2v_index), &none, Some(&flf2v)).name,
            "wan2.1-flf2v"
        );
        let a14b_index = index(
            r#"{"image_encoder": [null, null], "transformer_2": ["diffusers", "WanTransformer3DModel"], "boundary_ratio": 0.9}"#,
        );
        let a14b = index(r#"{"in_channels": 36, "image_dim": null}"#);
        assert_eq!(
            detect_family(Some(&a14b_index), &none, Some(&a14b)).name,
            "wan2.2-i2v-a14b"
        );
        // Wan-AI's layout: expert folders and `in_dim`.
        let original = |c: &str| c == "high_noise_model" || c == "low_noise_model";
        let wan_config = index(r#"{"model_type": "i2v", "in_dim": 36}"#);
        assert_eq!(
            detect_family(None, &original, Some(&wan_config)).name,
            "wan2.2-i2v-a14b"
        );
        // Every family that takes an image says how, and the flags follow from it.
        for family in FAMILIES {
            assert_eq!(family.takes(FamilyFlag::Image), family.image.is_some());
            if let Some(image) = family.image {
                assert_eq!(family.takes(FamilyFlag::LastImage), image.last_image);
            }
        }
    }

    #[test]
    fn hunyuan_video_is_found_from_its_pipeline_or_transformer_class() {
        let none = |_: &str| false;
        let hy_index = index(
            r#"{"_class_name": "HunyuanVideo15Pipeline", "transformer": ["diffusers", "HunyuanVideo15Transformer3DModel"], "text_encoder_2": ["transformers", "T5EncoderModel"]}"#,
        );
        let family = detect_family(Some(&hy_index), &none, None);
        assert_eq!(family.name, "hunyuanvideo-1.5-t2v");
        assert_eq!(family.text_encoder.kind, TextEncoderKind::QwenByT5);
        assert_eq!(family.vae, VaeKind::HunyuanVideo15);
        assert_eq!(family.experts[0].kind, TransformerKind::HunyuanVideo15);
        assert_eq!(family.pixel_multiple(), 16);
        // Without an index: the transformer's class, text-to-video only.
        let t2v =
            index(r#"{"_class_name": "HunyuanVideo15Transformer3DModel", "task_type": "t2v"}"#);
        let i2v =
            index(r#"{"_class_name": "HunyuanVideo15Transformer3DModel", "task_type": "i2v"}"#);
        assert_eq!(
            detect_family(None, &none, Some(&t2v)).name,
            "hunyuanvideo-1.5-t2v"
        );
        assert_ne!(
            detect_family(None, &none, Some(&i2v)).name,
            "hunyuanvideo-1.5-t2v"
        );
        // A Wan index is still Wan.
        let wan = index(r#"{"_class_name": "WanPipeline", "transformer_2": [null, null]}"#);
        assert_eq!(
            detect_family(Some(&wan), &none, Some(&t2v)).name,
            "wan2.1-t2v"
        );
    }

    #[test]
    fn two_experts_split_at_the_boundary() {
        let family = &wan::WAN22_T2V_A14B;
        let [high, low] = family.expert_timesteps(None)[..] else {
            panic!("two ranges")
        };
        assert!(high.contains(875.0) && high.contains(999.0) && !high.contains(874.0));
        assert!(low.contains(874.0) && !low.contains(875.0));
        // A model's own boundary moves the split.
        let [high, low] = family.expert_timesteps(Some(0.9))[..] else {
            panic!("two ranges")
        };
        assert!(!high.contains(875.0) && low.contains(875.0) && high.contains(900.0));
        assert_eq!(
            wan::WAN21_T2V.expert_timesteps(Some(0.9)),
            vec![TimestepRange::ALL]
        );
        assert_eq!(wan::WAN22_TI2V_5B.pixel_multiple(), 32);
        assert_eq!(wan::WAN21_T2V.pixel_multiple(), 16);
    }
}
