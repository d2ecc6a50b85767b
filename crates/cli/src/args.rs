//! Command-line arguments of the `vdit` binary (clap derive). Values that are wrong on their own
//! (frames not 4n+1, sparsity ≥ 1, ...) are rejected while parsing, each with one clear line;
//! checks that need several values or the model (dense steps ≤ steps, output directory, model
//! defaults) happen in [`crate::settings`].

use std::path::PathBuf;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::parser::{ArgMatches, ValueSource};
use clap::{Args, FromArgMatches, Parser, Subcommand};

use rainfusion::DenseSteps;
use vdit_models::lora::{LoraMode, LoraSpec};
use vdit_pipeline::offload::OffloadChoice;
use vdit_pipeline::options::{
    AttentionMode, Choice, DTypeChoice, DecoderChoice, DeviceChoice, StepCacheMode, TokenWindow,
};
use vdit_pipeline::sampling::SamplerKind;
use vdit_pipeline::settings::GenerateOptions;

pub mod compare_settings;
use compare_settings::SettingSpec;

/// vdit: text-to-video inference (Wan2.1) with RainFusion sparse attention, on candle.
#[derive(Debug, Parser)]
#[command(name = "vdit", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a video from a text prompt.
    // A repeated flag overrides the earlier one (handy with shell aliases); negative numbers are
    // values, so `--sparsity -0.1` reaches the range check instead of looking like a flag.
    #[command(args_override_self = true, allow_negative_numbers = true)]
    Generate(Box<GenerateArgs>),
    /// Dense against sparse attention from the same seed: PSNR, SSIM, latent cosine, density,
    /// speedup and prompt-faithfulness per sparsity, and a side-by-side video.
    #[command(args_override_self = true, allow_negative_numbers = true)]
    Compare(Box<CompareArgs>),
    /// Prompt-faithfulness of a model over a fixed list of prompts of the synthetic world
    /// (colour, motion and object-count accuracy).
    #[command(args_override_self = true, allow_negative_numbers = true)]
    Eval(Box<EvalArgs>),
    /// Time the attention kernels, the transformer forward and the VAE decode with random
    /// weights at the real sizes (no checkpoint needed).
    #[command(args_override_self = true)]
    Bench(Box<bench::BenchArgs>),
    /// List the models of the registry (models/*.toml) and their defaults.
    Models,
}

/// Arguments of `vdit generate`. Settings left out come from the model's registry entry, else
/// from Wan2.1's defaults.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The text prompt.
    #[arg(short = 'p', long, value_parser = non_empty)]
    pub prompt: String,

    /// What the video should not look like. Default: the model's (none for vdit-tiny), else
    /// Wan2.1's official negative prompt (Chinese). Pass "" for none.
    #[arg(short = 'n', long)]
    pub negative_prompt: Option<String>,

    /// Image-to-video: the first frame (png, jpeg or webp). Needed by the I2V models
    /// (wan2.1-i2v-14b-480p/720p, wan2.1-flf2v-14b-720p, wan2.2-i2v-a14b); optional for
    /// wan2.2-ti2v-5b. Without --size the video keeps its aspect ratio at the model's pixel count.
    #[arg(long, value_name = "PATH")]
    pub image: Option<PathBuf>,

    /// First-and-last-frame models (wan2.1-flf2v-14b-720p): the last frame.
    #[arg(long, value_name = "PATH")]
    pub last_image: Option<PathBuf>,

    /// Video size WIDTHxHEIGHT (also WIDTH*HEIGHT), each a multiple of 16 (32 for Wan2.2
    /// TI2V-5B). Default: the model's (`vdit models` lists them).
    #[arg(long, value_parser = parse_size, value_name = "WxH")]
    pub size: Option<(u32, u32)>,

    /// Video width in pixels, a multiple of 16 (overrides --size).
    #[arg(long, value_parser = parse_dimension)]
    pub width: Option<u32>,

    /// Video height in pixels, a multiple of 16 (overrides --size).
    #[arg(long, value_parser = parse_dimension)]
    pub height: Option<u32>,

    /// Number of frames, 4n+1 (the VAE makes 4 frames per latent frame after the first).
    /// Default: the model's (`vdit models` lists them).
    #[arg(long, value_parser = parse_frames)]
    pub frames: Option<u32>,

    /// Sampling steps. Default: the model's (`vdit models` lists them).
    #[arg(long, value_parser = parse_steps)]
    pub steps: Option<usize>,

    /// Classifier-free guidance scale; 1 disables guidance (one model pass per step). Default:
    /// the model's (5; Wan2.2 A14B: 4.0, for its high-noise expert).
    #[arg(long, alias = "cfg-scale", value_parser = parse_guidance)]
    pub guidance_scale: Option<f64>,

    /// Two-expert models (wan2.2-t2v-a14b): guidance scale of the low-noise expert, which runs
    /// once t < boundary_ratio x 1000 (--guidance-scale guides the high-noise one). Default: the
    /// model's (3.0 for Wan2.2 A14B), else --guidance-scale.
    #[arg(long, value_parser = parse_guidance)]
    pub guidance_scale_2: Option<f64>,

    /// Time shift of the flow-matching schedule (larger spends more steps at high noise).
    /// Default: the model's (5 for Wan2.1 T2V, like its generate.py).
    #[arg(long, value_parser = parse_shift)]
    pub shift: Option<f64>,

    /// Sampler. Default: the model's (unipc for Wan; lcm or euler for the 4-step recipes).
    #[arg(long, value_parser = choice::<SamplerKind>())]
    pub sampler: Option<SamplerKind>,

    /// A distilled model's denoising step list, comma-separated training timesteps in (0, 1000],
    /// decreasing (lightx2v's 4-step LoRAs: 1000,750,500,250). Each is mapped through --shift;
    /// the count sets the steps. Needs --sampler euler or lcm. Default: the model's, if any.
    #[arg(long, value_delimiter = ',', num_args = 1.., value_parser = parse_number::<f64>, value_name = "T,T,...")]
    pub timesteps: Option<Vec<f64>>,

    /// Random seed of the initial noise; random when absent, below 2^53 so that JSON readers keep it
    /// exact (always printed).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Frames per second of the output file. Default: the model's (`vdit models` lists them).
    #[arg(long, value_parser = parse_fps)]
    pub fps: Option<u32>,

    /// Output file; its extension picks the format: .mp4 (H.264), .gif, or .png (a numbered
    /// frame sequence). A JSON sidecar with every setting is written next to it, named after
    /// the whole output name (out.mp4 -> out.mp4.json). Default: vdit-<seed>.mp4.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Device to run on.
    #[arg(long, value_parser = choice::<DeviceChoice>(), default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,

    /// Dtype the networks compute in (activations, and weights stored as floats). Weights stored
    /// quantised (a GGUF --dit: Q8_0, Q4_K, ...; an fp8 file) stay in their stored format in
    /// memory and are multiplied in this dtype; the file decides what is stored. On Hopper GPUs,
    /// fp8 layers 4096 wide or more (the 14B models) multiply in fp8 on cuBLASLt instead, with the
    /// activations rounded to e4m3 (VDIT_FP8_GEMM=0 keeps them in this dtype).
    #[arg(long, value_parser = choice::<DTypeChoice>(), default_value_t = DTypeChoice::Auto)]
    pub dtype: DTypeChoice,

    /// Model: a registry name (see `vdit models`), a Hugging Face hub id (owner/name[@revision])
    /// or a local directory in the diffusers layout. Default: the shipped model if present,
    /// else wan2.1-t2v-1.3b.
    #[arg(short = 'm', long)]
    pub model: Option<String>,

    /// Never touch the network: hub models come from the local cache only (like HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,

    /// Transformer weights to use instead of the model's (a .safetensors file, a
    /// *.safetensors.index.json, or a directory with config.json). Also a GGUF file (ComfyUI-GGUF's
    /// Wan files, Q8_0 … Q4_K_M: the linear layers stay quantised) or an fp8 safetensors file
    /// (float8_e4m3fn, ComfyUI's scaled fp8 with scale_weight: the linear layers stay in fp8).
    /// For a two-expert model: the high-noise expert's.
    #[arg(long, value_name = "PATH")]
    pub dit: Option<PathBuf>,

    /// Two-expert models: the low-noise expert's weights instead of the model's transformer_2/
    /// (or low_noise_model/), e.g. a single-file ComfyUI checkpoint (with --dit for the other).
    #[arg(long, value_name = "PATH")]
    pub dit_2: Option<PathBuf>,

    /// VAE weights to use instead of the model's (diffusers keys, or the original Wan2.1_VAE or
    /// Wan2.2_VAE keys).
    #[arg(long, value_name = "PATH")]
    pub vae: Option<PathBuf>,

    /// umT5 text-encoder weights to use instead of the model's (transformers or Wan2.1-original
    /// keys, safetensors). Also a GGUF file (city96's umt5-xxl-encoder-Q8_0 … Q4_K_M: the
    /// projections stay quantised, the token table stays in blocks in host memory).
    #[arg(long, value_name = "PATH")]
    pub text_encoder: Option<PathBuf>,

    /// tokenizer.json to use instead of the model's.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,

    /// Run the text encoder(s) on the CPU: saves GPU memory (umT5-XXL is 11 GB in bf16) at the
    /// cost of a slower encode. `--t5-cpu` is the older name.
    #[arg(long = "text-encoder-cpu", alias = "t5-cpu")]
    pub t5_cpu: bool,

    /// Decode the video in spatial tiles, so large sizes fit in less memory.
    #[arg(long)]
    pub vae_tiling: bool,

    /// Two-expert models: keep both experts on the device (the same as --offload none). By
    /// default only the active one is: the low-noise expert loads when the boundary is crossed
    /// and the high-noise one is freed.
    #[arg(long)]
    pub keep_experts: bool,

    /// How much of the transformer stays on the device. Streaming blocks lets a model larger
    /// than the GPU run (Wan2.1-14B at 720p in about 22 GiB) at some speed cost; it needs the
    /// transformer's weights in host RAM. The choice (and, for auto, why) is printed first and
    /// recorded in the sidecar.
    #[arg(long, value_parser = choice::<OffloadChoice>(), default_value_t = OffloadChoice::Auto)]
    pub offload: OffloadChoice,

    /// Start from the `noise` tensor of this safetensors file ([1,16,F',H/8,W/8]; Wan2.2
    /// TI2V-5B: [1,48,F',H/16,W/16]) instead of
    /// the seed, for exact comparisons with other implementations.
    #[arg(long, value_name = "FILE")]
    pub noise: Option<PathBuf>,

    /// Also save the final latents (tensor `latents`) to this safetensors file.
    #[arg(long, value_name = "FILE")]
    pub latents_out: Option<PathBuf>,

    /// Decode the latents saved in this file (by --latents-out, or after a failed decode)
    /// instead of sampling: writes the video and sidecar without running the text encoder or
    /// the transformer. Size and frames must be those of the run that saved them.
    #[arg(long, value_name = "FILE")]
    pub latents_in: Option<PathBuf>,

    /// Replace existing outputs even if vdit did not write them. Without it, an existing file
    /// is replaced only if vdit wrote it (its sidecar lists it; see docs/reliability.md).
    #[arg(long)]
    pub overwrite: bool,

    /// Self-attention of the transformer.
    #[arg(long, value_parser = choice::<AttentionMode>(), default_value_t = AttentionMode::Dense, help_heading = "Sparse attention")]
    pub attention: AttentionMode,

    /// Fraction of attention blocks skipped by RainFusion, in [0, 1). Default 0.8.
    #[arg(long, value_parser = parse_sparsity, help_heading = "Sparse attention")]
    pub sparsity: Option<f64>,

    /// Steps run dense before sparse attention starts: a count (12) or a fraction of the steps
    /// (0.25, rounded up). Default: a quarter of the steps.
    #[arg(long, value_parser = parse_dense_steps, value_name = "N|FRACTION", help_heading = "Sparse attention")]
    pub dense_steps: Option<DenseSteps>,

    /// Recompute the sparse masks every N steps and reuse them in between. Default 1.
    #[arg(long, value_parser = parse_positive, value_name = "N", help_heading = "Sparse attention")]
    pub mask_refresh: Option<usize>,

    /// Tokens per attention block, a power of two (64 or 128 usual). Default 128.
    #[arg(long, value_parser = parse_block_size, help_heading = "Sparse attention")]
    pub block_size: Option<usize>,

    /// Token window that forms a block. Default tile.
    #[arg(long, value_parser = choice::<TokenWindow>(), help_heading = "Sparse attention")]
    pub window: Option<TokenWindow>,

    /// Keep the first and last N transformer layers dense. Default 0.
    #[arg(long, value_name = "N", help_heading = "Sparse attention")]
    pub dense_layers: Option<usize>,

    /// A LoRA to apply, as FILE or FILE:STRENGTH (strength 1.0 by default); repeat the flag for
    /// several. Any published Wan form: diffusers/PEFT, original Wan/ComfyUI (lora_down/up with
    /// alpha, or lora_A/B), kohya/musubi, lightx2v/Lightning (with .diff/.diff_b deltas).
    /// Two-expert models: applies to the high-noise expert (see --lora-2).
    #[arg(long = "lora", value_name = "FILE[:STRENGTH]", value_parser = parse_lora, help_heading = "LoRA")]
    pub loras: Vec<LoraSpec>,

    /// Two-expert models (wan2.2-t2v-a14b): a LoRA of the low-noise expert, as FILE[:STRENGTH];
    /// repeatable. Wan2.2 Lightning and lightx2v publish one file per expert.
    #[arg(long = "lora-2", value_name = "FILE[:STRENGTH]", value_parser = parse_lora, help_heading = "LoRA")]
    pub loras_2: Vec<LoraSpec>,

    /// How LoRAs are applied.
    #[arg(long, value_parser = choice::<LoraMode>(), default_value = "merge", help_heading = "LoRA")]
    pub lora_mode: LoraMode,

    /// Apply a LoRA whose keys match only part of the model, ignoring the tensors that match no
    /// layer (by default that is an error naming some of them).
    #[arg(long, help_heading = "LoRA")]
    pub lora_partial: bool,

    /// Skip the transformer's blocks on steps whose result is predictable from the last
    /// computed one, reusing that step's residual. magcache needs the model's magnitude ratios
    /// (built in for wan2.1-t2v-1.3b and -14b; any model: --cache-calibrate); teacache needs
    /// published coefficients (Wan2.1 1.3B and 14B).
    #[arg(long, value_parser = choice::<StepCacheMode>(), default_value_t = StepCacheMode::None, help_heading = "Step cache")]
    pub step_cache: StepCacheMode,

    /// How much error the cache may accumulate before a step runs again; larger skips more.
    /// 0 never skips. Default: magcache 0.12 (its published default), teacache 0.1.
    #[arg(long, value_parser = parse_threshold, value_name = "X", help_heading = "Step cache")]
    pub cache_threshold: Option<f64>,

    /// The first N steps always run. Default: magcache a fifth of the steps (rounded up, its
    /// published retention ratio), teacache 5.
    #[arg(long, value_name = "N", help_heading = "Step cache")]
    pub cache_keep_first: Option<usize>,

    /// The last N steps always run. Default 1.
    #[arg(long, value_name = "N", help_heading = "Step cache")]
    pub cache_keep_last: Option<usize>,

    /// magcache: at most N steps skipped in a row. Default 2 (its published K).
    #[arg(long, value_parser = parse_positive, value_name = "N", help_heading = "Step cache")]
    pub cache_max_skips: Option<usize>,

    /// A calibration file (written by --cache-calibrate) to use instead of the model's own.
    #[arg(long, value_name = "FILE", help_heading = "Step cache")]
    pub cache_calibration: Option<PathBuf>,

    /// Calibrate MagCache for this model: run every step in full and write the per-step
    /// magnitude ratios of the blocks' residual to FILE (JSON), for --cache-calibration FILE
    /// (or the model folder's `cache_calibration`). Calibrate with the steps and guidance you
    /// will run; other step counts are resampled.
    #[arg(long, value_name = "FILE", help_heading = "Step cache")]
    pub cache_calibrate: Option<PathBuf>,

    /// Which network turns the latents into video. tiny: TAEHV's preview decoder (taew2_1 for
    /// 16-channel latents, taew2_2 for 48), several times faster than the full VAE at slightly
    /// lower quality; downloaded from the hub (madebyollin/taehv) unless --tiny-vae is given.
    #[arg(long, value_parser = choice::<DecoderChoice>(), default_value_t = DecoderChoice::Full)]
    pub decoder: DecoderChoice,

    /// With --decoder tiny: the TAEHV safetensors file, or a folder holding taew2_1.safetensors
    /// / taew2_2.safetensors. Its latent channels must be the model's.
    #[arg(long, value_name = "PATH")]
    pub tiny_vae: Option<PathBuf>,
}

fn parse_threshold(s: &str) -> Result<f64, String> {
    let v: f64 = parse_number(s)?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{v} is not a finite threshold ≥ 0 (0 never skips)"));
    }
    Ok(v)
}

fn parse_lora(s: &str) -> Result<LoraSpec, String> {
    s.parse()
}

/// A clap parser offering `T`'s values (with their one-line help) and giving back a `T`: the
/// enums are the pipeline's, defined once.
fn choice<T: Choice + Clone>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(T::ALL.iter().map(|v| {
        let value = PossibleValue::new(v.name());
        match v.help() {
            Some(help) => value.help(help),
            None => value,
        }
    }))
    .map(|name| {
        T::ALL
            .iter()
            .copied()
            .find(|v| v.name() == name)
            .expect("clap only passes possible values")
    })
}

impl GenerateArgs {
    /// The pipeline's options for these flags.
    pub fn options(&self) -> GenerateOptions {
        let defaults = GenerateOptions::new("");
        GenerateOptions {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            size: self.size,
            width: self.width,
            height: self.height,
            frames: self.frames,
            steps: self.steps,
            guidance_scale: self.guidance_scale,
            guidance_scale_2: self.guidance_scale_2,
            shift: self.shift,
            sampler: self.sampler,
            timesteps: self.timesteps.clone(),
            seed: self.seed,
            fps: self.fps,
            output: self.output.clone(),
            device: self.device,
            dtype: self.dtype,
            model: self.model.clone(),
            offline: self.offline,
            dit: self.dit.clone(),
            dit_2: self.dit_2.clone(),
            vae: self.vae.clone(),
            text_encoder: self.text_encoder.clone(),
            tokenizer: self.tokenizer.clone(),
            t5_cpu: self.t5_cpu,
            vae_tiling: self.vae_tiling,
            keep_experts: self.keep_experts,
            offload: self.offload,
            noise: self.noise.clone(),
            latents_out: self.latents_out.clone(),
            latents_in: self.latents_in.clone(),
            overwrite: self.overwrite,
            attention: self.attention,
            sparsity: self.sparsity.unwrap_or(defaults.sparsity),
            dense_steps: self.dense_steps,
            mask_refresh: self.mask_refresh.unwrap_or(defaults.mask_refresh),
            block_size: self.block_size.unwrap_or(defaults.block_size),
            window: self.window.unwrap_or(defaults.window),
            dense_layers: self.dense_layers.unwrap_or(defaults.dense_layers),
            loras: self.loras.clone(),
            loras_2: self.loras_2.clone(),
            lora_mode: self.lora_mode,
            lora_partial: self.lora_partial,
            image: self.image.clone(),
            last_image: self.last_image.clone(),
            step_cache: self.step_cache,
            cache_threshold: self.cache_threshold,
            cache_keep_first: self.cache_keep_first,
            cache_keep_last: self.cache_keep_last,
            cache_max_skips: self.cache_max_skips,
            cache_calibration: self.cache_calibration.clone(),
            cache_calibrate: self.cache_calibrate.clone(),
            decoder: self.decoder,
            tiny_vae: self.tiny_vae.clone(),
        }
    }

    /// The sparse-attention flags given on the command line, by name.
    pub fn sparse_flags_given(&self) -> Vec<&'static str> {
        [
            ("--sparsity", self.sparsity.is_some()),
            ("--dense-steps", self.dense_steps.is_some()),
            ("--mask-refresh", self.mask_refresh.is_some()),
            ("--block-size", self.block_size.is_some()),
            ("--window", self.window.is_some()),
            ("--dense-layers", self.dense_layers.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
    }

    /// An error line when sparse-attention flags are given with dense attention, which would
    /// ignore them.
    pub fn check_sparse_flags(&self) -> Result<(), String> {
        let given = self.sparse_flags_given();
        if self.attention != AttentionMode::Dense || given.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} {} no effect with --attention dense (the default): add --attention rainfusion \
             (or rainfusion-v1), or leave {} out",
            given.join(", "),
            if given.len() == 1 { "has" } else { "have" },
            if given.len() == 1 { "it" } else { "them" }
        ))
    }
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("the prompt is empty".into())
    } else {
        Ok(s.to_string())
    }
}

fn parse_number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))
}

fn parse_dimension(s: &str) -> Result<u32, String> {
    let v: u32 = parse_number(s)?;
    if v == 0 || !v.is_multiple_of(16) {
        return Err(format!(
            "{v} is not a positive multiple of 16 (the VAE and the 2×2 patches need it)"
        ));
    }
    Ok(v)
}

/// `832x480`, `832X480` or `832*480` → (width, height).
pub fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X', '*'])
        .ok_or_else(|| format!("`{s}` is not WIDTHxHEIGHT (e.g. 832x480)"))?;
    let w = parse_dimension(w).map_err(|e| format!("width {e}"))?;
    let h = parse_dimension(h).map_err(|e| format!("height {e}"))?;
    Ok((w, h))
}

fn parse_frames(s: &str) -> Result<u32, String> {
    let v: u32 = parse_number(s)?;
    if v == 0 || !(v - 1).is_multiple_of(4) {
        let below = if v == 0 { 1 } else { (v - 1) / 4 * 4 + 1 };
        return Err(format!(
            "{v} frames is not 4n+1 (try {below} or {})",
            below + 4
        ));
    }
    Ok(v)
}

fn parse_steps(s: &str) -> Result<usize, String> {
    let v: usize = parse_number(s)?;
    if !(1..=1000).contains(&v) {
        return Err(format!("{v} steps is outside 1..=1000"));
    }
    Ok(v)
}

fn parse_positive(s: &str) -> Result<usize, String> {
    let v: usize = parse_number(s)?;
    if v == 0 {
        return Err("must be at least 1".into());
    }
    Ok(v)
}

fn parse_guidance(s: &str) -> Result<f64, String> {
    let v: f64 = parse_number(s)?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{v} is not a finite scale ≥ 0"));
    }
    Ok(v)
}

fn parse_shift(s: &str) -> Result<f64, String> {
    let v: f64 = parse_number(s)?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("{v} is not a finite shift > 0"));
    }
    Ok(v)
}

fn parse_fps(s: &str) -> Result<u32, String> {
    let v: u32 = parse_number(s)?;
    if !(1..=240).contains(&v) {
        return Err(format!("{v} fps is outside 1..=240"));
    }
    Ok(v)
}

fn parse_sparsity(s: &str) -> Result<f64, String> {
    let v: f64 = parse_number(s)?;
    if !(0.0..1.0).contains(&v) {
        return Err(format!(
            "{v} is outside [0, 1) (0.8 skips 80% of the attention blocks)"
        ));
    }
    Ok(v)
}

fn parse_block_size(s: &str) -> Result<usize, String> {
    let v: usize = parse_number(s)?;
    if !v.is_power_of_two() || v < 16 {
        return Err(format!("{v} is not a power of two ≥ 16 (64 or 128 usual)"));
    }
    Ok(v)
}

/// `12` → 12 steps; `0.25` → a quarter of the steps (rounded up, as rainfusion resolves it).
fn parse_dense_steps(s: &str) -> Result<DenseSteps, String> {
    s.parse().map_err(|e: rainfusion::Error| e.to_string())
}

/// Arguments of `vdit compare`: every flag of `vdit generate` (model, size, steps, seed, sparse
/// and step-cache tuning, LoRAs), which every setting starts from, where `-o` names the output
/// directory and `--attention` is the sparse mode of `--sparsities` and of `sparsity=` keys
/// (default rainfusion). The settings are expanded and checked for duplicate names here.
#[derive(Debug)]
pub struct CompareArgs {
    pub generate: GenerateArgs,
    /// What every setting is measured against (default: `dense`, the command's flags with dense
    /// attention).
    pub baseline: SettingSpec,
    /// The settings compared with the baseline, in order (see
    /// [`compare_settings::expand_settings`]).
    pub settings: Vec<SettingSpec>,
    /// Timed sampling loops per run (the median is reported).
    pub timing_rounds: usize,
}

/// The flags `vdit compare` adds to those of `vdit generate`.
#[derive(Debug, Args)]
struct CompareOnlyArgs {
    /// Shorthand: one setting `rainfusion S` (`sparsity=S`) per value, comma-separated, each in
    /// [0, 1). Default 0.5,0.8,0.9 when no --setting or --sweep-* is given.
    #[arg(
        long,
        value_delimiter = ',',
        num_args = 1..,
        default_values_t = [0.5, 0.8, 0.9],
        value_parser = parse_sparsity,
        help_heading = "Settings"
    )]
    sparsities: Vec<f64>,

    /// A setting to compare with the baseline, as 'NAME: KEY=VALUE ...' (the name and colon may
    /// be left out: one is made from the keys); repeatable. Keys:
    /// attention=dense|rainfusion|rainfusion-v1, sparsity=S (with the --attention mode when
    /// attention= is left out), cache=none|magcache|teacache, threshold=X, keep-first=N,
    /// keep-last=N, max-skips=N, lora=FILE[:STRENGTH] (repeatable; replaces --lora; lora=none
    /// for none), vae=full|tiny (tiny: TAEHV, from --tiny-vae or the hub), dit=FILE (the
    /// transformer's weights from this file: safetensors, fp8 or GGUF, to compare weight
    /// formats). Keys left out keep the command's flags. Example:
    /// --setting 'fast: sparsity=0.8 cache=magcache threshold=0.12'
    #[arg(long = "setting", value_name = "'NAME: KEY=VALUE ...'", value_parser = parse_setting, help_heading = "Settings")]
    settings: Vec<SettingSpec>,

    /// The setting every other one is measured against, in the --setting form. Default: dense
    /// (the command's flags, dense attention, its --step-cache: none unless given).
    #[arg(long, value_name = "'NAME: KEY=VALUE ...'", value_parser = parse_setting, help_heading = "Settings")]
    baseline: Option<SettingSpec>,

    /// Sweep for the Pareto plot: these sparsities alone, the --sweep-cache-thresholds alone,
    /// and every (sparsity, threshold) pair, comma-separated.
    #[arg(long, value_delimiter = ',', num_args = 1.., value_parser = parse_sparsity, value_name = "S,S,...", help_heading = "Settings")]
    sweep_sparsities: Vec<f64>,

    /// Sweep for the Pareto plot: step-cache thresholds (of --sweep-cache), comma-separated.
    #[arg(long, value_delimiter = ',', num_args = 1.., value_parser = parse_threshold, value_name = "X,X,...", help_heading = "Settings")]
    sweep_cache_thresholds: Vec<f64>,

    /// The step cache of --sweep-cache-thresholds.
    #[arg(long, value_parser = choice::<StepCacheMode>(), default_value_t = StepCacheMode::MagCache, help_heading = "Settings")]
    sweep_cache: StepCacheMode,

    /// Timed sampling loops per run, the first with the decode and the rest sampling only, in
    /// orders that put each run first in turn; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = parse_positive, value_name = "N")]
    timing_rounds: usize,
}

fn parse_setting(s: &str) -> Result<SettingSpec, String> {
    s.parse().map_err(|e| format!("'{s}': {e}"))
}

/// A clap error for a flag of `vdit generate` that another subcommand does not take.
fn reject_flag(
    matches: &ArgMatches,
    id: &str,
    message: &str,
) -> std::result::Result<(), clap::Error> {
    if matches.value_source(id) == Some(ValueSource::CommandLine) {
        return Err(clap::Error::raw(
            clap::error::ErrorKind::ArgumentConflict,
            format!("{message}\n"),
        ));
    }
    Ok(())
}

impl FromArgMatches for CompareArgs {
    fn from_arg_matches(matches: &ArgMatches) -> std::result::Result<Self, clap::Error> {
        reject_flag(
            matches,
            "sparsity",
            "vdit compare takes --sparsities (a comma-separated list), not --sparsity",
        )?;
        reject_flag(
            matches,
            "latents_out",
            "vdit compare does not take --latents-out (it compares the latents itself)",
        )?;
        reject_flag(
            matches,
            "latents_in",
            "vdit compare does not take --latents-in (it samples every run itself)",
        )?;
        reject_flag(
            matches,
            "cache_calibrate",
            "vdit compare does not take --cache-calibrate (calibrate with vdit generate)",
        )?;
        let generate = GenerateArgs::from_arg_matches(matches)?;
        if generate.attention == AttentionMode::Dense {
            return Err(clap::Error::raw(
                clap::error::ErrorKind::ArgumentConflict,
                "--attention dense: in vdit compare --attention is the sparse mode of --sparsities and sparsity= (rainfusion or rainfusion-v1); the baseline is dense unless --baseline says otherwise\n",
            ));
        }
        let only = CompareOnlyArgs::from_arg_matches(matches)?;
        // The default sparsities apply only when nothing else says what to compare.
        let sparsities = if matches.value_source("sparsities") == Some(ValueSource::CommandLine)
            || (only.settings.is_empty()
                && only.sweep_sparsities.is_empty()
                && only.sweep_cache_thresholds.is_empty())
        {
            only.sparsities
        } else {
            Vec::new()
        };
        // A `sparsity=` without `attention=` is in --attention's mode, and named after it.
        let with_mode = |mut spec: SettingSpec| {
            if spec.sparsity.is_some() && spec.attention.is_none() {
                spec.attention = Some(generate.attention);
            }
            spec
        };
        let baseline = with_mode(only.baseline.unwrap_or_else(|| SettingSpec::named("dense")));
        let given: Vec<SettingSpec> = only.settings.into_iter().map(with_mode).collect();
        let settings = compare_settings::expand_settings(
            generate.attention,
            &sparsities,
            &given,
            &only.sweep_sparsities,
            only.sweep_cache,
            &only.sweep_cache_thresholds,
            &baseline,
        )
        .map_err(|e| clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n")))?;
        Ok(Self {
            generate,
            baseline,
            settings,
            timing_rounds: only.timing_rounds,
        })
    }

    fn update_from_arg_matches(
        &mut self,
        matches: &ArgMatches,
    ) -> std::result::Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for CompareArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let cmd = GenerateArgs::augment_args(cmd)
            .mut_arg("output", |a| {
                a.value_name("DIR")
                    .help("Directory for compare.json, compare.md and the videos (created if missing). Default: vdit-compare")
            })
            .mut_arg("attention", |a| {
                a.default_value("rainfusion").help(
                    "Sparse mode of --sparsities, --sweep-sparsities and of sparsity= keys without attention= (rainfusion or rainfusion-v1)",
                )
            })
            .mut_arg("sparsity", |a| a.hide(true))
            .mut_arg("latents_out", |a| a.hide(true))
            .mut_arg("latents_in", |a| a.hide(true))
            .mut_arg("cache_calibrate", |a| a.hide(true))
            .mut_arg("step_cache", |a| {
                a.help("Step caching of every setting, the baseline included, unless the setting says cache= (see vdit generate --help)")
            })
            .mut_arg("overwrite", |a| {
                a.help("Replace files in the output directory even if vdit did not write them")
            });
        CompareOnlyArgs::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// Arguments of `vdit eval`: the flags of `vdit generate` (model, size, steps, attention, ...)
/// except `-p`, where `-o` names the output directory and `--seed` is the base seed.
#[derive(Debug)]
pub struct EvalArgs {
    pub generate: GenerateArgs,
    /// Prompt file, one caption per line; `None` with `builtin`.
    pub prompts: Option<PathBuf>,
    pub builtin: bool,
}

/// The flags `vdit eval` adds to those of `vdit generate`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct EvalOnlyArgs {
    /// File of prompts, one per line (blank lines and lines starting with # are skipped), each a
    /// caption of the synthetic world's grammar ("a red circle moving left on a blue background").
    #[arg(long, value_name = "FILE")]
    prompts: Option<PathBuf>,

    /// Use the built-in list of held-out prompts (18 captions).
    #[arg(long)]
    builtin: bool,
}

impl FromArgMatches for EvalArgs {
    fn from_arg_matches(matches: &ArgMatches) -> std::result::Result<Self, clap::Error> {
        reject_flag(
            matches,
            "prompt",
            "vdit eval takes its prompts from --prompts FILE or --builtin, not -p",
        )?;
        reject_flag(
            matches,
            "latents_out",
            "vdit eval does not take --latents-out",
        )?;
        reject_flag(
            matches,
            "latents_in",
            "vdit eval does not take --latents-in",
        )?;
        reject_flag(
            matches,
            "cache_calibrate",
            "vdit eval does not take --cache-calibrate (calibrate with vdit generate)",
        )?;
        reject_flag(
            matches,
            "noise",
            "vdit eval does not take --noise (each prompt has its own seed: --seed is the base)",
        )?;
        for flag in ["image", "last_image"] {
            reject_flag(
                matches,
                flag,
                "vdit eval scores text-to-video on its prompt list; it takes no --image or --last-image",
            )?;
        }
        let generate = GenerateArgs::from_arg_matches(matches)?;
        let only = EvalOnlyArgs::from_arg_matches(matches)?;
        Ok(Self {
            generate,
            prompts: only.prompts,
            builtin: only.builtin,
        })
    }

    fn update_from_arg_matches(
        &mut self,
        matches: &ArgMatches,
    ) -> std::result::Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl Args for EvalArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let cmd = GenerateArgs::augment_args(cmd)
            // The prompt comes from the list; the placeholder never reaches a run.
            .mut_arg("prompt", |a| {
                a.required(false).default_value("(eval prompt)").hide(true)
            })
            .mut_arg("output", |a| {
                a.value_name("DIR").help(
                    "Directory for eval.json, eval.md and one video per prompt (created if missing). Default: vdit-eval",
                )
            })
            .mut_arg("seed", |a| {
                a.help("Base seed: prompt i (from 0) is generated from seed + i. Default 0")
            })
            .mut_arg("latents_out", |a| a.hide(true))
            .mut_arg("latents_in", |a| a.hide(true))
            .mut_arg("cache_calibrate", |a| a.hide(true))
            .mut_arg("overwrite", |a| {
                a.help("Replace files in the output directory even if vdit did not write them")
            })
            .mut_arg("noise", |a| a.hide(true))
            .mut_arg("image", |a| a.hide(true))
            .mut_arg("last_image", |a| a.hide(true));
        EvalOnlyArgs::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// The arguments of `vdit bench` and its targets.
pub mod bench {
    use std::path::PathBuf;

    use clap::{Args, Subcommand};
    use rainfusion::DenseSteps;
    use vdit_pipeline::offload::OffloadChoice;
    use vdit_pipeline::options::{
        AttentionMode, DTypeChoice, DecoderChoice, DeviceChoice, StepCacheMode,
    };

    use super::{choice, parse_size};
    use vdit_models::lora::{LoraMode, LoraSpec};
    use vdit_pipeline::sampling::SamplerKind;

    /// Arguments of `vdit bench`. The shared flags may come before or after the subcommand.
    #[derive(Debug, Args)]
    pub struct BenchArgs {
        #[command(subcommand)]
        pub target: Option<BenchTarget>,
        /// Where to run.
        #[arg(long, value_parser = choice::<DeviceChoice>(), default_value_t = DeviceChoice::Auto, global = true)]
        pub device: DeviceChoice,
        /// Weight and activation dtype (auto: bf16 on a GPU, f32 on the CPU).
        #[arg(long, value_parser = choice::<DTypeChoice>(), default_value_t = DTypeChoice::Auto, global = true)]
        pub dtype: DTypeChoice,
        /// Untimed iterations before timing (kernel compilation, allocator warm-up).
        #[arg(long, default_value_t = 1, global = true)]
        pub warmup: usize,
        /// Timed iterations; the table reports their median.
        #[arg(long, default_value_t = 5, global = true, value_parser = parse_iters)]
        pub iters: usize,
        /// Also write the results as JSON to this file.
        #[arg(long, value_name = "FILE", global = true)]
        pub json: Option<PathBuf>,
        /// Replace the --json file (and `bench pipeline`'s videos) even if vdit did not write them.
        #[arg(long, global = true)]
        pub overwrite: bool,
    }

    /// What to time.
    #[derive(Debug, Clone, Subcommand)]
    pub enum BenchTarget {
        /// Dense and block-sparse attention kernels at several densities, and mask prediction.
        Attention(AttentionBench),
        /// One forward of a transformer (Wan2.1, Wan2.2, HunyuanVideo 1.5) with random weights.
        Transformer(TransformerBench),
        /// One decode of the Wan2.1 or Wan2.2 VAE with random weights.
        Vae(VaeBench),
        /// The whole run a user waits for (`vdit generate`'s pipeline: loads, encode, denoise,
        /// decode, mp4), `--runs` times in this process: a first run, then warm ones.
        Pipeline(PipelineBench),
    }

    /// `vdit bench attention`.
    #[derive(Debug, Clone, Args)]
    pub struct AttentionBench {
        /// Sequence length L (32,760 = 21×30×52, Wan's 480p×81 token grid).
        #[arg(long, default_value_t = 32_760, value_parser = parse_positive)]
        pub tokens: usize,
        #[arg(long, default_value_t = 12, value_parser = parse_positive)]
        pub heads: usize,
        #[arg(long, default_value_t = 128, value_parser = parse_positive)]
        pub head_dim: usize,
        #[arg(long, default_value_t = 1, value_parser = parse_positive)]
        pub batch: usize,
        /// Fractions of key blocks kept per query block, each in (0, 1]; 1 runs the dense kernel.
        #[arg(long, value_delimiter = ',', num_args = 1.., default_values_t = [1.0, 0.5, 0.25, 0.2, 0.1],
              value_parser = parse_density)]
        pub densities: Vec<f64>,
        /// Tokens per block of the sparse kernel and of mask prediction.
        #[arg(long, default_value_t = 128, value_parser = parse_block_size)]
        pub block_size: usize,
        /// Seed of the random inputs and masks.
        #[arg(long, default_value_t = 0)]
        pub seed: u64,
    }

    impl Default for AttentionBench {
        fn default() -> Self {
            Self {
                tokens: 32_760,
                heads: 12,
                head_dim: 128,
                batch: 1,
                densities: vec![1.0, 0.5, 0.25, 0.2, 0.1],
                block_size: 128,
                seed: 0,
            }
        }
    }

    /// Transformer size presets.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    pub enum PresetArg {
        /// Wan2.1 T2V 1.3B (30 layers, 12 heads of 128).
        #[value(name = "t2v-1.3b")]
        T2v1_3b,
        /// Wan2.1 T2V 14B (40 layers, 40 heads of 128).
        #[value(name = "t2v-14b")]
        T2v14b,
        /// Wan2.2 T2V-A14B, one expert (the 14B shape); default size 1280x720x81.
        #[value(name = "t2v-a14b")]
        T2vA14b,
        /// Wan2.2 TI2V-5B (30 layers, 24 heads of 128, 48 latent channels, ×16 VAE); default size
        /// 1280x704x121.
        #[value(name = "ti2v-5b")]
        Ti2v5b,
        /// Wan2.1 I2V-14B (the 14B shape with 36 input channels and the CLIP image tokens'
        /// cross-attention: 257 image tokens of 1280 per sample).
        #[value(name = "i2v-14b")]
        I2v14b,
        /// A toy model (2 layers, 2 heads of 16, text width 32) for smoke tests.
        Tiny,
        /// HunyuanVideo 1.5 T2V 8.3B (54 dual-stream blocks, 16 heads of 128, 65 channels in, ×16
        /// VAE, joint attention over video and text); default size 848x480x121, batch 1. Dense
        /// attention only.
        #[value(name = "hunyuanvideo-1.5")]
        HunyuanVideo15,
    }

    impl PresetArg {
        /// The name `WanConfig::preset` knows (none for the toy).
        pub fn name(self) -> &'static str {
            match self {
                Self::T2v1_3b => "t2v-1.3b",
                Self::T2v14b => "t2v-14b",
                Self::T2vA14b => "t2v-a14b",
                Self::Ti2v5b => "ti2v-5b",
                Self::I2v14b => "i2v-14b",
                Self::Tiny => "tiny",
                Self::HunyuanVideo15 => "hunyuanvideo-1.5",
            }
        }

        /// The video size (width, height) and frames the preset's model is run at.
        pub fn default_video(self) -> ((u32, u32), usize) {
            match self {
                Self::T2vA14b => ((1280, 720), 81),
                Self::Ti2v5b => ((1280, 704), 121),
                Self::HunyuanVideo15 => ((848, 480), 121),
                _ => ((832, 480), 81),
            }
        }

        /// Video pixels per latent pixel of the model's VAE (Wan2.2's TI2V VAE and HunyuanVideo
        /// 1.5's: 16).
        pub fn spatial_compression(self) -> usize {
            match self {
                Self::Ti2v5b | Self::HunyuanVideo15 => 16,
                _ => 8,
            }
        }
    }

    /// Self-attention of the transformer bench.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    pub enum BenchAttention {
        Dense,
        /// RainFusion 2.0 on every layer, a fresh mask each forward (no dense warm-up steps).
        Rainfusion,
    }

    /// `vdit bench transformer`.
    #[derive(Debug, Clone, Args)]
    pub struct TransformerBench {
        #[arg(long, value_enum, default_value_t = PresetArg::T2v1_3b)]
        pub preset: PresetArg,
        /// Override the preset's head count.
        #[arg(long, value_parser = parse_positive)]
        pub heads: Option<usize>,
        /// Override the preset's channels per head.
        #[arg(long, value_parser = parse_positive)]
        pub head_dim: Option<usize>,
        /// Override the preset's layer count.
        #[arg(long, value_parser = parse_positive)]
        pub layers: Option<usize>,
        /// Override the preset's feed-forward width.
        #[arg(long, value_parser = parse_positive)]
        pub ffn_dim: Option<usize>,
        /// Batch. Default 2 for the Wan presets (the conditional and unconditional halves of
        /// classifier-free guidance, run as one batch); 1 for hunyuanvideo-1.5, whose pipeline
        /// runs each guidance branch as its own forward.
        #[arg(long, value_parser = parse_positive)]
        pub batch: Option<usize>,
        /// Video size WIDTHxHEIGHT in pixels (multiples of 16). Default: the preset's (832x480;
        /// t2v-a14b 1280x720; ti2v-5b 1280x704; hunyuanvideo-1.5 848x480).
        #[arg(long, value_parser = parse_size)]
        pub size: Option<(u32, u32)>,
        /// Video frames (4n+1). Default: the preset's (81; ti2v-5b and hunyuanvideo-1.5 121).
        #[arg(long, value_parser = parse_frames)]
        pub frames: Option<usize>,
        #[arg(long, value_enum, default_value_t = BenchAttention::Dense)]
        pub attention: BenchAttention,
        /// RainFusion sparsity in [0, 1).
        #[arg(long, default_value_t = 0.8, value_parser = crate::args::parse_sparsity)]
        pub sparsity: f64,
        /// RainFusion block size.
        #[arg(long, default_value_t = 128, value_parser = parse_block_size)]
        pub block_size: usize,
        /// Text rows of the context. Wan: every prompt padded to 512 (the default).
        /// hunyuanvideo-1.5: the valid Qwen2.5-VL prompt tokens of the 1000 the pipeline pads to
        /// (default 256, a long rewritten prompt).
        #[arg(long, value_parser = parse_positive)]
        pub text_len: Option<usize>,
        /// hunyuanvideo-1.5: valid ByT5 glyph tokens of the 256 the pipeline pads to (default 0:
        /// the prompt quotes no text, and the pipeline passes an all-padding glyph input).
        #[arg(long)]
        pub glyph_len: Option<usize>,
        /// How much of the transformer stays on the device: `blocks` keeps the blocks in host
        /// memory and copies each to the device just before it runs; `none` and `experts` (one
        /// transformer here) keep everything resident; `auto` (the default) chooses `none` on the
        /// CPU and on a GPU whatever fits the free memory by the estimate (the row names it).
        #[arg(long, value_parser = choice::<OffloadChoice>(), default_value_t = OffloadChoice::Auto)]
        pub offload: OffloadChoice,
        /// How the random linear weights are stored: `dense` (in --dtype), a GGUF block type
        /// (quantised at load wherever a row is whole blocks; on a GPU each layer is
        /// dequantised just before its GEMM, on the CPU candle's quantised matmul reads the
        /// blocks), or `fp8` (float8_e4m3fn with a per-tensor scale, as ComfyUI's scaled fp8
        /// files; cast at each layer). The rest stays in --dtype, and one random tensor is made
        /// per shape and copied to every layer of that shape, which keeps a 14B load short.
        /// --dtype is what is computed in every case.
        #[arg(long, value_enum, default_value_t = BenchWeights::Dense)]
        pub weights: BenchWeights,
    }

    /// Storage of the transformer bench's random weights.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    pub enum BenchWeights {
        /// In the run dtype (--dtype).
        Dense,
        #[value(name = "q8_0")]
        Q8_0,
        #[value(name = "q6_k")]
        Q6K,
        #[value(name = "q5_k")]
        Q5K,
        #[value(name = "q4_k")]
        Q4K,
        #[value(name = "q4_0")]
        Q4_0,
        /// float8_e4m3fn with a per-tensor scale.
        #[value(name = "fp8")]
        Fp8,
    }

    impl BenchWeights {
        /// The flag's value (`dense`, `q8_0`, `q4_k`, ...).
        pub fn name(self) -> &'static str {
            match self {
                Self::Dense => "dense",
                Self::Q8_0 => "q8_0",
                Self::Q6K => "q6_k",
                Self::Q5K => "q5_k",
                Self::Q4K => "q4_k",
                Self::Q4_0 => "q4_0",
                Self::Fp8 => "fp8",
            }
        }

        /// How the random model stores its linear weights.
        pub fn format(self) -> vdit_models::weights::RandomWeightFormat {
            use candle_core::quantized::GgmlDType;
            use vdit_models::weights::RandomWeightFormat as F;
            match self {
                Self::Dense => F::RunDtype,
                Self::Q8_0 => F::Gguf(GgmlDType::Q8_0),
                Self::Q6K => F::Gguf(GgmlDType::Q6K),
                Self::Q5K => F::Gguf(GgmlDType::Q5K),
                Self::Q4K => F::Gguf(GgmlDType::Q4K),
                Self::Q4_0 => F::Gguf(GgmlDType::Q4_0),
                Self::Fp8 => F::Fp8Scaled,
            }
        }
    }

    impl Default for TransformerBench {
        fn default() -> Self {
            Self {
                preset: PresetArg::T2v1_3b,
                heads: None,
                head_dim: None,
                layers: None,
                ffn_dim: None,
                batch: None,
                size: None,
                frames: None,
                attention: BenchAttention::Dense,
                sparsity: 0.8,
                block_size: 128,
                text_len: None,
                glyph_len: None,
                offload: OffloadChoice::Auto,
                weights: BenchWeights::Dense,
            }
        }
    }

    /// Which VAE `vdit bench vae` decodes with.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    pub enum VaeArg {
        /// Wan2.1's VAE (z 16, ×8 in space).
        #[value(name = "wan2.1")]
        Wan21,
        /// Wan2.2's TI2V VAE (z 48, ×16 in space).
        #[value(name = "wan2.2")]
        Wan22,
        /// HunyuanVideo 1.5's VAE decoder (z 32, ×16 in space, ×4 in time; diffusers'
        /// `AutoencoderKLHunyuanVideo15` defaults).
        #[value(name = "hunyuanvideo-1.5")]
        HunyuanVideo15,
    }

    /// `vdit bench vae`.
    #[derive(Debug, Clone, Args)]
    pub struct VaeBench {
        #[arg(long, value_enum, default_value_t = VaeArg::Wan21)]
        pub vae: VaeArg,
        /// Latent grid FRAMESxHEIGHTxWIDTH. Default: 81 frames at 832×480 for wan2.1
        /// (21x60x104), 121 frames at 1280×704 for wan2.2 (31x44x80), 121 frames at 848×480 for
        /// hunyuanvideo-1.5 (31x30x53).
        #[arg(long, value_parser = parse_latent)]
        pub latent: Option<[usize; 3]>,
        #[arg(long, default_value_t = 1, value_parser = parse_positive)]
        pub batch: usize,
        /// Decode in spatial tiles (256×256 pixels, 64 overlap; for hunyuanvideo-1.5 diffusers'
        /// `enable_tiling()` defaults, the same size) instead of whole frames.
        #[arg(long)]
        pub tiling: bool,
        /// Channel base of the decoder (default the VAE's: 96 for Wan2.1, 256 for Wan2.2, 128 for
        /// HunyuanVideo 1.5, whose widths 128/256/512/1024/1024 scale with it and need a multiple
        /// of 4; smaller for smoke tests).
        #[arg(long, value_parser = parse_positive)]
        pub base_dim: Option<usize>,
        /// Time the encoder instead (image-to-video's conditioning): a video of the frames and
        /// size the latent grid decodes to, encoded to its latent mean. --tiling does not apply.
        #[arg(long, conflicts_with = "tiling")]
        pub encode: bool,
        /// Also time TAEHV's tiny decoder (taew2_1 for wan2.1, taew2_2 for wan2.2, random weights
        /// at the published widths) on the same latents, and report both times.
        #[arg(long, conflicts_with = "encode")]
        pub tiny: bool,
    }

    impl Default for VaeBench {
        fn default() -> Self {
            Self {
                vae: VaeArg::Wan21,
                latent: None,
                batch: 1,
                tiling: false,
                base_dim: None,
                encode: false,
                tiny: false,
            }
        }
    }

    /// `vdit bench pipeline`: the flags of `vdit generate` that change the work (the shared
    /// `--device`/`--dtype`/`--json` flags of `vdit bench` apply; `--warmup`/`--iters` do not).
    #[derive(Debug, Clone, Args)]
    pub struct PipelineBench {
        /// Model: a registry name, a hub id or a local directory (as `vdit generate -m`).
        #[arg(short = 'm', long)]
        pub model: String,
        /// Runs of the whole pipeline in this process: the first pays the start-up, the later ones
        /// are warm.
        #[arg(long, default_value_t = 2, value_parser = parse_positive)]
        pub runs: usize,
        /// Keep the text encoder, the transformer and the decoder loaded from one run to the next,
        /// as a pipeline kept in memory does (diffusers' warm runs): the warm runs then skip their
        /// loads, and every run holds all three networks at once. Ignored with --offload and for
        /// two-expert models, which load less at once.
        #[arg(long)]
        pub keep_loaded: bool,
        /// Folder for the videos (and sidecars) of the runs. Default: a temporary folder, removed
        /// at the end.
        #[arg(short = 'o', long, value_name = "DIR")]
        pub output_dir: Option<PathBuf>,
        #[arg(
            short = 'p',
            long,
            default_value = "a cat walks on the grass, realistic style"
        )]
        pub prompt: String,
        #[arg(short = 'n', long)]
        pub negative_prompt: Option<String>,
        /// Video size WIDTHxHEIGHT. Default: the model's.
        #[arg(long, value_parser = parse_size, value_name = "WxH")]
        pub size: Option<(u32, u32)>,
        /// Frames, 4n+1. Default: the model's.
        #[arg(long, value_parser = super::parse_frames)]
        pub frames: Option<u32>,
        /// Sampling steps. Default: the model's.
        #[arg(long, value_parser = super::parse_steps)]
        pub steps: Option<usize>,
        /// Classifier-free guidance scale (1 = off). Default: the model's.
        #[arg(long, alias = "cfg-scale", value_parser = super::parse_guidance)]
        pub guidance_scale: Option<f64>,
        /// Time shift of the flow-matching schedule. Default: the model's.
        #[arg(long, value_parser = super::parse_shift)]
        pub shift: Option<f64>,
        #[arg(long, default_value_t = 0)]
        pub seed: u64,
        /// Self-attention of the transformer.
        #[arg(long, value_parser = super::choice::<AttentionMode>(), default_value_t = AttentionMode::Dense)]
        pub attention: AttentionMode,
        /// Fraction of attention blocks skipped by RainFusion, in [0, 1).
        #[arg(long, default_value_t = 0.8, value_parser = crate::args::parse_sparsity)]
        pub sparsity: f64,
        /// Steps run dense before sparse attention starts (a count or a fraction).
        #[arg(long, value_parser = super::parse_dense_steps, value_name = "N|FRACTION")]
        pub dense_steps: Option<DenseSteps>,
        /// Run the text encoder(s) on the CPU (`--t5-cpu` is the older name).
        #[arg(long = "text-encoder-cpu", alias = "t5-cpu")]
        pub t5_cpu: bool,
        /// How much of the transformer stays on the device (as `vdit generate --offload`):
        /// `none`, `experts`, `blocks` (streamed from host memory) or `auto`.
        #[arg(long, value_parser = super::choice::<OffloadChoice>(), default_value_t = OffloadChoice::Auto)]
        pub offload: OffloadChoice,
        /// Decode the video in spatial tiles.
        #[arg(long)]
        pub vae_tiling: bool,
        /// Never touch the network (hub models from the cache only).
        #[arg(long)]
        pub offline: bool,
        /// Sampler. Default: the model's.
        #[arg(long, value_parser = super::choice::<SamplerKind>())]
        pub sampler: Option<SamplerKind>,
        /// A distilled model's denoising step list (as `vdit generate --timesteps`).
        #[arg(long, value_delimiter = ',', num_args = 1.., value_parser = super::parse_number::<f64>, value_name = "T,T,...")]
        pub timesteps: Option<Vec<f64>>,
        /// A LoRA, FILE[:STRENGTH]; repeatable (as `vdit generate --lora`).
        #[arg(long = "lora", value_name = "FILE[:STRENGTH]", value_parser = super::parse_lora)]
        pub loras: Vec<LoraSpec>,
        /// How LoRAs are applied.
        #[arg(long, value_parser = super::choice::<LoraMode>(), default_value = "merge")]
        pub lora_mode: LoraMode,
        /// Step caching (as `vdit generate --step-cache`).
        #[arg(long, value_parser = super::choice::<StepCacheMode>(), default_value_t = StepCacheMode::None)]
        pub step_cache: StepCacheMode,
        /// The step cache's threshold (as `vdit generate --cache-threshold`). Default: the mode's.
        #[arg(long, value_parser = super::parse_threshold, value_name = "X")]
        pub cache_threshold: Option<f64>,
        /// A calibration file for the step cache (as `vdit generate --cache-calibration`).
        #[arg(long, value_name = "FILE")]
        pub cache_calibration: Option<PathBuf>,
        /// The decoder (as `vdit generate --decoder`).
        #[arg(long, value_parser = super::choice::<DecoderChoice>(), default_value_t = DecoderChoice::Full)]
        pub decoder: DecoderChoice,
        /// The TAEHV file or folder for --decoder tiny (as `vdit generate --tiny-vae`).
        #[arg(long, value_name = "PATH")]
        pub tiny_vae: Option<PathBuf>,
    }

    fn parse_positive(s: &str) -> std::result::Result<usize, String> {
        match s.trim().parse::<usize>() {
            Ok(v) if v > 0 => Ok(v),
            _ => Err(format!("`{s}` is not a positive whole number")),
        }
    }

    fn parse_iters(s: &str) -> std::result::Result<usize, String> {
        parse_positive(s).map_err(|e| format!("{e} (at least one timed iteration is needed)"))
    }

    fn parse_block_size(s: &str) -> std::result::Result<usize, String> {
        let v = parse_positive(s)?;
        if v < 16 || !v.is_power_of_two() {
            return Err(format!("{v} is not a power of two ≥ 16"));
        }
        Ok(v)
    }

    fn parse_density(s: &str) -> std::result::Result<f64, String> {
        match s.trim().parse::<f64>() {
            Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
            _ => Err(format!("`{s}` is not a density in (0, 1]")),
        }
    }

    fn parse_frames(s: &str) -> std::result::Result<usize, String> {
        let v = parse_positive(s)?;
        if (v - 1) % 4 != 0 {
            return Err(format!("{v} frames is not 4n+1 (e.g. 5, 9, 81)"));
        }
        Ok(v)
    }

    /// `21x60x104` → [frames, height, width] of the latent grid.
    fn parse_latent(s: &str) -> std::result::Result<[usize; 3], String> {
        let parts: Vec<&str> = s.split(['x', 'X']).collect();
        let [f, h, w] = parts.as_slice() else {
            return Err(format!(
                "`{s}` is not FRAMESxHEIGHTxWIDTH in latents (e.g. 21x60x104)"
            ));
        };
        Ok([parse_positive(f)?, parse_positive(h)?, parse_positive(w)?])
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn flag_values_out_of_range_are_refused() {
            assert!(parse_density("0").is_err() && parse_density("1.5").is_err());
            assert!(parse_block_size("100").is_err() && parse_block_size("8").is_err());
            assert!(parse_frames("80").is_err() && parse_frames("81").is_ok());
            assert_eq!(parse_latent("21x60x104").unwrap(), [21, 60, 104]);
            assert!(parse_latent("21x60").is_err() && parse_iters("0").is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn text_encoder_cpu_keeps_its_older_name() {
        use clap::Parser;
        for flag in ["--text-encoder-cpu", "--t5-cpu"] {
            let cli = Cli::try_parse_from(["vdit", "generate", "-p", "x", flag]).unwrap();
            let Command::Generate(args) = cli.command else {
                panic!("not generate")
            };
            assert!(args.t5_cpu, "{flag}");
        }
        let cli = Cli::try_parse_from(["vdit", "generate", "-p", "x"]).unwrap();
        let Command::Generate(args) = cli.command else {
            panic!("not generate")
        };
        assert!(!args.t5_cpu);
    }

    #[test]
    fn value_parsers() {
        assert_eq!(parse_size("832x480"), Ok((832, 480)));
        assert_eq!(parse_size("1280*720"), Ok((1280, 720)));
        assert!(parse_size("830x480").is_err());
        assert!(parse_size("832").is_err());
        assert_eq!(parse_frames("81"), Ok(81));
        assert_eq!(parse_frames("1"), Ok(1));
        assert!(parse_frames("80").unwrap_err().contains("try 77 or 81"));
        assert!(parse_frames("0").is_err());
        assert_eq!(parse_dense_steps("12"), Ok(DenseSteps::Count(12)));
        assert_eq!(parse_dense_steps("0.25"), Ok(DenseSteps::Fraction(0.25)));
        assert!(parse_dense_steps("1.5").is_err());
        assert!(parse_sparsity("1").is_err());
        assert!(parse_sparsity("0").is_ok());
        assert!(parse_block_size("96").is_err());
        assert!(parse_block_size("64").is_ok());
    }
}
