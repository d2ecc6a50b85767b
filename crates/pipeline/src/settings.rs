//! Resolved settings of one generation: the options (the flags of `vdit generate`), filled in
//! from the model's registry entry and its family's defaults, checked together. Every problem found is reported, one line each.
//! The result is printed before the run and recorded in the sidecar JSON.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::Serialize;

use crate::decoder::DecoderSettings;
use crate::error::{Result, VditError};
use crate::family::{detect_family, FamilyFlag, GuidanceSource, ModelFamily};
use crate::hub::{check_override, HubOptions, ModelFiles, ModelLocation};
use crate::image_cond::{read_image, video_size_for_image, ImageRecord};
use crate::memory::{human_bytes, human_duration, RunShape, TransformerShape};
use crate::offload::{choose_offload, OffloadChoice, OffloadMode, OffloadNeeds, OffloadSettings};
use crate::options::{
    AttentionMode, Choice, DTypeChoice, DecoderChoice, DeviceChoice, StepCacheMode, TokenWindow,
};
use crate::registry::{EntryLora, ModelDefaults, PublishedTransformer, Registry};
use crate::sampling::SamplerKind;
use crate::step_cache::{Calibration, StepCacheSettings};
use crate::video::VideoFormat;
use rainfusion::DenseSteps;
use vdit_models::lora::{LoraMode, LoraSpec};

pub use crate::family::wan::{wan_defaults, WAN_NEGATIVE_PROMPT};

/// What a run asks for, before defaults: every field of `vdit generate`'s flags, `None` where the
/// model's registry entry or its family's defaults decide. A Rust caller fills this in (start
/// from [`GenerateOptions::new`]) and hands it to [`resolve`].
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    /// (width, height), overridden by `width` and `height`.
    pub size: Option<(u32, u32)>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub frames: Option<u32>,
    pub steps: Option<usize>,
    pub guidance_scale: Option<f64>,
    /// The second (low-noise) expert's guidance scale, two-expert models only.
    pub guidance_scale_2: Option<f64>,
    pub shift: Option<f64>,
    pub sampler: Option<SamplerKind>,
    /// A distilled model's denoising step list (training timesteps, decreasing), instead of
    /// `steps` evenly spaced ones.
    pub timesteps: Option<Vec<f64>>,
    pub seed: Option<u64>,
    pub fps: Option<u32>,
    pub output: Option<PathBuf>,
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
    pub model: Option<String>,
    pub offline: bool,
    pub dit: Option<PathBuf>,
    /// The second (low-noise) expert's weights, two-expert models only.
    pub dit_2: Option<PathBuf>,
    pub vae: Option<PathBuf>,
    pub text_encoder: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    pub t5_cpu: bool,
    pub vae_tiling: bool,
    /// Two-expert models: keep both experts on the device instead of swapping at the boundary
    /// (the same as `offload: OffloadChoice::None`).
    pub keep_experts: bool,
    /// `--offload`: how much of the transformer stays on the device.
    pub offload: OffloadChoice,
    pub noise: Option<PathBuf>,
    pub latents_out: Option<PathBuf>,
    /// Decode these saved latents (a `--latents-out` file) instead of sampling.
    pub latents_in: Option<PathBuf>,
    /// Replace existing outputs even if vdit did not write them.
    pub overwrite: bool,
    pub attention: AttentionMode,
    pub sparsity: f64,
    pub dense_steps: Option<DenseSteps>,
    pub mask_refresh: usize,
    pub block_size: usize,
    pub window: TokenWindow,
    pub dense_layers: usize,
    /// LoRAs of the transformer (two-expert models: of the high-noise expert).
    pub loras: Vec<LoraSpec>,
    /// LoRAs of the second (low-noise) expert, two-expert models only.
    pub loras_2: Vec<LoraSpec>,
    pub lora_mode: LoraMode,
    /// Apply a LoRA whose keys match only part of the model, ignoring the rest.
    pub lora_partial: bool,
    /// The first frame (image-to-video models; optional for Wan2.2 TI2V-5B).
    pub image: Option<PathBuf>,
    /// The last frame (first-and-last-frame models).
    pub last_image: Option<PathBuf>,
    /// Step caching (`--step-cache`).
    pub step_cache: StepCacheMode,
    /// `--cache-threshold`; `None`: the mode's default.
    pub cache_threshold: Option<f64>,
    /// `--cache-keep-first`; `None`: the mode's default.
    pub cache_keep_first: Option<usize>,
    /// `--cache-keep-last`; `None`: 1.
    pub cache_keep_last: Option<usize>,
    /// `--cache-max-skips` (MagCache); `None`: 2.
    pub cache_max_skips: Option<usize>,
    /// `--cache-calibration`: a calibration file instead of the model's.
    pub cache_calibration: Option<PathBuf>,
    /// `--cache-calibrate`: run uncached and write the model's magnitude ratios here.
    pub cache_calibrate: Option<PathBuf>,
    /// `--decoder`: the full VAE or TAEHV's tiny preview decoder.
    pub decoder: DecoderChoice,
    /// `--tiny-vae`: the TAEHV file (or a folder holding it); `None`: the hub's.
    pub tiny_vae: Option<PathBuf>,
}

impl GenerateOptions {
    /// `prompt` with every other option at the CLI's default.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            negative_prompt: None,
            size: None,
            width: None,
            height: None,
            frames: None,
            steps: None,
            guidance_scale: None,
            guidance_scale_2: None,
            shift: None,
            sampler: None,
            timesteps: None,
            seed: None,
            fps: None,
            output: None,
            device: DeviceChoice::Auto,
            dtype: DTypeChoice::Auto,
            model: None,
            offline: false,
            dit: None,
            dit_2: None,
            vae: None,
            text_encoder: None,
            tokenizer: None,
            t5_cpu: false,
            vae_tiling: false,
            keep_experts: false,
            offload: OffloadChoice::Auto,
            noise: None,
            latents_out: None,
            latents_in: None,
            overwrite: false,
            attention: AttentionMode::Dense,
            sparsity: 0.8,
            dense_steps: None,
            mask_refresh: 1,
            block_size: 128,
            window: TokenWindow::Tile,
            dense_layers: 0,
            loras: Vec::new(),
            loras_2: Vec::new(),
            lora_mode: LoraMode::Merge,
            lora_partial: false,
            image: None,
            last_image: None,
            step_cache: StepCacheMode::None,
            cache_threshold: None,
            cache_keep_first: None,
            cache_keep_last: None,
            cache_max_skips: None,
            cache_calibration: None,
            cache_calibrate: None,
            decoder: DecoderChoice::Full,
            tiny_vae: None,
        }
    }
}

/// `VideoFormat` as a name for printing and the sidecar.
pub fn format_name(format: VideoFormat) -> &'static str {
    match format {
        VideoFormat::Mp4 => "mp4",
        VideoFormat::Gif => "gif",
        VideoFormat::PngSequence => "png",
    }
}

fn serialize_format<S: serde::Serializer>(
    format: &VideoFormat,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(format_name(*format))
}

/// Where the networks run, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Cuda,
    Metal,
}

impl DeviceKind {
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Metal => "metal",
        }
    }

    /// The device, opened. On a machine's first CUDA run this waits for candle's kernels to be
    /// compiled into the driver's cache, all at once ([`vdit_models::kernel_cache`]).
    pub fn device(self) -> Result<Device> {
        let device = match self {
            DeviceKind::Cpu => Device::Cpu,
            DeviceKind::Cuda => Device::new_cuda(0)?,
            DeviceKind::Metal => Device::new_metal(0)?,
        };
        if let Some(warm) = vdit_models::kernel_cache::warm_up(&device) {
            let failed = if warm.failed.is_empty() {
                String::new()
            } else {
                format!(" ({} left to compile on first use)", warm.failed.join(", "))
            };
            eprintln!(
                "kernels      {:.1} s to compile {} modules{failed}",
                warm.seconds, warm.modules
            );
        }
        Ok(device)
    }
}

/// `--dtype` as a name for printing and the sidecar.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "f32",
    }
}

/// RainFusion settings, resolved against the step count.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttentionSettings {
    pub mode: AttentionMode,
    pub sparsity: f64,
    /// Dense warm-up as given (count or fraction of the steps).
    #[serde(serialize_with = "serialize_dense_steps")]
    pub dense_steps: DenseSteps,
    /// The same, resolved against the step count.
    pub dense_step_count: usize,
    pub mask_refresh: usize,
    pub block_size: usize,
    pub window: TokenWindow,
    pub dense_layers: usize,
}

/// The LoRAs of a run, per expert.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LoraSettings {
    /// Of the transformer, or of the first (high-noise) expert.
    #[serde(serialize_with = "serialize_loras")]
    pub first: Vec<LoraSpec>,
    /// Of the second (low-noise) expert.
    #[serde(
        serialize_with = "serialize_loras",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub second: Vec<LoraSpec>,
    #[serde(serialize_with = "serialize_lora_mode")]
    pub mode: LoraMode,
    pub partial: bool,
}

impl LoraSettings {
    pub fn is_empty(&self) -> bool {
        self.first.is_empty() && self.second.is_empty()
    }

    /// The LoRAs of expert `index` (0: the transformer or the high-noise expert).
    pub fn for_expert(&self, index: usize) -> &[LoraSpec] {
        if index == 0 {
            &self.first
        } else {
            &self.second
        }
    }
}

fn serialize_loras<S: serde::Serializer>(
    loras: &[LoraSpec],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(loras.len()))?;
    for lora in loras {
        seq.serialize_element(&serde_json::json!({
            "path": lora.path.display().to_string(),
            "strength": lora.strength,
        }))?;
    }
    seq.end()
}

fn serialize_lora_mode<S: serde::Serializer>(
    mode: &LoraMode,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(mode.name())
}

/// Per-file overrides of the model's components.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Overrides {
    pub dit: Option<PathBuf>,
    /// The second expert's weights (`--dit-2`).
    pub dit_2: Option<PathBuf>,
    pub vae: Option<PathBuf>,
    pub text_encoder: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
}

/// Everything one generation needs, every default filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerateSettings {
    pub prompt: String,
    pub negative_prompt: String,
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    pub steps: usize,
    pub guidance_scale: f64,
    /// The second (low-noise) expert's guidance scale; `None` for one-transformer families.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guidance_scale_2: Option<f64>,
    /// Where two experts switch (t = boundary_ratio · 1000): the model's `model_index.json`, else
    /// the family's; `None` for one-transformer families.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boundary_ratio: Option<f64>,
    pub shift: f64,
    pub sampler: SamplerKind,
    /// The denoising step list of a distilled model (`steps` is its length); `None` for the
    /// evenly spaced grid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timesteps: Option<Vec<f64>>,
    pub seed: u64,
    /// True when the seed was drawn at random (no --seed).
    pub seed_was_random: bool,
    pub fps: u32,
    pub output: PathBuf,
    #[serde(serialize_with = "serialize_format")]
    pub format: VideoFormat,
    pub device: DeviceKind,
    #[serde(serialize_with = "serialize_dtype")]
    pub dtype: DType,
    /// `--model` as given, or the default model's registry name.
    pub model: String,
    /// Where its files come from (directory or hub id).
    pub model_location: String,
    pub offline: bool,
    pub t5_cpu: bool,
    pub vae_tiling: bool,
    /// Keep every expert on the device (two-expert models): `offload.mode` is `none`.
    pub keep_experts: bool,
    /// `--offload`, resolved (auto's choice and why).
    pub offload: OffloadSettings,
    pub overrides: Overrides,
    pub noise: Option<PathBuf>,
    pub latents_out: Option<PathBuf>,
    /// Saved latents decoded instead of sampling (`--latents-in`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latents_in: Option<PathBuf>,
    /// `--overwrite`: existing outputs are replaced even if vdit did not write them.
    pub overwrite: bool,
    pub attention: AttentionSettings,
    pub lora: LoraSettings,
    /// The first frame (`--image`): its path, own size and sha256.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRecord>,
    /// The last frame (`--last-image`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_image: Option<ImageRecord>,
    pub step_cache: StepCacheSettings,
    /// Which network decodes the latents (`--decoder`, `--tiny-vae`).
    pub decoder: DecoderSettings,
    /// The model's family (from its registry entry; Wan2.1 T2V otherwise). Not in the sidecar:
    /// the model name there already says it.
    #[serde(skip)]
    pub family: &'static ModelFamily,
    /// The transformer's published size from the model's registry entry: the memory estimate's
    /// fallback before the files are downloaded. Not in the sidecar.
    #[serde(skip)]
    pub published_transformer: Option<PublishedTransformer>,
    /// What the user should know before the run starts (a slow CPU run, a prompt longer than the
    /// text encoder reads), one line each; the CLI prints them as warnings.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

fn serialize_dense_steps<S: serde::Serializer>(
    dense: &DenseSteps,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match dense {
        DenseSteps::Count(n) => s.serialize_u64(*n as u64),
        DenseSteps::Fraction(f) => s.serialize_f64(*f),
    }
}

fn serialize_dtype<S: serde::Serializer>(
    dtype: &DType,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(dtype_name(*dtype))
}

impl GenerateSettings {
    /// The text encoder's tokenizer file: `--tokenizer`, else the model's (the family names it).
    pub fn tokenizer_file(&self, files: &ModelFiles) -> Result<PathBuf> {
        match &self.overrides.tokenizer {
            Some(path) => Ok(path.clone()),
            None => files.file(self.family.text_encoder.tokenizer),
        }
    }

    /// Latent frames: the VAE maps 1 + 4(F'−1) frames to F' latent frames (Wan: 4).
    pub fn latent_frames(&self) -> usize {
        self.family.latent.latent_frames(self.frames)
    }

    /// The latent shape `[1, C, F', H/s, W/s]` (Wan2.1: `[1, 16, F', H/8, W/8]`), with the
    /// transformer's `channels`.
    pub fn latent_shape(&self, channels: usize) -> (usize, usize, usize, usize, usize) {
        let [b, _, f, h, w] = self
            .family
            .latent
            .shape(self.width, self.height, self.frames);
        (b, channels, f, h, w)
    }

    /// The guidance scale of each of the family's experts, in their order.
    pub fn expert_guidance_scales(&self) -> Vec<f64> {
        self.family
            .experts
            .iter()
            .map(|e| match e.guidance {
                GuidanceSource::First => self.guidance_scale,
                GuidanceSource::Second => self.guidance_scale_2.unwrap_or(self.guidance_scale),
            })
            .collect()
    }

    /// The timesteps each of the family's experts serves, in their order.
    pub fn expert_timesteps(&self) -> Vec<crate::family::TimestepRange> {
        self.family.expert_timesteps(self.boundary_ratio)
    }

    /// Classifier-free guidance needs a second (unconditional) pass only when a scale ≠ 1.
    pub fn uses_guidance(&self) -> bool {
        self.expert_guidance_scales().iter().any(|&g| g != 1.0)
    }

    /// The sidecar JSON written next to the output: the output's name plus `.json` (`out.mp4` →
    /// `out.mp4.json`; the png sequence `out.png` → `out.png.json`).
    pub fn sidecar_path(&self) -> PathBuf {
        crate::ownership::sidecar_path(&self.output)
    }

    /// Where the latents are saved when a stage after sampling fails and no `--latents-out` was
    /// given: `<output>.latents.safetensors` (`out.mp4.latents.safetensors`).
    pub fn fallback_latents_path(&self) -> PathBuf {
        let mut name = self
            .output
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".latents.safetensors");
        self.output.with_file_name(name)
    }

    /// The settings block printed before the run (users paste it into bug reports).
    pub fn summary(&self) -> String {
        let mut lines = vec![
            format!("model        {} ({})", self.model, self.model_location),
            format!("prompt       {:?}", self.prompt),
            format!("negative     {:?}", abbreviate(&self.negative_prompt, 60)),
            format!(
                "video        {}x{}, {} frames at {} fps → {} ({})",
                self.width,
                self.height,
                self.frames,
                self.fps,
                self.output.display(),
                format_name(self.format)
            ),
            format!(
                "sampling     {} steps{}, {}, shift {}, guidance {}{}",
                self.steps,
                match &self.timesteps {
                    Some(list) => format!(" at t = {list:?}"),
                    None => String::new(),
                },
                self.sampler.name(),
                self.shift,
                self.guidance_scale,
                match (self.guidance_scale_2, self.boundary_ratio) {
                    (Some(g2), Some(b)) => format!(
                        " (high noise, t ≥ {}) / {g2} (low noise){}",
                        b * 1000.0,
                        if self.keep_experts {
                            ", both experts kept loaded"
                        } else {
                            ""
                        }
                    ),
                    _ => String::new(),
                }
            ),
            format!(
                "seed         {}{}",
                self.seed,
                if self.seed_was_random {
                    " (random)"
                } else {
                    ""
                }
            ),
            format!(
                "device       {}, {}{}{}",
                self.device.name(),
                dtype_name(self.dtype),
                if self.t5_cpu {
                    ", text encoder on CPU"
                } else {
                    ""
                },
                if self.vae_tiling { ", VAE tiling" } else { "" }
            ),
            self.offload.summary(),
        ];
        let a = &self.attention;
        lines.push(match a.mode {
            AttentionMode::Dense => "attention    dense".to_string(),
            mode => format!(
                "attention    {}: sparsity {}, {} dense steps, mask refresh {}, block {}, window {}, {} dense layers",
                mode.name(),
                a.sparsity, a.dense_step_count, a.mask_refresh, a.block_size, a.window.name(), a.dense_layers
            ),
        });
        if self.step_cache.is_active() {
            lines.push(self.step_cache.summary());
        }
        for (expert, loras) in [
            ("", &self.lora.first),
            (" (low-noise expert)", &self.lora.second),
        ] {
            for lora in loras {
                lines.push(format!(
                    "lora         {} × {}{expert}, {}",
                    lora.path.display(),
                    lora.strength,
                    self.lora.mode.name()
                ));
            }
        }
        for (what, image) in [("image", &self.image), ("last image", &self.last_image)] {
            if let Some(image) = image {
                let fit = match self.family.image.map(|i| i.fit) {
                    _ if (image.width, image.height) == (self.width, self.height) => "as it is",
                    Some(crate::family::ImageFit::CoverAndCrop) => {
                        "resized to cover, centre-cropped"
                    }
                    _ => "resized",
                };
                lines.push(format!(
                    "{what:<13}{} ({}x{}, {fit})",
                    image.path.display(),
                    image.width,
                    image.height
                ));
            }
        }
        if let Some(noise) = &self.noise {
            lines.push(format!(
                "noise        from {} (seed unused)",
                noise.display()
            ));
        }
        if let Some(latents) = &self.latents_in {
            lines.push(format!(
                "latents in   {} (decoded without sampling: prompt, seed and sampling settings unused)",
                latents.display()
            ));
        }
        if let Some(latents) = &self.latents_out {
            lines.push(format!(
                "latents out  {}{}",
                latents.display(),
                if self.latents_in.is_some() {
                    " (not written: nothing is sampled)"
                } else {
                    ""
                }
            ));
        }
        if self.overwrite {
            lines.push("overwrite    existing outputs are replaced".to_string());
        }
        if let DecoderSettings::Tiny { weights } = &self.decoder {
            lines.push(format!(
                "decoder      tiny (TAEHV {}; a preview, not the full VAE)",
                weights.display()
            ));
        }
        let o = &self.overrides;
        for (flag, path) in [
            ("--dit", &o.dit),
            ("--dit-2", &o.dit_2),
            ("--vae", &o.vae),
            ("--text-encoder", &o.text_encoder),
            ("--tokenizer", &o.tokenizer),
        ] {
            if let Some(path) = path {
                lines.push(format!("override     {flag} {}", path.display()));
            }
        }
        lines.join("\n")
    }
}

fn abbreviate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max_chars).collect::<String>())
    }
}

/// Whether files can be created in the directory that will hold `path`.
pub fn check_writable_dir(flag: &str, path: &Path) -> std::result::Result<(), String> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "{flag} {}: directory {} does not exist",
            path.display(),
            dir.display()
        ));
    }
    tempfile::Builder::new()
        .prefix(&crate::ownership::temp_prefix(path))
        .tempfile_in(&dir)
        .map(drop)
        .map_err(|e| {
            format!(
                "{flag} {}: cannot write in {} ({e})",
                path.display(),
                dir.display()
            )
        })
}

pub fn resolve_device(arg: DeviceChoice) -> std::result::Result<DeviceKind, String> {
    let cuda_built = cfg!(feature = "cuda");
    let metal_built = cfg!(feature = "metal");
    match arg {
        DeviceChoice::Cpu => Ok(DeviceKind::Cpu),
        DeviceChoice::Cuda if !cuda_built => Err(
            "--device cuda: this vdit was built without CUDA (rebuild with `--features cuda`)"
                .into(),
        ),
        DeviceChoice::Cuda if !candle_core::utils::cuda_is_available() => {
            Err("--device cuda: no CUDA device available".into())
        }
        DeviceChoice::Cuda => Ok(DeviceKind::Cuda),
        DeviceChoice::Metal if !metal_built => Err(
            "--device metal: this vdit was built without Metal (rebuild with `--features metal`)"
                .into(),
        ),
        DeviceChoice::Metal => Ok(DeviceKind::Metal),
        DeviceChoice::Auto if cuda_built && candle_core::utils::cuda_is_available() => {
            Ok(DeviceKind::Cuda)
        }
        DeviceChoice::Auto if metal_built && candle_core::utils::metal_is_available() => {
            Ok(DeviceKind::Metal)
        }
        DeviceChoice::Auto => Ok(DeviceKind::Cpu),
    }
}

pub fn resolve_dtype(arg: DTypeChoice, device: DeviceKind) -> DType {
    match (arg, device) {
        (DTypeChoice::Auto, DeviceKind::Cpu) => DType::F32,
        (DTypeChoice::Auto, _) | (DTypeChoice::Bf16, _) => DType::BF16,
        (DTypeChoice::F16, _) => DType::F16,
        (DTypeChoice::F32, _) => DType::F32,
    }
}

/// The `flow_shift` of a diffusers scheduler config, if it has one.
fn scheduler_shift(files: &ModelFiles) -> Option<f64> {
    let path = files
        .optional_file("scheduler/scheduler_config.json")
        .ok()??;
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    // UniPC (Wan's diffusers folders) calls it `flow_shift`, FlowMatchEulerDiscreteScheduler
    // (HunyuanVideo 1.5's) `shift`.
    ["flow_shift", "shift"]
        .iter()
        .find_map(|key| json.get(*key)?.as_f64())
        .filter(|s| s.is_finite() && *s > 0.0)
}

/// The guidance scale of the model's diffusers guider (`guider/guider_config.json`, where
/// HunyuanVideo 1.5's pipeline keeps it), if it has one.
fn guider_guidance_scale(files: &ModelFiles) -> Option<f64> {
    let path = files.optional_file("guider/guider_config.json").ok()??;
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    json.get("guidance_scale")?
        .as_f64()
        .filter(|g| g.is_finite() && *g > 0.0)
}

/// The model's diffusers `model_index.json`, if it has one that parses.
fn model_index(files: &ModelFiles) -> Option<serde_json::Value> {
    let path = files.optional_file("model_index.json").ok()??;
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// The family of a model the registry does not know, from its files (see
/// [`crate::family::detect_family`]).
fn detect_model_family(
    files: &ModelFiles,
    index: Option<&serde_json::Value>,
) -> &'static ModelFamily {
    let has_component = |component: &str| {
        matches!(
            files.optional_file(&format!("{component}/config.json")),
            Ok(Some(_))
        )
    };
    // The first transformer's config, in the diffusers or Wan-AI layout.
    let transformer_config = ["transformer", "high_noise_model"].iter().find_map(|c| {
        let path = files.optional_file(&format!("{c}/config.json")).ok()??;
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    });
    detect_family(index, &has_component, transformer_config.as_ref())
}

/// A recipe's LoRA file from the hub cache, downloaded first unless offline.
fn fetch_entry_lora(lora: &EntryLora, hub: &HubOptions) -> Result<LoraSpec> {
    let location = ModelLocation::Hub {
        repo_id: lora.hub_id.clone(),
        revision: "main".into(),
    };
    let path = ModelFiles::new(location, hub.clone()).file(&lora.file)?;
    Ok(LoraSpec {
        path,
        strength: lora.strength,
    })
}

/// A random seed in [0, 2^53): every such integer is exact as a JSON number read as a double (jq,
/// JavaScript), so the seed printed in the sidecar reproduces the run when read back.
fn random_seed() -> u64 {
    rand::random::<u64>() >> 11
}

/// The input images of a run, read and checked against the model's family (each problem one
/// line in `problems`): `--image` only for a family that takes images, and then required unless
/// the family also runs from text (TI2V-5B); `--last-image` only for a first-and-last-frame
/// family, which needs both. With `--latents-in` nothing is sampled, so no image is needed.
fn resolve_images(
    args: &GenerateOptions,
    family: &ModelFamily,
    model: &str,
    problems: &mut Vec<String>,
) -> (Option<ImageRecord>, Option<ImageRecord>) {
    let image_models = "image-to-video models: wan2.1-i2v-14b-480p, wan2.1-i2v-14b-720p, wan2.1-flf2v-14b-720p, wan2.2-i2v-a14b, wan2.2-ti2v-5b";
    if args.image.is_some() && !family.takes(FamilyFlag::Image) {
        problems.push(format!(
            "--image: model {model} ({} family) is text-to-video only; {image_models}",
            family.name
        ));
    }
    if args.last_image.is_some() && !family.takes(FamilyFlag::LastImage) {
        problems.push(format!(
            "--last-image: model {model} ({} family) takes no last frame; wan2.1-flf2v-14b-720p does",
            family.name
        ));
    }
    let sampling = args.latents_in.is_none();
    if let Some(input) = family.image.filter(|_| sampling) {
        if input.required && args.image.is_none() {
            problems.push(format!(
                "model {model} ({} family) is image-to-video: give its first frame with --image PATH (png, jpeg or webp)",
                family.name
            ));
        }
        if input.last_image && args.last_image.is_none() {
            problems.push(format!(
                "model {model} ({} family) generates between a first and a last frame: give the last with --last-image PATH",
                family.name
            ));
        }
    }
    let mut read = |flag: &str, path: &Option<PathBuf>| {
        let path = path.as_ref()?;
        match read_image(flag, path) {
            Ok(image) => Some(image.record),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        }
    };
    // An image the model cannot take is reported once (above), not read.
    let image = if family.takes(FamilyFlag::Image) {
        read("--image", &args.image)
    } else {
        None
    };
    let last = if family.takes(FamilyFlag::LastImage) {
        read("--last-image", &args.last_image)
    } else {
        None
    };
    (image, last)
}

/// Fills in and checks the settings of `vdit generate`. Returns the settings and the resolver
/// of the model's files, or every problem found (one line each).
pub fn resolve(
    args: &GenerateOptions,
    registry: &Registry,
) -> Result<(GenerateSettings, ModelFiles)> {
    let mut problems: Vec<String> = Vec::new();

    let model = match (&args.model, registry.default_model()) {
        (Some(m), _) => m.clone(),
        (None, Some(entry)) => entry.name.clone(),
        (None, None) => {
            return Err(VditError::InvalidSetting(
                "no --model given and the registry has no available default model".into(),
            ))
        }
    };
    let location = ModelLocation::parse(&model, registry)?;
    let hub = HubOptions::from_env(args.offline);
    let files = ModelFiles::new(location, hub.clone());
    // A registry entry's defaults (its TOML and its folder's file), else a local folder's own.
    let folder_defaults = match (registry.get(&model), files.location()) {
        (None, ModelLocation::Local(dir)) => match ModelDefaults::of_folder(dir) {
            Ok(d) => d.unwrap_or_default(),
            Err(e) => {
                problems.push(e.to_string());
                ModelDefaults::default()
            }
        },
        _ => ModelDefaults::default(),
    };
    let defaults = registry
        .get(&model)
        .map(|e| &e.defaults)
        .unwrap_or(&folder_defaults);
    let index = model_index(&files);
    let family = match registry.get(&model) {
        Some(entry) => entry.family,
        None => detect_model_family(&files, index.as_ref()),
    };
    let family_defaults = &family.defaults;
    // Other HunyuanVideo 1.5 pipelines (image-to-video, super-resolution) would otherwise be
    // taken for a Wan model and fail later on its layout.
    let class = index
        .as_ref()
        .and_then(|m| m.get("_class_name")?.as_str().map(String::from));
    if let Some(class) = class.filter(|c| c.starts_with("HunyuanVideo15")) {
        if family.name != crate::family::hunyuan15::HUNYUANVIDEO15_T2V.name {
            problems.push(format!(
                "model {model}: a {class} folder; vdit runs HunyuanVideo 1.5 text-to-video only \
                 (HunyuanVideo15Pipeline)"
            ));
        }
    }

    let (image, last_image) = resolve_images(args, family, &model, &mut problems);
    let (size_w, size_h) = args.size.unzip();
    let default_width = defaults.width.unwrap_or(family_defaults.width);
    let default_height = defaults.height.unwrap_or(family_defaults.height);
    // Without a size, an image-to-video run keeps the image's aspect ratio at the model's pixel
    // budget (its default size's area), as Wan's generate.py does.
    let (default_width, default_height) = match (
        &image,
        family.image,
        args.width.or(size_w),
        args.height.or(size_h),
    ) {
        (Some(image), Some(input), None, None) => video_size_for_image(
            image.width,
            image.height,
            default_width as u64 * default_height as u64,
            family.pixel_multiple(),
            input.fit,
        ),
        _ => (default_width, default_height),
    };
    let width = args.width.or(size_w).unwrap_or(default_width);
    let height = args.height.or(size_h).unwrap_or(default_height);
    let multiple = family.pixel_multiple();
    for (name, v) in [("width", width), ("height", height)] {
        if v == 0 || !v.is_multiple_of(multiple) {
            problems.push(format!(
                "{name} {v} is not a positive multiple of {multiple} (the {} family's VAE compression times its patch)",
                family.name
            ));
        }
    }
    let frames = args
        .frames
        .or(defaults.frames)
        .unwrap_or(family_defaults.frames);
    if frames == 0 || !(frames - 1).is_multiple_of(4) {
        problems.push(format!("--frames {frames} is not 4n+1"));
    } else if last_image.is_some() && frames < 5 {
        problems.push(format!(
            "--frames {frames}: a first and a last frame need at least 5 frames"
        ));
    }
    // A step list given on the command line wins over the entry's, and over --steps.
    let timesteps = match (&args.timesteps, args.steps) {
        (Some(list), _) => Some(list.clone()),
        (None, Some(_)) => None,
        (None, None) => defaults.timesteps.clone(),
    };
    if let Some(list) = &timesteps {
        if let Err(e) = crate::sampling::check_step_list(list) {
            problems.push(format!("--timesteps: {e}"));
        }
        if let Some(n) = args
            .steps
            .filter(|&n| n != list.len() && args.timesteps.is_some())
        {
            problems.push(format!(
                "--steps {n} disagrees with the {} values of --timesteps (give one of them)",
                list.len()
            ));
        }
    }
    let steps = match &timesteps {
        Some(list) => list.len(),
        None => args
            .steps
            .or(defaults.steps)
            .unwrap_or(family_defaults.steps),
    };
    if steps == 0 {
        problems.push("--steps must be at least 1".into());
    }
    // As the shift below: a model the registry does not know brings its own guider's scale.
    let guidance_scale = args
        .guidance_scale
        .or(defaults.guidance_scale)
        .or_else(|| {
            registry
                .get(&model)
                .is_none()
                .then(|| guider_guidance_scale(&files))
                .flatten()
        })
        .unwrap_or(family_defaults.guidance_scale);
    let two_experts = family.takes(FamilyFlag::GuidanceScale2);
    let guidance_scale_2 = if two_experts {
        Some(
            args.guidance_scale_2
                .or(defaults.guidance_scale_2)
                .or(family_defaults.guidance_scale_2)
                .unwrap_or(guidance_scale),
        )
    } else {
        None
    };
    let boundary_ratio = match family.boundary_ratio {
        Some(family_boundary) => {
            let own = index
                .as_ref()
                .and_then(|m| m.get("boundary_ratio"))
                .and_then(|v| v.as_f64());
            let ratio = own.unwrap_or(family_boundary);
            if !(0.0..=1.0).contains(&ratio) {
                problems.push(format!(
                    "model_index.json: boundary_ratio {ratio} is outside [0, 1]"
                ));
            }
            Some(ratio)
        }
        None => None,
    };
    for (given, takes, what) in [
        (
            args.guidance_scale_2.is_some(),
            family.takes(FamilyFlag::GuidanceScale2),
            "--guidance-scale-2",
        ),
        (args.dit_2.is_some(), family.experts.len() > 1, "--dit-2"),
        (
            !args.loras_2.is_empty(),
            family.experts.len() > 1,
            "--lora-2",
        ),
        (
            args.keep_experts,
            family.takes(FamilyFlag::KeepExpertsLoaded),
            "--keep-experts",
        ),
    ] {
        if given && !takes {
            problems.push(format!(
                "{what}: model {model} ({} family) has one transformer; this flag is for two-expert models such as wan2.2-t2v-a14b",
                family.name
            ));
        }
    }
    if args.keep_experts && matches!(args.offload, OffloadChoice::Experts | OffloadChoice::Blocks) {
        problems.push(format!(
            "--keep-experts is --offload none: it contradicts --offload {}",
            args.offload.name()
        ));
    }
    // The model's own scheduler config is the best guess for a model the registry does not know.
    let shift = match args.shift.or(defaults.shift) {
        Some(s) => s,
        None if registry.get(&model).is_none() => {
            scheduler_shift(&files).unwrap_or(family_defaults.shift)
        }
        None => family_defaults.shift,
    };
    let sampler = args
        .sampler
        .or(defaults.sampler)
        .unwrap_or(family_defaults.sampler);
    if timesteps.is_some() && sampler == SamplerKind::Unipc {
        problems.push(
            "--timesteps needs --sampler euler or lcm (UniPC builds its own evenly spaced grid)"
                .into(),
        );
    }
    let mut loras = LoraSettings {
        first: args.loras.clone(),
        second: args.loras_2.clone(),
        mode: args.lora_mode,
        partial: args.lora_partial,
    };
    for (flag, list) in [("--lora", &loras.first), ("--lora-2", &loras.second)] {
        for lora in list {
            if !lora.path.is_file() {
                problems.push(format!("{flag} {}: no such file", lora.path.display()));
            }
        }
    }
    let fps = args.fps.or(defaults.fps).unwrap_or(family_defaults.fps);
    let negative_prompt = args
        .negative_prompt
        .clone()
        .or_else(|| defaults.negative_prompt.clone())
        .unwrap_or_else(|| family_defaults.negative_prompt.to_string());

    let (seed, seed_was_random) = match args.seed {
        Some(s) => (s, false),
        None => (random_seed(), true),
    };

    let output = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("vdit-{seed}.mp4")));
    // Checked before any model loads: extension, directory, permission to create files.
    let format = match crate::video::check_writable(&output) {
        Ok(f) => Some(f),
        Err(e) => {
            problems.push(format!("-o {e}"));
            None
        }
    };
    if let Some(latents) = &args.latents_out {
        if latents.is_dir() {
            problems.push(format!(
                "--latents-out {}: is a directory (give a file name, e.g. {})",
                latents.display(),
                latents.join("latents.safetensors").display()
            ));
        } else if let Err(e) = check_writable_dir("--latents-out", latents) {
            problems.push(e);
        }
    }
    if let Some(latents) = &args.latents_in {
        if !latents.is_file() {
            problems.push(format!("--latents-in {}: no such file", latents.display()));
        }
    }
    if let Some(noise) = &args.noise {
        if !noise.is_file() {
            problems.push(format!("--noise {}: no such file", noise.display()));
        }
    }
    for (flag, path) in [
        ("--dit", &args.dit),
        ("--dit-2", &args.dit_2),
        ("--vae", &args.vae),
        ("--text-encoder", &args.text_encoder),
        ("--tokenizer", &args.tokenizer),
    ] {
        if let Some(path) = path {
            if let Err(e) = check_override(flag, path) {
                problems.push(e.to_string());
            }
        }
    }

    let dense_steps = args.dense_steps.unwrap_or_default();
    if let Some(DenseSteps::Count(n)) = args.dense_steps {
        if n > steps {
            problems.push(format!(
                "--dense-steps {n} is more than the {steps} sampling steps"
            ));
        }
    }

    let mut cache_warnings = Vec::new();
    let step_cache = resolve_step_cache(
        args,
        defaults,
        &files,
        &model,
        steps,
        &mut problems,
        &mut cache_warnings,
    );

    let device = match resolve_device(args.device) {
        Ok(d) => d,
        Err(e) => {
            problems.push(e);
            DeviceKind::Cpu
        }
    };
    let dtype = resolve_dtype(args.dtype, device);

    if !problems.is_empty() {
        return Err(VditError::InvalidSetting(problems.join("\n")));
    }
    // The entry's own LoRAs (a recipe such as a 4-step distilled model) come first, fetched
    // from the hub unless cached; the user's add to them.
    if let Some(entry) = registry.get(&model) {
        let (mut first, mut second) = (Vec::new(), Vec::new());
        for lora in &entry.loras {
            let spec = fetch_entry_lora(lora, &hub)?;
            if lora.expert == 2 {
                second.push(spec);
            } else {
                first.push(spec);
            }
        }
        first.append(&mut loras.first);
        second.append(&mut loras.second);
        loras.first = first;
        loras.second = second;
    }
    let published_transformer = registry.get(&model).and_then(|e| e.transformer);
    let settings = GenerateSettings {
        prompt: args.prompt.clone(),
        negative_prompt,
        width,
        height,
        frames,
        steps,
        guidance_scale,
        guidance_scale_2,
        boundary_ratio,
        shift,
        sampler,
        timesteps,
        seed,
        seed_was_random,
        fps,
        output,
        format: format.expect("no problems, so the format parsed"),
        device,
        dtype,
        model,
        model_location: files.location().to_string(),
        offline: hub.offline,
        t5_cpu: args.t5_cpu,
        vae_tiling: args.vae_tiling,
        // Decided with the memory estimate below (check_resources).
        keep_experts: args.keep_experts,
        offload: OffloadSettings {
            mode: OffloadMode::None,
            auto: false,
            reason: None,
        },
        overrides: Overrides {
            dit: args.dit.clone(),
            dit_2: args.dit_2.clone(),
            vae: args.vae.clone(),
            text_encoder: args.text_encoder.clone(),
            tokenizer: args.tokenizer.clone(),
        },
        noise: args.noise.clone(),
        latents_out: args.latents_out.clone(),
        latents_in: args.latents_in.clone(),
        overwrite: args.overwrite,
        attention: AttentionSettings {
            mode: args.attention,
            sparsity: args.sparsity,
            dense_steps,
            dense_step_count: dense_steps.resolve(steps),
            mask_refresh: args.mask_refresh,
            block_size: args.block_size,
            window: args.window,
            dense_layers: args.dense_layers,
        },
        lora: loras,
        image,
        last_image,
        step_cache,
        decoder: DecoderSettings::resolve(
            args.decoder,
            args.tiny_vae.as_deref(),
            family.latent.channels,
            &hub,
        )?,
        family,
        published_transformer,
        warnings: Vec::new(),
    };
    let mut settings = settings;
    settings.offload = resolve_offload(&settings, &files, args)?;
    settings.keep_experts = settings.offload.mode.keeps_experts_loaded() && two_experts;
    settings.warnings = check_resources(&settings, &files, args)?;
    settings.warnings.extend(cache_warnings);
    Ok((settings, files))
}

/// The step-cache settings of `args` for `model` sampled in `steps` steps, with every problem
/// pushed to `problems` (one line each): flags that `--step-cache none` would ignore, a mode
/// without the calibration it needs, kept steps given that leave nothing to skip (the default
/// ones on a short run only warn, in `warnings`).
fn resolve_step_cache(
    args: &GenerateOptions,
    defaults: &ModelDefaults,
    files: &ModelFiles,
    model: &str,
    steps: usize,
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> StepCacheSettings {
    let mode = args.step_cache;
    let mut settings = StepCacheSettings {
        mode,
        threshold: args
            .cache_threshold
            .unwrap_or(StepCacheSettings::default_threshold(mode)),
        keep_first: args
            .cache_keep_first
            .unwrap_or(StepCacheSettings::default_keep_first(mode, steps)),
        keep_last: args.cache_keep_last.unwrap_or(crate::step_cache::KEEP_LAST),
        max_skips: args
            .cache_max_skips
            .unwrap_or(crate::step_cache::MAGCACHE_MAX_SKIPS),
        calibration: None,
        calibrate: args.cache_calibrate.clone(),
    };
    let tuning = [
        ("--cache-threshold", args.cache_threshold.is_some()),
        ("--cache-keep-first", args.cache_keep_first.is_some()),
        ("--cache-keep-last", args.cache_keep_last.is_some()),
        ("--cache-max-skips", args.cache_max_skips.is_some()),
        ("--cache-calibration", args.cache_calibration.is_some()),
    ];
    let given: Vec<&str> = tuning
        .iter()
        .filter_map(|(flag, given)| given.then_some(*flag))
        .collect();
    if let Some(path) = &args.cache_calibrate {
        if mode != StepCacheMode::None || !given.is_empty() {
            problems.push(format!(
                "--cache-calibrate runs every step uncached to record the ratios: leave out --step-cache {}{}",
                mode.name(),
                given.iter().map(|f| format!(", {f}")).collect::<String>()
            ));
        }
        if args.latents_in.is_some() {
            problems.push("--cache-calibrate needs a sampling run, not --latents-in".into());
        }
        if path.is_dir() {
            problems.push(format!(
                "--cache-calibrate {}: is a directory (give a file name, e.g. {})",
                path.display(),
                path.join("cache_calibration.json").display()
            ));
        } else if let Err(e) = check_writable_dir("--cache-calibrate", path) {
            problems.push(e);
        }
        settings.mode = StepCacheMode::None;
        return settings;
    }
    if mode == StepCacheMode::None {
        if !given.is_empty() {
            problems.push(format!(
                "{} {} no effect with --step-cache none (the default): add --step-cache magcache (or teacache), or leave {} out",
                given.join(", "),
                if given.len() == 1 { "has" } else { "have" },
                if given.len() == 1 { "it" } else { "them" }
            ));
        }
        return settings;
    }
    if mode == StepCacheMode::TeaCache && args.cache_max_skips.is_some() {
        problems
            .push("--cache-max-skips is MagCache's (TeaCache has no cap on skips in a row)".into());
    }
    let keep_given = args.cache_keep_first.is_some() || args.cache_keep_last.is_some();
    if settings.keep_first + settings.keep_last >= steps && !keep_given {
        // The defaults on a short run: it runs, uncached, and says so.
        warnings.push(format!(
            "--step-cache {}: a {steps}-step run keeps its first {} and last {} steps, so no step is skipped",
            mode.name(),
            settings.keep_first,
            settings.keep_last
        ));
    } else if settings.keep_first + settings.keep_last >= steps {
        problems.push(format!(
            "--step-cache {}: the first {} and last {} steps always run, which leaves none of the {steps} steps to skip (lower --cache-keep-first or --cache-keep-last)",
            mode.name(),
            settings.keep_first,
            settings.keep_last
        ));
    }
    if !settings.threshold.is_finite() || settings.threshold < 0.0 {
        problems.push(format!(
            "--cache-threshold {} is not a finite value ≥ 0",
            settings.threshold
        ));
    }
    let calibration = match (&args.cache_calibration, &defaults.cache_calibration) {
        (Some(path), _) => Calibration::from_file("--cache-calibration", path).map(Some),
        (None, Some(name)) => match Calibration::builtin(name) {
            Some(builtin) => Ok(Some(builtin)),
            None => match files.location() {
                ModelLocation::Local(dir) => {
                    Calibration::from_file("the model's cache_calibration", &dir.join(name))
                        .map(Some)
                }
                ModelLocation::Hub { .. } => Err(VditError::InvalidSetting(format!(
                    "model {model}: cache_calibration `{name}` is not a built-in calibration ({})",
                    crate::step_cache::calibration::BUILTIN_NAMES.join(", ")
                ))),
            },
        },
        (None, None) => Ok(None),
    };
    let calibration = match calibration {
        Ok(c) => c,
        Err(e) => {
            problems.push(e.to_string());
            return settings;
        }
    };
    let missing = match (mode, &calibration) {
        (StepCacheMode::MagCache, c) if c.as_ref().is_none_or(|c| c.mag_ratios.is_none()) => Some(format!(
            "--step-cache magcache: model {model} has no magnitude-ratio calibration; record one with `vdit generate -m {model} --cache-calibrate FILE` and pass --cache-calibration FILE"
        )),
        (StepCacheMode::TeaCache, c) if c.as_ref().is_none_or(|c| c.teacache.is_none()) => Some(format!(
            "--step-cache teacache: model {model} has no TeaCache coefficients (published for Wan2.1 T2V 1.3B and 14B only); use --step-cache magcache, which any model can be calibrated for"
        )),
        _ => None,
    };
    if let Some(line) = missing {
        problems.push(line);
    }
    settings.calibration = calibration;
    settings
}

/// The transformer's shape and weight bytes as loaded in `dtype_bytes` a value: read from the
/// model's files where they are here (a local folder, a cached hub model: its
/// `transformer/config.json` and weight files, or `--dit`'s), else from the registry entry's
/// published size (a hub model not downloaded yet), else Wan2.1-1.3B's shape and unknown
/// weights. A file wider than the run dtype (fp32 published, bf16 run) counts at the run dtype
/// when the published parameter count is known; a GGUF or fp8 file keeps its own bytes.
fn transformer_facts(
    files: &ModelFiles,
    args: &GenerateOptions,
    published: Option<&PublishedTransformer>,
    dtype_bytes: u64,
) -> (TransformerShape, u64) {
    let dir = match &args.dit {
        Some(dit) if dit.is_dir() => Some(dit.clone()),
        Some(_) => None,
        // A hub model counts once it is in the cache (nothing is downloaded for an estimate).
        None => files.cached_component_dir("transformer"),
    };
    let published_shape = published.map(|p| TransformerShape {
        dim: p.dim,
        ffn_dim: p.ffn_dim,
        layers: p.layers,
    });
    let shape = dir
        .as_ref()
        .and_then(|d| std::fs::read_to_string(d.join("config.json")).ok())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|json| TransformerShape::from_config_json(&json))
        .or(published_shape)
        .unwrap_or(TransformerShape::WAN21_1_3B);
    let file_bytes = match (&args.dit, &dir) {
        (Some(file), _) if file.is_file() => file.metadata().map_or(0, |m| m.len()),
        (_, Some(dir)) => std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .fold(0u64, u64::saturating_add)
        }),
        _ => 0,
    };
    let published_bytes = published.map(|p| p.params.saturating_mul(dtype_bytes));
    let weight_bytes = match (file_bytes, published_bytes) {
        (0, Some(bytes)) => bytes,
        (file, Some(bytes)) => file.min(bytes),
        (file, None) => file,
    };
    (shape, weight_bytes)
}

/// `--offload` resolved: `--keep-experts` is `none`; `auto` chooses from the device's free
/// memory and the estimate of each mode (see [`choose_offload`]).
fn resolve_offload(
    settings: &GenerateSettings,
    files: &ModelFiles,
    args: &GenerateOptions,
) -> Result<OffloadSettings> {
    let two_experts = settings.family.experts.len() > 1;
    let given = |mode| OffloadSettings {
        mode,
        auto: false,
        reason: None,
    };
    Ok(match args.offload {
        _ if args.keep_experts => given(OffloadMode::None),
        OffloadChoice::None => given(OffloadMode::None),
        // One transformer: keeping "only the active expert" is keeping it.
        OffloadChoice::Experts if !two_experts => given(OffloadMode::None),
        OffloadChoice::Experts => given(OffloadMode::Experts),
        OffloadChoice::Blocks => given(OffloadMode::Blocks),
        OffloadChoice::Auto => {
            // The free memory is read only when it can decide something: before anything of
            // this run is loaded, so it is what the run can have.
            let free = match settings.device {
                DeviceKind::Cpu => None,
                kind => crate::memory::device_free_bytes(&kind.device()?),
            };
            let needs = OffloadNeeds::of(
                &run_shape(settings, files, args),
                settings.family.experts.len() as u64,
            );
            let on_cpu = settings.device == DeviceKind::Cpu;
            let (mode, reason) = choose_offload(on_cpu, free, two_experts, &needs);
            OffloadSettings {
                mode,
                auto: true,
                reason: Some(reason),
            }
        }
    })
}

/// What decides the memory of the run of `settings` (see [`crate::memory`]).
fn run_shape(settings: &GenerateSettings, files: &ModelFiles, args: &GenerateOptions) -> RunShape {
    let family = settings.family;
    let (transformer, weight_bytes) = transformer_facts(
        files,
        args,
        settings.published_transformer.as_ref(),
        settings.dtype.size_in_bytes() as u64,
    );
    let [_, channels, latent_frames, latent_h, latent_w] =
        family
            .latent
            .shape(settings.width, settings.height, settings.frames);
    let (pf, ph, pw) = family.latent.patch;
    let tokens = ((latent_frames / pf) as u64)
        .saturating_mul((latent_h / ph) as u64)
        .saturating_mul((latent_w / pw) as u64);
    RunShape {
        width: settings.width as u64,
        height: settings.height as u64,
        frames: settings.frames as u64,
        latent: [
            channels as u64,
            latent_frames as u64,
            latent_h as u64,
            latent_w as u64,
        ],
        tokens,
        batch: if settings.uses_guidance() { 2 } else { 1 },
        transformer,
        weight_bytes,
        dtype_bytes: settings.dtype.size_in_bytes() as u64,
        vae_tiling: settings.vae_tiling,
        steps: settings.steps as u64,
    }
}

/// Refuses a run that cannot fit in memory (one line, before anything loads) and returns the
/// warnings a run should print first: a CPU run that will be slow. See [`crate::memory`].
fn check_resources(
    settings: &GenerateSettings,
    files: &ModelFiles,
    args: &GenerateOptions,
) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    let shape = run_shape(settings, files, args);
    let mut need = shape.memory();
    // The transformer stage under the run's offload (two-expert models kept both loaded count
    // both).
    need.transformer =
        shape.transformer_bytes(settings.offload.mode, settings.family.experts.len() as u64);
    need.peak = need
        .transformer
        .max(need.vae_decode)
        .saturating_add(need.latents);
    let available = match settings.device {
        DeviceKind::Cpu => crate::memory::cpu_available_bytes(),
        _ => crate::memory::device_available_bytes(),
    };
    // Beyond this no device of today fits a run, whatever `available` says (or cannot say).
    const NO_DEVICE_HAS: u128 = 4_000_000_000_000;
    let limit = available.map_or(NO_DEVICE_HAS, |a| (a as u128).min(NO_DEVICE_HAS));
    if need.peak > limit {
        let largest = if need.vae_decode > need.transformer && !settings.vae_tiling {
            "; --vae-tiling decodes in tiles"
        } else {
            ""
        };
        let have = match available {
            Some(a) => format!(
                "the {} has {} available",
                settings.device.name(),
                human_bytes(a as u128)
            ),
            None => "no device has that much".to_string(),
        };
        return Err(VditError::InvalidSetting(format!(
            "{}x{}, {} frames needs about {} of memory (transformer {}, VAE decode {}, latents {}) but {have}: use a smaller --size or fewer --frames{largest}",
            settings.width,
            settings.height,
            settings.frames,
            human_bytes(need.peak),
            human_bytes(need.transformer),
            human_bytes(need.vae_decode),
            human_bytes(need.latents),
        )));
    }
    if settings.device == DeviceKind::Cpu {
        let seconds = crate::memory::cpu_sampling_seconds(&shape);
        if seconds > SLOW_CPU_RUN_S {
            warnings.push(format!(
                "on the CPU the {} sampling steps at {}x{}, {} frames will take about {} (an estimate); a GPU (--device cuda), a smaller --size, fewer --frames or --steps are faster",
                settings.steps,
                settings.width,
                settings.height,
                settings.frames,
                human_duration(seconds)
            ));
        }
    }
    Ok(warnings)
}

/// A CPU run whose sampling is estimated longer than this gets a warning (seconds).
pub const SLOW_CPU_RUN_S: f64 = 600.0;

#[cfg(test)]
mod seed_tests {
    use super::random_seed;

    #[test]
    fn random_seeds_survive_a_round_trip_through_a_double() {
        for _ in 0..10_000 {
            let seed = random_seed();
            assert!(seed < 1 << 53, "seed {seed} is not exact as a double");
            assert_eq!(seed as f64 as u64, seed);
        }
    }
}

#[cfg(test)]
mod estimate_tests {
    use super::*;

    const WAN14B: PublishedTransformer = PublishedTransformer {
        dim: 5120,
        ffn_dim: 13_824,
        layers: 40,
        params: 14_290_000_000,
    };

    fn hub_not_downloaded(cache: &Path) -> ModelFiles {
        ModelFiles::new(
            ModelLocation::Hub {
                repo_id: "owner/not-here".into(),
                revision: "main".into(),
            },
            HubOptions {
                offline: true,
                cache_dir: cache.to_path_buf(),
            },
        )
    }

    #[test]
    fn a_hub_model_not_downloaded_is_estimated_from_its_registry_entry() {
        let cache = tempfile::tempdir().unwrap();
        let files = hub_not_downloaded(cache.path());
        let args = GenerateOptions::new("p");
        let (shape, bytes) = transformer_facts(&files, &args, Some(&WAN14B), 2);
        assert_eq!((shape.dim, shape.ffn_dim, shape.layers), (5120, 13_824, 40));
        assert_eq!(bytes, 28_580_000_000);
        // Without an entry's facts: the 1.3B's shape and unknown weights, as before.
        let (shape, bytes) = transformer_facts(&files, &args, None, 2);
        assert_eq!(shape, TransformerShape::WAN21_1_3B);
        assert_eq!(bytes, 0);
    }

    #[test]
    fn a_file_wider_than_the_run_dtype_counts_as_loaded_and_a_quantised_one_as_stored() {
        let dir = tempfile::tempdir().unwrap();
        // An fp32 checkpoint of the 14B (4 bytes a parameter), as a sparse file.
        let fp32 = dir.path().join("fp32.safetensors");
        std::fs::File::create(&fp32)
            .unwrap()
            .set_len(4 * WAN14B.params)
            .unwrap();
        let mut args = GenerateOptions::new("p");
        args.dit = Some(fp32);
        let files = hub_not_downloaded(dir.path());
        let (_, bytes) = transformer_facts(&files, &args, Some(&WAN14B), 2);
        assert_eq!(bytes, 2 * WAN14B.params, "loaded in bf16");
        // A Q8_0 file (about 1.06 bytes a parameter) stays quantised on the device.
        let q8 = dir.path().join("q8_0.gguf");
        std::fs::File::create(&q8)
            .unwrap()
            .set_len(15_200_000_000)
            .unwrap();
        args.dit = Some(q8);
        let (_, bytes) = transformer_facts(&files, &args, Some(&WAN14B), 2);
        assert_eq!(bytes, 15_200_000_000);
    }

    #[test]
    fn every_hub_entry_states_a_transformer_size_its_shape_accounts_for() {
        let registry = Registry::embedded();
        for entry in registry.entries() {
            if !matches!(entry.source, crate::registry::EntrySource::Hub { .. }) {
                continue;
            }
            let t = entry
                .transformer
                .unwrap_or_else(|| panic!("{}: no [transformer] size", entry.name));
            let shape = TransformerShape {
                dim: t.dim,
                ffn_dim: t.ffn_dim,
                layers: t.layers,
            };
            let counted = shape.block_params() * t.layers as u128 + shape.non_block_params();
            let ratio = t.params as f64 / counted as f64;
            // Wan's blocks are counted whole; HunyuanVideo 1.5's dual-stream blocks hold about
            // twice what a Wan block of the same width does (two streams, their modulations).
            let bound = if entry.family.name.starts_with("hunyuan") {
                1.5..3.0
            } else {
                0.97..1.2
            };
            assert!(bound.contains(&ratio), "{}: ratio {ratio:.3}", entry.name);
        }
    }
}
