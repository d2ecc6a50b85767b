//! `vdit generate`: resolve the settings, print them, run the pipeline, say what was written.

use anyhow::Context;

use vdit_pipeline::registry::Registry;
use vdit_pipeline::{settings, stages};

use crate::args::GenerateArgs;

pub fn generate(args: &GenerateArgs) -> anyhow::Result<()> {
    let registry = Registry::discover()?;
    let (settings, files) = settings::resolve(&args.options(), &registry)?;
    // Settings and seed first, so a failed or interrupted run can be reproduced.
    eprintln!("{}", settings.summary());
    let report = stages::generate(&settings, &files)
        .with_context(|| format!("generating {}", settings.output.display()))?;
    eprintln!("{report}");
    Ok(())
}
