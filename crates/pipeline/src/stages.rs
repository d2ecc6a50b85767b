//! Text to video in three named stages, each of which loads its network, runs it and frees it:
//!
//! ```text
//! encode   prompt, negative prompt ──text encoder(s)──► text context each (crate::context):
//!          umT5 [1, 512, D]; HunyuanVideo 1.5: Qwen2.5-VL and ByT5 streams with masks
//!          image(s) (image-to-video) ──VAE encoder, CLIP──► image condition (crate::image_cond)
//! denoise  noise [1,C,F',H/s,W/s] ──N solver steps, transformer (cond+uncond batched), CFG──► latents
//! decode   latents ──the family's VAE──► video [1, 3, F, H, W] in [-1, 1] ──► frames ──► file + sidecar JSON
//! ```
//!
//! What runs is the model's family ([`crate::family`]): its text encoder, its experts (the
//! transformers and when each runs) and its VAE, each chosen by its kind (the HunyuanVideo 1.5
//! networks' loading lives in [`crate::hunyuan15`]). The step loop ([`crate::denoise::denoise`]) asks
//! a [`Denoiser`](crate::denoise::Denoiser) per step, so it is tested with toy models and serves
//! any flow-matching transformer.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rainfusion::{
    DenseAttention, RainFusionAttention, RainFusionConfig, RainFusionV1Attention,
    RainFusionV1Config, SelfAttention, Window,
};
use serde::Serialize;

use crate::context::TextContext;
use crate::denoise::{denoise, Conditioning, Expert, ExpertDenoiser, VelocityModel};
use crate::error::{Result, VditError};
use crate::hunyuan15::HunyuanPromptEncoder;
use crate::options::{AttentionMode, TokenWindow};
use vdit_models::clip_vision::config::ClipVisionConfig;
use vdit_models::clip_vision::model::ClipVisionModel;
use vdit_models::clip_vision::preprocess::preprocess as clip_preprocess;
use vdit_models::lora::LoraSet;
use vdit_models::profile::{peak_resident_bytes, DevicePeakSampler};
use vdit_models::readback::{ReadBytes, Readback};
use vdit_models::tokenizer::PromptTokenizer;
use vdit_models::umt5::{Umt5Config, Umt5Encoder};
use vdit_models::wan::config::WanConfig;
use vdit_models::wan::keys::lora_targets;
use vdit_models::wan::transformer::{BlockCache, WanTransformer};
use vdit_models::wan::vae::{WanVaeConfig, WanVaeDecoder, WanVaeEncoder};
use vdit_models::wan::CheckpointKeys;
use vdit_models::weights::WeightFiles;

use crate::decoder::{check_tiny, DecoderSettings, VideoDecoder};
use crate::denoise::LoadModel;
use crate::family::{
    ExpertRule, ImageConditioning, ImageEncoderKind, TextEncoderKind, TransformerKind, VaeKind,
};
use crate::hub::{ComponentFiles, ModelFiles};
use crate::image_cond::{fit_image, image_tensor, read_image, ImageCondition, LatentCondition};
use crate::output::{load_latents, save_latents, write_json_atomic};
use crate::ownership::{exists, foreign_file, is_vdit_latents, record_lists, Replace};
use crate::resident::LoadedStages;
use crate::sampling::{load_noise, seeded_noise};
use crate::settings::{AttentionSettings, GenerateSettings};
use crate::step_cache::{recorded_ratios, CacheStats, CalibrationFile, MagRatios};
use crate::video::{
    frames_from_bytes, frames_from_tensor, rgb_bytes_tensor, write_video, VideoFrames, VideoSink,
};

/// The self-attention policy the flags ask for, for a transformer of `num_layers` layers
/// sampled in `num_steps` steps. Out-of-range settings give rainfusion's error.
pub fn build_attention(
    settings: &AttentionSettings,
    num_layers: usize,
    num_steps: usize,
) -> Result<Box<dyn SelfAttention>> {
    let invalid =
        |e: rainfusion::Error| VditError::InvalidSetting(format!("sparse attention flags: {e}"));
    match settings.mode {
        AttentionMode::Dense => Ok(Box::new(DenseAttention)),
        AttentionMode::Rainfusion => {
            let config = RainFusionConfig {
                sparsity: settings.sparsity,
                block_size: settings.block_size,
                window: match settings.window {
                    TokenWindow::Tile => Window::Tile,
                    TokenWindow::Spatiotemporal => Window::Spatiotemporal,
                },
                dense_steps: settings.dense_steps,
                mask_refresh: settings.mask_refresh,
                dense_layers: settings.dense_layers,
                first_frame_sink: true,
            };
            config
                .validate_for_run(num_steps, num_layers)
                .map_err(invalid)?;
            Ok(Box::new(
                RainFusionAttention::new(config, num_layers).map_err(invalid)?,
            ))
        }
        AttentionMode::RainfusionV1 => {
            let config = RainFusionV1Config {
                sparsity: settings.sparsity,
                block_size: settings.block_size,
                dense_steps: settings.dense_steps,
                mask_refresh: settings.mask_refresh,
                dense_layers: settings.dense_layers,
                ..RainFusionV1Config::default()
            };
            config
                .validate_for_run(num_steps, num_layers)
                .map_err(invalid)?;
            Ok(Box::new(
                RainFusionV1Attention::new(config, num_layers).map_err(invalid)?,
            ))
        }
    }
}

/// Wall time of each stage, seconds. Each stage's time includes loading its network; the
/// `*_load_s` fields say how much of it was loading (the rest, `*_compute_s()`, is the work).
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageTimings {
    /// Tokenizer and text encoder load, and the prompts' encoding.
    pub encode_s: f64,
    /// Image-to-video: reading the input images, the VAE encoder's and the image encoder's loads
    /// and runs (0 for text-to-video).
    pub image_encode_s: f64,
    /// Transformer loads and the sampling steps.
    pub denoise_s: f64,
    /// VAE load, the decode, and the frames handed to the video writer as they are decoded.
    pub decode_s: f64,
    /// Waiting for the video writer to finish after the last frame (the mp4 encoder runs beside
    /// the decode, so this is only what it has left).
    pub write_s: f64,
    /// Mean of the sampling steps (model passes + solver; a deferred expert's load is in its
    /// first step).
    pub seconds_per_step: f64,
    /// Tokenizer and text-encoder load (part of `encode_s`).
    pub text_encoder_load_s: f64,
    /// Transformer loads, every expert's summed (part of `denoise_s`).
    pub transformer_load_s: f64,
    /// VAE load (part of `decode_s`).
    pub vae_load_s: f64,
    /// The decoded chunks turned into frame bytes on the host, with the wait for each chunk's
    /// device work that this read includes (part of `decode_s`).
    pub decode_to_bytes_s: f64,
    /// Waiting for the video writer to take a chunk: the mp4 encoder behind the decode (part of
    /// `decode_s`).
    pub decode_push_s: f64,
    /// From the start of the run (preflight) to the end of the first sampling step: what the
    /// user waits before the progress bar moves.
    pub first_step_s: f64,
    /// The whole run, preflight to the sidecar written.
    pub total_s: f64,
}

impl StageTimings {
    /// Every network load of the run.
    pub fn load_s(&self) -> f64 {
        self.text_encoder_load_s + self.transformer_load_s + self.vae_load_s
    }

    pub fn encode_compute_s(&self) -> f64 {
        (self.encode_s - self.text_encoder_load_s).max(0.0)
    }

    pub fn denoise_compute_s(&self) -> f64 {
        (self.denoise_s - self.transformer_load_s).max(0.0)
    }

    pub fn decode_compute_s(&self) -> f64 {
        (self.decode_s - self.vae_load_s).max(0.0)
    }
}

/// The sidecar JSON written next to the video.
#[derive(Debug, Clone, Serialize)]
pub struct Sidecar<'a> {
    pub vdit_version: &'static str,
    /// Optional backends compiled into this build (`cuda`, `cudnn`, `metal`); empty on a CPU-only build.
    pub build_features: &'static [&'static str],
    pub settings: &'a GenerateSettings,
    pub timings: &'a StageTimings,
    /// Fraction of attention blocks computed, averaged over layers, heads and steps (1 = dense).
    pub effective_density: f64,
    /// Transformer passes (one per guidance branch and step) and how many the step cache skipped.
    pub step_cache: CacheStats,
    pub peak_memory: PeakMemory,
    pub files: Vec<String>,
}

/// The most memory a run held, as the OS and the driver see it.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PeakMemory {
    /// The device's used memory (total − free) at its highest during the run, sampled every few
    /// milliseconds on a side thread (CUDA; absent elsewhere). It includes what was in use before
    /// the run began (`device_bytes_before`), e.g. another process on the same card.
    pub device_bytes: Option<u64>,
    pub device_bytes_before: Option<u64>,
    /// The process's peak resident set (Linux VmHWM): the whole run on a CPU device, and the host
    /// side (loading, offloaded weights) on a GPU.
    pub host_bytes: Option<u64>,
}

impl std::fmt::Display for PeakMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let mut parts = Vec::new();
        if let Some(device) = self.device_bytes {
            parts.push(format!("{:.2} GiB on the device", gib(device)));
        }
        if let Some(host) = self.host_bytes {
            parts.push(format!("{:.2} GiB host", gib(host)));
        }
        if parts.is_empty() {
            f.write_str("unknown")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// What a finished run reports (printed at the end).
#[derive(Debug, Clone)]
pub struct RunReport {
    pub output: std::path::PathBuf,
    /// The video files written: one for mp4 and gif, one per frame for png.
    pub video_files: Vec<std::path::PathBuf>,
    pub sidecar: std::path::PathBuf,
    pub timings: StageTimings,
    pub effective_density: f64,
    pub step_cache: CacheStats,
    pub peak_memory: PeakMemory,
}

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A png run writes numbered frames, never the `-o` name itself.
        let video = match self.video_files.as_slice() {
            [first, .., last] => format!(
                "{} frames, {} … {}",
                self.video_files.len(),
                first.display(),
                last.display()
            ),
            [only] => only.display().to_string(),
            [] => self.output.display().to_string(),
        };
        write!(
            f,
            "wrote {video} (settings, timings and seed in {})",
            self.sidecar.display()
        )?;
        if self.step_cache.skipped > 0 {
            write!(f, "; step cache: {}", self.step_cache)?;
        }
        write!(f, "; peak memory {}", self.peak_memory)
    }
}

/// Runs the three stages for `settings` with the model `files` and writes the video and sidecar.
///
/// Before any work: [`check_outputs`] (no file vdit did not write is replaced) and
/// [`preflight`] (every file the run reads is found and its headers parse). With
/// `settings.latents_in` the encode and denoise stages are skipped and the saved latents are
/// decoded. When a stage after sampling fails, the latents are saved first (to `--latents-out`,
/// else [`GenerateSettings::fallback_latents_path`]) and the error is
/// [`VditError::AfterSampling`], naming the file to resume from.
pub fn generate(settings: &GenerateSettings, files: &ModelFiles) -> Result<RunReport> {
    generate_in(settings, files, None)
}

/// The networks a process keeps between runs ([`generate_keeping`]).
pub type KeptNetworks = LoadedStages<PromptEncoder>;

/// [`generate`], keeping the networks loaded in `kept` for the next run of the same model and load
/// settings (and using those a previous run kept), where the run may keep them
/// ([`crate::resident::may_keep`]); otherwise the same as [`generate`].
pub fn generate_keeping(
    settings: &GenerateSettings,
    files: &ModelFiles,
    kept: &mut KeptNetworks,
) -> Result<RunReport> {
    if crate::resident::may_keep(settings) {
        kept.prepare(settings, files);
        generate_in(settings, files, Some(kept))
    } else {
        // Nothing stays loaded beside a run that holds less at once.
        *kept = KeptNetworks::default();
        generate_in(settings, files, None)
    }
}

fn generate_in(
    settings: &GenerateSettings,
    files: &ModelFiles,
    mut kept: Option<&mut KeptNetworks>,
) -> Result<RunReport> {
    let run_start = Instant::now();
    check_outputs(settings)?;
    let device = settings.device.device()?;
    let mut timings = StageTimings::default();
    preflight(settings, files)?;
    let device_bytes_before = vdit_models::profile::device_used_bytes(&device);
    let peak_sampler = DevicePeakSampler::start(&device, std::time::Duration::from_millis(5));

    let mut written = Vec::new();
    let mut step_cache = CacheStats::default();
    let (latents, effective_density) = match &settings.latents_in {
        Some(path) => {
            let latents = load_latents("--latents-in", path, &device)?;
            eprintln!(
                "latents      {:?} from {} (encode and denoise skipped)",
                latents.dims(),
                path.display()
            );
            // Nothing was sampled in this run: the density of its attention is unknown.
            (latents, f64::NAN)
        }
        None => {
            let sampled = encode_and_sample(
                settings,
                files,
                &device,
                run_start,
                &mut timings,
                kept.as_deref_mut(),
            )?;
            step_cache = sampled.step_cache;
            if let (Some(path), Some(ratios)) =
                (&settings.step_cache.calibrate, sampled.calibration)
            {
                write_calibration(settings, path, ratios)?;
                eprintln!(
                    "calibration  magnitude ratios of {} steps → {}",
                    settings.steps,
                    path.display()
                );
                written.push(path.display().to_string());
            }
            (sampled.latents, sampled.effective_density)
        }
    };
    let mut latents_saved = None;
    if let (Some(path), None) = (&settings.latents_out, &settings.latents_in) {
        // A failure here (a full disk) must not lose the video: warn, decode, and keep the
        // latents in the fallback file afterwards.
        match save_latents(path, &latents, &latents_info(settings)) {
            Ok(()) => {
                written.push(path.display().to_string());
                latents_saved = Some(path.clone());
            }
            Err(e) => eprintln!("warning: --latents-out {}: {e}", path.display()),
        }
    }

    let decoded = decode_and_write(settings, files, &device, &latents, &mut timings, kept);
    let files_written = match decoded {
        Ok(files_written) => files_written,
        Err(error) if settings.latents_in.is_none() => {
            let latents = match latents_saved {
                Some(path) => Some(path),
                None => save_fallback_latents(settings, &latents),
            };
            return Err(VditError::AfterSampling {
                error: Box::new(error),
                latents,
            });
        }
        Err(error) => return Err(error),
    };
    if settings.latents_out.is_some() && latents_saved.is_none() && settings.latents_in.is_none() {
        if let Some(path) = save_fallback_latents(settings, &latents) {
            eprintln!(
                "warning: the latents are saved in {} instead",
                path.display()
            );
            written.push(path.display().to_string());
        }
    }
    written.extend(files_written.iter().map(|p| p.display().to_string()));
    timings.total_s = run_start.elapsed().as_secs_f64();
    let peak_memory = PeakMemory {
        device_bytes: peak_sampler.and_then(DevicePeakSampler::stop),
        device_bytes_before,
        host_bytes: peak_resident_bytes(),
    };

    let sidecar_path = settings.sidecar_path();
    let sidecar = Sidecar {
        vdit_version: env!("CARGO_PKG_VERSION"),
        build_features: crate::output::build_features(),
        settings,
        timings: &timings,
        effective_density,
        step_cache,
        peak_memory,
        files: written,
    };
    write_json_atomic(&sidecar_path, &sidecar)?;
    // The sidecar's total stops before its own write; the report's includes it.
    timings.total_s = run_start.elapsed().as_secs_f64();
    Ok(RunReport {
        output: settings.output.clone(),
        video_files: files_written,
        sidecar: sidecar_path,
        timings,
        effective_density,
        step_cache,
        peak_memory,
    })
}

/// Writes a `--cache-calibrate` run's magnitude ratios (see [`CalibrationFile`]).
fn write_calibration(settings: &GenerateSettings, path: &Path, ratios: MagRatios) -> Result<()> {
    let file = CalibrationFile {
        vdit_version: env!("CARGO_PKG_VERSION").to_string(),
        model: settings.model.clone(),
        steps: settings.steps,
        guidance_scale: settings.guidance_scale,
        shift: settings.shift,
        size: format!("{}x{}", settings.width, settings.height),
        frames: settings.frames,
        seed: settings.seed,
        magcache: Some(ratios),
        teacache: None,
    };
    write_json_atomic(path, &file)
}

/// A kept network's load time: the time since `start` if this run loaded it, else none.
fn load_seconds(start: Instant, loaded: bool) -> f64 {
    if loaded {
        start.elapsed().as_secs_f64()
    } else {
        0.0
    }
}

/// Stages 1 and 2, with their timings and one line each on stderr.
fn encode_and_sample(
    settings: &GenerateSettings,
    files: &ModelFiles,
    device: &Device,
    run_start: Instant,
    timings: &mut StageTimings,
    mut kept: Option<&mut KeptNetworks>,
) -> Result<SampledLatents> {
    let start = Instant::now();
    let load = || PromptEncoder::load(settings, files, device);
    // This run's own encoder, freed before sampling, unless `kept` holds one for later runs.
    let mut own = None;
    let (encoder, loaded) = match kept.as_deref_mut() {
        Some(kept) => kept.encoder(load)?,
        None => (&*own.insert(load()?), true),
    };
    timings.text_encoder_load_s = load_seconds(start, loaded);
    let text = encoder.conditioning(
        &settings.prompt,
        &settings.negative_prompt,
        settings.uses_guidance(),
    )?;
    drop(own);
    timings.encode_s = start.elapsed().as_secs_f64();
    eprintln!(
        "encode       {:.1} s (load {:.2} s, compute {:.2} s)",
        timings.encode_s,
        timings.text_encoder_load_s,
        timings.encode_compute_s()
    );

    let start = Instant::now();
    let image = encode_images(settings, files, device)?;
    if image.is_some() {
        timings.image_encode_s = start.elapsed().as_secs_f64();
        eprintln!(
            "image        {:.1} s (VAE encoder{})",
            timings.image_encode_s,
            if settings.family.image.is_some_and(|i| i.encoder.is_some()) {
                " and image encoder"
            } else {
                ""
            }
        );
    }

    let start = Instant::now();
    let sampled = match kept {
        Some(kept) => {
            let (models, loaded) =
                kept.transformers(|| load_velocity_models(settings, files, device))?;
            let model_load_s = load_seconds(start, loaded);
            sample_latents_with(models, settings, device, &text, image.as_ref()).map(|mut s| {
                s.model_load_s = model_load_s;
                s
            })
        }
        None => sample_latents(settings, files, device, &text, image.as_ref()),
    }
    .map_err(|e| e.with_dtype_hint(settings.dtype))?;
    timings.denoise_s = start.elapsed().as_secs_f64();
    timings.seconds_per_step = sampled.seconds_per_step;
    timings.transformer_load_s = sampled.model_load_s;
    timings.first_step_s = sampled
        .first_step_done
        .map_or(0.0, |done| (done - run_start).as_secs_f64());
    eprintln!(
        "denoise      {:.1} s (load {:.2} s, compute {:.2} s; {:.2} s/step, first step done {:.2} s \
         into the run, attention density {:.3}{})",
        timings.denoise_s,
        timings.transformer_load_s,
        timings.denoise_compute_s(),
        sampled.seconds_per_step,
        timings.first_step_s,
        sampled.effective_density,
        match settings.step_cache.mode {
            crate::options::StepCacheMode::None => String::new(),
            _ => format!(", {}", sampled.step_cache),
        }
    );
    Ok(sampled)
}

/// Stage 3 and the file write: returns the video files written.
fn decode_and_write(
    settings: &GenerateSettings,
    files: &ModelFiles,
    device: &Device,
    latents: &Tensor,
    timings: &mut StageTimings,
    kept: Option<&mut KeptNetworks>,
) -> Result<Vec<std::path::PathBuf>> {
    // The video is encoded while the VAE decodes: the sink takes each decoded chunk, and its
    // file appears only at `finish` (a failure drops the sink, which removes its temporary file).
    let start = Instant::now();
    let replace = Replace::for_output(&settings.output, settings.overwrite);
    let mut sink = VideoSink::create_replacing(&settings.output, settings.fps, replace)
        .map_err(video_error)?;
    let load = || load_decoder(settings, files, device);
    // This run's own decoder, freed after the decode, unless `kept` holds one for later runs.
    let mut own = None;
    let (decoder, loaded) = match kept {
        Some(kept) => kept.decoder(load)?,
        None => (&*own.insert(load()?), true),
    };
    timings.vae_load_s = load_seconds(start, loaded);
    let chunks = decode_into_sink(decoder, settings, latents, &mut sink)?;
    drop(own);
    timings.decode_s = start.elapsed().as_secs_f64();
    timings.decode_to_bytes_s = chunks.to_bytes_s;
    timings.decode_push_s = chunks.push_s;
    eprintln!(
        "decode       {:.1} s (load {:.2} s, decode and frames to the encoder {:.2} s: frames to \
         bytes {:.2} s with the device's wait, the encoder's wait {:.2} s)",
        timings.decode_s,
        timings.vae_load_s,
        timings.decode_compute_s(),
        chunks.to_bytes_s,
        chunks.push_s,
    );

    let start = Instant::now();
    let files_written = sink.finish().map_err(video_error)?;
    timings.write_s = start.elapsed().as_secs_f64();
    eprintln!(
        "write        {:.2} s (the encoder's work left after the decode)",
        timings.write_s
    );
    Ok(files_written)
}

/// What a latents file records about the run that sampled it (safetensors metadata).
fn latents_info(settings: &GenerateSettings) -> Vec<(&'static str, String)> {
    vec![
        ("model", settings.model.clone()),
        ("width", settings.width.to_string()),
        ("height", settings.height.to_string()),
        ("frames", settings.frames.to_string()),
        ("seed", settings.seed.to_string()),
        ("steps", settings.steps.to_string()),
    ]
}

/// Saves the latents to [`GenerateSettings::fallback_latents_path`] (or, if a file vdit did not
/// write is there, the first free `<output>.latents-N.safetensors`); `None` when that fails too.
fn save_fallback_latents(settings: &GenerateSettings, latents: &Tensor) -> Option<PathBuf> {
    let first = settings.fallback_latents_path();
    let candidates = std::iter::once(first.clone()).chain((1..100).map(|n| {
        let name = first
            .to_string_lossy()
            .replace(".latents.safetensors", &format!(".latents-{n}.safetensors"));
        PathBuf::from(name)
    }));
    for path in candidates {
        if exists(&path) && !is_vdit_latents(&path) {
            continue;
        }
        return match save_latents(&path, latents, &latents_info(settings)) {
            Ok(()) => Some(path),
            Err(e) => {
                eprintln!(
                    "warning: cannot save the latents to {}: {e}",
                    path.display()
                );
                None
            }
        };
    }
    None
}

/// Every file the run writes, checked before any work: the video (each frame of a png
/// sequence's pattern), its sidecar and `--latents-out` may be replaced only if vdit wrote them
/// (see [`crate::ownership`]) or with `--overwrite`. All problems, one line each.
pub fn check_outputs(settings: &GenerateSettings) -> Result<()> {
    if settings.overwrite {
        return Ok(());
    }
    let mut problems = Vec::new();
    let replace = Replace::for_output(&settings.output, false);
    if let Err(e) = crate::video::check_replaceable(&settings.output, &replace) {
        problems.push(format!("-o {e}"));
    }
    let sidecar = settings.sidecar_path();
    if exists(&sidecar) && !record_lists(&sidecar, &settings.output) {
        problems.push(format!(
            "-o {}: its sidecar {}",
            settings.output.display(),
            foreign_file(&sidecar, "it is not a vdit sidecar of this output")
        ));
    }
    if let (Some(latents), None) = (&settings.latents_out, &settings.latents_in) {
        if latents.is_file() && !is_vdit_latents(latents) {
            problems.push(format!(
                "--latents-out {}",
                foreign_file(latents, "no vdit-latents metadata in its header")
            ));
        }
    }
    if let Some(path) = &settings.step_cache.calibrate {
        if exists(path) && crate::ownership::read_vdit_record(path).is_none() {
            problems.push(format!(
                "--cache-calibrate {}",
                foreign_file(path, "it is not a vdit calibration file")
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(VditError::InvalidSetting(problems.join("\n")))
    }
}

/// A video file's error as it is (a full disk while writing the video is not a sampling error).
fn video_error(e: crate::video::VideoError) -> VditError {
    VditError::Video(e)
}

/// The decoder's `[1, 3, F, H, W]` in [-1, 1] as RGB24 frames.
pub fn video_frames(video: &Tensor) -> Result<VideoFrames> {
    frames_from_tensor(video).map_err(video_error)
}

/// Writes frames in the format `path`'s extension names; returns the files written.
pub fn write_frames(path: &std::path::Path, frames: &VideoFrames, fps: u32) -> Result<Vec<String>> {
    let written = write_video(path, frames, fps).map_err(video_error)?;
    Ok(written.iter().map(|p| p.display().to_string()).collect())
}

/// Text length the transformer's cross-attention sees: Wan2.1 pads every prompt to 512 tokens.
pub const TEXT_LEN: usize = crate::family::wan::UMT5_TEXT_ENCODER.text_len;

/// The prompt's and the negative prompt's text contexts (batch 1 each, f32, on the run device):
/// Wan's `[1, TEXT_LEN, d_model]`, HunyuanVideo's two masked streams.
pub struct TextConditioning {
    pub cond: TextContext,
    /// Absent when guidance is off (scale 1).
    pub uncond: Option<TextContext>,
}

/// The text encoder(s) of the family's kind (boxed: a run holds one, and they differ in size).
enum PromptNetworks {
    Umt5 {
        tokenizer: Box<PromptTokenizer>,
        encoder: Box<Umt5Encoder>,
    },
    QwenByT5(Box<HunyuanPromptEncoder>),
}

/// The tokenizer(s) and text encoder(s) of a model, loaded once for any number of prompts.
pub struct PromptEncoder {
    networks: PromptNetworks,
    /// Where the embeddings go (the transformer's device).
    output_device: Device,
}

impl PromptEncoder {
    /// Loads the model's tokenizer and text encoder (or the overrides). With `--text-encoder-cpu` the
    /// encoder runs on the CPU; umT5 overflows in f16, so f16 runs encode in bf16. HunyuanVideo
    /// 1.5's pair: [`HunyuanPromptEncoder::load`].
    pub fn load(settings: &GenerateSettings, files: &ModelFiles, device: &Device) -> Result<Self> {
        let spec = &settings.family.text_encoder;
        if spec.kind == TextEncoderKind::QwenByT5 {
            return Ok(Self {
                networks: PromptNetworks::QwenByT5(Box::new(HunyuanPromptEncoder::load(
                    settings, files, device,
                )?)),
                output_device: device.clone(),
            });
        }
        let tokenizer = PromptTokenizer::from_file(&settings.tokenizer_file(files)?)?;
        let component =
            files.component(spec.component, settings.overrides.text_encoder.as_deref())?;
        let weights = Arc::new(WeightFiles::open(&component.weights)?);
        let config = match &component.config {
            Some(path) => Umt5Config::from_json_file(path)?,
            None => Umt5Config::from_weights(&weights)?,
        };
        let encoder_device = if settings.t5_cpu {
            Device::Cpu
        } else {
            device.clone()
        };
        let encoder_dtype = match settings.dtype {
            DType::F16 => DType::BF16,
            other => other,
        };
        let encoder = Umt5Encoder::load(&weights, &config, encoder_dtype, &encoder_device)?;
        Ok(Self {
            networks: PromptNetworks::Umt5 {
                tokenizer: Box::new(tokenizer),
                encoder: Box::new(encoder),
            },
            output_device: device.clone(),
        })
    }

    /// One prompt → its context, batch 1 (umT5: `[1, TEXT_LEN, d_model]` f32, real tokens
    /// encoded, then zero rows).
    pub fn encode(&self, prompt: &str) -> Result<TextContext> {
        let (tokenizer, encoder) = match &self.networks {
            PromptNetworks::Umt5 { tokenizer, encoder } => (tokenizer, encoder),
            PromptNetworks::QwenByT5(encoder) => return encoder.encode(prompt),
        };
        // Counted whole first, so a prompt longer than the encoder reads is said, not cut silently.
        let all = tokenizer.encode(prompt, usize::MAX)?.len();
        if all > TEXT_LEN {
            eprintln!(
                "warning: the prompt is {all} tokens long; the text encoder reads the first {TEXT_LEN} and the rest is ignored"
            );
        }
        let ids = tokenizer.encode(prompt, TEXT_LEN)?;
        Ok(TextContext::single(
            encoder
                .encode_padded(&ids, TEXT_LEN)?
                .to_device(&self.output_device)?,
        ))
    }

    /// The prompt, and the negative prompt when guidance is on.
    pub fn conditioning(
        &self,
        prompt: &str,
        negative_prompt: &str,
        guided: bool,
    ) -> Result<TextConditioning> {
        let cond = self.encode(prompt)?;
        let uncond = if guided {
            Some(self.encode(negative_prompt)?)
        } else {
            None
        };
        Ok(TextConditioning { cond, uncond })
    }
}

/// Stage 1: the tokenizer(s) and text encoder(s); the encoders are freed when this returns.
pub fn encode_prompts(
    settings: &GenerateSettings,
    files: &ModelFiles,
    device: &Device,
) -> Result<TextConditioning> {
    PromptEncoder::load(settings, files, device)?.conditioning(
        &settings.prompt,
        &settings.negative_prompt,
        settings.uses_guidance(),
    )
}

/// Stage 1 for many prompts with one encoder load (`vdit eval`): each prompt's conditioning,
/// all sharing the negative prompt's embedding.
pub fn encode_prompt_list(
    settings: &GenerateSettings,
    files: &ModelFiles,
    device: &Device,
    prompts: &[&str],
) -> Result<Vec<TextConditioning>> {
    let encoder = PromptEncoder::load(settings, files, device)?;
    let uncond = if settings.uses_guidance() {
        Some(encoder.encode(&settings.negative_prompt)?)
    } else {
        None
    };
    prompts
        .iter()
        .map(|prompt| {
            Ok(TextConditioning {
                cond: encoder.encode(prompt)?,
                uncond: uncond.clone(),
            })
        })
        .collect()
}

/// The Wan transformer as the step loop's velocity model.
impl VelocityModel for WanTransformer {
    fn num_layers(&self) -> usize {
        self.config().num_layers
    }

    fn out_channels(&self) -> Option<usize> {
        Some(self.config().out_channels)
    }

    fn velocity(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        context: &TextContext,
        attention: &mut dyn SelfAttention,
    ) -> Result<Tensor> {
        Ok(self.forward(latents, timesteps, context.single_states()?, attention)?)
    }

    fn velocity_with_image(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        context: &TextContext,
        image: &Tensor,
        attention: &mut dyn SelfAttention,
    ) -> Result<Tensor> {
        let context = context.single_states()?;
        Ok(self.forward_with_image(latents, timesteps, context, Some(image), attention)?)
    }

    fn velocity_cached(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        context: &TextContext,
        image: Option<&Tensor>,
        attention: &mut dyn SelfAttention,
        cache: &mut dyn BlockCache,
    ) -> Result<Tensor> {
        let context = context.single_states()?;
        Ok(self.forward_cached(latents, timesteps, context, image, attention, cache)?)
    }
}

/// What stage 2 produces.
pub struct SampledLatents {
    /// `[1, 16, F', H/8, W/8]` f32.
    pub latents: Tensor,
    pub seconds_per_step: f64,
    pub effective_density: f64,
    /// Seconds spent loading transformers during the steps (0 for models loaded beforehand).
    pub model_load_s: f64,
    /// When the first sampling step ended.
    pub first_step_done: Option<Instant>,
    /// Transformer passes asked for and skipped by the step cache.
    pub step_cache: CacheStats,
    /// A `--cache-calibrate` run: the magnitude ratios it recorded.
    pub calibration: Option<MagRatios>,
}

/// Finds (or downloads) every file of the run in stage order, opens every weight file (each
/// safetensors header parsed, its length checked against the header, every dtype one the loader
/// reads), parses every config, and checks the attention flags against the transformer's depth
/// and the transformer's latent channels against the VAE's, so a missing or truncated VAE or a
/// bad flag fails before minutes of work. With `--latents-in`, only the VAE is needed, and the
/// saved latents' shape is checked against the VAE and the run's size and frames.
pub fn preflight(settings: &GenerateSettings, files: &ModelFiles) -> Result<()> {
    let family = settings.family;
    let vae_files = || files.component(family.vae_component, settings.overrides.vae.as_deref());
    if let Some(path) = &settings.latents_in {
        let vae = vae_files()?;
        let z_dim = check_vae(settings, &vae)?;
        check_tiny_decoder(settings, z_dim)?;
        return check_saved_latents(settings, path, z_dim);
    }
    if first_expert(settings).kind == TransformerKind::HunyuanVideo15 {
        return preflight_hunyuan(settings, files);
    }
    settings.tokenizer_file(files)?;
    let text_encoder = files.component(
        family.text_encoder.component,
        settings.overrides.text_encoder.as_deref(),
    )?;
    check_weights(family.text_encoder.component, &text_encoder)?;
    check_text_encoder(&text_encoder)?;
    let mut configs = Vec::new();
    for rule in family.experts {
        configs.push(expert_config(settings, files, rule)?);
        check_weights(rule.component, &expert_component(settings, files, rule)?)?;
    }
    let vae = vae_files()?;
    check_vae(settings, &vae)?;
    check_image_inputs(settings, files, &vae)?;
    for config in configs.iter().flatten() {
        build_attention(&settings.attention, config.num_layers, settings.steps)?;
    }
    // Each expert's LoRAs: their keys match its layers, and their shapes fit (headers only).
    for (index, rule) in family.experts.iter().enumerate() {
        if settings.lora.for_expert(index).is_empty() {
            continue;
        }
        let component = expert_component(settings, files, rule)?;
        let weights = WeightFiles::open(&component.weights)?;
        let config = match &configs[index] {
            Some(config) => config.clone(),
            None => WanTransformer::config_for(&component.weights, &weights)?,
        };
        if let Some(set) = match_loras(settings, index, &config)? {
            let keys = CheckpointKeys::detect(&weights)?.key_map();
            set.check_shapes(|key| weights.shape(&keys.map(key)))?;
        }
    }
    // The transformer's latents must be the VAE's: a 48-channel Wan2.2 TI2V model with a
    // 16-channel Wan2.1 VAE (or the reverse) would only fail after sampling.
    let z_dim = vae_config(settings, &vae)?.z_dim;
    check_tiny_decoder(settings, z_dim)?;
    for (rule, config) in family.experts.iter().zip(&configs) {
        let channels = config
            .as_ref()
            .map_or(family.latent.channels, |c| c.out_channels);
        if channels != z_dim {
            let (b, _, f, h, w) = settings.latent_shape(channels);
            let config = vae_config(settings, &vae)?;
            return Err(VditError::InvalidSetting(format!(
                "{} ({}) and VAE {}: {}",
                rule.component,
                expert_component(settings, files, rule)?.weights.display(),
                vae.weights.display(),
                vdit_models::ModelError::LatentChannels {
                    shape: vec![b, channels, f, h, w],
                    got: channels,
                    expected: z_dim,
                    vae: config.family(),
                }
            )));
        }
    }
    Ok(())
}

/// [`preflight`] for HunyuanVideo 1.5: the flags its transformer takes, the text encoders' and
/// tokenizers' files, the weights' headers and dtypes, the VAE's decoder tensors, and the
/// transformer's output channels against the VAE's.
fn preflight_hunyuan(settings: &GenerateSettings, files: &ModelFiles) -> Result<()> {
    crate::hunyuan15::check_run(settings, files)?;
    for (name, component) in crate::hunyuan15::text_components(settings, files)? {
        check_weights(name, &component)?;
    }
    let rule = first_expert(settings);
    let component = expert_component(settings, files, rule)?;
    let config = crate::hunyuan15::transformer_config(rule.component, &component)?;
    check_weights(rule.component, &component)?;
    let vae = files.component(
        settings.family.vae_component,
        settings.overrides.vae.as_deref(),
    )?;
    let z_dim = check_vae(settings, &vae)?;
    check_tiny_decoder(settings, z_dim)?;
    if config.out_channels != z_dim {
        return Err(VditError::InvalidSetting(format!(
            "{} ({}) gives {}-channel latents, but the VAE {} decodes {z_dim}",
            rule.component,
            component.weights.display(),
            config.out_channels,
            vae.weights.display()
        )));
    }
    Ok(())
}

/// The text encoder's weights hold the umT5 encoder its config describes, by the headers: a GGUF
/// file of another architecture (a transformer given to `--text-encoder`), a T5 rather than umT5
/// file, a missing tensor or a wrong shape fails here, before the transformer loads.
fn check_text_encoder(files: &ComponentFiles) -> Result<()> {
    let weights = WeightFiles::open(&files.weights)?;
    let config = match &files.config {
        Some(path) => Umt5Config::from_json_file(path)?,
        None => Umt5Config::from_weights(&weights)?,
    };
    Ok(Umt5Encoder::check(&weights, &config)?)
}

/// Image-to-video: the images decode, the VAE's weights hold an encoder (a decoder-only VAE
/// file cannot encode the image), and the image encoder's weights and preprocessing settings are
/// there and readable.
fn check_image_inputs(
    settings: &GenerateSettings,
    files: &ModelFiles,
    vae: &ComponentFiles,
) -> Result<()> {
    let (Some(input), Some(image)) = (settings.family.image, &settings.image) else {
        return Ok(());
    };
    read_image("--image", &image.path)?;
    if let Some(last) = &settings.last_image {
        read_image("--last-image", &last.path)?;
    }
    let weights = WeightFiles::open(&vae.weights)?;
    if !weights.keys().iter().any(|k| k.contains("encoder.")) {
        return Err(VditError::InvalidSetting(format!(
            "vae weights {}: no encoder tensors (a decoder-only VAE file); image-to-video encodes \
             the image with the VAE's encoder: use the model's full VAE",
            vae.weights.display()
        )));
    }
    if let Some(spec) = input.encoder {
        let component = files.component(spec.component, None)?;
        check_weights(spec.component, &component)?;
    }
    Ok(())
}

/// Dtypes the weight loader reads (safetensors names).
const LOADABLE_DTYPES: &[&str] = &["F32", "F16", "BF16", "F64", "I64", "U32", "U8", "F8_E4M3"];

/// Opens a component's weights as the loader will (headers parsed, each file's length checked
/// against its header, so a truncated file fails here) and checks every tensor's dtype, without
/// reading the tensors.
fn check_weights(component: &str, files: &ComponentFiles) -> Result<()> {
    let weights = WeightFiles::open(&files.weights)?;
    // GGUF files: every tensor's ggml type must be one candle reads.
    weights.check_gguf_types()?;
    for path in weights.paths() {
        if WeightFiles::is_gguf_file(path) {
            continue;
        }
        let header = crate::ownership::read_safetensors_header(path).map_err(|reason| {
            VditError::InvalidSetting(format!("{component} weights {}: {reason}", path.display()))
        })?;
        for (key, info) in &header {
            if key == "__metadata__" {
                continue;
            }
            let dtype = info.get("dtype").and_then(|d| d.as_str()).unwrap_or("?");
            if !LOADABLE_DTYPES.contains(&dtype) {
                return Err(VditError::InvalidSetting(format!(
                    "{component} weights {}: tensor `{key}` has dtype {dtype}, which vdit cannot load \
                     (it reads {})",
                    path.display(),
                    LOADABLE_DTYPES.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// `--decoder tiny`: the TAEHV file is checked from its header, its latent channels against the
/// VAE's `z_dim` (the model's latents), before the first step.
fn check_tiny_decoder(settings: &GenerateSettings, z_dim: usize) -> Result<()> {
    if let DecoderSettings::Tiny { weights } = &settings.decoder {
        check_tiny(weights, z_dim)?;
    }
    Ok(())
}

/// The VAE loads after sampling, so its checkpoint is checked now as the load will read it: the
/// headers and dtypes ([`check_weights`]), then every tensor the decoder asks for present with
/// its shape ([`WanVaeDecoder::check`], headers only). Returns the VAE's latent channels.
fn check_vae(settings: &GenerateSettings, vae: &ComponentFiles) -> Result<usize> {
    check_weights("vae", vae)?;
    if settings.family.vae == VaeKind::HunyuanVideo15 {
        return crate::hunyuan15::check_vae(vae);
    }
    let config = vae_config(settings, vae)?;
    let weights = Arc::new(WeightFiles::open(&vae.weights)?);
    WanVaeDecoder::check(&weights, &config)
        .map_err(|e| VditError::InvalidSetting(format!("vae {}: {e}", vae.weights.display())))?;
    Ok(config.z_dim)
}

/// The `latents` tensor of a `--latents-in` file must have the shape this run decodes:
/// `[1, z, F', H', W']` for the VAE's `z_dim` channels and the run's size and frames.
fn check_saved_latents(settings: &GenerateSettings, path: &Path, z_dim: usize) -> Result<()> {
    let bad = |reason: String| {
        VditError::InvalidSetting(format!("--latents-in {}: {reason}", path.display()))
    };
    let header = crate::ownership::read_safetensors_header(path).map_err(bad)?;
    let shape: Vec<usize> = header
        .get("latents")
        .and_then(|t| t.get("shape"))
        .and_then(|s| serde_json::from_value(s.clone()).ok())
        .ok_or_else(|| bad("no tensor named `latents`".into()))?;
    let (b, c, f, h, w) = settings.latent_shape(z_dim);
    let expected = vec![b, c, f, h, w];
    if shape != expected {
        let made_for = crate::ownership::safetensors_metadata(path)
            .and_then(|m| {
                let get = |k: &str| m.get(k)?.as_str().map(String::from);
                Some(format!(
                    "; they were saved by a {}x{}, {}-frame run of {} (pass the same --size and --frames)",
                    get("width")?,
                    get("height")?,
                    get("frames")?,
                    get("model")?
                ))
            })
            .unwrap_or_default();
        return Err(bad(format!(
            "latents of shape {shape:?}, but this run ({}x{}, {} frames, a {z_dim}-channel VAE) decodes {expected:?}{made_for}",
            settings.width, settings.height, settings.frames
        )));
    }
    // The whole file is read at decode time; a truncated one fails now instead.
    WeightFiles::open(path)?;
    Ok(())
}

/// The Wan VAE's config: its config.json, else the family's VAE.
fn vae_config(settings: &GenerateSettings, vae: &ComponentFiles) -> Result<WanVaeConfig> {
    Ok(match (&vae.config, settings.family.vae) {
        (_, VaeKind::HunyuanVideo15) => {
            return Err(VditError::InvalidSetting(format!(
                "vae {}: a HunyuanVideo 1.5 VAE, not a Wan one (this stage takes Wan VAEs only)",
                vae.weights.display()
            )))
        }
        (Some(path), _) => WanVaeConfig::from_json_file(path)?,
        (None, VaeKind::Wan21) => WanVaeConfig::wan2_1(),
        (None, VaeKind::Wan22) => WanVaeConfig::wan2_2(),
    })
}

/// `--dit` replaces the first expert's weights (the only one of a one-transformer family),
/// `--dit-2` the second's.
fn expert_override<'a>(settings: &'a GenerateSettings, rule: &ExpertRule) -> Option<&'a Path> {
    let position = settings
        .family
        .experts
        .iter()
        .position(|e| e.component == rule.component);
    match position {
        Some(0) => settings.overrides.dit.as_deref(),
        Some(1) => settings.overrides.dit_2.as_deref(),
        _ => None,
    }
}

/// Which folder layout a model keeps its experts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExpertLayout {
    /// `transformer/`, `transformer_2/`.
    Diffusers,
    /// Wan-AI's own: `high_noise_model/`, `low_noise_model/`.
    Original,
}

/// The weights and config of one expert: its override (`--dit`, `--dit-2`), else its folder in
/// the model's layout (diffusers or original). A two-expert model's layout is the one its first
/// expert's folder is in; the second expert must be in the same one.
fn expert_component(
    settings: &GenerateSettings,
    files: &ModelFiles,
    rule: &ExpertRule,
) -> Result<ComponentFiles> {
    if let Some(path) = expert_override(settings, rule) {
        return files.component(rule.component, Some(path));
    }
    let Some(original) = rule.original_component else {
        return files.component(rule.component, None);
    };
    let family = settings.family;
    let has = |component: &str| {
        matches!(
            files.optional_file(&format!("{component}/config.json")),
            Ok(Some(_))
        )
    };
    let first = &family.experts[0];
    let is_first = rule.component == first.component;
    // The first expert's folder decides; with neither, the diffusers one (its error names it).
    let layout = if !has(first.component) && first.original_component.is_some_and(has) {
        ExpertLayout::Original
    } else {
        ExpertLayout::Diffusers
    };
    let (wanted, other) = match layout {
        ExpertLayout::Diffusers => (rule.component, original),
        ExpertLayout::Original => (original, rule.component),
    };
    if is_first || has(wanted) {
        return files.component(wanted, None);
    }
    if has(other) {
        let first_folder = match layout {
            ExpertLayout::Diffusers => first.component,
            ExpertLayout::Original => first.original_component.unwrap_or(first.component),
        };
        return Err(VditError::Resolve(format!(
            "model {}: mixed expert layouts ({first_folder}/ with {other}/): a {} model keeps its experts in \
             transformer/ + transformer_2/ (diffusers) or high_noise_model/ + low_noise_model/ (Wan-AI); \
             or give each expert's weights with --dit and --dit-2",
            files.location(),
            family.name
        )));
    }
    Err(VditError::Resolve(format!(
        "model {} has no {wanted}/ (its low-noise expert): a {} model has {} experts; give the missing one with --dit-2 FILE",
        files.location(),
        family.name,
        family.experts.len()
    )))
}

/// An expert's config.json, when there is one (without, sizes come from the weights).
fn expert_config(
    settings: &GenerateSettings,
    files: &ModelFiles,
    rule: &ExpertRule,
) -> Result<Option<WanConfig>> {
    let component = expert_component(settings, files, rule)?;
    Ok(match &component.config {
        Some(path) => Some(WanConfig::from_json_file(path)?),
        None => None,
    })
}

/// The first transformer's config.json, when there is one (without, sizes come from the weights).
pub fn transformer_config(
    settings: &GenerateSettings,
    files: &ModelFiles,
) -> Result<Option<WanConfig>> {
    expert_config(settings, files, first_expert(settings))
}

fn first_expert(settings: &GenerateSettings) -> &'static ExpertRule {
    settings
        .family
        .experts
        .first()
        .expect("a family has at least one transformer")
}

/// Loads one of the family's transformers (the first one's weights may come from `--dit`).
pub fn load_expert(
    settings: &GenerateSettings,
    files: &ModelFiles,
    device: &Device,
    rule: &ExpertRule,
) -> Result<WanTransformer> {
    if rule.kind != TransformerKind::Wan {
        return Err(VditError::InvalidSetting(format!(
            "the {} family's {} is not a Wan transformer (`load_velocity_models` loads any \
             family's)",
            settings.family.name, rule.component
        )));
    }
    let component = expert_component(settings, files, rule)?;
    let weights = Arc::new(WeightFiles::open(&component.weights)?);
    let config = match &component.config {
        Some(config) => WanConfig::from_json_file(config)?,
        // No config anywhere: the transformer infers its sizes from the tensor shapes.
        None => WanTransformer::config_for(&component.weights, &weights)?,
    };
    let index = settings
        .family
        .experts
        .iter()
        .position(|r| std::ptr::eq(r, rule))
        .unwrap_or(0);
    let lora = open_loras(settings, index, &config)?;
    // `--offload blocks`: the blocks are read into host memory and streamed to `device`.
    Ok(WanTransformer::load_placed(
        &weights,
        &config,
        settings.dtype,
        device,
        lora,
        settings.offload.mode.block_placement(),
    )?)
}

/// The LoRAs of expert `index` read and matched onto the layers of a transformer of `config`
/// (no weights read); `None` without any.
fn match_loras(
    settings: &GenerateSettings,
    index: usize,
    config: &WanConfig,
) -> Result<Option<LoraSet>> {
    let specs = settings.lora.for_expert(index);
    if specs.is_empty() {
        return Ok(None);
    }
    Ok(Some(LoraSet::open(
        specs,
        &lora_targets(config),
        settings.lora.mode,
        settings.lora.partial,
    )?))
}

/// The LoRAs of expert `index` matched onto a transformer of `config`, each summarised on
/// stderr; `None` without any.
pub fn open_loras(
    settings: &GenerateSettings,
    index: usize,
    config: &WanConfig,
) -> Result<Option<Arc<LoraSet>>> {
    let Some(set) = match_loras(settings, index, config)? else {
        return Ok(None);
    };
    for summary in set.summaries() {
        let ignored = match summary.ignored.len() {
            0 => String::new(),
            n => format!(", {n} unmatched tensors ignored (--lora-partial)"),
        };
        eprintln!(
            "lora         {}: {} layers ({}){ignored}",
            summary.spec.path.display(),
            summary.layers,
            summary.format
        );
    }
    Ok(Some(Arc::new(set)))
}

/// Loads the model's first transformer (or `--dit`).
pub fn load_transformer(
    settings: &GenerateSettings,
    files: &ModelFiles,
    device: &Device,
) -> Result<WanTransformer> {
    load_expert(settings, files, device, first_expert(settings))
}

/// Every transformer of the family, loaded (`vdit compare` and `vdit eval` keep them for many
/// runs), in the family's order.
pub fn load_transformers(
    settings: &GenerateSettings,
    files: &ModelFiles,
    device: &Device,
) -> Result<Vec<WanTransformer>> {
    settings
        .family
        .experts
        .iter()
        .map(|rule| load_expert(settings, files, device, rule))
        .collect()
}

/// Every transformer of the family as the step loop's velocity models, loaded, in the family's
/// order: what `vdit compare` and `vdit eval` keep for many runs, for any family.
pub fn load_velocity_models<'a>(
    settings: &GenerateSettings,
    files: &ModelFiles,
    device: &Device,
) -> Result<Vec<Box<dyn VelocityModel + 'a>>> {
    settings
        .family
        .experts
        .iter()
        .map(|rule| load_velocity_model(settings, files, device, rule))
        .collect()
}

/// The run's experts on models the caller holds (one per family transformer, in its order).
pub fn shared_experts<'a, M: VelocityModel + 'a>(
    settings: &GenerateSettings,
    models: &'a [M],
) -> Vec<Expert<'a>> {
    let scales = settings.expert_guidance_scales();
    settings
        .family
        .experts
        .iter()
        .zip(models)
        .zip(scales)
        .zip(settings.expert_timesteps())
        .map(|(((rule, model), scale), timesteps)| {
            Expert::shared(
                rule.component,
                model as &'a dyn VelocityModel,
                scale,
                timesteps,
            )
        })
        .collect()
}

/// The run's experts, each loaded when its first step comes and freed after its last, serving
/// the timesteps the settings give them (the boundary of the model's `model_index.json`); each
/// load's wall time is added to `load_seconds`.
pub fn deferred_experts<'a>(
    settings: &'a GenerateSettings,
    files: &'a ModelFiles,
    device: &'a Device,
    load_seconds: &Rc<Cell<f64>>,
) -> Vec<Expert<'a>> {
    let scales = settings.expert_guidance_scales();
    settings
        .family
        .experts
        .iter()
        .zip(scales)
        .zip(settings.expert_timesteps())
        .map(|((rule, scale), timesteps)| {
            let load_seconds = load_seconds.clone();
            let load: LoadModel<'a> = Box::new(move || {
                let start = Instant::now();
                let model = load_velocity_model(settings, files, device, rule)?;
                load_seconds.set(load_seconds.get() + start.elapsed().as_secs_f64());
                Ok(model)
            });
            Expert::deferred(rule.component, load, scale, timesteps)
        })
        .collect()
}

/// One of the family's transformers as the step loop's velocity model, by its kind.
pub fn load_velocity_model<'a>(
    settings: &GenerateSettings,
    files: &ModelFiles,
    device: &Device,
    rule: &ExpertRule,
) -> Result<Box<dyn VelocityModel + 'a>> {
    Ok(match rule.kind {
        TransformerKind::Wan => Box::new(load_expert(settings, files, device, rule)?),
        TransformerKind::HunyuanVideo15 => {
            let component = expert_component(settings, files, rule)?;
            Box::new(crate::hunyuan15::load_transformer(
                settings, &component, device, rule,
            )?)
        }
    })
}

/// Stage 2: samples, each transformer loaded for its steps and freed after them (the loads'
/// time in [`SampledLatents::model_load_s`]).
pub fn sample_latents(
    settings: &GenerateSettings,
    files: &ModelFiles,
    device: &Device,
    text: &TextConditioning,
    image: Option<&ImageCondition>,
) -> Result<SampledLatents> {
    // The noise has the transformer's output channels (an image-conditioned transformer takes
    // more in: the condition's).
    let rule = first_expert(settings);
    let channels = match rule.kind {
        TransformerKind::HunyuanVideo15 => {
            let component = expert_component(settings, files, rule)?;
            crate::hunyuan15::transformer_config(rule.component, &component)?.out_channels
        }
        TransformerKind::Wan => match transformer_config(settings, files)? {
            Some(config) => config.out_channels,
            None => settings.family.latent.channels,
        },
    };
    let load_seconds = Rc::new(Cell::new(0.0));
    let mut sampled = sample_with_experts(
        deferred_experts(settings, files, device, &load_seconds),
        channels,
        settings,
        device,
        text,
        image,
    )?;
    sampled.model_load_s = load_seconds.get();
    Ok(sampled)
}

/// The initial noise of `settings`: the `--noise` file, else seeded.
pub fn initial_noise(
    settings: &GenerateSettings,
    channels: usize,
    device: &Device,
) -> Result<Tensor> {
    let (b, _, f, h, w) = settings.latent_shape(channels);
    let shape = [b, channels, f, h, w];
    match &settings.noise {
        Some(path) => load_noise(path, &shape, device),
        None => seeded_noise(settings.seed, &shape, device),
    }
}

/// Stage 2 on already loaded transformers (`vdit compare` and `vdit eval` load them once for
/// many runs; `models` in the family's order).
pub fn sample_latents_with<M: VelocityModel>(
    models: &[M],
    settings: &GenerateSettings,
    device: &Device,
    text: &TextConditioning,
    image: Option<&ImageCondition>,
) -> Result<SampledLatents> {
    let channels = models[0]
        .out_channels()
        .unwrap_or(settings.family.latent.channels);
    sample_with_experts(
        shared_experts(settings, models),
        channels,
        settings,
        device,
        text,
        image,
    )
}

/// The whole schedule on `experts`, from `channels`-channel noise, with a progress bar
/// (steps, s/step); an image-conditioned run conditions every step on `image`.
pub fn sample_with_experts(
    experts: Vec<Expert<'_>>,
    channels: usize,
    settings: &GenerateSettings,
    device: &Device,
    text: &TextConditioning,
    image: Option<&ImageCondition>,
) -> Result<SampledLatents> {
    let noise = initial_noise(settings, channels, device)?;
    let tokens = settings.family.latent.tokens(noise.dims());
    let attention_settings = settings.attention.clone();
    let steps = settings.steps;
    let denoiser = ExpertDenoiser::new(
        experts,
        &Conditioning {
            cond: &text.cond,
            uncond: text.uncond.as_ref(),
        },
        settings.family.timesteps,
        tokens,
        Box::new(move |num_layers| build_attention(&attention_settings, num_layers, steps)),
    )?
    .with_image(image.cloned());
    let mut denoiser = denoiser.with_step_cache(&settings.step_cache, settings.steps);
    denoiser.keep_loaded = settings.offload.mode.keeps_experts_loaded();
    let mut solver = settings.sampler.solver_on(
        settings.family.sigma_grid,
        settings.steps,
        settings.shift,
        settings.timesteps.as_deref(),
        settings.seed,
    )?;
    let progress = ProgressBar::new(settings.steps as u64);
    progress.set_style(
        ProgressStyle::with_template("sampling     [{bar:30}] {pos}/{len} steps {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut total_seconds = 0.0;
    let mut first_step_done = None;
    let latents = denoise(&mut denoiser, solver.as_mut(), &noise, &mut |report| {
        first_step_done.get_or_insert_with(Instant::now);
        total_seconds += report.seconds;
        progress.set_message(format!(
            "{:.2} s/step (t = {})",
            total_seconds / (report.step + 1) as f64,
            report.timestep
        ));
        progress.inc(1);
    });
    progress.finish_and_clear();
    let latents = latents?;
    let calibration = settings
        .step_cache
        .calibrate
        .is_some()
        .then(|| recorded_ratios(&denoiser.calibration_records(), settings.steps));
    Ok(SampledLatents {
        latents,
        seconds_per_step: total_seconds / settings.steps.max(1) as f64,
        effective_density: denoiser.effective_density(),
        model_load_s: 0.0,
        first_step_done,
        step_cache: denoiser.cache_stats(),
        calibration,
    })
}

/// Loads the model's VAE decoder (or `--vae`).
pub fn load_vae(
    settings: &GenerateSettings,
    files: &ModelFiles,
    device: &Device,
) -> Result<WanVaeDecoder> {
    let family = settings.family;
    let component = files.component(family.vae_component, settings.overrides.vae.as_deref())?;
    let config = vae_config(settings, &component)?;
    let weights = Arc::new(WeightFiles::open(&component.weights)?);
    Ok(WanVaeDecoder::load(
        &weights,
        &config,
        settings.dtype,
        device,
    )?)
}

/// The run's decoder (`--decoder`): the model's VAE decoder (or `--vae`), or the TAEHV file.
pub fn load_decoder(
    settings: &GenerateSettings,
    files: &ModelFiles,
    device: &Device,
) -> Result<VideoDecoder> {
    match &settings.decoder {
        DecoderSettings::Full if settings.family.vae == VaeKind::HunyuanVideo15 => {
            let component = files.component(
                settings.family.vae_component,
                settings.overrides.vae.as_deref(),
            )?;
            Ok(VideoDecoder::Hunyuan(Box::new(crate::hunyuan15::load_vae(
                settings, &component, device,
            )?)))
        }
        DecoderSettings::Full => Ok(VideoDecoder::Full(Box::new(load_vae(
            settings, files, device,
        )?))),
        DecoderSettings::Tiny { weights } => {
            VideoDecoder::load_tiny(weights, settings.dtype, device)
        }
    }
}

/// Where the decode's chunk callback spent its time, seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChunkTimes {
    /// Chunks to frame bytes on the host, with the wait for the device work behind them.
    pub to_bytes_s: f64,
    /// Waiting for the writer to take a chunk.
    pub push_s: f64,
}

/// Decodes with a loaded decoder into `sink`, each decoded chunk pushed as soon as it exists
/// (the mp4 encoder works while the decoder runs). The sink is not finished here.
pub fn decode_into_sink(
    decoder: &VideoDecoder,
    settings: &GenerateSettings,
    latents: &Tensor,
    sink: &mut VideoSink,
) -> Result<ChunkTimes> {
    // The writer's own error is kept so it is reported as a video-output error, not as the VAE's.
    let mut sink_error = None;
    let mut times = ChunkTimes::default();
    // Each chunk's bytes are read back while the next chunk decodes (on a GPU: an asynchronous
    // copy; the queue is never drained for them), so a chunk reaches the sink one chunk late.
    let mut readback = Readback::<(u32, u32)>::new();
    let mut to_sink = |read: Option<ReadBytes<(u32, u32)>>, times: &mut ChunkTimes| {
        let Some(((width, height), bytes)) = read else {
            return Ok(());
        };
        let start = Instant::now();
        let pushed = frames_from_bytes(width, height, &bytes).and_then(|f| sink.push(f));
        times.push_s += start.elapsed().as_secs_f64();
        pushed.map_err(|e| {
            let message = format!("video output: {e}");
            sink_error = Some(e);
            vdit_models::ModelError::InvalidInput(message)
        })
    };
    let decoded = decoder.decode_with_chunks(latents, settings.vae_tiling, &mut |chunk| {
        // chunk: [1, 3, t, H, W] in [-1, 1] → u8 [t, H, W, 3] where it is
        let start = Instant::now();
        let bytes = rgb_bytes_tensor(chunk)
            .map_err(|e| vdit_models::ModelError::InvalidInput(format!("decoded chunk: {e}")))?;
        let (_, h, w, _) = bytes.dims4()?;
        let previous = readback.push((w as u32, h as u32), &bytes)?;
        times.to_bytes_s += start.elapsed().as_secs_f64();
        to_sink(previous, &mut times)
    });
    let decoded = decoded.and_then(|()| {
        let start = Instant::now();
        let last = readback.finish()?;
        times.to_bytes_s += start.elapsed().as_secs_f64();
        Ok(to_sink(last, &mut times)?)
    });
    if let Some(e) = sink_error {
        return Err(video_error(e));
    }
    decoded.map(|()| times)
}

/// Stage 3: loads the decoder (`--decoder`), decodes, frees it.
pub fn decode_latents(
    settings: &GenerateSettings,
    files: &ModelFiles,
    device: &Device,
    latents: &Tensor,
) -> Result<Tensor> {
    load_decoder(settings, files, device)?.decode(latents, settings.vae_tiling)
}

/// Stage 1b (image-to-video): the run's input image(s) → its [`ImageCondition`], as diffusers'
/// `WanImageToVideoPipeline` builds it (see [`crate::image_cond::latent`]): the image encoder
/// (CLIP, when the family has one) on the images as read, the VAE encoder on the images fitted to
/// the video's size; each network loaded, run and freed. `None` for a run without an image.
pub fn encode_images(
    settings: &GenerateSettings,
    files: &ModelFiles,
    device: &Device,
) -> Result<Option<ImageCondition>> {
    let family = settings.family;
    let (Some(input), Some(first)) = (family.image, &settings.image) else {
        return Ok(None);
    };
    let first = read_image("--image", &first.path)?;
    let last = match &settings.last_image {
        Some(record) => Some(read_image("--last-image", &record.path)?),
        None => None,
    };
    // CLIP sees the images as read: its own preprocessing resizes and crops them to 224².
    let features = match input.encoder {
        Some(spec) => {
            let mut images = vec![&first.rgb];
            images.extend(last.as_ref().map(|l| &l.rgb));
            Some(image_features(settings, files, device, spec, &images)?)
        }
        None => None,
    };
    // [1, 3, H, W] in [-1, 1], fitted to the video's size.
    let (width, height) = (settings.width, settings.height);
    let frame = |image: &crate::image_cond::InputImage| {
        image_tensor(&fit_image(&image.rgb, width, height, input.fit), device)
    };
    let latent = match input.conditioning {
        ImageConditioning::MaskedVideoChannels => {
            // [1, 3, F, H, W]: the image, zeros, and the last image when there is one.
            let mut parts = vec![frame(&first)?.unsqueeze(2)?];
            let zeros = settings.frames as usize - 1 - usize::from(last.is_some());
            if zeros > 0 {
                parts.push(Tensor::zeros(
                    (1, 3, zeros, height as usize, width as usize),
                    DType::F32,
                    device,
                )?);
            }
            if let Some(last) = &last {
                parts.push(frame(last)?.unsqueeze(2)?);
            }
            let video = Tensor::cat(&parts, 2)?;
            let encoded = encode_video(settings, files, device, &video)?; // [1, z, F', H', W']
            LatentCondition::masked_video(&encoded, last.is_some())?
        }
        ImageConditioning::FirstFrameLatent => {
            let video = frame(&first)?.unsqueeze(2)?; // [1, 3, 1, H, W]
            let encoded = encode_video(settings, files, device, &video)?; // [1, z, 1, H', W']
            LatentCondition::first_frame(&encoded, settings.latent_frames(), family.latent.patch)?
        }
    };
    Ok(Some(ImageCondition { latent, features }))
}

/// The VAE encoder's normalised latents of `video` `[1, 3, F, H, W]` in [-1, 1]:
/// `[1, z, F', H', W']` f32, the encoder loaded for this and freed after.
fn encode_video(
    settings: &GenerateSettings,
    files: &ModelFiles,
    device: &Device,
    video: &Tensor,
) -> Result<Tensor> {
    let component = files.component(
        settings.family.vae_component,
        settings.overrides.vae.as_deref(),
    )?;
    let config = vae_config(settings, &component)?;
    let weights = Arc::new(WeightFiles::open(&component.weights)?);
    let encoder = WanVaeEncoder::load(&weights, &config, settings.dtype, device)?;
    Ok(encoder
        .encode_normalized(&video.to_dtype(settings.dtype)?)?
        .to_dtype(DType::F32)?)
}

/// The image encoder's features of `images` (first, then last): `[1, Li·n, Di]` f32 (each
/// image's penultimate hidden states, side by side along the tokens), the encoder loaded for
/// this and freed after.
fn image_features(
    settings: &GenerateSettings,
    files: &ModelFiles,
    device: &Device,
    spec: crate::family::ImageEncoderSpec,
    images: &[&image::RgbImage],
) -> Result<Tensor> {
    let ImageEncoderKind::ClipVisionH14 = spec.kind;
    let component = files.component(spec.component, None)?;
    let config = match &component.config {
        Some(path) => ClipVisionConfig::from_json_file(path)?,
        None => ClipVisionConfig::vit_h_14(),
    };
    let weights = Arc::new(WeightFiles::open(&component.weights)?);
    let encoder = ClipVisionModel::load(&weights, &config, settings.dtype, device)?;
    let mut features = Vec::new();
    for image in images {
        let pixels = clip_preprocess(
            image.width() as usize,
            image.height() as usize,
            image.as_raw(),
            device,
        )?; // [1, 3, 224, 224]
        features.push(encoder.penultimate_hidden_states(&pixels)?); // [1, 257, Di]
    }
    Ok(Tensor::cat(&features, 1)?.to_dtype(DType::F32)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attention_settings(mode: AttentionMode, dense_steps: usize) -> AttentionSettings {
        AttentionSettings {
            mode,
            sparsity: 0.5,
            dense_steps: rainfusion::DenseSteps::Count(dense_steps),
            dense_step_count: dense_steps,
            mask_refresh: 1,
            block_size: 64,
            window: TokenWindow::Tile,
            dense_layers: 0,
        }
    }

    /// Both RainFusion versions check their settings against the run, not only field by field:
    /// the library is called directly here because `vdit`'s flag parsing rejects these values
    /// before it builds any policy.
    #[test]
    fn sparse_policies_reject_more_dense_steps_than_the_run_has() {
        for mode in [AttentionMode::Rainfusion, AttentionMode::RainfusionV1] {
            let err = build_attention(&attention_settings(mode, 99), 2, 4)
                .err()
                .unwrap_or_else(|| panic!("{mode:?} accepted 99 dense steps of 4"));
            let message = err.to_string();
            assert!(
                message.contains("99 dense steps") && message.contains("4 sampling steps"),
                "{mode:?}: {message}"
            );
            assert!(build_attention(&attention_settings(mode, 4), 2, 4).is_ok());
        }
    }
}
