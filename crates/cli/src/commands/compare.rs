//! `vdit compare`: the same prompt, seed and noise sampled once per named setting (attention
//! mode and sparsity, step cache, LoRAs), each measured against a baseline setting:
//!
//! ```text
//! encode prompt once ─► load each transformer the settings need, once ─► baseline run ─► run per setting
//!                                                  │                          │
//!                                                  └── frames, latents, passes, timings, peak memory ──►
//!                                     PSNR, SSIM, latent cosine, density, speedup, faithfulness
//! ```
//!
//! Writes `DIR/compare.json`, `compare.md`, `compare.html` (the table and a strip of frames per
//! setting, offline), `pareto.png` (speed-up against PSNR), one video per setting and
//! `side_by_side.mp4` (baseline | each setting, left to right). compare.json lists every file, so
//! a later run may replace them; any other file in the way stops the run before it starts (unless
//! `--overwrite`).

mod html;
mod pareto;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use vdit_pipeline::clip::{generate_clip, warm_up, Clip};
use vdit_pipeline::decoder::{DecoderSettings, VideoDecoder};
use vdit_pipeline::denoise::VelocityModel;
use vdit_pipeline::eval::{parse_caption, Faithfulness};
use vdit_pipeline::metrics::{cosine_similarity, frame_quality, side_by_side};
use vdit_pipeline::options::{AttentionMode, Choice, StepCacheMode};
use vdit_pipeline::output::{
    check_report_outputs, create_output_dir, write_bytes_atomic, write_json_atomic,
    write_text_atomic,
};
use vdit_pipeline::ownership::Replace;
use vdit_pipeline::registry::Registry;
use vdit_pipeline::settings::{
    dtype_name, resolve, GenerateOptions, GenerateSettings, LoraSettings,
};
use vdit_pipeline::stages::{
    build_attention, encode_images, encode_prompts, load_decoder, load_velocity_models,
    sample_latents_with,
};
use vdit_pipeline::video::{write_video_replacing, VideoFrames};
use vdit_pipeline::{Result, VditError};

use crate::args::compare_settings::SettingSpec;
use crate::args::CompareArgs;
use vdit_models::profile::{peak_resident_bytes, reset_peak_resident, DevicePeakSampler};

/// Output directory when `-o` is absent.
pub const DEFAULT_DIR: &str = "vdit-compare";

/// How a setting's output agrees with the baseline's.
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

/// Transformer passes of one run: one per guidance branch and step.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Passes {
    pub total: usize,
    /// Passes that ran the transformer's blocks.
    pub computed: usize,
    /// Passes whose blocks the step cache skipped (the residual of the last computed step reused).
    pub skipped: usize,
}

/// One row of the comparison: one setting.
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    /// The setting's name.
    pub label: String,
    pub attention: AttentionMode,
    /// `null` for dense attention.
    pub sparsity: Option<f64>,
    pub step_cache: StepCacheMode,
    /// `null` without a step cache.
    pub cache_threshold: Option<f64>,
    /// The LoRAs of the run, `FILE:STRENGTH`.
    pub loras: Vec<String>,
    /// The transformer weights file given with `dit=` (or `--dit`), if any.
    pub dit: Option<String>,
    /// The decoder: `{"kind": "full"}` or `{"kind": "tiny", "weights": FILE}`.
    pub decoder: DecoderSettings,
    /// Fraction of attention blocks computed, averaged over layers, heads and steps.
    pub effective_density: f64,
    pub transformer_passes: Passes,
    /// Median wall time of the sampling loop over the timing rounds, seconds.
    pub denoise_s: f64,
    pub seconds_per_step: f64,
    /// Every timed sampling loop of this run, in the order taken, seconds.
    pub denoise_samples_s: Vec<f64>,
    /// The sparse mask kept every block at every step.
    pub every_block_kept: bool,
    /// The run did the baseline's work: the same transformer, the same share of attention blocks
    /// and the same passes skipped (a sparse mask that kept every block, a cache threshold of 0).
    pub same_work_as_baseline: bool,
    /// Baseline median denoise time / this run's; `null` when the run did the baseline's work
    /// (any difference is noise).
    pub speedup: Option<f64>,
    /// `null` for the baseline's own row.
    pub vs_baseline: Option<Agreement>,
    /// `null` when the prompt is not a caption of the synthetic world's grammar.
    pub faithfulness: Option<Faithfulness>,
    /// Peak resident memory of the process during the run's first round (sampling and decode),
    /// bytes: the kernel's high-water mark (VmHWM), restarted at the current resident size before
    /// the run where the OS allows it (`peak_host_per_setting` in the report), else the process's
    /// peak so far. Every loaded network counts, whichever setting uses it. `null` where the OS
    /// does not report it.
    pub peak_host_bytes: Option<u64>,
    /// CUDA: the most device memory in use (total − free, all of the process's allocations and
    /// the driver's) during the run's first round, sampled every 2 ms on a side thread, bytes;
    /// `null` on other devices.
    pub peak_gpu_bytes: Option<u64>,
    pub video: String,
}

/// What `vdit compare` writes to compare.json.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub vdit_version: &'static str,
    /// Optional backends compiled into this build (`cuda`, `cudnn`, `metal`); empty on a CPU-only build.
    pub build_features: &'static [&'static str],
    /// The baseline setting's name (the first row).
    pub baseline: String,
    /// Settings of the baseline run (the other runs differ in what their setting names).
    pub settings: GenerateSettings,
    /// Whether the prompt parses in the synthetic world's grammar (faithfulness is measured then).
    pub prompt_in_grammar: bool,
    /// The baseline first, then one row per setting in the order given.
    pub runs: Vec<RunRow>,
    pub side_by_side: String,
    /// The table and a strip of frames per setting, viewable offline.
    pub html: String,
    /// Speed-up against PSNR, per setting.
    pub pareto: String,
    /// How the timings were taken.
    pub note: &'static str,
    /// Whether the host peak of each row is that run's own (a CPU run, and the kernel let vdit
    /// restart its high-water mark before each run), rather than the process's peak so far.
    pub peak_host_per_setting: bool,
    /// Every file of the output directory this run wrote (names), this report included: what a
    /// later run may replace.
    pub files: Vec<String>,
}

const REPORT_JSON: &str = "compare.json";
const REPORT_MD: &str = "compare.md";
const REPORT_HTML: &str = "compare.html";
const PARETO_PNG: &str = "pareto.png";
const SIDE_BY_SIDE: &str = "side_by_side.mp4";

const TIMING_NOTE: &str = "median denoise time over the timing rounds (round 1 in table order, with the decode; later rounds sample only, in reversed and rotated orders so no run always goes first), on transformers loaded once after one untimed warm-up pass each; speedup = baseline median / run median, none for a run that did the baseline's work";

/// A sparse run whose mean density is this close to 1 computed every block.
const ALL_BLOCKS: f64 = 1.0 - 1e-9;

/// What a setting needs loaded for its transformer: settings that need the same share one
/// load. A new kind of setting that changes the weights (a quantised format) belongs here.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformerNeeds {
    pub lora: LoraSettings,
    /// `--dit` / `--dit-2` overrides.
    pub dit: (Option<PathBuf>, Option<PathBuf>),
}

impl TransformerNeeds {
    pub fn of(settings: &GenerateSettings) -> Self {
        Self {
            lora: settings.lora.clone(),
            dit: (
                settings.overrides.dit.clone(),
                settings.overrides.dit_2.clone(),
            ),
        }
    }
}

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

/// The files `vdit compare` writes into its directory, report files first.
fn planned_files(video_names: &[String]) -> Vec<String> {
    let mut files = vec![
        REPORT_JSON.to_string(),
        REPORT_MD.to_string(),
        REPORT_HTML.to_string(),
        PARETO_PNG.to_string(),
    ];
    files.extend(video_names.iter().cloned());
    files.push(SIDE_BY_SIDE.to_string());
    files
}

/// A resolve error of one setting, named after it.
fn in_setting(name: &str, error: VditError) -> VditError {
    match error {
        VditError::InvalidSetting(message) => {
            VditError::InvalidSetting(format!("setting `{name}`: {message}"))
        }
        other => other,
    }
}

/// One setting ready to run.
struct Run {
    name: String,
    settings: GenerateSettings,
    /// Index into the loaded transformers.
    model: usize,
}

/// Runs `vdit compare`: resolves every setting, runs the baseline and each setting, writes the
/// report files into the output directory and returns the report.
pub fn run(args: CompareArgs, registry: &Registry) -> Result<CompareReport> {
    let CompareArgs {
        generate: args,
        baseline,
        settings: specs,
        timing_rounds,
    } = args;
    let mut base = args.options();
    let sparse_mode = base.attention;
    if sparse_mode == AttentionMode::Dense {
        return Err(VditError::InvalidSetting(
            "--attention dense: in vdit compare --attention is the sparse mode of --sparsities and sparsity= (rainfusion or rainfusion-v1); the baseline is dense unless --baseline says otherwise".into(),
        ));
    }
    let dir = base
        .output
        .take()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
    let all_specs: Vec<&SettingSpec> = std::iter::once(&baseline).chain(&specs).collect();
    let video_names: Vec<String> = all_specs
        .iter()
        .map(|s| format!("{}.mp4", s.file_stem()))
        .collect();
    // Before any work: nothing in the directory that vdit did not write is replaced.
    let outputs = planned_files(&video_names);
    let paths: Vec<PathBuf> = outputs.iter().skip(1).map(|f| dir.join(f)).collect();
    check_report_outputs(&dir.join(REPORT_JSON), &paths, base.overwrite)?;
    let replace = if base.overwrite {
        Replace::Always
    } else {
        Replace::IfListedIn(dir.join(REPORT_JSON))
    };
    create_output_dir("-o", &dir)?;

    // Every setting starts from the command's flags with dense attention.
    base.attention = AttentionMode::Dense;
    let options_of = |spec: &SettingSpec, base: &GenerateOptions, video: &str| {
        let mut options = spec
            .apply(base, sparse_mode)
            .map_err(|e| VditError::InvalidSetting(format!("setting `{}`: {e}", spec.name())))?;
        options.output = Some(dir.join(video));
        Ok::<_, VditError>(options)
    };
    let (baseline_settings, files) =
        resolve(&options_of(&baseline, &base, &video_names[0])?, registry)
            .map_err(|e| in_setting(&baseline.name(), e))?;
    // A drawn seed is drawn once: every setting samples the baseline's noise.
    base.seed = Some(baseline_settings.seed);
    eprintln!("{}", baseline_settings.summary());
    let mut runs = vec![Run {
        name: baseline.name(),
        settings: baseline_settings.clone(),
        model: 0,
    }];
    let mut needs = vec![TransformerNeeds::of(&baseline_settings)];
    // Every run's settings, checked before the first (long) run starts.
    for (spec, video) in specs.iter().zip(&video_names[1..]) {
        let (settings, _) = resolve(&options_of(spec, &base, video)?, registry)
            .map_err(|e| in_setting(&spec.name(), e))?;
        let need = TransformerNeeds::of(&settings);
        let model = match needs.iter().position(|n| *n == need) {
            Some(i) => i,
            None => {
                needs.push(need);
                needs.len() - 1
            }
        };
        runs.push(Run {
            name: spec.name(),
            settings,
            model,
        });
    }
    let caption = parse_caption(&baseline_settings.prompt).ok();

    let device = baseline_settings.device.device()?;
    let start = Instant::now();
    let text = encode_prompts(&baseline_settings, &files, &device)?;
    eprintln!("encode       {:.1} s", start.elapsed().as_secs_f64());
    // Image-to-video: the image is encoded once; every run is conditioned on it.
    let image = encode_images(&baseline_settings, &files, &device)?;
    // Each transformer the settings need, loaded once (with the LoRAs of its first user).
    let mut models: Vec<Vec<Box<dyn VelocityModel>>> = Vec::new();
    for (i, _) in needs.iter().enumerate() {
        let first_user = runs
            .iter()
            .find(|r| r.model == i)
            .expect("each need has a run");
        let transformers = load_velocity_models(&first_user.settings, &files, &device)
            .map_err(|e| in_setting(&first_user.name, e))?;
        let users: Vec<&str> = runs
            .iter()
            .filter(|r| r.model == i)
            .map(|r| r.name.as_str())
            .collect();
        eprintln!("transformer  loaded once for {}", users.join(", "));
        warm_up(
            transformers[0].as_ref(),
            &first_user.settings,
            &device,
            &text,
            image.as_ref(),
        )?;
        models.push(transformers);
    }
    for run in &runs {
        if run.settings.attention.mode != AttentionMode::Dense {
            build_attention(
                &run.settings.attention,
                models[run.model][0].num_layers(),
                run.settings.steps,
            )
            .map_err(|e| in_setting(&run.name, e))?;
        }
    }

    // One decoder per distinct choice (`vae=`), each loaded once; loading a tiny decoder checks
    // its latent channels, so a wrong file stops the comparison before the first run.
    let mut decoders: Vec<(DecoderSettings, VideoDecoder)> = Vec::new();
    let mut decoder_of = Vec::with_capacity(runs.len());
    for run in &runs {
        let index = match decoders
            .iter()
            .position(|(d, _)| *d == run.settings.decoder)
        {
            Some(index) => index,
            None => {
                let decoder = load_decoder(&run.settings, &files, &device)
                    .map_err(|e| in_setting(&run.name, e))?;
                decoders.push((run.settings.decoder.clone(), decoder));
                decoders.len() - 1
            }
        };
        decoder_of.push(index);
    }
    let mut rows: Vec<RunRow> = Vec::new();
    let mut reference: Option<Clip> = None;
    let mut strip: Option<VideoFrames> = None;
    let mut frame_strips = Vec::new();
    let mut peak_host_per_setting = device.is_cpu();
    for (run, &decoder) in runs.iter().zip(&decoder_of) {
        let settings = &run.settings;
        if device.is_cpu() {
            peak_host_per_setting &= reset_peak_resident();
        }
        let sampler = DevicePeakSampler::start(&device, Duration::from_millis(2));
        let clip = generate_clip(
            &models[run.model],
            &decoders[decoder].1,
            settings,
            &device,
            &text,
            image.as_ref(),
        )?;
        device.synchronize()?;
        let peak_gpu_bytes = sampler.and_then(DevicePeakSampler::stop);
        let peak_host_bytes = device.is_cpu().then(peak_resident_bytes).flatten();
        write_video_replacing(
            &settings.output,
            &clip.frames,
            settings.fps,
            replace.clone(),
        )?;
        let vs_baseline = match &reference {
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
        let branches = if settings.uses_guidance() { 2 } else { 1 };
        let total = settings.steps * branches;
        let skipped = clip.step_cache.skipped;
        let sparse = settings.attention.mode != AttentionMode::Dense;
        let cached = settings.step_cache.mode != StepCacheMode::None;
        let row = RunRow {
            label: run.name.clone(),
            attention: settings.attention.mode,
            sparsity: sparse.then_some(settings.attention.sparsity),
            step_cache: settings.step_cache.mode,
            cache_threshold: cached.then_some(settings.step_cache.threshold),
            loras: settings.lora.first.iter().map(|l| l.to_string()).collect(),
            dit: settings
                .overrides
                .dit
                .as_ref()
                .map(|p| p.display().to_string()),
            decoder: settings.decoder.clone(),
            effective_density: clip.effective_density,
            transformer_passes: Passes {
                total,
                computed: total.saturating_sub(skipped),
                skipped,
            },
            denoise_s: clip.denoise_s,
            seconds_per_step: clip.seconds_per_step,
            denoise_samples_s: vec![clip.denoise_s],
            every_block_kept: sparse && clip.effective_density >= ALL_BLOCKS,
            same_work_as_baseline: false,
            speedup: None,
            vs_baseline,
            faithfulness,
            peak_host_bytes,
            peak_gpu_bytes,
            video: settings.output.display().to_string(),
        };
        eprintln!("{}", row_summary(&row));
        rows.push(row);
        frame_strips.push(
            html::FrameStrip::new(&run.name, &clip.frames).map_err(VditError::InvalidSetting)?,
        );
        strip = Some(match strip {
            None => clip.frames.clone(),
            Some(left) => side_by_side(&left, &clip.frames)?,
        });
        if reference.is_none() {
            reference = Some(clip);
        }
    }

    // Later timing rounds: sampling only, in orders that put each run first in turn.
    for round in 1..timing_rounds {
        for i in timing_order(runs.len(), round) {
            let start = Instant::now();
            sample_latents_with(
                &models[runs[i].model],
                &runs[i].settings,
                &device,
                &text,
                image.as_ref(),
            )?;
            rows[i]
                .denoise_samples_s
                .push(start.elapsed().as_secs_f64());
        }
    }
    let baseline_median = median(&rows[0].denoise_samples_s);
    let (baseline_density, baseline_skipped) = (
        rows[0].effective_density,
        rows[0].transformer_passes.skipped,
    );
    for (i, row) in rows.iter_mut().enumerate() {
        row.denoise_s = median(&row.denoise_samples_s);
        row.seconds_per_step = row.denoise_s / runs[i].settings.steps as f64;
        row.same_work_as_baseline = i > 0
            && runs[i].model == runs[0].model
            && (row.effective_density - baseline_density).abs() < 1.0 - ALL_BLOCKS
            && row.transformer_passes.skipped == baseline_skipped
            && runs[i].settings.steps == runs[0].settings.steps;
        row.speedup = if i == 0 {
            Some(1.0)
        } else if row.same_work_as_baseline {
            None
        } else {
            Some(baseline_median / row.denoise_s.max(f64::MIN_POSITIVE))
        };
        eprintln!("{}", timing_summary(row));
    }

    let side_by_side_path = dir.join(SIDE_BY_SIDE);
    let strip = strip.expect("the baseline run always exists");
    write_video_replacing(&side_by_side_path, &strip, baseline_settings.fps, replace)?;
    let report = CompareReport {
        vdit_version: env!("CARGO_PKG_VERSION"),
        build_features: vdit_pipeline::output::build_features(),
        baseline: runs[0].name.clone(),
        settings: baseline_settings,
        prompt_in_grammar: caption.is_some(),
        runs: rows,
        side_by_side: side_by_side_path.display().to_string(),
        html: dir.join(REPORT_HTML).display().to_string(),
        pareto: dir.join(PARETO_PNG).display().to_string(),
        note: TIMING_NOTE,
        peak_host_per_setting,
        files: outputs,
    };
    // The other files first: compare.json, which lists them, is the last file written.
    write_bytes_atomic(&dir.join(PARETO_PNG), &report.pareto_png()?)?;
    write_text_atomic(&dir.join(REPORT_HTML), &report.html(&frame_strips))?;
    write_text_atomic(&dir.join(REPORT_MD), &report.markdown())?;
    write_json_atomic(&dir.join(REPORT_JSON), &report)?;
    Ok(report)
}

/// The speedup cell: `1.25×`, or why there is none.
fn format_speedup(row: &RunRow) -> String {
    match row.speedup {
        Some(x) => format!("{x:.2}×"),
        None if row.same_work_as_baseline && row.every_block_kept => {
            "none (every block kept)".into()
        }
        None if row.same_work_as_baseline => "none (the baseline's work)".into(),
        None => "—".into(),
    }
}

/// `12 of 60`: passes that ran the blocks, of all.
fn format_passes(p: &Passes) -> String {
    format!("{} of {}", p.computed, p.total)
}

fn format_bytes(bytes: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    if bytes as f64 >= 1024.0 * MIB {
        format!("{:.2} GiB", bytes as f64 / (1024.0 * MIB))
    } else {
        format!("{:.0} MiB", bytes as f64 / MIB)
    }
}

/// The peak-memory cell: the GPU's where measured, else the host's.
fn format_peak(row: &RunRow) -> String {
    match (row.peak_gpu_bytes, row.peak_host_bytes) {
        (Some(gpu), _) => format!("{} GPU", format_bytes(gpu)),
        (None, Some(host)) => format_bytes(host),
        (None, None) => "—".into(),
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
        "{:<20} denoise {:.2} s, density {:.3}, passes {}{}",
        row.label,
        row.denoise_s,
        row.effective_density,
        format_passes(&row.transformer_passes),
        if row.every_block_kept {
            " (the mask kept every block)"
        } else {
            ""
        }
    );
    if let Some(a) = &row.vs_baseline {
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
    /// The table's header cells.
    fn header(&self) -> Vec<String> {
        let mut header: Vec<String> = [
            "setting",
            "density",
            "passes run",
            &format!("PSNR vs {}", self.baseline),
            "SSIM",
            "latent cos",
            "denoise (s)",
            "speedup",
            "peak memory",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if self.prompt_in_grammar {
            header.extend(["colour", "motion", "count"].map(String::from));
        }
        header
    }

    /// The table's rows, plain text cells.
    fn table(&self) -> Vec<Vec<String>> {
        self.runs
            .iter()
            .map(|row| {
                let (psnr, ssim, cos) = match &row.vs_baseline {
                    None => ("—".to_string(), "—".to_string(), "—".to_string()),
                    Some(a) => (
                        format_psnr(a.psnr_db),
                        format!("{:.4}", a.ssim),
                        format!("{:.5}", a.latent_cosine),
                    ),
                };
                let mut cells = vec![
                    row.label.clone(),
                    format!("{:.3}", row.effective_density),
                    format_passes(&row.transformer_passes),
                    psnr,
                    ssim,
                    cos,
                    format!("{:.2}", row.denoise_s),
                    format_speedup(row),
                    format_peak(row),
                ];
                if let Some(f) = &row.faithfulness {
                    cells.extend([f.colour_ok, f.motion_ok, f.count_ok].map(|ok| tick(ok).into()));
                }
                cells
            })
            .collect()
    }

    /// The paragraphs above the table: the run's settings, then how it was timed.
    fn intro(&self) -> Vec<String> {
        let s = &self.settings;
        let a = &s.attention;
        vec![
            format!(
                "Prompt {:?}, model {}, {}x{}, {} frames, {} steps ({}), guidance {}, seed {}, {} {}.",
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
            ),
            format!(
                "Baseline: {}. Sparse settings: {} dense steps, mask refresh {}, block {}, window {}, {} dense layers. Timing: {}.",
                self.baseline,
                a.dense_step_count,
                a.mask_refresh,
                a.block_size,
                a.window.name(),
                a.dense_layers,
                self.note
            ),
        ]
    }

    /// The report as markdown: the settings, then one table row per setting.
    pub fn markdown(&self) -> String {
        let mut md = String::from("# vdit compare\n\n");
        for paragraph in self.intro() {
            let _ = writeln!(md, "{paragraph}\n");
        }
        let header = self.header();
        let _ = writeln!(md, "| {} |", header.join(" | "));
        let align: Vec<&str> = header
            .iter()
            .enumerate()
            .map(|(i, _)| match i {
                0 => "---",
                _ if i >= 9 => "---",
                _ => "---:",
            })
            .collect();
        let _ = writeln!(md, "|{}|", align.join("|"));
        for cells in self.table() {
            let _ = writeln!(md, "| {} |", cells.join(" | "));
        }
        if !self.prompt_in_grammar {
            md.push_str("\nThe prompt is not a caption of the synthetic world's grammar, so prompt-faithfulness is not measured.\n");
        }
        let _ = writeln!(
            md,
            "\nSide by side ({}): {}\n\nFrames of every setting: {}. Speed-up against PSNR: {}",
            self.runs
                .iter()
                .map(|r| r.label.as_str())
                .collect::<Vec<_>>()
                .join(" | "),
            self.side_by_side,
            self.html,
            self.pareto
        );
        md
    }

    /// compare.html, with `strips` (one per row).
    fn html(&self, strips: &[html::FrameStrip]) -> String {
        let header = self.header();
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        html::page(
            "vdit compare",
            &self.intro(),
            &header,
            &self.table(),
            strips,
        )
    }

    /// pareto.png: every setting with a speed-up and a finite PSNR.
    fn pareto_png(&self) -> Result<Vec<u8>> {
        let mut points = Vec::new();
        let mut left_out = Vec::new();
        for row in self.runs.iter().skip(1) {
            match (
                row.speedup,
                row.vs_baseline.as_ref().and_then(|a| a.psnr_db),
            ) {
                (Some(speedup), Some(psnr_db)) => points.push(pareto::ParetoPoint {
                    label: row.label.clone(),
                    speedup,
                    psnr_db,
                }),
                (None, _) => left_out.push(format!("{} (no speed-up)", row.label)),
                (_, None) => left_out.push(format!("{} (identical frames)", row.label)),
            }
        }
        let s = &self.settings;
        let title = format!(
            "{} {}x{}x{}, {} steps, vs {}",
            s.model.rsplit('/').next().unwrap_or(&s.model),
            s.width,
            s.height,
            s.frames,
            s.steps,
            self.baseline
        );
        let footnote = if left_out.is_empty() {
            "red: the Pareto front (no other setting is both faster and closer)".to_string()
        } else {
            format!(
                "red: the Pareto front. Not plotted: {}",
                left_out.join(", ")
            )
        };
        pareto::pareto_png(&points, &title, &footnote).map_err(VditError::InvalidSetting)
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
