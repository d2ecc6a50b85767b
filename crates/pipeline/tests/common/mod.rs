//! What several of this crate's test files share.
#![allow(dead_code)] // each test file uses what it needs

use std::path::{Path, PathBuf};

use vdit_pipeline::options::DeviceChoice;
use vdit_pipeline::settings::GenerateOptions;

/// The shipped vdit-tiny model folder.
pub fn shipped_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/vdit-tiny")
}

/// A CPU run of the shipped model, seeded, writing `dir/file`.
pub fn shipped_model_options(dir: &Path, file: &str, seed: u64) -> GenerateOptions {
    let mut options = GenerateOptions::new("a red circle moving right");
    options.model = Some(shipped_model().display().to_string());
    options.output = Some(dir.join(file));
    options.device = DeviceChoice::Cpu;
    options.seed = Some(seed);
    options
}
