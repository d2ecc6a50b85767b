//! The `vdit` command line: `vdit generate`, `vdit compare`, `vdit eval`, `vdit bench`,
//! `vdit models`. Argument parsing is in `args`, one module per command in `commands`; the work
//! is done by the vdit-pipeline library.

mod args;
mod commands;

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use vdit_pipeline::registry::Registry;
use vdit_pipeline::VditError;

use args::{Cli, Command};
use commands::{bench, compare, eval, generate, models};

/// Exit status for bad flags or settings (clap uses the same).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    // A helper process that compiles one of candle's CUDA modules exits here.
    vdit_models::kernel_cache::serve_helper_or_enable();
    bench::mark_main_started();
    let matches = Cli::command().version(version_line()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let result = match cli.command {
        Command::Generate(args) => generate::generate(&args),
        Command::Compare(args) => run_compare(*args),
        Command::Eval(args) => run_eval(*args),
        Command::Bench(args) => run_bench(&args),
        Command::Models => models::run(),
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
            eprintln!("error: {}", error_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, `outer: inner: os error`, each cause once: a cause
/// whose text its parent's message already holds (`cannot write x: No space left` over the OS
/// error `No space left`) is not repeated.
pub fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    collapse_repeats(&line)
}

/// `a: b: b` → `a: b`: some causes carry their own cause in their text (an OS error wrapped with
/// the temporary file's path, then that again), which the check above cannot see.
fn collapse_repeats(line: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in line.split(": ") {
        if parts.last() != Some(&part) {
            parts.push(part);
        }
    }
    parts.join(": ")
}

/// `vdit --version`: the crate version and the optional backends compiled in, e.g.
/// `0.1.0 (features: cuda, cudnn)`; a CPU-only build says `(features: none)`.
fn version_line() -> &'static str {
    let features = vdit_pipeline::output::build_features();
    let list = if features.is_empty() {
        "none".to_string()
    } else {
        features.join(", ")
    };
    // clap keeps a &'static str; the line is built once per process.
    Box::leak(format!("{} (features: {list})", env!("CARGO_PKG_VERSION")).into_boxed_str())
}

fn run_compare(args: args::CompareArgs) -> anyhow::Result<()> {
    let report = compare::run(args, &Registry::discover()?).context("vdit compare")?;
    println!("{}", report.markdown());
    Ok(())
}

fn run_eval(args: args::EvalArgs) -> anyhow::Result<()> {
    let report = eval::run(args, &Registry::discover()?).context("vdit eval")?;
    println!("{}", report.markdown());
    Ok(())
}

fn run_bench(args: &args::bench::BenchArgs) -> anyhow::Result<()> {
    let report = bench::run(args).context("vdit bench")?;
    println!("{}", report.markdown());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::error_line;

    #[test]
    fn an_error_chain_names_each_cause_once() {
        let os = std::io::Error::from_raw_os_error(28);
        let os_text = os.to_string();
        let err = anyhow::Error::new(vdit_pipeline::VditError::Write {
            path: "out.json".into(),
            source: os,
        })
        .context("generating out.mp4");
        let line = error_line(&err);
        assert_eq!(line.matches(&os_text).count(), 1, "{line}");
        assert!(
            line.starts_with("generating out.mp4: cannot write out.json: "),
            "{line}"
        );
        // The plain chain printer repeats it: the case this guards against.
        assert_eq!(format!("{err:#}").matches(&os_text).count(), 2);
    }

    #[test]
    fn a_cause_repeated_inside_one_message_is_named_once() {
        // As a full disk under the mp4 writer printed it before: the temporary file's error twice.
        let inner = "File too large (os error 27) at path \"/tmp/.vdit-tmp-1-clip.mp4-x\"";
        let err = anyhow::anyhow!("clip.mp4: {inner}: {inner}").context("generating clip.mp4");
        assert_eq!(
            error_line(&err),
            format!("generating clip.mp4: clip.mp4: {inner}")
        );
    }
}
