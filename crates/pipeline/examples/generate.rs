//! Text to video from Rust, without the `vdit` command line: the shipped vdit-tiny model, a few
//! steps, an mp4 and its JSON sidecar.
//!
//! ```text
//! cargo run --release -p vdit-pipeline --example generate -- "a blue square moving left" out.mp4
//! ```

use vdit_pipeline::options::DeviceChoice;
use vdit_pipeline::registry::Registry;
use vdit_pipeline::settings::{resolve, GenerateOptions};
use vdit_pipeline::stages::generate;

fn main() -> vdit_pipeline::Result<()> {
    let mut args = std::env::args().skip(1);
    let prompt = args
        .next()
        .unwrap_or_else(|| "a red circle moving right".into());
    let output = args.next().unwrap_or_else(|| "vdit-example.mp4".into());

    let mut options = GenerateOptions::new(prompt);
    options.model = Some("vdit-tiny".into());
    options.steps = Some(8);
    options.seed = Some(0);
    options.device = DeviceChoice::Auto;
    options.output = Some(output.into());

    // Settings from the model's registry entry and its family's defaults, every file checked.
    let (settings, files) = resolve(&options, &Registry::discover()?)?;
    eprintln!("{}", settings.summary());
    let report = generate(&settings, &files)?;
    println!("{report} in {:.1} s of sampling", report.timings.denoise_s);
    Ok(())
}
