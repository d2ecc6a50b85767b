//! `vdit generate`: resolve the settings, print them, run the pipeline, say what was written.
//! When a stage after sampling fails, say how to resume from the saved latents.

use std::path::Path;

use anyhow::Context;

use vdit_pipeline::registry::Registry;
use vdit_pipeline::settings::GenerateSettings;
use vdit_pipeline::{settings, stages, VditError};

use crate::args::GenerateArgs;

pub fn generate(args: &GenerateArgs) -> anyhow::Result<()> {
    let registry = Registry::discover()?;
    let (settings, files) = with_sparse_check(args, settings::resolve(&args.options(), &registry))?;
    // Before anything is loaded: no file vdit did not write is in the way.
    stages::check_outputs(&settings)?;
    // Settings and seed first, so a failed or interrupted run can be reproduced.
    eprintln!("{}", settings.summary());
    for warning in &settings.warnings {
        eprintln!("warning: {warning}");
    }
    let report = match stages::generate(&settings, &files) {
        Ok(report) => report,
        Err(VditError::AfterSampling { error, latents }) => {
            let next = match latents {
                Some(path) => format!(
                    "the sampled latents are saved in {}; once the cause is fixed, decode them without sampling: {}",
                    path.display(),
                    resume_command(&settings, &path)
                ),
                None => "the sampled latents could not be saved either".into(),
            };
            // The cause first, then one line on how to go on.
            return Err(anyhow::anyhow!(
                "generating {}: {}\n{next}",
                settings.output.display(),
                crate::error_line(&anyhow::Error::new(*error))
            ));
        }
        Err(error) => {
            return Err(error).with_context(|| format!("generating {}", settings.output.display()))
        }
    };
    eprintln!("{report}");
    Ok(())
}

/// `resolved`, with the line about sparse-attention flags that dense attention would ignore
/// reported among the other problems (every problem at once, one line each).
pub fn with_sparse_check<T>(
    args: &GenerateArgs,
    resolved: vdit_pipeline::Result<T>,
) -> vdit_pipeline::Result<T> {
    match (args.check_sparse_flags(), resolved) {
        (Ok(()), resolved) => resolved,
        (Err(line), Err(VditError::InvalidSetting(others))) => {
            Err(VditError::InvalidSetting(format!("{line}\n{others}")))
        }
        (Err(line), _) => Err(VditError::InvalidSetting(line)),
    }
}

/// This command line again with `--latents-in PATH` (and the output and seed made explicit, so
/// a default output name does not change): later flags override earlier ones.
fn resume_command(settings: &GenerateSettings, latents: &Path) -> String {
    let mut words: Vec<String> = std::env::args().collect();
    if words.is_empty() {
        words.push("vdit".into());
        words.push("generate".into());
    }
    let given = |flags: &[&str]| {
        words.iter().any(|w| {
            flags
                .iter()
                .any(|f| w == f || w.starts_with(&format!("{f}=")))
        })
    };
    let mut extra = Vec::new();
    if !given(&["-o", "--output"]) {
        extra.extend(["-o".into(), settings.output.display().to_string()]);
    }
    if !given(&["--seed"]) {
        extra.extend(["--seed".into(), settings.seed.to_string()]);
    }
    extra.extend(["--latents-in".into(), latents.display().to_string()]);
    words.extend(extra);
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `word` as one shell word: as is when it is plain, else in single quotes.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn words_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("--seed"), "--seed");
        assert_eq!(shell_quote("a red circle"), "'a red circle'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
