//! The `vdit` command line: `generate`, `compare`, `eval`, `models`.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vdit::args::GenerateArgs;
use vdit::experiments::{self, CompareArgs, EvalArgs};
use vdit::registry::{EntrySource, Registry};
use vdit::{pipeline, settings, VditError};

/// vdit: text-to-video inference (Wan2.1) with RainFusion sparse attention, on candle.
#[derive(Debug, Parser)]
#[command(name = "vdit", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a video from a text prompt.
    // A repeated flag overrides the earlier one (handy with shell aliases); negative numbers are
    // values, so `--sparsity -0.1` reaches the range check instead of looking like a flag.
    #[command(args_override_self = true, allow_negative_numbers = true)]
    Generate(Box<GenerateArgs>),
    /// Dense against sparse attention from the same seed: PSNR, SSIM, latent cosine, prompt
    /// faithfulness, density and speedup, plus side-by-side videos (dense | sparse).
    #[command(args_override_self = true, allow_negative_numbers = true)]
    Compare(Box<CompareArgs>),
    /// Prompt faithfulness of generated clips over a list of captions (colour, motion, count).
    #[command(args_override_self = true, allow_negative_numbers = true)]
    Eval(Box<EvalArgs>),
    /// List the models of the registry (models/*.toml) and their defaults.
    Models,
}

/// Exit status for bad flags or settings (clap uses the same).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate(&args),
        Command::Compare(args) => compare(&args),
        Command::Eval(args) => evaluate(&args),
        Command::Models => list_models(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Bad settings: one line per problem. Anything else: the error and its causes.
            if let Some(VditError::InvalidSetting(lines)) = err.downcast_ref::<VditError>() {
                for line in lines.lines() {
                    eprintln!("error: {line}");
                }
                return ExitCode::from(EXIT_USAGE);
            }
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn generate(args: &GenerateArgs) -> anyhow::Result<()> {
    let registry = Registry::discover()?;
    let (settings, files) = settings::resolve(args, &registry)?;
    // Settings and seed first, so a failed or interrupted run can be reproduced.
    eprintln!("{}", settings.summary());
    let report = pipeline::generate(&settings, &files)
        .with_context(|| format!("generating {}", settings.output.display()))?;
    eprintln!("{report}");
    Ok(())
}

fn compare(args: &CompareArgs) -> anyhow::Result<()> {
    let rows = experiments::compare(args)?;
    println!("{}", experiments::compare_table(&rows));
    Ok(())
}

fn evaluate(args: &EvalArgs) -> anyhow::Result<()> {
    let (_, summary) = experiments::evaluate(args)?;
    println!(
        "{} clips: colour {:.1}%, motion {:.1}%, count {:.1}%",
        summary.clips,
        100.0 * summary.colour,
        100.0 * summary.motion,
        100.0 * summary.count
    );
    Ok(())
}

fn list_models() -> anyhow::Result<()> {
    let registry = Registry::discover()?;
    let default = registry.default_model().map(|e| e.name.clone());
    for entry in registry.entries() {
        let marker = if Some(&entry.name) == default.as_ref() {
            " (default)"
        } else {
            ""
        };
        let availability = match &entry.source {
            EntrySource::Local(_) if !entry.is_available() => " [not present]",
            _ => "",
        };
        println!("{}{marker}{availability}", entry.name);
        if !entry.description.is_empty() {
            println!("    {}", entry.description);
        }
        println!("    from     {}", entry.location());
        let d = &entry.defaults;
        let mut defaults = Vec::new();
        if let (Some(w), Some(h)) = (d.width, d.height) {
            defaults.push(format!("{w}x{h}"));
        }
        if let Some(f) = d.frames {
            defaults.push(format!("{f} frames"));
        }
        if let Some(s) = d.steps {
            defaults.push(format!("{s} steps"));
        }
        if let Some(s) = d.sampler {
            defaults.push(s.name().to_string());
        }
        if let Some(s) = d.shift {
            defaults.push(format!("shift {s}"));
        }
        if let Some(g) = d.guidance_scale {
            defaults.push(format!("guidance {g}"));
        }
        if let Some(f) = d.fps {
            defaults.push(format!("{f} fps"));
        }
        if !defaults.is_empty() {
            println!("    defaults {}", defaults.join(", "));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
