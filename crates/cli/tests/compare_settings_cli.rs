//! `vdit compare`'s named settings on the shipped model (models/vdit-tiny) at 64×64, 9 frames,
//! 4 steps, one timing round, so a run takes seconds: a setting equal to the baseline and a step
//! cache at threshold 0 give the baseline's frames exactly, a cached and a sparse setting differ,
//! a LoRA setting loads its own transformer, the sweep expands to each value alone and every
//! pair, and compare.html and pareto.png are written and valid. Bad settings are refused in one
//! line before any work.

mod common;

use std::path::{Path, PathBuf};

use common::vdit;
use vdit_pipeline::video::read_video;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A `compare` command line on the shipped model: 64×64, 9 frames = 3 latent frames of 4×4
/// tokens, 16-token blocks with no dense warm-up steps so sparsity skips blocks.
fn compare_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let model = root().join("models/vdit-tiny");
    let mut args: Vec<String> = [
        "compare",
        "-p",
        "a red circle moving right",
        "--model",
        model.to_str().unwrap(),
        "--size",
        "64x64",
        "--frames",
        "9",
        "--steps",
        "4",
        "--seed",
        "3",
        "--dtype",
        "f32",
        "--device",
        "cpu",
        "--block-size",
        "16",
        "--dense-steps",
        "0",
        "--timing-rounds",
        "1",
        "-o",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn video(dir: &Path, name: &str) -> vdit_pipeline::video::VideoFrames {
    read_video(&dir.join(name)).unwrap().video
}

#[test]
fn named_settings_sweep_html_and_pareto() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cmp");
    let lora = root().join("models/loras/vdit-tiny-red-to-blue.safetensors");
    let lora_setting = format!("blue: lora={}", lora.display());
    let args = compare_args(
        &out,
        &[
            "--setting",
            "same: attention=dense",
            "--setting",
            "zero: cache=magcache threshold=0 keep-first=1",
            "--setting",
            &lora_setting,
            "--sweep-sparsities",
            "0.8",
            "--sweep-cache-thresholds",
            "0.5",
            "--cache-max-skips",
            "3",
        ],
    );
    let run = vdit(&args, &tmp.path().join("cache"));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    assert_eq!(report["baseline"], "dense");
    let runs = report["runs"].as_array().unwrap();
    let labels: Vec<&str> = runs.iter().map(|r| r["label"].as_str().unwrap()).collect();
    // No --sparsities default once settings are given; the sweep: each value alone, then the pair.
    assert_eq!(
        labels,
        [
            "dense",
            "same",
            "zero",
            "blue",
            "rainfusion 0.8",
            "magcache 0.5",
            "rainfusion 0.8 + magcache 0.5"
        ]
    );
    let row = |label: &str| runs.iter().find(|r| r["label"] == label).unwrap();
    let guided_passes = 2 * 4;
    for r in runs {
        let passes = &r["transformer_passes"];
        assert_eq!(passes["total"], guided_passes, "{}", r["label"]);
        assert_eq!(
            passes["computed"].as_u64().unwrap() + passes["skipped"].as_u64().unwrap(),
            guided_passes
        );
        assert!(
            r["peak_host_bytes"].as_u64().unwrap() > 1 << 20,
            "{}",
            r["label"]
        );
        assert!(r["peak_gpu_bytes"].is_null());
    }

    // A setting equal to the baseline, and a cache that never skips: the baseline's frames
    // exactly, and no speed-up claimed.
    for label in ["same", "zero"] {
        let r = row(label);
        assert_eq!(r["vs_baseline"]["identical_frames"], true, "{label}");
        let cosine = r["vs_baseline"]["latent_cosine"].as_f64().unwrap();
        assert!((cosine - 1.0).abs() < 1e-12, "{label}: {cosine}");
        assert_eq!(r["transformer_passes"]["skipped"], 0, "{label}");
        assert_eq!(r["same_work_as_baseline"], true, "{label}");
        assert!(r["speedup"].is_null(), "{label}");
        assert_eq!(
            video(&out, &format!("{label}.mp4")),
            video(&out, "dense.mp4")
        );
    }
    assert_eq!(row("zero")["step_cache"], "magcache");
    assert_eq!(row("zero")["cache_threshold"], 0.0);

    // A cache that may skip does, and changes the video; so do sparsity and the LoRA.
    let cached = row("magcache 0.5");
    assert!(cached["transformer_passes"]["skipped"].as_u64().unwrap() > 0);
    assert!(cached["speedup"].as_f64().unwrap() > 0.0);
    let both = row("rainfusion 0.8 + magcache 0.5");
    assert!(both["effective_density"].as_f64().unwrap() < 1.0);
    assert!(both["transformer_passes"]["skipped"].as_u64().unwrap() > 0);
    for label in ["blue", "rainfusion 0.8", "magcache 0.5"] {
        let r = row(label);
        assert_eq!(r["vs_baseline"]["identical_frames"], false, "{label}");
        assert!(
            r["vs_baseline"]["psnr_db"].as_f64().unwrap() > 0.0,
            "{label}"
        );
    }
    assert_eq!(row("blue")["loras"][0], format!("{}:1", lora.display()));
    assert_eq!(row("dense")["loras"].as_array().unwrap().len(), 0);
    // Two transformers: the LoRA setting's own, and one shared by every other setting.
    assert!(
        stderr.contains("loaded once for dense, same, zero, rainfusion 0.8, magcache 0.5, rainfusion 0.8 + magcache 0.5")
            && stderr.contains("loaded once for blue\n"),
        "{stderr}"
    );

    // Every file is listed, and each setting has its video.
    let files: Vec<&str> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for name in [
        "compare.json",
        "compare.md",
        "compare.html",
        "pareto.png",
        "dense.mp4",
        "same.mp4",
        "zero.mp4",
        "blue.mp4",
        "rainfusion-0.8.mp4",
        "magcache-0.5.mp4",
        "rainfusion-0.8-magcache-0.5.mp4",
        "side_by_side.mp4",
    ] {
        assert!(files.contains(&name), "{name} not in {files:?}");
        assert!(out.join(name).is_file(), "{name} missing");
    }

    let png = std::fs::read(out.join("pareto.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let html = std::fs::read_to_string(out.join("compare.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    for label in &labels {
        assert!(html.contains(&format!("<h3>{label}</h3>")), "{label}");
    }
    // Six frames per setting, each an embedded PNG (nothing else to fetch).
    assert_eq!(
        html.matches("<img src=\"data:image/png;base64,").count(),
        6 * labels.len()
    );
    assert!(!html.contains("src=\"http") && !html.contains("src=\"file"));
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.contains("| zero | 1.000 | 8 of 8 |"), "{md}");
    assert!(md.contains("none (the baseline's work)"), "{md}");

    // A later run may replace every file the first wrote.
    let again = vdit(
        &compare_args(&out, &["--setting", "same: attention=dense"]),
        &tmp.path().join("cache"),
    );
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn a_baseline_setting_is_what_the_others_are_measured_against() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cmp");
    let args = compare_args(
        &out,
        &[
            "--baseline",
            "sparse: sparsity=0.8",
            "--setting",
            "sparse again: attention=rainfusion sparsity=0.8",
            "--sparsities",
            "0",
        ],
    );
    let run = vdit(&args, &tmp.path().join("cache"));
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    assert_eq!(report["baseline"], "sparse");
    let runs = report["runs"].as_array().unwrap();
    let labels: Vec<&str> = runs.iter().map(|r| r["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["sparse", "rainfusion 0", "sparse again"]);
    assert_eq!(runs[0]["attention"], "rainfusion");
    assert_eq!(runs[2]["vs_baseline"]["identical_frames"], true);
    assert_eq!(runs[2]["same_work_as_baseline"], true);
    // Sparsity 0 keeps every block: it is dense, not the sparse baseline.
    assert_eq!(runs[1]["vs_baseline"]["identical_frames"], false);
    assert!(runs[1]["speedup"].as_f64().unwrap() > 0.0);
    assert!(out.join("sparse-again.mp4").is_file());
}

/// Asserts that `extra` makes compare fail with exit status 2, no panic, an error of one line
/// containing each of `expected`, and no report.
fn assert_rejected(extra: &[&str], expected: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let run = vdit(&compare_args(&out, extra), &tmp.path().join("cache"));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{extra:?}:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{extra:?}:\n{stderr}");
    let error_lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(error_lines.len(), 1, "{extra:?}:\n{stderr}");
    for e in expected {
        assert!(
            error_lines[0].contains(e),
            "{extra:?}: no '{e}' in\n{stderr}"
        );
    }
    assert!(!out.join("compare.json").exists());
}

#[test]
fn bad_settings_are_one_line_errors() {
    assert_rejected(
        &["--setting", "t: weights=q8_0"],
        &[
            "unknown key `weights`",
            "attention, sparsity, cache, threshold, keep-first, keep-last, max-skips, lora, vae, dit",
        ],
    );
    assert_rejected(
        &["--setting", "t: sparsity=1.5"],
        &["sparsity=1.5", "[0, 1)"],
    );
    assert_rejected(&["--setting", "t: cache=fast"], &["cache=fast", "magcache"]);
    assert_rejected(&["--setting", "t: cache"], &["not KEY=VALUE"]);
    assert_rejected(
        &[
            "--setting",
            "a: sparsity=0.5",
            "--setting",
            "a: sparsity=0.8",
        ],
        &["named `a`"],
    );
    assert_rejected(
        &[
            "--setting",
            "a b: sparsity=0.5",
            "--setting",
            "a-b: sparsity=0.8",
        ],
        &["a-b.mp4"],
    );
    assert_rejected(
        &["--baseline", "x: threshold=0.1"],
        &["setting `x`", "cache=magcache"],
    );
    assert_rejected(
        &["--setting", "d: attention=dense sparsity=0.5"],
        &["setting `d`", "attention=dense"],
    );
    assert_rejected(
        &["--setting", "k: cache=magcache keep-first=3 keep-last=1"],
        &["setting `k`", "--step-cache magcache"],
    );
    assert_rejected(
        &["--sweep-cache-thresholds", "0.1", "--sweep-cache", "none"],
        &["--sweep-cache none"],
    );
}

/// `vae=tiny` decodes the same latents with the TAEHV file of `--tiny-vae` (other frames, the same
/// latents), and `dit=FILE` loads a transformer of its own from that file (here the model's own
/// weights: the same frames); both are recorded per row.
#[test]
fn decoder_and_weights_file_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cmp");
    let tiny_vae = root().join("tests/fixtures/taehv/taew2_1_small.safetensors");
    let dit = root().join("models/vdit-tiny/transformer/diffusion_pytorch_model.safetensors");
    let same_weights = format!("same weights: dit={}", dit.display());
    let args = compare_args(
        &out,
        &[
            "--tiny-vae",
            tiny_vae.to_str().unwrap(),
            "--setting",
            "preview: vae=tiny",
            "--setting",
            &same_weights,
        ],
    );
    let run = vdit(&args, &tmp.path().join("cache"));
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    let runs = report["runs"].as_array().unwrap();
    let labels: Vec<&str> = runs.iter().map(|r| r["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["dense", "preview", "same weights"]);
    assert_eq!(runs[0]["decoder"]["kind"], "full");
    assert_eq!(runs[1]["decoder"]["kind"], "tiny");
    assert_eq!(runs[1]["vs_baseline"]["identical_frames"], false);
    let cosine = runs[1]["vs_baseline"]["latent_cosine"].as_f64().unwrap();
    assert!((cosine - 1.0).abs() < 1e-6, "latent cosine {cosine}");
    assert_eq!(runs[2]["dit"], dit.display().to_string());
    assert_eq!(runs[2]["vs_baseline"]["identical_frames"], true);
    assert_rejected(&["--setting", "x: vae=huge"], &["vae=huge"]);
    assert_rejected(&["--setting", "x: dit="], &["dit= needs a file"]);
}
