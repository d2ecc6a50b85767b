//! Text to video in three named stages, each of which loads its network, runs it and frees it:
//!
//! ```text
//! encode   prompt, negative prompt ──umT5──► context [1, 512, D] each
//! denoise  noise [1,16,F',H/8,W/8] ──N solver steps, transformer (cond+uncond batched), CFG──► latents
//! decode   latents ──Wan VAE──► video [1, 3, F, H, W] in [-1, 1] ──► frames ──► file + sidecar JSON
//! ```
//!
//! The step loop ([`denoise`]) is written against [`VelocityModel`], so it is tested with toy
//! models and serves any flow-matching transformer.

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rainfusion::{
    DenseAttention, RainFusionAttention, RainFusionConfig, RainFusionV1Attention,
    RainFusionV1Config, SelfAttention, Window,
};
use serde::Serialize;

use crate::args::{AttentionMode, WindowArg};
use crate::error::{Result, VditError};
use vdit_models::tokenizer::PromptTokenizer;
use vdit_models::umt5::{Umt5Config, Umt5Encoder};
use vdit_models::wan::config::WanConfig;
use vdit_models::wan::transformer::WanTransformer;
use vdit_models::wan::vae::{VaeTiling, WanVaeConfig, WanVaeDecoder};
use vdit_models::weights::WeightFiles;

use crate::hub::ModelFiles;
use crate::sampling::{guide_batched, load_noise, seeded_noise, FlowSolver};
use crate::settings::{AttentionSettings, GenerateSettings};
use crate::video::{frames_from_tensor, write_video, VideoFrames};

/// A flow-matching network: predicts the velocity (noise − clean) of a sample.
pub trait VelocityModel {
    /// latents `[B, C, F, H, W]` f32, timesteps `[B]` f32 in 0..1000, context `[B, Lt, D]`
    /// → velocity `[B, C, F, H, W]` f32. Self-attention goes through `attention`.
    fn velocity(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        attention: &mut dyn SelfAttention,
    ) -> Result<Tensor>;
}

/// What the step loop reports after each step (for the progress bar).
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    /// 0-based step just taken.
    pub step: usize,
    pub steps: usize,
    pub timestep: f32,
    /// Wall time of this step (model passes + solver), seconds.
    pub seconds: f64,
}

/// Conditioning of the step loop: the prompt's context, and the negative prompt's when guiding.
pub struct Conditioning<'a> {
    /// `[1, Lt, D]`
    pub cond: &'a Tensor,
    /// `[1, Lt, D]`; `None` runs without classifier-free guidance (one pass per step).
    pub uncond: Option<&'a Tensor>,
    pub guidance_scale: f64,
}

/// Whether every element of `t` is finite (one scalar leaves the device).
fn all_finite(t: &Tensor) -> Result<bool> {
    let sum = t
        .to_dtype(DType::F32)?
        .abs()?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(sum.is_finite())
}

/// Runs the solver's whole schedule from `noise` `[1, C, F', H', W']` and returns the final
/// latents (f32, same shape). With guidance, the conditional and unconditional passes run as
/// one batch of 2 (conditional first) and are combined in f32.
pub fn denoise(
    model: &dyn VelocityModel,
    solver: &mut dyn FlowSolver,
    noise: &Tensor,
    conditioning: &Conditioning,
    attention: &mut dyn SelfAttention,
    on_step: &mut dyn FnMut(StepReport),
) -> Result<Tensor> {
    let steps = solver.schedule().num_steps();
    let timesteps = solver.schedule().timesteps.clone();
    let device = noise.device().clone();
    // The batched context never changes across steps: build it once.
    let context = match conditioning.uncond {
        Some(uncond) => Tensor::cat(&[conditioning.cond, uncond], 0)?,
        None => conditioning.cond.clone(),
    };
    let batch = context.dim(0)?;
    let mut latents = noise.to_dtype(DType::F32)?;
    for (step, &timestep) in timesteps.iter().enumerate() {
        let start = Instant::now();
        attention.begin_step(step, steps);
        let model_input = if batch == 2 {
            Tensor::cat(&[&latents, &latents], 0)?
        } else {
            latents.clone()
        };
        let t = Tensor::full(timestep, batch, &device)?;
        let velocity = model.velocity(&model_input, &t, &context, attention)?;
        let velocity = if conditioning.uncond.is_some() {
            guide_batched(&velocity, conditioning.guidance_scale)?
        } else {
            velocity.to_dtype(DType::F32)?
        };
        latents = solver.step(&velocity, &latents)?;
        if !all_finite(&latents)? {
            return Err(VditError::NonFinite {
                step: step + 1,
                steps,
                timestep,
            });
        }
        on_step(StepReport {
            step,
            steps,
            timestep,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    Ok(latents)
}

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
                    WindowArg::Tile => Window::Tile,
                    WindowArg::Spatiotemporal => Window::Spatiotemporal,
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

/// Wall time of each stage, seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageTimings {
    pub encode_s: f64,
    pub denoise_s: f64,
    pub decode_s: f64,
    pub write_s: f64,
    /// Mean of the sampling steps (model passes + solver).
    pub seconds_per_step: f64,
}

/// The sidecar JSON written next to the video.
#[derive(Debug, Clone, Serialize)]
pub struct Sidecar<'a> {
    pub vdit_version: &'static str,
    pub settings: &'a GenerateSettings,
    pub timings: &'a StageTimings,
    /// Fraction of attention blocks computed, averaged over layers, heads and steps (1 = dense).
    pub effective_density: f64,
    pub files: Vec<String>,
}

/// Writes `value` as pretty JSON to `path` atomically (temp file in the same directory, then rename).
pub fn write_json_atomic(path: &std::path::Path, value: &impl Serialize) -> Result<()> {
    let io = |source| VditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io)?;
    serde_json::to_writer_pretty(&mut tmp, value).map_err(|e| io(std::io::Error::other(e)))?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    make_readable(path)
}

/// Temp files are created private (0600); give the finished file the usual 0644.
fn make_readable(path: &std::path::Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).map_err(
            |source| VditError::Io {
                path: path.to_path_buf(),
                source,
            },
        )?;
    }
    Ok(())
}

/// Saves `latents` as tensor `latents` of a safetensors file (atomically).
pub fn save_latents(path: &std::path::Path, latents: &Tensor) -> Result<()> {
    let io = |source| VditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .suffix(".safetensors")
        .tempfile_in(&dir)
        .map_err(io)?;
    let tensors =
        std::collections::HashMap::from([("latents".to_string(), latents.to_dtype(DType::F32)?)]);
    candle_core::safetensors::save(&tensors, tmp.path())?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    make_readable(path)
}

/// What a finished run reports (printed at the end).
#[derive(Debug, Clone)]
pub struct RunReport {
    pub output: std::path::PathBuf,
    pub sidecar: std::path::PathBuf,
    pub timings: StageTimings,
    pub effective_density: f64,
}

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "wrote {} (settings, timings and seed in {})",
            self.output.display(),
            self.sidecar.display()
        )
    }
}

/// Runs the three stages for `settings` with the model `files` and writes the video and sidecar.
pub fn generate(settings: &GenerateSettings, files: &ModelFiles) -> Result<RunReport> {
    let device = settings.device.device()?;
    let mut timings = StageTimings::default();
    preflight(settings, files)?;

    let start = Instant::now();
    let text = encode_prompts(settings, files, &device)?;
    timings.encode_s = start.elapsed().as_secs_f64();
    eprintln!("encode       {:.1} s", timings.encode_s);

    let start = Instant::now();
    let sampled = sample_latents(settings, files, &device, &text)?;
    timings.denoise_s = start.elapsed().as_secs_f64();
    timings.seconds_per_step = sampled.seconds_per_step;
    eprintln!(
        "denoise      {:.1} s ({:.2} s/step, attention density {:.3})",
        timings.denoise_s, sampled.seconds_per_step, sampled.effective_density
    );
    let mut written = Vec::new();
    if let Some(path) = &settings.latents_out {
        save_latents(path, &sampled.latents)?;
        written.push(path.display().to_string());
    }

    let start = Instant::now();
    let video = decode_latents(settings, files, &device, &sampled.latents)?;
    timings.decode_s = start.elapsed().as_secs_f64();
    eprintln!("decode       {:.1} s", timings.decode_s);

    let start = Instant::now();
    let frames = video_frames(&video)?;
    written.extend(write_frames(&settings.output, &frames, settings.fps)?);
    timings.write_s = start.elapsed().as_secs_f64();

    let sidecar_path = settings.sidecar_path();
    let sidecar = Sidecar {
        vdit_version: env!("CARGO_PKG_VERSION"),
        settings,
        timings: &timings,
        effective_density: sampled.effective_density,
        files: written,
    };
    write_json_atomic(&sidecar_path, &sidecar)?;
    Ok(RunReport {
        output: settings.output.clone(),
        sidecar: sidecar_path,
        timings,
        effective_density: sampled.effective_density,
    })
}

fn video_error(e: crate::video::VideoError) -> VditError {
    VditError::Sampling(format!("video output: {e}"))
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
pub const TEXT_LEN: usize = 512;

/// Prompt and negative-prompt embeddings, `[1, TEXT_LEN, d_model]` f32 on the run device.
pub struct TextConditioning {
    pub cond: Tensor,
    /// Absent when guidance is off (scale 1).
    pub uncond: Option<Tensor>,
}

/// The tokenizer and umT5 encoder of a model, loaded once for any number of prompts.
pub struct PromptEncoder {
    tokenizer: PromptTokenizer,
    encoder: Umt5Encoder,
    /// Where the embeddings go (the transformer's device).
    output_device: Device,
}

impl PromptEncoder {
    /// Loads the model's tokenizer and text encoder (or the overrides). With `--t5-cpu` the
    /// encoder runs on the CPU; umT5 overflows in f16, so f16 runs encode in bf16.
    pub fn load(settings: &GenerateSettings, files: &ModelFiles, device: &Device) -> Result<Self> {
        let tokenizer_path = match &settings.overrides.tokenizer {
            Some(path) => path.clone(),
            None => files.file("tokenizer/tokenizer.json")?,
        };
        let tokenizer = PromptTokenizer::from_file(&tokenizer_path)?;
        let component =
            files.component("text_encoder", settings.overrides.text_encoder.as_deref())?;
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
            tokenizer,
            encoder,
            output_device: device.clone(),
        })
    }

    /// One prompt → `[1, TEXT_LEN, d_model]` f32 (real tokens encoded, then zero rows).
    pub fn encode(&self, prompt: &str) -> Result<Tensor> {
        let ids = self.tokenizer.encode(prompt, TEXT_LEN)?;
        Ok(self
            .encoder
            .encode_padded(&ids, TEXT_LEN)?
            .to_device(&self.output_device)?)
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

/// Stage 1: tokenizer and umT5 encoder; the encoder is freed when this returns.
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
    fn velocity(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        context: &Tensor,
        attention: &mut dyn SelfAttention,
    ) -> Result<Tensor> {
        Ok(self.forward(latents, timesteps, context, attention)?)
    }
}

/// What stage 2 produces.
pub struct SampledLatents {
    /// `[1, 16, F', H/8, W/8]` f32.
    pub latents: Tensor,
    pub seconds_per_step: f64,
    pub effective_density: f64,
}

/// Finds (or downloads) every file of the run in stage order and checks the attention flags
/// against the transformer's depth, so a missing VAE or a bad flag fails before minutes of work.
pub fn preflight(settings: &GenerateSettings, files: &ModelFiles) -> Result<()> {
    if settings.overrides.tokenizer.is_none() {
        files.file("tokenizer/tokenizer.json")?;
    }
    files.component("text_encoder", settings.overrides.text_encoder.as_deref())?;
    let config = transformer_config(settings, files)?;
    files.component("vae", settings.overrides.vae.as_deref())?;
    if let Some(config) = config {
        build_attention(&settings.attention, config.num_layers, settings.steps)?;
    }
    Ok(())
}

/// The transformer's config.json, when there is one (without, sizes come from the weights).
pub fn transformer_config(
    settings: &GenerateSettings,
    files: &ModelFiles,
) -> Result<Option<WanConfig>> {
    let component = files.component("transformer", settings.overrides.dit.as_deref())?;
    Ok(match &component.config {
        Some(path) => Some(WanConfig::from_json_file(path)?),
        None => None,
    })
}

/// Loads the transformer named by the model (or `--dit`).
pub fn load_transformer(
    settings: &GenerateSettings,
    files: &ModelFiles,
    device: &Device,
) -> Result<WanTransformer> {
    let component = files.component("transformer", settings.overrides.dit.as_deref())?;
    Ok(match &component.config {
        Some(config) => {
            let config = WanConfig::from_json_file(config)?;
            let weights = Arc::new(WeightFiles::open(&component.weights)?);
            WanTransformer::load(&weights, &config, settings.dtype, device)?
        }
        // No config anywhere: the transformer infers its sizes from the tensor shapes.
        None => WanTransformer::open(&component.weights, settings.dtype, device)?,
    })
}

/// Stage 2: loads the transformer, samples, frees it.
pub fn sample_latents(
    settings: &GenerateSettings,
    files: &ModelFiles,
    device: &Device,
    text: &TextConditioning,
) -> Result<SampledLatents> {
    let transformer = load_transformer(settings, files, device)?;
    sample_latents_with(&transformer, settings, device, text)
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

/// Stage 2 on an already loaded transformer (`vdit compare` and `vdit eval` load it once for
/// many runs): the whole schedule, with a progress bar (steps, s/step).
pub fn sample_latents_with(
    transformer: &WanTransformer,
    settings: &GenerateSettings,
    device: &Device,
    text: &TextConditioning,
) -> Result<SampledLatents> {
    let config = transformer.config();
    let noise = initial_noise(settings, config.in_channels, device)?;
    let mut attention = build_attention(&settings.attention, config.num_layers, settings.steps)?;
    let mut solver = settings.sampler.solver(settings.steps, settings.shift);
    let progress = ProgressBar::new(settings.steps as u64);
    progress.set_style(
        ProgressStyle::with_template("sampling     [{bar:30}] {pos}/{len} steps {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut total_seconds = 0.0;
    let latents = denoise(
        transformer,
        solver.as_mut(),
        &noise,
        &Conditioning {
            cond: &text.cond,
            uncond: text.uncond.as_ref(),
            guidance_scale: settings.guidance_scale,
        },
        attention.as_mut(),
        &mut |report| {
            total_seconds += report.seconds;
            progress.set_message(format!(
                "{:.2} s/step (t = {})",
                total_seconds / (report.step + 1) as f64,
                report.timestep
            ));
            progress.inc(1);
        },
    );
    progress.finish_and_clear();
    let latents = latents?;
    Ok(SampledLatents {
        latents,
        seconds_per_step: total_seconds / settings.steps.max(1) as f64,
        effective_density: attention.effective_density(),
    })
}

/// Loads the model's VAE decoder (or `--vae`).
pub fn load_vae(
    settings: &GenerateSettings,
    files: &ModelFiles,
    device: &Device,
) -> Result<WanVaeDecoder> {
    let component = files.component("vae", settings.overrides.vae.as_deref())?;
    let config = match &component.config {
        Some(path) => WanVaeConfig::from_json_file(path)?,
        None => WanVaeConfig::wan2_1(),
    };
    let weights = Arc::new(WeightFiles::open(&component.weights)?);
    Ok(WanVaeDecoder::load(
        &weights,
        &config,
        settings.dtype,
        device,
    )?)
}

/// Decodes with a loaded VAE: `[1, 16, F', H', W']` → `[1, 3, F, H, W]` in [-1, 1].
pub fn decode_with(
    vae: &WanVaeDecoder,
    settings: &GenerateSettings,
    latents: &Tensor,
) -> Result<Tensor> {
    let tiling = settings.vae_tiling.then(VaeTiling::default);
    Ok(vae.decode(latents, tiling)?)
}

/// Stage 3: loads the VAE, decodes, frees it.
pub fn decode_latents(
    settings: &GenerateSettings,
    files: &ModelFiles,
    device: &Device,
    latents: &Tensor,
) -> Result<Tensor> {
    decode_with(&load_vae(settings, files, device)?, settings, latents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::{EulerSolver, UniPcSolver};
    use candle_core::Device;
    use std::cell::Cell;

    /// v = (x − target(context)) / σ with σ = t/1000: the exact flow-matching velocity towards a
    /// clean image `target`, so Euler's last step lands on it.
    struct ToyModel {
        /// Step at which it starts returning NaN, if any.
        nan_from_call: Option<usize>,
        calls: Cell<usize>,
    }

    impl VelocityModel for ToyModel {
        fn velocity(
            &self,
            x: &Tensor,
            t: &Tensor,
            ctx: &Tensor,
            _: &mut dyn SelfAttention,
        ) -> Result<Tensor> {
            let call = self.calls.get();
            self.calls.set(call + 1);
            assert_eq!(t.dims(), &[x.dim(0)?]);
            assert_eq!(ctx.dim(0)?, x.dim(0)?);
            // One scalar per sample from its context.
            let target = ctx
                .mean_keepdim(1)?
                .mean_keepdim(2)?
                .reshape((x.dim(0)?, 1, 1, 1, 1))?;
            let sigma = (t.reshape((x.dim(0)?, 1, 1, 1, 1))? / 1000.0)?;
            let v = x.broadcast_sub(&target)?.broadcast_div(&sigma)?;
            match self.nan_from_call {
                Some(n) if call >= n => Ok((v * f64::NAN)?),
                _ => Ok(v),
            }
        }
    }

    fn toy_inputs() -> (Tensor, Tensor, Tensor) {
        let dev = Device::Cpu;
        let noise = crate::sampling::seeded_noise(3, &[1, 4, 2, 3, 3], &dev).unwrap();
        let cond = Tensor::full(2.0f32, (1, 5, 8), &dev).unwrap();
        let uncond = Tensor::full(-1.0f32, (1, 5, 8), &dev).unwrap();
        (noise, cond, uncond)
    }

    #[test]
    fn guided_loop_matches_a_hand_written_one() -> Result<()> {
        let (noise, cond, uncond) = toy_inputs();
        let model = ToyModel {
            nan_from_call: None,
            calls: Cell::new(0),
        };
        let mut solver = UniPcSolver::new(6, 3.0);
        let mut steps_seen = Vec::new();
        let latents = denoise(
            &model,
            &mut solver,
            &noise,
            &Conditioning {
                cond: &cond,
                uncond: Some(&uncond),
                guidance_scale: 4.0,
            },
            &mut DenseAttention,
            &mut |r| steps_seen.push(r.step),
        )?;
        assert_eq!(steps_seen, (0..6).collect::<Vec<_>>());
        assert_eq!(model.calls.get(), 6, "one batched call per step");
        // By hand: v = (x − (u + g(c − u)))/σ with c = 2, u = −1 (guidance is linear in the target).
        let mut reference = UniPcSolver::new(6, 3.0);
        let mut x = noise.clone();
        for k in 0..6 {
            let sigma = reference.schedule().timesteps[k] as f64 / 1000.0;
            let v = ((&x - (-1.0 + 4.0 * 3.0))? / sigma)?;
            x = reference.step(&v, &x)?;
        }
        let diff = (latents - x)?.abs()?.max_all()?.to_scalar::<f32>()?;
        // Values are ≈ 11: f32 rounding of a differently ordered sum only.
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }

    #[test]
    fn unguided_loop_runs_one_pass_per_step() -> Result<()> {
        let (noise, cond, _) = toy_inputs();
        let model = ToyModel {
            nan_from_call: None,
            calls: Cell::new(0),
        };
        let mut solver = EulerSolver::new(5, 5.0);
        let latents = denoise(
            &model,
            &mut solver,
            &noise,
            &Conditioning {
                cond: &cond,
                uncond: None,
                guidance_scale: 1.0,
            },
            &mut DenseAttention,
            &mut |_| {},
        )?;
        // Euler's last step to σ = 0 lands on the target 2 (up to f32 rounding).
        let err = (latents - 2.0)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-4, "{err}");
        Ok(())
    }

    #[test]
    fn a_nan_stops_the_run_naming_the_step() {
        let (noise, cond, uncond) = toy_inputs();
        let model = ToyModel {
            nan_from_call: Some(2),
            calls: Cell::new(0),
        };
        let mut solver = UniPcSolver::new(6, 3.0);
        let err = denoise(
            &model,
            &mut solver,
            &noise,
            &Conditioning {
                cond: &cond,
                uncond: Some(&uncond),
                guidance_scale: 5.0,
            },
            &mut DenseAttention,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                VditError::NonFinite {
                    step: 3,
                    steps: 6,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("step 3 of 6"), "{err}");
    }

    fn attention_settings(mode: AttentionMode, dense_steps: usize) -> AttentionSettings {
        AttentionSettings {
            mode,
            sparsity: 0.5,
            dense_steps: rainfusion::DenseSteps::Count(dense_steps),
            dense_step_count: dense_steps,
            mask_refresh: 1,
            block_size: 64,
            window: WindowArg::Tile,
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
