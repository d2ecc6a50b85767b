//! `vdit compare`: the same prompt, seed and noise sampled once with dense attention and once per
//! sparsity, each sparse run measured against the dense one:
//!
//! ```text
//! encode prompt once ─► load transformer once ─► dense run ─► sparse run per sparsity
//!                                                  │              │
//!                                                  └── frames, latents, timings ──► PSNR, SSIM,
//!                                                      latent cosine, density, speedup, faithfulness
//! ```
//!
//! Writes `DIR/compare.json`, `DIR/compare.md`, one video per run and `DIR/side_by_side.mp4`
//! (dense | each sparsity, left to right). compare.json lists every file, so a later run may
//! replace them; any other file in the way stops the run before it starts (unless `--overwrite`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use vdit_pipeline::clip::{generate_clip, warm_up, Clip};
use vdit_pipeline::eval::{parse_caption, Faithfulness};
use vdit_pipeline::metrics::{cosine_similarity, frame_quality, side_by_side};
use vdit_pipeline::options::AttentionMode;
use vdit_pipeline::options::Choice;
use vdit_pipeline::output::{
    check_report_outputs, create_output_dir, write_json_atomic, write_text_atomic,
};
use vdit_pipeline::ownership::Replace;
use vdit_pipeline::registry::Registry;
use vdit_pipeline::settings::{dtype_name, resolve, GenerateSettings};
use vdit_pipeline::stages::{
    build_attention, encode_images, encode_prompts, load_transformers, load_vae,
    sample_latents_with,
};
use vdit_pipeline::video::{write_video_replacing, VideoFrames};
use vdit_pipeline::{Result, VditError};

use crate::args::CompareArgs;

/// Output directory when `-o` is absent.
pub const DEFAULT_DIR: &str = "vdit-compare";

/// How a sparse run's output agrees with the dense run's.
#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    /// PSNR of the decoded frames in dB; `null` when the frames are identical (+inf).
    pub psnr_db: Option<f64>,
    pub identical_frames: bool,
    /// Mean SSIM over frames (luma, Gaussian window; see `metrics`).
    pub ssim: f64,
    /// Cosine similarity of the final latents.
    pub latent_cosine: f64,
}

/// One row of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    /// "dense", or the mode and sparsity.
    pub label: String,
    pub attention: AttentionMode,
    /// `null` for dense.
    pub sparsity: Option<f64>,
    /// Fraction of attention blocks computed, averaged over layers, heads and steps.
    pub effective_density: f64,
    /// Median wall time of the sampling loop over the timing rounds, seconds.
    pub denoise_s: f64,
    pub seconds_per_step: f64,
    /// Every timed sampling loop of this run, in the order taken, seconds.
    pub denoise_samples_s: Vec<f64>,
    /// The sparse mask kept every block at every step: the run did the dense run's work.
    pub every_block_kept: bool,
    /// Dense median denoise time / this run's; `null` when the run kept every block (it is the
    /// dense run again, and any difference is noise).
    pub speedup: Option<f64>,
    /// `null` for the dense row.
    pub vs_dense: Option<Agreement>,
    /// `null` when the prompt is not a caption of the synthetic world's grammar.
    pub faithfulness: Option<Faithfulness>,
    pub video: String,
}

/// What `vdit compare` writes to compare.json.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub vdit_version: &'static str,
    /// Optional backends compiled into this build (`cuda`, `cudnn`, `metal`); empty on a CPU-only build.
    pub build_features: &'static [&'static str],
    /// Settings of the dense run (the sparse runs differ only in `attention`).
    pub settings: GenerateSettings,
    /// Whether the prompt parses in the synthetic world's grammar (faithfulness is measured then).
    pub prompt_in_grammar: bool,
    /// The dense run first, then one row per sparsity in the order given.
    pub runs: Vec<RunRow>,
    pub side_by_side: String,
    /// How the timings were taken.
    pub note: &'static str,
    /// Every file of the output directory this run wrote (names), this report included: what a
    /// later run may replace.
    pub files: Vec<String>,
}

/// The files `vdit compare` writes into its directory, report files first.
fn planned_files(sparse_mode: AttentionMode, sparsities: &[f64]) -> Vec<String> {
    let mut files = vec![
        REPORT_JSON.to_string(),
        REPORT_MD.to_string(),
        video_name(AttentionMode::Dense, None),
    ];
    files.extend(sparsities.iter().map(|&s| video_name(sparse_mode, Some(s))));
    files.push(SIDE_BY_SIDE.to_string());
    files
}

const REPORT_JSON: &str = "compare.json";
const REPORT_MD: &str = "compare.md";
const SIDE_BY_SIDE: &str = "side_by_side.mp4";

const TIMING_NOTE: &str = "median denoise time over the timing rounds (round 1 in table order, with the decode; later rounds sample only, in reversed and rotated orders so no run always goes first), on one loaded transformer after one untimed warm-up pass; speedup = dense median / run median, none for a run whose mask kept every block";

/// A sparse run whose mean density is this close to 1 computed every block.
const ALL_BLOCKS: f64 = 1.0 - 1e-9;

/// The order of the runs in timing round `round` (0 = table order): odd rounds reversed, even
/// rounds rotated, so that over the rounds each run takes each position.
pub fn timing_order(runs: usize, round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..runs).collect();
    if runs > 0 {
        order.rotate_left((round / 2) % runs);
    }
    if !round.is_multiple_of(2) {
        order.reverse();
    }
    order
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if !n.is_multiple_of(2) => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn video_name(mode: AttentionMode, sparsity: Option<f64>) -> String {
    match sparsity {
        None => "dense.mp4".into(),
        Some(s) => format!("{}-{s}.mp4", mode_name(mode)),
    }
}

fn mode_name(mode: AttentionMode) -> &'static str {
    match mode {
        AttentionMode::Dense => "dense",
        AttentionMode::Rainfusion => "rainfusion",
        AttentionMode::RainfusionV1 => "rainfusion-v1",
    }
}

/// Runs `vdit compare`: resolves the settings, runs dense and each sparsity, writes the report
/// files into the output directory and returns the report.
pub fn run(args: CompareArgs, registry: &Registry) -> Result<CompareReport> {
    let CompareArgs {
        generate: args,
        sparsities,
        timing_rounds,
    } = args;
    let mut args = args.options();
    let sparse_mode = args.attention;
    if sparse_mode == AttentionMode::Dense {
        return Err(VditError::InvalidSetting(
            "--attention dense: vdit compare runs dense itself; pick the sparse mode to compare (rainfusion or rainfusion-v1)".into(),
        ));
    }
    if let Some((i, s)) = sparsities
        .iter()
        .enumerate()
        .find(|(i, s)| sparsities[..*i].contains(s))
    {
        return Err(VditError::InvalidSetting(format!(
            "--sparsities: {s} is listed twice (entry {})",
            i + 1
        )));
    }
    let dir = args
        .output
        .take()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
    // Before any work: nothing in the directory that vdit did not write is replaced.
    let outputs = planned_files(sparse_mode, &sparsities);
    let paths: Vec<PathBuf> = outputs.iter().skip(1).map(|f| dir.join(f)).collect();
    check_report_outputs(&dir.join(REPORT_JSON), &paths, args.overwrite)?;
    let replace = if args.overwrite {
        Replace::Always
    } else {
        Replace::IfListedIn(dir.join(REPORT_JSON))
    };
    create_output_dir("-o", &dir)?;
    args.output = Some(dir.join(video_name(AttentionMode::Dense, None)));
    args.attention = AttentionMode::Dense;
    let (dense_settings, files) = resolve(&args, registry)?;
    eprintln!("{}", dense_settings.summary());
    let caption = parse_caption(&dense_settings.prompt).ok();

    let device = dense_settings.device.device()?;
    let start = Instant::now();
    let text = encode_prompts(&dense_settings, &files, &device)?;
    eprintln!("encode       {:.1} s", start.elapsed().as_secs_f64());
    // Image-to-video: the image is encoded once; every run is conditioned on it.
    let image = encode_images(&dense_settings, &files, &device)?;
    let transformers = load_transformers(&dense_settings, &files, &device)?;
    warm_up(
        &transformers[0],
        &dense_settings,
        &device,
        &text,
        image.as_ref(),
    )?;

    // Every run's settings, checked before the first (long) run starts.
    let mut run_settings = vec![(None, dense_settings.clone())];
    for &sparsity in &sparsities {
        let mut s = dense_settings.clone();
        s.attention.mode = sparse_mode;
        s.attention.sparsity = sparsity;
        s.output = dir.join(video_name(sparse_mode, Some(sparsity)));
        build_attention(
            &s.attention,
            transformers[0].config().num_layers,
            dense_settings.steps,
        )?;
        run_settings.push((Some(sparsity), s));
    }

    let vae = load_vae(&dense_settings, &files, &device)?;
    let mut rows: Vec<RunRow> = Vec::new();
    let mut dense: Option<Clip> = None;
    let mut strip: Option<VideoFrames> = None;
    for (sparsity, settings) in &run_settings {
        let clip = generate_clip(
            &transformers,
            &vae,
            settings,
            &device,
            &text,
            image.as_ref(),
        )?;
        write_video_replacing(
            &settings.output,
            &clip.frames,
            settings.fps,
            replace.clone(),
        )?;
        let vs_dense = match &dense {
            None => None,
            Some(reference) => {
                let quality = frame_quality(&reference.frames, &clip.frames)?;
                Some(Agreement {
                    psnr_db: quality.psnr_db.is_finite().then_some(quality.psnr_db),
                    identical_frames: quality.psnr_db.is_infinite(),
                    ssim: quality.ssim,
                    latent_cosine: cosine_similarity(&reference.latents, &clip.latents)?,
                })
            }
        };
        let faithfulness = match &caption {
            Some(caption) => Some(Faithfulness::measure(caption, &clip.frames)?),
            None => None,
        };
        let row = RunRow {
            label: match sparsity {
                None => "dense".into(),
                Some(s) => format!("{} {s}", mode_name(sparse_mode)),
            },
            attention: settings.attention.mode,
            sparsity: *sparsity,
            effective_density: clip.effective_density,
            denoise_s: clip.denoise_s,
            seconds_per_step: clip.seconds_per_step,
            denoise_samples_s: vec![clip.denoise_s],
            every_block_kept: sparsity.is_some() && clip.effective_density >= ALL_BLOCKS,
            speedup: None,
            vs_dense,
            faithfulness,
            video: settings.output.display().to_string(),
        };
        eprintln!("{}", row_summary(&row));
        rows.push(row);
        strip = Some(match strip {
            None => clip.frames.clone(),
            Some(left) => side_by_side(&left, &clip.frames)?,
        });
        if dense.is_none() {
            dense = Some(clip);
        }
    }

    // Later timing rounds: sampling only, in orders that put each run first in turn.
    for round in 1..timing_rounds {
        for i in timing_order(run_settings.len(), round) {
            let start = Instant::now();
            sample_latents_with(
                &transformers,
                &run_settings[i].1,
                &device,
                &text,
                image.as_ref(),
            )?;
            rows[i]
                .denoise_samples_s
                .push(start.elapsed().as_secs_f64());
        }
    }
    let dense_median = median(&rows[0].denoise_samples_s);
    for (i, row) in rows.iter_mut().enumerate() {
        row.denoise_s = median(&row.denoise_samples_s);
        row.seconds_per_step = row.denoise_s / dense_settings.steps as f64;
        row.speedup = if i == 0 {
            Some(1.0)
        } else if row.every_block_kept {
            None
        } else {
            Some(dense_median / row.denoise_s.max(f64::MIN_POSITIVE))
        };
        eprintln!("{}", timing_summary(row));
    }

    let side_by_side_path = dir.join(SIDE_BY_SIDE);
    let strip = strip.expect("the dense run always exists");
    write_video_replacing(&side_by_side_path, &strip, dense_settings.fps, replace)?;
    let report = CompareReport {
        vdit_version: env!("CARGO_PKG_VERSION"),
        build_features: vdit_pipeline::output::build_features(),
        settings: dense_settings,
        prompt_in_grammar: caption.is_some(),
        runs: rows,
        side_by_side: side_by_side_path.display().to_string(),
        note: TIMING_NOTE,
        files: outputs,
    };
    // The markdown first: compare.json, which lists it, is the last file written.
    write_text_atomic(&dir.join(REPORT_MD), &report.markdown())?;
    write_json_atomic(&dir.join(REPORT_JSON), &report)?;
    Ok(report)
}

/// The speedup cell: `1.25×`, or why there is none.
fn format_speedup(row: &RunRow) -> String {
    match row.speedup {
        Some(x) => format!("{x:.2}×"),
        None if row.every_block_kept => "none (every block kept)".into(),
        None => "—".into(),
    }
}

/// One line per run once every timing round is done.
fn timing_summary(row: &RunRow) -> String {
    let samples: Vec<String> = row
        .denoise_samples_s
        .iter()
        .map(|s| format!("{s:.2}"))
        .collect();
    format!(
        "{:<20} denoise median {:.2} s of [{}] s, speedup {}",
        row.label,
        row.denoise_s,
        samples.join(", "),
        format_speedup(row)
    )
}

/// One line per finished run on stderr (its timing comes after the timing rounds).
fn row_summary(row: &RunRow) -> String {
    let mut line = format!(
        "{:<20} denoise {:.2} s, density {:.3}{}",
        row.label,
        row.denoise_s,
        row.effective_density,
        if row.every_block_kept {
            " (the mask kept every block: the dense run's work)"
        } else {
            ""
        }
    );
    if let Some(a) = &row.vs_dense {
        let _ = write!(
            line,
            ", PSNR {}, SSIM {:.4}, latent cos {:.5}",
            format_psnr(a.psnr_db),
            a.ssim,
            a.latent_cosine
        );
    }
    line
}

fn format_psnr(psnr_db: Option<f64>) -> String {
    match psnr_db {
        Some(db) => format!("{db:.2} dB"),
        None => "∞ (identical)".into(),
    }
}

fn tick(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "no"
    }
}

impl CompareReport {
    /// The report as markdown: the settings line, then one table row per run.
    pub fn markdown(&self) -> String {
        let s = &self.settings;
        let mut md = String::new();
        let _ = writeln!(md, "# vdit compare\n");
        let _ = writeln!(
            md,
            "Prompt {:?}, model {}, {}x{}, {} frames, {} steps ({}), guidance {}, seed {}, {} {}.\n",
            s.prompt,
            s.model,
            s.width,
            s.height,
            s.frames,
            s.steps,
            s.sampler.name(),
            s.guidance_scale,
            s.seed,
            s.device.name(),
            dtype_name(s.dtype)
        );
        let a = &s.attention;
        let _ = writeln!(
            md,
            "Sparse runs: {} dense steps, mask refresh {}, block {}, window {}, {} dense layers. Timing: {}.\n",
            a.dense_step_count,
            a.mask_refresh,
            a.block_size,
            a.window.name(),
            a.dense_layers,
            self.note
        );
        md.push_str(
            "| run | density | PSNR vs dense | SSIM | latent cos | denoise (s) | speedup |",
        );
        if self.prompt_in_grammar {
            md.push_str(" colour | motion | count |");
        }
        md.push('\n');
        md.push_str("|---|---:|---:|---:|---:|---:|---:|");
        if self.prompt_in_grammar {
            md.push_str("---|---|---|");
        }
        md.push('\n');
        for row in &self.runs {
            let (psnr, ssim, cos) = match &row.vs_dense {
                None => ("—".to_string(), "—".to_string(), "—".to_string()),
                Some(a) => (
                    format_psnr(a.psnr_db),
                    format!("{:.4}", a.ssim),
                    format!("{:.5}", a.latent_cosine),
                ),
            };
            let _ = write!(
                md,
                "| {} | {:.3} | {psnr} | {ssim} | {cos} | {:.2} | {} |",
                row.label,
                row.effective_density,
                row.denoise_s,
                format_speedup(row)
            );
            if let Some(f) = &row.faithfulness {
                let _ = write!(
                    md,
                    " {} | {} | {} |",
                    tick(f.colour_ok),
                    tick(f.motion_ok),
                    tick(f.count_ok)
                );
            }
            md.push('\n');
        }
        if !self.prompt_in_grammar {
            md.push_str("\nThe prompt is not a caption of the synthetic world's grammar, so prompt-faithfulness is not measured.\n");
        }
        let _ = writeln!(
            md,
            "\nSide by side (dense | {}): {}",
            self.runs
                .iter()
                .skip(1)
                .map(|r| r.label.as_str())
                .collect::<Vec<_>>()
                .join(" | "),
            self.side_by_side
        );
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_rounds_every_run_takes_every_place() {
        let runs = 3;
        let rounds: Vec<Vec<usize>> = (0..2 * runs).map(|r| timing_order(runs, r)).collect();
        assert_eq!(rounds[0], [0, 1, 2]);
        assert_eq!(rounds[1], [2, 1, 0]);
        for run in 0..runs {
            for place in 0..runs {
                assert!(
                    rounds.iter().any(|order| order[place] == run),
                    "run {run} never at place {place}: {rounds:?}"
                );
            }
        }
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0]), 2.5);
    }
}
