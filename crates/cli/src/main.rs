//! The `vdit` command line: `vdit generate`, `vdit compare`, `vdit eval`, `vdit bench`,
//! `vdit models`.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use vdit::args::{Cli, Command, GenerateArgs};
use vdit::registry::{EntrySource, Registry};
use vdit::{bench, compare, eval_cmd, pipeline, settings, VditError};

/// Exit status for bad flags or settings (clap uses the same).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate(&args),
        Command::Compare(args) => run_compare(*args),
        Command::Eval(args) => run_eval(*args),
        Command::Bench(args) => run_bench(&args),
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

fn run_compare(args: compare::CompareArgs) -> anyhow::Result<()> {
    let report = compare::run(args, &Registry::discover()?).context("vdit compare")?;
    println!("{}", report.markdown());
    Ok(())
}

fn run_eval(args: eval_cmd::EvalArgs) -> anyhow::Result<()> {
    let report = eval_cmd::run(args, &Registry::discover()?).context("vdit eval")?;
    println!("{}", report.markdown());
    Ok(())
}

fn run_bench(args: &bench::BenchArgs) -> anyhow::Result<()> {
    let report = bench::run(args).context("vdit bench")?;
    println!("{}", report.markdown());
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
