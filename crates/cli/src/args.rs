//! Command-line arguments of the `vdit` binary (clap derive). Values that are wrong on their own
//! (frames not 4n+1, sparsity ≥ 1, ...) are rejected while parsing, each with one clear line;
//! checks that need several values or the model (dense steps ≤ steps, output directory, model
//! defaults) happen in [`crate::settings`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use rainfusion::DenseSteps;

use crate::sampling::SamplerKind;

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
    Compare(Box<crate::compare::CompareArgs>),
    /// Prompt-faithfulness of a model over a fixed list of prompts of the synthetic world
    /// (colour, motion and object-count accuracy).
    #[command(args_override_self = true, allow_negative_numbers = true)]
    Eval(Box<crate::eval_cmd::EvalArgs>),
    /// Time the attention kernels, the transformer forward and the VAE decode with random
    /// weights at the real sizes (no checkpoint needed).
    #[command(args_override_self = true)]
    Bench(Box<crate::bench::BenchArgs>),
    /// List the models of the registry (models/*.toml) and their defaults.
    Models,
}

/// Where the networks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceArg {
    /// CUDA if this build has it and a GPU is present, else Metal likewise, else the CPU.
    Auto,
    Cpu,
    Cuda,
    Metal,
}

/// Weight and activation dtype of the networks (sampling and guidance always run in f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DTypeArg {
    /// bf16 on a GPU, f32 on the CPU.
    Auto,
    Bf16,
    F16,
    F32,
}

/// Self-attention of the transformer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttentionMode {
    /// Full softmax attention (the reference).
    Dense,
    /// RainFusion 2.0: block-sparse attention with per-head masks predicted from pooled q and k.
    Rainfusion,
    /// RainFusion 1.0: spatial / temporal / textural head patterns chosen online.
    #[value(name = "rainfusion-v1")]
    RainfusionV1,
}

impl AttentionMode {
    /// The flag value (`dense`, `rainfusion`, `rainfusion-v1`).
    pub fn name(self) -> &'static str {
        match self {
            AttentionMode::Dense => "dense",
            AttentionMode::Rainfusion => "rainfusion",
            AttentionMode::RainfusionV1 => "rainfusion-v1",
        }
    }
}

/// How RainFusion groups tokens into blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowArg {
    /// 1×8×8 tiles within a frame.
    Tile,
    /// 2×8×8 windows spanning two frames.
    Spatiotemporal,
}

impl WindowArg {
    pub fn name(self) -> &'static str {
        match self {
            WindowArg::Tile => "tile",
            WindowArg::Spatiotemporal => "spatiotemporal",
        }
    }
}

/// Arguments of `vdit generate`. Settings left out come from the model's registry entry, else
/// from Wan2.1's defaults.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The text prompt.
    #[arg(short = 'p', long, value_parser = non_empty)]
    pub prompt: String,

    /// What the video should not look like. Default: the model's, else Wan2.1's official
    /// negative prompt (Chinese). Pass "" for none.
    #[arg(short = 'n', long)]
    pub negative_prompt: Option<String>,

    /// Video size WIDTHxHEIGHT (also WIDTH*HEIGHT), each a multiple of 16. Default: the model's
    /// (832x480 for Wan2.1 1.3B).
    #[arg(long, value_parser = parse_size, value_name = "WxH")]
    pub size: Option<(u32, u32)>,

    /// Video width in pixels, a multiple of 16 (overrides --size).
    #[arg(long, value_parser = parse_dimension)]
    pub width: Option<u32>,

    /// Video height in pixels, a multiple of 16 (overrides --size).
    #[arg(long, value_parser = parse_dimension)]
    pub height: Option<u32>,

    /// Number of frames, 4n+1 (the VAE makes 4 frames per latent frame after the first). Default 81.
    #[arg(long, value_parser = parse_frames)]
    pub frames: Option<u32>,

    /// Sampling steps. Default 50.
    #[arg(long, value_parser = parse_steps)]
    pub steps: Option<usize>,

    /// Classifier-free guidance scale; 1 disables guidance (one model pass per step). Default 5.
    #[arg(long, alias = "cfg-scale", value_parser = parse_guidance)]
    pub guidance_scale: Option<f64>,

    /// Time shift of the flow-matching schedule (larger spends more steps at high noise).
    /// Default: the model's (5 for Wan2.1 T2V, like its generate.py).
    #[arg(long, value_parser = parse_shift)]
    pub shift: Option<f64>,

    /// Sampler. Default unipc.
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerKind>,

    /// Random seed of the initial noise; random when absent (always printed).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Frames per second of the output file. Default 16.
    #[arg(long, value_parser = parse_fps)]
    pub fps: Option<u32>,

    /// Output file; its extension picks the format: .mp4 (H.264), .gif, or .png (a numbered
    /// frame sequence). A JSON sidecar with every setting is written next to it.
    /// Default: vdit-<seed>.mp4.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Device to run on.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,

    /// Dtype of the networks' weights and activations.
    #[arg(long, value_enum, default_value_t = DTypeArg::Auto)]
    pub dtype: DTypeArg,

    /// Model: a registry name (see `vdit models`), a Hugging Face hub id (owner/name[@revision])
    /// or a local directory in the diffusers layout. Default: the shipped model if present,
    /// else wan2.1-t2v-1.3b.
    #[arg(short = 'm', long)]
    pub model: Option<String>,

    /// Never touch the network: hub models come from the local cache only (like HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,

    /// Transformer weights to use instead of the model's (a .safetensors file, a
    /// *.safetensors.index.json, or a directory with config.json).
    #[arg(long, value_name = "PATH")]
    pub dit: Option<PathBuf>,

    /// VAE weights to use instead of the model's (diffusers or original Wan2.1_VAE keys).
    #[arg(long, value_name = "PATH")]
    pub vae: Option<PathBuf>,

    /// umT5 text-encoder weights to use instead of the model's.
    #[arg(long, value_name = "PATH")]
    pub text_encoder: Option<PathBuf>,

    /// tokenizer.json to use instead of the model's.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,

    /// Run the text encoder on the CPU (saves GPU memory; umT5-XXL is 11 GB in bf16).
    #[arg(long)]
    pub t5_cpu: bool,

    /// Decode the video in spatial tiles, so large sizes fit in less memory.
    #[arg(long)]
    pub vae_tiling: bool,

    /// Start from the `noise` tensor of this safetensors file ([1,16,F',H/8,W/8]) instead of
    /// the seed, for exact comparisons with other implementations.
    #[arg(long, value_name = "FILE")]
    pub noise: Option<PathBuf>,

    /// Also save the final latents (tensor `latents`) to this safetensors file.
    #[arg(long, value_name = "FILE")]
    pub latents_out: Option<PathBuf>,

    /// Self-attention of the transformer.
    #[arg(long, value_enum, default_value_t = AttentionMode::Dense, help_heading = "Sparse attention")]
    pub attention: AttentionMode,

    /// Fraction of attention blocks skipped by RainFusion, in [0, 1).
    #[arg(long, default_value_t = 0.8, value_parser = parse_sparsity, help_heading = "Sparse attention")]
    pub sparsity: f64,

    /// Steps run dense before sparse attention starts: a count (12) or a fraction of the steps
    /// (0.25, rounded up). Default: a quarter of the steps.
    #[arg(long, value_parser = parse_dense_steps, value_name = "N|FRACTION", help_heading = "Sparse attention")]
    pub dense_steps: Option<DenseSteps>,

    /// Recompute the sparse masks every N steps and reuse them in between.
    #[arg(long, default_value_t = 1, value_parser = parse_positive, value_name = "N", help_heading = "Sparse attention")]
    pub mask_refresh: usize,

    /// Tokens per attention block, a power of two (64 or 128 usual).
    #[arg(long, default_value_t = 128, value_parser = parse_block_size, help_heading = "Sparse attention")]
    pub block_size: usize,

    /// Token window that forms a block.
    #[arg(long, value_enum, default_value_t = WindowArg::Tile, help_heading = "Sparse attention")]
    pub window: WindowArg,

    /// Keep the first and last N transformer layers dense.
    #[arg(
        long,
        default_value_t = 0,
        value_name = "N",
        help_heading = "Sparse attention"
    )]
    pub dense_layers: usize,
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

pub(crate) fn parse_sparsity(s: &str) -> Result<f64, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
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
