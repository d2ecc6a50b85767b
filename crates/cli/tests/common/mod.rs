//! Shared by the integration tests that run the `vdit` binary on the tiny fixture model.
#![allow(dead_code)] // each test file uses what it needs

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The tiny random-weight Wan pipeline in diffusers layout (tests/fixtures/tiny_pipeline/model).
pub fn tiny_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny_pipeline/model")
}

/// The `vdit` command with `args`, isolated from the user's hub cache and registry overrides.
pub fn vdit_command<S: AsRef<OsStr>>(args: &[S], cache: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vdit"));
    command
        .args(args)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HUB_OFFLINE", "1")
        .env("RUST_BACKTRACE", "1")
        .env_remove("VDIT_MODELS_DIR");
    command
}

/// Runs `vdit` with `args` (see [`vdit_command`]).
pub fn vdit<S: AsRef<OsStr>>(args: &[S], cache: &Path) -> Output {
    vdit_command(args, cache).output().expect("vdit runs")
}
