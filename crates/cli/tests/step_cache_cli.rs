//! `vdit generate`'s step-cache flags end to end on the tiny fixture model (48×32, 9 frames,
//! 8 steps, guided): `--cache-calibrate` writes the model's magnitude ratios, which
//! `--step-cache magcache --cache-calibration` then uses to skip passes; the sidecar and the
//! last line say how many. `--help` documents the flags; a flag that would be ignored is one line.

mod common;

use common::{tiny_model, vdit};
use std::path::Path;

fn generate(dir: &Path, out: &str, extra: &[&str]) -> std::process::Output {
    let mut args: Vec<String> = [
        "generate",
        "-p",
        "a red circle moving right",
        "--model",
        tiny_model().to_str().unwrap(),
        "--size",
        "48x32",
        "--frames",
        "9",
        "--steps",
        "8",
        "--seed",
        "1",
        "--device",
        "cpu",
        "-o",
        dir.join(out).to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    vdit(&args, &dir.join("cache"))
}

fn sidecar(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn calibrate_then_cache() {
    let dir = tempfile::tempdir().unwrap();
    let calibration = dir.path().join("calibration.json");
    let out = generate(
        dir.path(),
        "calibrate.mp4",
        &["--cache-calibrate", calibration.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let file = sidecar(&calibration);
    assert_eq!(file["steps"], 8);
    assert_eq!(file["magcache"]["cond"].as_array().unwrap().len(), 8);
    assert_eq!(file["magcache"]["uncond"].as_array().unwrap().len(), 8);
    // The calibration file is the run's: its sidecar lists it (so a later run may replace it).
    let record = sidecar(&dir.path().join("calibrate.mp4.json"));
    let files = record["files"].as_array().unwrap();
    assert!(files
        .iter()
        .any(|f| f.as_str().unwrap().ends_with("calibration.json")));

    let out = generate(
        dir.path(),
        "cached.mp4",
        &[
            "--step-cache",
            "magcache",
            "--cache-calibration",
            calibration.to_str().unwrap(),
            "--cache-threshold",
            "0.5",
            "--cache-keep-first",
            "1",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("step cache   magcache: threshold 0.5"),
        "{stderr}"
    );
    let record = sidecar(&dir.path().join("cached.mp4.json"));
    assert_eq!(record["settings"]["step_cache"]["mode"], "magcache");
    assert_eq!(record["settings"]["step_cache"]["threshold"], 0.5);
    assert_eq!(record["step_cache"]["passes"], 16);
    let skipped = record["step_cache"]["skipped"].as_u64().unwrap();
    assert!(skipped > 0, "{record}");
    assert!(
        stderr.contains(&format!("{skipped} of 16 transformer passes skipped")),
        "{stderr}"
    );
}

#[test]
fn an_ignored_cache_flag_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = generate(dir.path(), "x.mp4", &["--cache-threshold", "0.1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--cache-threshold has no effect with --step-cache none"),
        "{stderr}"
    );
    // The fixture model has no calibration.
    let out = generate(dir.path(), "x.mp4", &["--step-cache", "magcache"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("has no magnitude-ratio calibration"),
        "{stderr}"
    );
    assert!(stderr.contains("--cache-calibrate FILE"), "{stderr}");
}

#[test]
fn help_explains_every_cache_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = vdit(&["generate", "--help"], &dir.path().join("cache"));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--step-cache",
        "--cache-threshold",
        "--cache-keep-first",
        "--cache-keep-last",
        "--cache-max-skips",
        "--cache-calibration",
        "--cache-calibrate",
        "magcache 0.12",
        "Default 1",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}
