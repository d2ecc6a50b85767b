//! `vdit generate`: resolve the settings, print them, run the pipeline, say what was written.

use anyhow::Context;

use vdit_pipeline::registry::Registry;
use vdit_pipeline::{settings, stages, VditError};

use crate::args::GenerateArgs;

pub fn generate(args: &GenerateArgs) -> anyhow::Result<()> {
    let registry = Registry::discover()?;
    let (settings, files) = with_sparse_check(args, settings::resolve(&args.options(), &registry))?;
    // Settings and seed first, so a failed or interrupted run can be reproduced.
    eprintln!("{}", settings.summary());
    for warning in &settings.warnings {
        eprintln!("warning: {warning}");
    }
    let report = stages::generate(&settings, &files)
        .with_context(|| format!("generating {}", settings.output.display()))?;
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
