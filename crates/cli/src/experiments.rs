//! Runs of several generations on one loaded model:
//! - `vdit compare`: dense against sparse attention from the same seed (PSNR, SSIM, latent cosine
//!   similarity, prompt faithfulness, effective density, speedup) and side-by-side videos;
//! - `vdit eval`: prompt faithfulness of generated clips over a list of captions, scored by the
//!   deterministic analyser of [`crate::eval`].
//!
//! Each stage's network is loaded once for all runs and freed before the next stage loads.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use serde::Serialize;

use crate::args::{AttentionMode, RunArgs};
use crate::error::{Result, VditError};
use crate::eval::{accuracy, parse_caption, score, Score};
use crate::metrics::{cosine_similarity, frame_quality, side_by_side};
use crate::pipeline::{
    decode_with, load_transformer, load_vae, preflight, sample_with, video_frames, write_frames,
    write_json_atomic, PromptEncoder, SampledLatents,
};
use crate::registry::Registry;
use crate::settings::{resolve_run, GenerateSettings};
use crate::video::VideoFrames;

fn parse_sparsity(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if !(0.0..1.0).contains(&v) {
        return Err(format!("{v} is outside [0, 1)"));
    }
    Ok(v)
}

/// Arguments of `vdit compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The text prompt (a caption of the shipped model's world is also scored for faithfulness).
    #[arg(short = 'p', long)]
    pub prompt: String,

    /// Negative prompt (default as for `generate`).
    #[arg(short = 'n', long)]
    pub negative_prompt: Option<String>,

    /// Sparsities to run and compare with dense, comma separated (each in [0, 1)). The sparse
    /// mode is --attention (rainfusion when it is dense); --sparsity is ignored.
    #[arg(long, value_delimiter = ',', default_values_t = [0.5, 0.8, 0.9], value_parser = parse_sparsity)]
    pub sparsities: Vec<f64>,

    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    #[command(flatten)]
    pub run: RunArgs,
}

/// Arguments of `vdit eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A caption to generate and score (repeatable), e.g. "a red circle moving left".
    #[arg(short = 'p', long = "prompt", value_name = "CAPTION")]
    pub prompts: Vec<String>,

    /// A file of captions, one per line (blank lines and lines starting with # are skipped).
    #[arg(long, value_name = "FILE")]
    pub prompts_file: Option<PathBuf>,

    /// Negative prompt (default as for `generate`).
    #[arg(short = 'n', long)]
    pub negative_prompt: Option<String>,

    /// Write every clip, numbered after -o (clip.mp4 → clip-000.mp4, clip-001.mp4, ...).
    #[arg(long)]
    pub save_videos: bool,

    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    #[command(flatten)]
    pub run: RunArgs,
}

/// `path` with `suffix` added to its file stem: `out.mp4`, `-dense` → `out-dense.mp4`.
fn with_stem_suffix(path: &Path, suffix: &str) -> PathBuf {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("vdit");
    let name = match path.extension().and_then(|e| e.to_str()) {
        Some(ext) => format!("{stem}{suffix}.{ext}"),
        None => format!("{stem}{suffix}"),
    };
    path.with_file_name(name)
}

/// One row of the compare table.
#[derive(Debug, Clone, Serialize)]
pub struct CompareRow {
    pub attention: AttentionMode,
    pub sparsity: f64,
    pub effective_density: f64,
    pub denoise_s: f64,
    pub seconds_per_step: f64,
    /// Dense denoise time / this run's.
    pub speedup: f64,
    /// Against dense (+inf when identical; serialised as null).
    pub psnr_db: f64,
    pub ssim: f64,
    pub latent_cosine: f64,
    /// Prompt faithfulness of this clip, when the prompt is a caption of the analyser's grammar.
    pub colour_ok: Option<bool>,
    pub motion_ok: Option<bool>,
    pub count_ok: Option<bool>,
    pub video: String,
}

#[derive(Debug, Serialize)]
struct CompareReport<'a> {
    settings: &'a GenerateSettings,
    rows: &'a [CompareRow],
}

/// Faithfulness of `frames` to `prompt` if the prompt parses as a caption.
fn faithfulness(prompt: &str, frames: &VideoFrames) -> Result<Option<Score>> {
    if parse_caption(prompt).is_err() {
        return Ok(None);
    }
    score(prompt, frames)
        .map(Some)
        .map_err(|e| VditError::Sampling(format!("faithfulness analyser: {e}")))
}

fn metrics_error(e: crate::metrics::MetricsError) -> VditError {
    VditError::Sampling(format!("metrics: {e}"))
}

/// `vdit compare`: dense, then each sparsity, from the same noise; returns the table rows.
pub fn compare(args: &CompareArgs) -> Result<Vec<CompareRow>> {
    let registry = Registry::discover()?;
    let (settings, files) = resolve_run(
        &args.prompt,
        args.negative_prompt.as_deref(),
        &args.run,
        &registry,
    )?;
    if let Some(json) = &args.json {
        crate::settings::check_writable_dir("--json", json).map_err(VditError::InvalidSetting)?;
    }
    eprintln!("{}", settings.summary());
    preflight(&settings, &files)?;
    let sparse_mode = match settings.attention.mode {
        AttentionMode::Dense => AttentionMode::Rainfusion,
        mode => mode,
    };
    // The reference run is dense whatever --attention says.
    let mut dense = settings.clone();
    dense.attention.mode = AttentionMode::Dense;
    let mut runs = vec![dense.clone()];
    for &sparsity in &args.sparsities {
        let mut sparse = settings.clone();
        sparse.attention.mode = sparse_mode;
        sparse.attention.sparsity = sparsity;
        runs.push(sparse);
    }
    let device = settings.device.device()?;

    let text = PromptEncoder::load(&settings, &files, &device)?.conditioning(
        &settings.prompt,
        &settings.negative_prompt,
        settings.uses_guidance(),
    )?;
    let mut sampled: Vec<(SampledLatents, f64)> = Vec::new();
    {
        let transformer = load_transformer(&settings, &files, &device)?;
        // One untimed dense step first, so one-off costs (allocations, cached RoPE tables, GPU
        // kernel loading) do not inflate the dense time and with it every speedup.
        let mut warm_up = dense.clone();
        warm_up.steps = 1;
        warm_up.attention.dense_steps = rainfusion::DenseSteps::Count(1);
        sample_with(&transformer, &warm_up, &device, &text)?;
        for run in &runs {
            let start = Instant::now();
            let result = sample_with(&transformer, run, &device, &text)?;
            let seconds = start.elapsed().as_secs_f64();
            let label = match run.attention.mode {
                AttentionMode::Dense => "dense".to_string(),
                mode => format!("{} sparsity {:.2}", mode.name(), run.attention.sparsity),
            };
            eprintln!(
                "{label:<26} {seconds:.1} s, density {:.3}",
                result.effective_density
            );
            sampled.push((result, seconds));
        }
    }
    let vae = load_vae(&settings, &files, &device)?;
    let dense_frames = video_frames(&decode_with(&vae, &settings, &sampled[0].0.latents)?)?;
    let dense_path = with_stem_suffix(&settings.output, "-dense");
    write_frames(&dense_path, &dense_frames, settings.fps)?;

    let dense_seconds = sampled[0].1;
    let mut rows = Vec::new();
    for (index, (run, (result, seconds))) in runs.iter().zip(&sampled).enumerate() {
        let (frames, video) = if index == 0 {
            (dense_frames.clone(), dense_path.clone())
        } else {
            let frames = video_frames(&decode_with(&vae, run, &result.latents)?)?;
            let path = with_stem_suffix(
                &settings.output,
                &format!("-dense-vs-s{:.2}", run.attention.sparsity),
            );
            let pair = side_by_side(&dense_frames, &frames).map_err(metrics_error)?;
            write_frames(&path, &pair, settings.fps)?;
            (frames, path)
        };
        let quality = frame_quality(&dense_frames, &frames).map_err(metrics_error)?;
        let cosine =
            cosine_similarity(&sampled[0].0.latents, &result.latents).map_err(metrics_error)?;
        let faithful = faithfulness(&settings.prompt, &frames)?;
        rows.push(CompareRow {
            attention: run.attention.mode,
            sparsity: if index == 0 {
                0.0
            } else {
                run.attention.sparsity
            },
            effective_density: result.effective_density,
            denoise_s: *seconds,
            seconds_per_step: result.seconds_per_step,
            speedup: dense_seconds / seconds,
            psnr_db: quality.psnr_db,
            ssim: quality.ssim,
            latent_cosine: cosine,
            colour_ok: faithful.map(|s| s.colour_ok),
            motion_ok: faithful.map(|s| s.motion_ok),
            count_ok: faithful.map(|s| s.count_ok),
            video: video.display().to_string(),
        });
    }
    if let Some(json) = &args.json {
        write_json_atomic(
            json,
            &CompareReport {
                settings: &settings,
                rows: &rows,
            },
        )?;
    }
    Ok(rows)
}

/// The compare rows as a Markdown table.
pub fn compare_table(rows: &[CompareRow]) -> String {
    let mark = |v: Option<bool>| match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "n/a",
    };
    let mut out = String::from(
        "| attention | sparsity | density | PSNR dB | SSIM | latent cos | colour | motion | count | denoise s | speedup |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {:.2} | {:.3} | {} | {:.4} | {:.5} | {} | {} | {} | {:.2} | {:.2}× |\n",
            r.attention.name(),
            r.sparsity,
            r.effective_density,
            if r.psnr_db.is_finite() {
                format!("{:.2}", r.psnr_db)
            } else {
                "∞".into()
            },
            r.ssim,
            r.latent_cosine,
            mark(r.colour_ok),
            mark(r.motion_ok),
            mark(r.count_ok),
            r.denoise_s,
            r.speedup
        ));
    }
    out
}

/// One clip of `vdit eval`.
#[derive(Debug, Clone, Serialize)]
pub struct EvalRow {
    pub caption: String,
    pub colour_ok: bool,
    pub motion_ok: bool,
    pub count_ok: bool,
    pub video: Option<String>,
}

/// Accuracy over the clips, as fractions.
#[derive(Debug, Clone, Serialize)]
pub struct EvalSummary {
    pub clips: usize,
    pub colour: f64,
    pub motion: f64,
    pub count: f64,
}

#[derive(Debug, Serialize)]
struct EvalReport<'a> {
    settings: &'a GenerateSettings,
    summary: &'a EvalSummary,
    clips: &'a [EvalRow],
}

/// The captions of `vdit eval`: the `-p` ones, then the file's; each must parse.
fn eval_captions(args: &EvalArgs) -> Result<Vec<String>> {
    let mut captions = args.prompts.clone();
    if let Some(path) = &args.prompts_file {
        let text = std::fs::read_to_string(path).map_err(|source| VditError::Io {
            path: path.clone(),
            source,
        })?;
        captions.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
    }
    if captions.is_empty() {
        return Err(VditError::InvalidSetting(
            "no captions: give --prompt (repeatable) or --prompts-file".into(),
        ));
    }
    let bad: Vec<String> = captions
        .iter()
        .filter_map(|c| parse_caption(c).err().map(|e| format!("--prompt: {e}")))
        .collect();
    if !bad.is_empty() {
        return Err(VditError::InvalidSetting(bad.join("\n")));
    }
    Ok(captions)
}

/// `vdit eval`: generates every caption with the same settings and seed and scores it.
pub fn evaluate(args: &EvalArgs) -> Result<(Vec<EvalRow>, EvalSummary)> {
    let captions = eval_captions(args)?;
    let registry = Registry::discover()?;
    let (settings, files) = resolve_run(
        &captions[0],
        args.negative_prompt.as_deref(),
        &args.run,
        &registry,
    )?;
    if let Some(json) = &args.json {
        crate::settings::check_writable_dir("--json", json).map_err(VditError::InvalidSetting)?;
    }
    eprintln!("{}", settings.summary());
    eprintln!("captions     {}", captions.len());
    preflight(&settings, &files)?;
    let device = settings.device.device()?;
    let per_caption = |caption: &str| {
        let mut s = settings.clone();
        s.prompt = caption.to_string();
        s
    };

    let texts = {
        let encoder = PromptEncoder::load(&settings, &files, &device)?;
        captions
            .iter()
            .map(|c| encoder.conditioning(c, &settings.negative_prompt, settings.uses_guidance()))
            .collect::<Result<Vec<_>>>()?
    };
    let latents = {
        let transformer = load_transformer(&settings, &files, &device)?;
        let mut latents = Vec::new();
        for (caption, text) in captions.iter().zip(&texts) {
            latents.push(sample_with(&transformer, &per_caption(caption), &device, text)?.latents);
        }
        latents
    };
    let vae = load_vae(&settings, &files, &device)?;
    let mut rows = Vec::new();
    let mut scores = Vec::new();
    for (index, (caption, z)) in captions.iter().zip(&latents).enumerate() {
        let frames = video_frames(&decode_with(&vae, &settings, z)?)?;
        let clip_score = score(caption, &frames)
            .map_err(|e| VditError::Sampling(format!("faithfulness analyser: {e}")))?;
        let video = if args.save_videos {
            let path = with_stem_suffix(&settings.output, &format!("-{index:03}"));
            write_frames(&path, &frames, settings.fps)?;
            Some(path.display().to_string())
        } else {
            None
        };
        eprintln!(
            "{:>3} colour {:<3} motion {:<3} count {:<3} {caption}",
            index,
            if clip_score.colour_ok { "ok" } else { "no" },
            if clip_score.motion_ok { "ok" } else { "no" },
            if clip_score.count_ok { "ok" } else { "no" },
        );
        scores.push(clip_score);
        rows.push(EvalRow {
            caption: caption.clone(),
            colour_ok: clip_score.colour_ok,
            motion_ok: clip_score.motion_ok,
            count_ok: clip_score.count_ok,
            video,
        });
    }
    let acc = accuracy(&scores);
    let summary = EvalSummary {
        clips: acc.clips,
        colour: acc.colour,
        motion: acc.motion,
        count: acc.count,
    };
    if let Some(json) = &args.json {
        write_json_atomic(
            json,
            &EvalReport {
                settings: &settings,
                summary: &summary,
                clips: &rows,
            },
        )?;
    }
    Ok((rows, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stem_suffixes() {
        assert_eq!(
            with_stem_suffix(Path::new("out/clip.mp4"), "-dense"),
            PathBuf::from("out/clip-dense.mp4")
        );
        assert_eq!(
            with_stem_suffix(Path::new("clip.png"), "-007"),
            PathBuf::from("clip-007.png")
        );
    }
}
