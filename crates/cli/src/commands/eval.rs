//! `vdit eval`: prompt-faithfulness of a model over a fixed list of prompts of the synthetic world.
//! Each prompt is generated from a fixed seed (the base seed plus its index), the deterministic
//! analyser of [`crate::eval`] reads the frames, and the share of clips whose colours, motions and
//! object count match the caption is reported, with one row per prompt.
//!
//! Writes `DIR/eval.json`, `DIR/eval.md` and one video per prompt (`DIR/NN.mp4`). eval.json lists
//! every file, so a later run may replace them; any other file in the way stops the run before
//! it starts (unless `--overwrite`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use vdit_pipeline::clip::generate_clip;
use vdit_pipeline::denoise::VelocityModel;
use vdit_pipeline::eval::{accuracy, parse_caption, Caption, Faithfulness, Score};
use vdit_pipeline::options::{AttentionMode, Choice};
use vdit_pipeline::output::{
    check_report_outputs, create_output_dir, write_json_atomic, write_text_atomic,
};
use vdit_pipeline::ownership::Replace;
use vdit_pipeline::registry::Registry;
use vdit_pipeline::settings::{resolve, GenerateSettings};
use vdit_pipeline::stages::{
    build_attention, encode_prompt_list, load_decoder, load_velocity_models,
};
use vdit_pipeline::video::write_video_replacing;
use vdit_pipeline::{Result, VditError};

use crate::args::EvalArgs;

/// Output directory when `-o` is absent.
pub const DEFAULT_DIR: &str = "vdit-eval";

/// Base seed when `--seed` is absent: prompt `i` is generated from seed `base + i`.
pub const DEFAULT_BASE_SEED: u64 = 0;

/// The held-out prompts of the training world (`scripts/train/world.py`, `HELD_OUT_PROMPTS`): no
/// training clip has exactly these captions. Single objects in every colour and motion, plain,
/// textured and unnamed backgrounds, and two two-object scenes.
pub const BUILTIN_PROMPTS: [&str; 18] = [
    "a red circle moving right",
    "a blue square moving left",
    "a green triangle moving up",
    "a yellow circle moving down",
    "a purple square growing",
    "a orange triangle shrinking",
    "a white circle standing still on a black background",
    "a black square moving right on a white background",
    "a red triangle moving left on a blue background",
    "a green circle moving down on a purple background",
    "a blue triangle moving right on a textured background",
    "a yellow square moving up on a textured background",
    "a purple circle moving left on a orange background",
    "a orange square moving down on a green background",
    "a white triangle growing on a red background",
    "a red square shrinking on a yellow background",
    "a blue circle moving up and a yellow square moving down",
    "a green square moving right and a red circle moving left on a black background",
];

/// One prompt's result.
#[derive(Debug, Clone, Serialize)]
pub struct PromptRow {
    pub prompt: String,
    pub seed: u64,
    #[serde(flatten)]
    pub faithfulness: Faithfulness,
    pub effective_density: f64,
    pub denoise_s: f64,
    pub video: String,
}

/// Share of clips passing each check.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AccuracySummary {
    pub clips: usize,
    pub colour: f64,
    pub motion: f64,
    pub count: f64,
}

/// What `vdit eval` writes to eval.json.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub vdit_version: &'static str,
    /// Optional backends compiled into this build (`cuda`, `cudnn`, `metal`); empty on a CPU-only build.
    pub build_features: &'static [&'static str],
    /// Settings of the first prompt's run (the others differ only in prompt, seed and output).
    pub settings: GenerateSettings,
    /// "builtin" or the prompt file.
    pub prompt_source: String,
    pub accuracy: AccuracySummary,
    /// Mean over prompts of the attention density actually computed (1 = dense).
    pub mean_effective_density: f64,
    pub prompts: Vec<PromptRow>,
    /// Every file of the output directory this run wrote (names), this report included: what a
    /// later run may replace.
    pub files: Vec<String>,
}

const REPORT_JSON: &str = "eval.json";
const REPORT_MD: &str = "eval.md";

/// The prompts of a prompt file, each checked against the grammar (errors name the line).
pub fn read_prompt_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        VditError::InvalidSetting(format!(
            "--prompts {}: cannot read it ({e})",
            path.display()
        ))
    })?;
    let mut prompts = Vec::new();
    let mut problems = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_caption(line) {
            Ok(_) => prompts.push(line.to_string()),
            Err(e) => problems.push(format!(
                "--prompts {} line {}: {e}",
                path.display(),
                number + 1
            )),
        }
    }
    if prompts.is_empty() && problems.is_empty() {
        problems.push(format!(
            "--prompts {}: no prompts in the file",
            path.display()
        ));
    }
    if !problems.is_empty() {
        return Err(VditError::InvalidSetting(problems.join("\n")));
    }
    Ok(prompts)
}

/// Runs `vdit eval`: every prompt generated and analysed, the report files written into the
/// output directory.
pub fn run(args: EvalArgs, registry: &Registry) -> Result<EvalReport> {
    let EvalArgs {
        generate: args,
        prompts: prompt_file,
        builtin,
    } = args;
    let generate_args = args;
    let mut args = generate_args.options();
    let (prompts, prompt_source) = match (&prompt_file, builtin) {
        (Some(path), false) => (read_prompt_file(path)?, path.display().to_string()),
        (None, true) => (
            BUILTIN_PROMPTS.iter().map(|p| p.to_string()).collect(),
            "builtin".to_string(),
        ),
        _ => {
            return Err(VditError::InvalidSetting(
                "give exactly one of --prompts FILE and --builtin".into(),
            ))
        }
    };
    let captions: Vec<Caption> = prompts
        .iter()
        .map(|p| parse_caption(p))
        .collect::<std::result::Result<_, _>>()?;
    let dir = args
        .output
        .take()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
    // Before any work: nothing in the directory that vdit did not write is replaced.
    let mut outputs = vec![REPORT_JSON.to_string(), REPORT_MD.to_string()];
    outputs.extend((0..prompts.len()).map(video_name));
    let paths: Vec<PathBuf> = outputs.iter().skip(1).map(|f| dir.join(f)).collect();
    check_report_outputs(&dir.join(REPORT_JSON), &paths, args.overwrite)?;
    let replace = if args.overwrite {
        Replace::Always
    } else {
        Replace::IfListedIn(dir.join(REPORT_JSON))
    };
    create_output_dir("-o", &dir)?;
    let base_seed = args.seed.unwrap_or(DEFAULT_BASE_SEED);
    args.seed = Some(base_seed);
    args.prompt = prompts[0].clone();
    args.output = Some(dir.join(video_name(0)));
    let (first, files) =
        crate::commands::generate::with_sparse_check(&generate_args, resolve(&args, registry))?;
    eprintln!("{}", first.summary());
    eprintln!(
        "eval         {} prompts from {prompt_source}, seeds from {base_seed}",
        prompts.len()
    );

    let device = first.device.device()?;
    let start = Instant::now();
    let prompt_refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let texts = encode_prompt_list(&first, &files, &device, &prompt_refs)?;
    eprintln!("encode       {:.1} s", start.elapsed().as_secs_f64());
    let transformers: Vec<Box<dyn VelocityModel>> = load_velocity_models(&first, &files, &device)?;
    // Bad sparse settings fail here, before the first run.
    build_attention(&first.attention, transformers[0].num_layers(), first.steps)?;

    let vae = load_decoder(&first, &files, &device)?;
    let mut rows = Vec::with_capacity(prompts.len());
    for (i, ((prompt, caption), text)) in prompts.iter().zip(&captions).zip(&texts).enumerate() {
        let mut settings = first.clone();
        settings.prompt = prompt.clone();
        settings.seed = base_seed.wrapping_add(i as u64);
        settings.output = dir.join(video_name(i));
        let start = Instant::now();
        let clip = generate_clip(&transformers, &vae, &settings, &device, text, None)?;
        write_video_replacing(
            &settings.output,
            &clip.frames,
            settings.fps,
            replace.clone(),
        )?;
        let faithfulness = Faithfulness::measure(caption, &clip.frames)?;
        eprintln!(
            "[{:>2}/{}] {:<60} colour {} motion {} count {} ({:.1} s)",
            i + 1,
            prompts.len(),
            prompt,
            tick(faithfulness.colour_ok),
            tick(faithfulness.motion_ok),
            tick(faithfulness.count_ok),
            start.elapsed().as_secs_f64()
        );
        rows.push(PromptRow {
            prompt: prompt.clone(),
            seed: settings.seed,
            faithfulness,
            effective_density: clip.effective_density,
            denoise_s: clip.denoise_s,
            video: settings.output.display().to_string(),
        });
    }
    let scores: Vec<Score> = rows.iter().map(|r| r.faithfulness.score()).collect();
    let accuracy = accuracy(&scores);
    let report = EvalReport {
        vdit_version: env!("CARGO_PKG_VERSION"),
        build_features: vdit_pipeline::output::build_features(),
        settings: first,
        prompt_source,
        accuracy: AccuracySummary {
            clips: accuracy.clips,
            colour: accuracy.colour,
            motion: accuracy.motion,
            count: accuracy.count,
        },
        mean_effective_density: rows.iter().map(|r| r.effective_density).sum::<f64>()
            / rows.len() as f64,
        prompts: rows,
        files: outputs,
    };
    // The markdown first: eval.json, which lists it, is the last file written.
    write_text_atomic(&dir.join(REPORT_MD), &report.markdown())?;
    write_json_atomic(&dir.join(REPORT_JSON), &report)?;
    Ok(report)
}

fn video_name(index: usize) -> String {
    format!("{index:02}.mp4")
}

fn tick(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "no"
    }
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

impl EvalReport {
    /// The accuracy table, then one row per prompt.
    pub fn markdown(&self) -> String {
        let s = &self.settings;
        let a = &s.attention;
        let attention = match a.mode {
            AttentionMode::Dense => "dense".to_string(),
            mode => format!(
                "{} sparsity {} ({} dense steps, block {}, window {})",
                mode.name(),
                a.sparsity,
                a.dense_step_count,
                a.block_size,
                a.window.name()
            ),
        };
        let mut md = String::new();
        let _ = writeln!(md, "# vdit eval\n");
        let _ = writeln!(
            md,
            "Model {}, {}x{}, {} frames, {} steps ({}), guidance {}, attention {attention}, prompts from {}, seeds {} to {}.\n",
            s.model,
            s.width,
            s.height,
            s.frames,
            s.steps,
            s.sampler.name(),
            s.guidance_scale,
            self.prompt_source,
            self.prompts.first().map_or(0, |r| r.seed),
            self.prompts.last().map_or(0, |r| r.seed),
        );
        md.push_str("| clips | colour | motion | count | attention density |\n");
        md.push_str("|---:|---:|---:|---:|---:|\n");
        let acc = &self.accuracy;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.3} |\n",
            acc.clips,
            percent(acc.colour),
            percent(acc.motion),
            percent(acc.count),
            self.mean_effective_density
        );
        md.push_str("| # | prompt | seed | colour | motion | count | found |\n");
        md.push_str("|---:|---|---:|---|---|---|---|\n");
        for (i, row) in self.prompts.iter().enumerate() {
            let f = &row.faithfulness;
            let found = if f.found.is_empty() {
                "nothing".to_string()
            } else {
                f.found
                    .iter()
                    .map(|o| format!("{} {}", o.colour, o.motion))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            let _ = writeln!(
                md,
                "| {i} | {} | {} | {} | {} | {} | {found} |",
                row.prompt,
                row.seed,
                tick(f.colour_ok),
                tick(f.motion_ok),
                tick(f.count_ok)
            );
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdit_pipeline::eval::PaletteColour;
    use vdit_pipeline::video::VideoFrames;

    #[test]
    fn every_builtin_prompt_is_a_caption_of_the_grammar() {
        for prompt in BUILTIN_PROMPTS {
            let caption = parse_caption(prompt).unwrap();
            assert!(!caption.objects.is_empty(), "{prompt}");
        }
        let two_objects = BUILTIN_PROMPTS
            .iter()
            .filter(|p| parse_caption(p).unwrap().objects.len() == 2)
            .count();
        assert_eq!(two_objects, 2);
    }

    /// The built-in list is a copy of `HELD_OUT_PROMPTS` in scripts/train/world.py (the prompts
    /// training never saw); the two must not drift apart.
    #[test]
    fn builtin_prompts_are_the_training_worlds_held_out_prompts() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/train/world.py");
        let source = std::fs::read_to_string(path).unwrap();
        let start = source
            .find("HELD_OUT_PROMPTS = [")
            .expect("world.py defines HELD_OUT_PROMPTS");
        let end = start + source[start..].find(']').expect("the list is closed");
        let listed: Vec<&str> = source[start..end]
            .lines()
            .skip(1)
            .filter_map(|line| line.trim().strip_prefix('"')?.strip_suffix("\","))
            .collect();
        assert_eq!(listed, BUILTIN_PROMPTS, "{path}");
    }

    /// A `size`² clip of a square of `colour` (half side 6) whose centre moves from x = 16 to
    /// x = 48 on a blue background, over 9 frames.
    fn square_moving_right(colour: PaletteColour, size: usize) -> VideoFrames {
        let background = PaletteColour::Blue.rgb();
        let frames = (0..9)
            .map(|t| {
                let centre_x = 16 + 4 * t as i64;
                let centre_y = size as i64 / 2;
                let mut rgb = Vec::with_capacity(size * size * 3);
                for y in 0..size as i64 {
                    for x in 0..size as i64 {
                        let inside = (x - centre_x).abs() <= 6 && (y - centre_y).abs() <= 6;
                        rgb.extend(if inside { colour.rgb() } else { background });
                    }
                }
                rgb
            })
            .collect();
        VideoFrames::new(size as u32, size as u32, frames).unwrap()
    }

    #[test]
    fn faithfulness_reports_what_the_analyser_saw() {
        let clip = square_moving_right(PaletteColour::Red, 64);
        let right = parse_caption("a red square moving right on a blue background").unwrap();
        let f = Faithfulness::measure(&right, &clip).unwrap();
        assert!(f.colour_ok && f.motion_ok && f.count_ok, "{f:?}");
        assert_eq!(f.objects_found, 1);
        assert_eq!(f.found[0].colour, "red");
        assert_eq!(f.found[0].motion, "moving right");

        let wrong = parse_caption("a green square moving up and a red circle growing").unwrap();
        let f = Faithfulness::measure(&wrong, &clip).unwrap();
        assert!(!f.colour_ok && !f.motion_ok && !f.count_ok, "{f:?}");
        let s = f.score();
        assert!(!s.colour_ok && !s.motion_ok && !s.count_ok);
    }
}
