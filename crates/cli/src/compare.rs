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
//! (dense | each sparsity, left to right).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use rainfusion::DenseAttention;
use serde::Serialize;

use crate::args::{AttentionMode, GenerateArgs};
use crate::error::{Result, VditError};
use crate::eval::parse_caption;
use crate::eval_cmd::Faithfulness;
use crate::metrics::{cosine_similarity, frame_quality, side_by_side};
use crate::pipeline::{
    build_attention, decode_with, encode_prompts, load_transformer, load_vae, sample_latents_with,
    write_json_atomic, TextConditioning,
};
use crate::registry::Registry;
use crate::settings::{resolve, GenerateSettings};
use crate::video::{frames_from_tensor, write_video, VideoFrames};
use vdit_models::wan::transformer::WanTransformer;
use vdit_models::wan::vae::WanVaeDecoder;

/// Output directory when `-o` is absent.
pub const DEFAULT_DIR: &str = "vdit-compare";

/// Arguments of `vdit compare`: every flag of `vdit generate` (model, size, steps, seed, sparse
/// settings), where `-o` names the output directory, `--attention` picks the sparse mode
/// (default rainfusion) and `--sparsities` replaces `--sparsity`.
#[derive(Debug)]
pub struct CompareArgs {
    pub generate: GenerateArgs,
    /// Sparsities to compare against dense, each in [0, 1).
    pub sparsities: Vec<f64>,
}

/// The flags `vdit compare` adds to those of `vdit generate`.
#[derive(Debug, Args)]
struct CompareOnlyArgs {
    /// Sparsities to run against dense, comma-separated, each in [0, 1).
    #[arg(
        long,
        value_delimiter = ',',
        num_args = 1..,
        default_values_t = [0.5, 0.8, 0.9],
        value_parser = crate::args::parse_sparsity,
        help_heading = "Sparse attention"
    )]
    sparsities: Vec<f64>,
}

/// A clap error for a flag of `vdit generate` that another subcommand does not take.
pub(crate) fn reject_flag(
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
        let generate = GenerateArgs::from_arg_matches(matches)?;
        let only = CompareOnlyArgs::from_arg_matches(matches)?;
        Ok(Self {
            generate,
            sparsities: only.sparsities,
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
                a.default_value("rainfusion")
                    .help("Sparse mode compared against dense (rainfusion or rainfusion-v1)")
            })
            .mut_arg("sparsity", |a| a.hide(true))
            .mut_arg("latents_out", |a| a.hide(true));
        CompareOnlyArgs::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// One sampled and decoded clip, with what its run measured.
pub struct Clip {
    /// Final latents `[1, 16, F', H/8, W/8]` f32.
    pub latents: Tensor,
    pub frames: VideoFrames,
    /// Wall time of the sampling loop (all steps), seconds.
    pub denoise_s: f64,
    pub seconds_per_step: f64,
    pub effective_density: f64,
}

/// Samples `settings` on the loaded `transformer` and decodes the result with the loaded `vae`
/// (`vdit compare` and `vdit eval` load both once for all their runs).
pub fn generate_clip(
    transformer: &WanTransformer,
    vae: &WanVaeDecoder,
    settings: &GenerateSettings,
    device: &Device,
    text: &TextConditioning,
) -> Result<Clip> {
    let start = Instant::now();
    let sampled = sample_latents_with(transformer, settings, device, text)?;
    let denoise_s = start.elapsed().as_secs_f64();
    let video = decode_with(vae, settings, &sampled.latents)?;
    Ok(Clip {
        latents: sampled.latents,
        frames: frames_from_tensor(&video)?,
        denoise_s,
        seconds_per_step: sampled.seconds_per_step,
        effective_density: sampled.effective_density,
    })
}

/// One untimed transformer pass at the runs' latent shape, so that the first timed run (dense)
/// does not pay one-off costs (allocator growth, thread-pool start, GPU kernel loading) and the
/// speedups are not inflated by them.
fn warm_up(
    transformer: &WanTransformer,
    settings: &GenerateSettings,
    device: &Device,
    text: &TextConditioning,
) -> Result<()> {
    let channels = transformer.config().in_channels;
    let (b, c, f, h, w) = settings.latent_shape(channels);
    let latents = Tensor::zeros((b, c, f, h, w), DType::F32, device)?;
    let timesteps = Tensor::full(500f32, b, device)?;
    transformer.forward(&latents, &timesteps, &text.cond, &mut DenseAttention)?;
    Ok(())
}

/// Creates `dir` (and its parents) unless it exists; a clear error if it is a file.
pub(crate) fn create_output_dir(flag: &str, dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(VditError::InvalidSetting(format!(
            "{flag} {}: exists and is not a directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        VditError::InvalidSetting(format!(
            "{flag} {}: cannot create the directory ({e})",
            dir.display()
        ))
    })
}

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
    pub denoise_s: f64,
    pub seconds_per_step: f64,
    /// Dense denoise time / this run's.
    pub speedup: f64,
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
    /// Settings of the dense run (the sparse runs differ only in `attention`).
    pub settings: GenerateSettings,
    /// Whether the prompt parses in the synthetic world's grammar (faithfulness is measured then).
    pub prompt_in_grammar: bool,
    /// The dense run first, then one row per sparsity in the order given.
    pub runs: Vec<RunRow>,
    pub side_by_side: String,
    /// How the timings were taken.
    pub note: &'static str,
}

const TIMING_NOTE: &str = "runs in table order on one loaded transformer after one untimed warm-up pass; speedup = dense denoise time / run denoise time";

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
        generate: mut args,
        sparsities,
    } = args;
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
    let transformer = load_transformer(&dense_settings, &files, &device)?;
    warm_up(&transformer, &dense_settings, &device, &text)?;

    // Every run's settings, checked before the first (long) run starts.
    let mut run_settings = vec![(None, dense_settings.clone())];
    for &sparsity in &sparsities {
        let mut s = dense_settings.clone();
        s.attention.mode = sparse_mode;
        s.attention.sparsity = sparsity;
        s.output = dir.join(video_name(sparse_mode, Some(sparsity)));
        build_attention(
            &s.attention,
            transformer.config().num_layers,
            dense_settings.steps,
        )?;
        run_settings.push((Some(sparsity), s));
    }

    let vae = load_vae(&dense_settings, &files, &device)?;
    let mut rows: Vec<RunRow> = Vec::new();
    let mut dense: Option<Clip> = None;
    let mut strip: Option<VideoFrames> = None;
    for (sparsity, settings) in &run_settings {
        let clip = generate_clip(&transformer, &vae, settings, &device, &text)?;
        write_video(&settings.output, &clip.frames, settings.fps)?;
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
        let dense_s = dense.as_ref().map_or(clip.denoise_s, |d| d.denoise_s);
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
            speedup: dense_s / clip.denoise_s.max(f64::MIN_POSITIVE),
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

    let side_by_side_path = dir.join("side_by_side.mp4");
    let strip = strip.expect("the dense run always exists");
    write_video(&side_by_side_path, &strip, dense_settings.fps)?;
    let report = CompareReport {
        vdit_version: env!("CARGO_PKG_VERSION"),
        settings: dense_settings,
        prompt_in_grammar: caption.is_some(),
        runs: rows,
        side_by_side: side_by_side_path.display().to_string(),
        note: TIMING_NOTE,
    };
    write_json_atomic(&dir.join("compare.json"), &report)?;
    write_text_atomic(&dir.join("compare.md"), &report.markdown())?;
    Ok(report)
}

/// One line per finished run on stderr.
fn row_summary(row: &RunRow) -> String {
    let mut line = format!(
        "{:<20} denoise {:.2} s ({:.2}× dense), density {:.3}",
        row.label, row.denoise_s, row.speedup, row.effective_density
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
            "Prompt {:?}, model {}, {}x{}, {} frames, {} steps ({}), guidance {}, seed {}, {:?} {}.\n",
            s.prompt,
            s.model,
            s.width,
            s.height,
            s.frames,
            s.steps,
            s.sampler.name(),
            s.guidance_scale,
            s.seed,
            s.device,
            crate::settings::dtype_name(s.dtype)
        );
        let a = &s.attention;
        let _ = writeln!(
            md,
            "Sparse runs: {} dense steps, mask refresh {}, block {}, window {:?}, {} dense layers. Timing: {}.\n",
            a.dense_step_count, a.mask_refresh, a.block_size, a.window, a.dense_layers, self.note
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
                "| {} | {:.3} | {psnr} | {ssim} | {cos} | {:.2} | {:.2}× |",
                row.label, row.effective_density, row.denoise_s, row.speedup
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

/// Writes `text` to `path` atomically (temp file in the same directory, then rename).
pub(crate) fn write_text_atomic(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let io = |source| VditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io)?;
    tmp.write_all(text.as_bytes()).map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).map_err(io)?;
    }
    Ok(())
}
