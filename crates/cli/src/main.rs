use clap::Parser;

/// vdit: text-to-video inference with RainFusion sparse attention.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
