//! Model families, each described in one place: which text encoder, which transformer(s) and when
//! each runs, which VAE, the latent space (channels, temporal and spatial compression), the form
//! of the timesteps the transformer takes, the sampling defaults and the flags that apply.
//!
//! The stages read a [`ModelFamily`] and never a family's name: adding a family means a module
//! here (a `ModelFamily` value and its [`ExpertRule`]s), a network in vdit-models and a registry
//! file naming it (`family = "..."`); the step loop, guidance and the video writer stay as they are.
//!
//! ```text
//! family ─► text encoder(s) ─► context
//!        ─► experts: [(transformer slot, guidance scale, timestep range)] ─► ExpertDenoiser ─► denoise
//!        ─► VAE (channels, compression) ─► frames
//! ```

pub mod wan;

use crate::error::{Result, VditError};
use crate::sampling::SamplerKind;

/// The families vdit knows, by the name a registry file gives (`family = "wan2.1-t2v"`).
pub const FAMILIES: &[&ModelFamily] = &[&wan::WAN21_T2V];

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

/// Which network a component folder holds, so the stages know how to load it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoderKind {
    /// umT5-XXL encoder (Wan2.1, Wan2.2): prompts padded to `text_len` tokens.
    Umt5,
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
}

/// The VAE of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaeKind {
    /// Wan2.1's causal 3D VAE: 16 channels, 4× in time, 8× in space.
    Wan21,
    /// Wan2.2's VAE: 48 channels, 4× in time, 16× in space (TI2V-5B).
    Wan22,
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
    pub kind: TransformerKind,
    pub guidance: GuidanceSource,
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
    /// An input image (image-to-video).
    Image,
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
    pub vae: VaeKind,
    /// Component folder of the VAE (`vae`).
    pub vae_component: &'static str,
    pub latent: LatentSpace,
    pub timesteps: TimestepForm,
    pub defaults: FamilyDefaults,
    /// Flags beyond the common ones that this family takes.
    pub flags: &'static [FamilyFlag],
}

impl ModelFamily {
    /// Whether this family takes `flag`.
    pub fn takes(&self, flag: FamilyFlag) -> bool {
        self.flags.contains(&flag)
    }

    /// The expert serving timestep `t`.
    pub fn expert_at(&self, t: f32) -> Option<&ExpertRule> {
        self.experts.iter().find(|e| e.timesteps.contains(t))
    }
}
