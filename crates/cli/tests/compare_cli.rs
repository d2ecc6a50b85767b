//! `vdit compare` on the tiny random-weight fixture model (tests/fixtures/tiny_pipeline). Random
//! weights show nothing, so these tests check the mechanics: the files written, every JSON field
//! present and finite, sparsity 0 giving exactly the dense frames and latents, a sparse run really
//! skipping blocks, and bad flags rejected with a clear message before any work. `--sparsities`
//! is the shorthand of one `rainfusion S` setting per value; the named settings are tested on the
//! shipped model in compare_settings_cli.rs.

mod common;

use std::path::Path;

use common::{tiny_model, vdit};
use vdit_pipeline::video::read_video;

/// A `compare` command line on the tiny model: 64×64, 17 frames = 5 latent frames of 4×4 tokens,
/// so with 16-token blocks frame 0 is the dense sink and 4 blocks can be skipped.
fn compare_args(prompt: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "compare",
        "-p",
        prompt,
        "--model",
        tiny_model().to_str().unwrap(),
        "--size",
        "64x64",
        "--frames",
        "17",
        "--steps",
        "3",
        "--seed",
        "7",
        "--dtype",
        "f32",
        "--device",
        "cpu",
        "--block-size",
        "16",
        "--dense-steps",
        "0",
        "-o",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn finite(value: &serde_json::Value, what: &str) -> f64 {
    let v = value
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {value}"));
    assert!(v.is_finite(), "{what} = {v}");
    v
}

#[test]
fn compare_writes_its_report_and_sparsity_zero_equals_dense() {
    let tmp = tempfile::tempdir().unwrap();
    // A directory that does not exist yet: compare creates it.
    let out = tmp.path().join("report");
    let args = compare_args(
        "a red circle moving right",
        &out,
        &["--sparsities", "0,0.8"],
    );
    let run = vdit(&args, &tmp.path().join("cache"));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("| rainfusion 0.8 |"), "{stdout}");

    for name in [
        "compare.json",
        "compare.md",
        "dense.mp4",
        "rainfusion-0.mp4",
        "rainfusion-0.8.mp4",
        "side_by_side.mp4",
        "compare.html",
        "pareto.png",
    ] {
        assert!(out.join(name).is_file(), "{name} missing");
    }
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    for row in ["| dense |", "| rainfusion 0 |", "| rainfusion 0.8 |"] {
        assert!(md.contains(row), "{row} not in compare.md:\n{md}");
    }

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    assert_eq!(report["settings"]["seed"], 7);
    assert!(
        report["build_features"].is_array(),
        "build_features: {}",
        report["build_features"]
    );
    assert_eq!(report["prompt_in_grammar"], true);
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    let labels: Vec<&str> = runs.iter().map(|r| r["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["dense", "rainfusion 0", "rainfusion 0.8"]);
    for run in runs {
        let label = run["label"].as_str().unwrap();
        assert!(finite(&run["denoise_s"], "denoise_s") > 0.0, "{label}");
        assert!(finite(&run["seconds_per_step"], "seconds_per_step") > 0.0);
        // A run whose mask kept every block did the dense run's work: no speedup is claimed.
        if run["every_block_kept"] == true {
            assert!(run["speedup"].is_null(), "{label}: {}", run["speedup"]);
        } else {
            assert!(finite(&run["speedup"], "speedup") > 0.0, "{label}");
        }
        // The median of the timing rounds (3 by default), each sample kept.
        let samples = run["denoise_samples_s"].as_array().unwrap();
        assert_eq!(samples.len(), 3, "{label}");
        let density = finite(&run["effective_density"], "effective_density");
        assert!(density > 0.0 && density <= 1.0, "{label}: {density}");
        let faithfulness = &run["faithfulness"];
        for check in ["colour_ok", "motion_ok", "count_ok"] {
            assert!(faithfulness[check].is_boolean(), "{label}: {check}");
        }
        assert!(faithfulness["objects_found"].is_u64(), "{label}");
        assert!(Path::new(run["video"].as_str().unwrap()).is_file());
    }

    let dense = &runs[0];
    assert_eq!(dense["effective_density"], 1.0);
    assert_eq!(dense["speedup"], 1.0);
    assert!(dense["vs_baseline"].is_null());

    // Sparsity 0 keeps every block: the very same latents and frames as dense, and no speedup.
    let zero = &runs[1]["vs_baseline"];
    assert_eq!(runs[1]["effective_density"], 1.0);
    assert_eq!(runs[1]["every_block_kept"], true);
    assert!(runs[1]["speedup"].is_null());
    assert!(
        md.contains("| rainfusion 0 |") && md.contains("none (every block kept)"),
        "{md}"
    );
    assert_eq!(runs[2]["every_block_kept"], false);
    // No Rust debug names in the report.
    for debug_name in ["Cpu", "Tile", "Rainfusion", "Some("] {
        assert!(
            !md.contains(debug_name),
            "{debug_name} in compare.md:\n{md}"
        );
    }
    assert_eq!(zero["identical_frames"], true);
    assert!(zero["psnr_db"].is_null(), "PSNR is +inf, written as null");
    assert_eq!(finite(&zero["ssim"], "ssim"), 1.0);
    assert!((finite(&zero["latent_cosine"], "cosine") - 1.0).abs() < 1e-12);
    let dense_video = read_video(&out.join("dense.mp4")).unwrap().video;
    let zero_video = read_video(&out.join("rainfusion-0.mp4")).unwrap().video;
    assert_eq!(dense_video, zero_video);

    // Sparsity 0.8 skips blocks and differs from dense, measurably but finitely.
    let sparse = &runs[2];
    assert!(finite(&sparse["effective_density"], "density") < 1.0);
    let vs = &sparse["vs_baseline"];
    assert_eq!(vs["identical_frames"], false);
    assert!(finite(&vs["psnr_db"], "psnr") > 0.0);
    let ssim = finite(&vs["ssim"], "ssim");
    assert!(ssim > -1.0 && ssim < 1.0, "{ssim}");
    let cosine = finite(&vs["latent_cosine"], "cosine");
    assert!(cosine > -1.0 && cosine < 1.0, "{cosine}");

    // Each run is exactly what `vdit generate` makes with the same flags (same seed and noise).
    let single = tmp.path().join("single.mp4");
    let mut args = compare_args("a red circle moving right", &single, &[]);
    args[0] = "generate".into();
    args.extend(["--attention", "rainfusion", "--sparsity", "0.8"].map(String::from));
    let run = vdit(&args, &tmp.path().join("cache"));
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        read_video(&single).unwrap().video,
        read_video(&out.join("rainfusion-0.8.mp4")).unwrap().video,
        "compare's sparse run differs from vdit generate's"
    );

    // dense | rainfusion 0 | rainfusion 0.8, with a 2-pixel divider between neighbours.
    let strip = read_video(&out.join("side_by_side.mp4")).unwrap().video;
    assert_eq!((strip.width, strip.height), (3 * 64 + 2 * 2, 64));
    assert_eq!(strip.frames.len(), 17);
}

#[test]
fn a_prompt_outside_the_grammar_is_compared_without_faithfulness() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cat");
    let args = compare_args(
        "a cat playing the piano",
        &out,
        &["--sparsities", "0.5", "--attention", "rainfusion-v1"],
    );
    let run = vdit(&args, &tmp.path().join("cache"));
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    assert_eq!(report["prompt_in_grammar"], false);
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1]["attention"], "rainfusion-v1");
    assert_eq!(runs[1]["sparsity"], 0.5);
    assert!(runs.iter().all(|r| r["faithfulness"].is_null()));
    assert!(out.join("rainfusion-v1-0.5.mp4").is_file());
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.contains("not measured"), "{md}");
}

/// Asserts that `extra` makes compare fail with exit status 2, no panic, and a message
/// containing each of `expected`, without writing a report.
fn assert_rejected(extra: &[&str], expected: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let args = compare_args("a red circle moving right", &out, extra);
    let run = vdit(&args, &tmp.path().join("cache"));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{extra:?}:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{extra:?}:\n{stderr}");
    for e in expected {
        assert!(stderr.contains(e), "{extra:?}: no '{e}' in\n{stderr}");
    }
    assert!(!out.join("compare.json").exists());
}

#[test]
fn bad_flags_are_rejected_with_a_clear_message() {
    assert_rejected(&["--sparsity", "0.8"], &["--sparsities"]);
    assert_rejected(&["--sparsities", "0.5,1.0"], &["[0, 1)"]);
    assert_rejected(&["--sparsities", "0.5,x"], &["not a number"]);
    assert_rejected(&["--sparsities", "0.5,0.8,0.5"], &["0.5 is listed twice"]);
    assert_rejected(&["--attention", "dense"], &["--attention dense"]);
    assert_rejected(&["--latents-out", "l.safetensors"], &["--latents-out"]);
    assert_rejected(&["--dense-steps", "9"], &["--dense-steps 9"]);
    assert_rejected(&["--block-size", "96"], &["power of two"]);
}

#[test]
fn an_output_path_that_is_a_file_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("taken");
    std::fs::write(&file, b"x").unwrap();
    let args = compare_args("a red circle moving right", &file, &[]);
    let run = vdit(&args, &tmp.path().join("cache"));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not a directory"), "{stderr}");
}
