//! The `vdit` binary's argument handling: every bad flag or file gives a non-zero exit and a
//! clear one-line message (no panic, no backtrace); `--help` documents every flag.

mod common;

use common::{tiny_model, vdit};
use std::path::{Path, PathBuf};

/// A valid `generate` command line on the tiny fixture model, writing into `dir`, plus `extra`
/// (later flags override earlier ones).
fn generate_args(dir: &Path, extra: &[&str]) -> Vec<String> {
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
        "4",
        "--seed",
        "1",
        "--device",
        "cpu",
        "-o",
        dir.join("out.mp4").to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Asserts the run failed cleanly and its message contains every one of `expected`.
fn assert_rejected(extra: &[&str], expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let args = generate_args(dir.path(), extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = vdit(&args, &dir.path().join("cache"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{extra:?} was accepted:\n{stderr}");
    assert!(out.status.code().is_some(), "{extra:?}: killed by a signal");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("stack backtrace"),
        "{extra:?} panicked:\n{stderr}"
    );
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("error:"),
        "{extra:?}: first line is not an error line:\n{stderr}"
    );
    for needle in expected {
        assert!(
            stderr.contains(needle),
            "{extra:?}: message lacks {needle:?}:\n{stderr}"
        );
    }
    // Nothing was written.
    assert!(!dir.path().join("out.mp4").exists());
}

#[test]
fn frames_must_be_4n_plus_1() {
    assert_rejected(&["--frames", "10"], &["--frames", "4n+1", "try 9 or 13"]);
    assert_rejected(&["--frames", "0"], &["4n+1"]);
    assert_rejected(&["--frames", "many"], &["--frames", "not a number"]);
}

#[test]
fn sizes_must_be_multiples_of_16() {
    assert_rejected(&["--size", "50x32"], &["--size", "multiple of 16"]);
    assert_rejected(&["--size", "48"], &["--size", "WIDTHxHEIGHT"]);
    assert_rejected(&["--width", "100"], &["--width", "multiple of 16"]);
    assert_rejected(&["--height", "0"], &["--height", "multiple of 16"]);
}

#[test]
fn sampling_values_are_checked() {
    assert_rejected(&["--steps", "0"], &["--steps", "1..=1000"]);
    assert_rejected(
        &["--guidance-scale", "NaN"],
        &["--guidance-scale", "finite"],
    );
    assert_rejected(&["--shift", "0"], &["--shift", "> 0"]);
    assert_rejected(&["--sampler", "ddim"], &["--sampler", "unipc", "euler"]);
    assert_rejected(&["--fps", "0"], &["--fps", "1..=240"]);
    assert_rejected(&["--seed", "-3"], &["--seed"]);
    assert_rejected(&["--prompt", "  "], &["--prompt", "empty"]);
    assert_rejected(&["--device", "tpu"], &["--device", "cpu", "cuda", "metal"]);
    assert_rejected(&["--dtype", "f64"], &["--dtype", "bf16"]);
}

#[test]
fn sparse_attention_values_are_checked() {
    assert_rejected(&["--sparsity", "1.0"], &["--sparsity", "[0, 1)"]);
    assert_rejected(&["--sparsity", "-0.1"], &["--sparsity", "[0, 1)"]);
    assert_rejected(&["--block-size", "96"], &["--block-size", "power of two"]);
    assert_rejected(
        &["--dense-steps", "5"],
        &["--dense-steps 5", "4 sampling steps"],
    );
    assert_rejected(&["--dense-steps", "1.5"], &["--dense-steps", "[0, 1]"]);
    // RainFusion 1.0 gets the same run-level check as 2.0.
    assert_rejected(
        &[
            "--attention",
            "rainfusion-v1",
            "--dense-steps",
            "99",
            "--steps",
            "4",
        ],
        &["--dense-steps 99", "4 sampling steps"],
    );
    assert_rejected(&["--mask-refresh", "0"], &["--mask-refresh", "at least 1"]);
    assert_rejected(
        &["--attention", "sparse"],
        &["--attention", "rainfusion-v1"],
    );
    assert_rejected(&["--window", "cube"], &["--window", "spatiotemporal"]);
}

#[test]
fn output_paths_are_checked_before_any_work() {
    assert_rejected(
        &["-o", "clip.avi"],
        &["clip.avi", "unknown video extension", ".mp4, .gif or .png"],
    );
    assert_rejected(&["-o", "clip"], &["unknown video extension"]);
    assert_rejected(
        &["-o", "/nonexistent-vdit-dir/clip.mp4"],
        &["/nonexistent-vdit-dir", "does not exist"],
    );
    // A parent that is a file, not a directory.
    let file = tempfile::NamedTempFile::new().unwrap();
    let inside = file.path().join("clip.mp4");
    assert_rejected(&["-o", inside.to_str().unwrap()], &["does not exist"]);
    assert_rejected(
        &["--latents-out", "/nonexistent-vdit-dir/z.safetensors"],
        &["--latents-out", "does not exist"],
    );
}

#[test]
fn missing_files_and_models_are_named() {
    assert_rejected(
        &["--noise", "/no/such/noise.safetensors"],
        &["--noise", "/no/such/noise.safetensors", "no such file"],
    );
    assert_rejected(
        &["--dit", "/no/such/dit.safetensors"],
        &["--dit", "/no/such/dit.safetensors"],
    );
    assert_rejected(&["--vae", "/no/such/vae"], &["--vae", "/no/such/vae"]);
    assert_rejected(
        &["--text-encoder", "/no/such/te"],
        &["--text-encoder", "/no/such/te"],
    );
    assert_rejected(
        &["--tokenizer", "/no/such/tokenizer.json"],
        &["--tokenizer", "/no/such/tokenizer.json"],
    );
    assert_rejected(
        &["--model", "no-such-model"],
        &["no-such-model", "not a registry name", "wan2.1-t2v-1.3b"],
    );
    assert_rejected(
        &["--model", "./no/such/dir"],
        &["./no/such/dir", "not an existing directory"],
    );
}

#[test]
fn several_problems_are_reported_together_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let args = generate_args(
        dir.path(),
        &[
            "-o",
            "clip.avi",
            // Sparse, so that --dense-steps is taken (with dense it would be a fourth problem).
            "--attention",
            "rainfusion",
            "--dense-steps",
            "9",
            "--noise",
            "/no/noise.st",
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = vdit(&args, &dir.path().join("cache"));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(lines.iter().all(|l| l.starts_with("error: ")), "{stderr}");
}

#[test]
fn help_documents_every_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = vdit(&["generate", "--help"], dir.path());
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--prompt",
        "--negative-prompt",
        "--size",
        "--width",
        "--height",
        "--frames",
        "--steps",
        "--guidance-scale",
        "--shift",
        "--sampler",
        "--seed",
        "--fps",
        "--output",
        "--device",
        "--dtype",
        "--model",
        "--offline",
        "--dit",
        "--vae",
        "--text-encoder",
        "--tokenizer",
        "--text-encoder-cpu",
        "--vae-tiling",
        "--noise",
        "--latents-out",
        "--attention",
        "--sparsity",
        "--dense-steps",
        "--mask-refresh",
        "--block-size",
        "--window",
        "--dense-layers",
    ] {
        let line = help
            .lines()
            .position(|l| l.trim_start().starts_with(flag) || l.contains(&format!(", {flag}")))
            .unwrap_or_else(|| panic!("{flag} missing from --help:\n{help}"));
        // The line after the flag is its explanation.
        let explanation = help.lines().nth(line + 1).unwrap_or_default().trim();
        assert!(
            !explanation.is_empty(),
            "{flag} has no explanation:\n{help}"
        );
    }
}

#[test]
fn models_lists_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let out = vdit(&["models"], dir.path());
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("wan2.1-t2v-1.3b") && listing.contains("Wan-AI/Wan2.1-T2V-1.3B-Diffusers"),
        "{listing}"
    );
    assert!(
        listing.contains("wan2.1-t2v-14b") && listing.contains("Wan-AI/Wan2.1-T2V-14B-Diffusers"),
        "{listing}"
    );
    assert!(listing.contains("(default)"), "{listing}");
}

#[test]
fn settings_and_seed_are_printed_first() {
    let dir = tempfile::tempdir().unwrap();
    let args = generate_args(dir.path(), &["--seed", "1234"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = vdit(&args, &dir.path().join("cache"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("model "), "{stderr}");
    assert!(stderr.contains("seed         1234\n"), "{stderr}");
    assert!(stderr.contains("48x32, 9 frames at 16 fps"), "{stderr}");
    // The tiny model is not in the registry: its scheduler_config.json gives shift 3.
    assert!(
        stderr.contains("4 steps, unipc, shift 3, guidance 5"),
        "{stderr}"
    );

    // Without --seed a random one is drawn and printed.
    let mut args = generate_args(dir.path(), &[]);
    let at = args.iter().position(|a| a == "--seed").unwrap();
    args.drain(at..at + 2);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = vdit(&args, &dir.path().join("cache"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let seed_line = stderr
        .lines()
        .find(|l| l.starts_with("seed "))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(seed_line.ends_with("(random)"), "{stderr}");
}

#[test]
fn offline_hub_model_missing_from_the_cache_names_where_vdit_looked() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("empty-cache");
    let args = generate_args(dir.path(), &["--model", "someone/some-model", "--offline"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = vdit(&args, &cache);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for needle in [
        "someone/some-model",
        "offline",
        "tokenizer/tokenizer.json",
        &cache
            .join("models--someone--some-model")
            .display()
            .to_string(),
    ] {
        assert!(
            stderr.contains(needle),
            "message lacks {needle:?}:\n{stderr}"
        );
    }
}

#[test]
fn local_model_with_a_missing_component_names_the_paths_tried_and_overrides_fill_it() {
    // A copy of the tiny model without its VAE weights.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    for entry in walk(&tiny_model()) {
        let relative = entry.strip_prefix(tiny_model()).unwrap();
        if relative.starts_with("vae") && relative.extension().is_some_and(|e| e == "safetensors") {
            continue;
        }
        let target = model.join(relative);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &target).unwrap();
    }
    let mut args = generate_args(dir.path(), &[]);
    let at = args.iter().position(|a| a == "--model").unwrap();
    args[at + 1] = model.display().to_string();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = vdit(&argv, &dir.path().join("cache"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for candidate in [
        "diffusion_pytorch_model.safetensors",
        "model.safetensors.index.json",
    ] {
        let tried = model.join("vae").join(candidate).display().to_string();
        assert!(stderr.contains(&tried), "message lacks {tried}:\n{stderr}");
    }
    // --vae supplies the missing file; the model's vae/config.json still applies.
    let vae = tiny_model().join("vae/diffusion_pytorch_model.safetensors");
    args.extend(["--vae".to_string(), vae.display().to_string()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = vdit(&argv, &dir.path().join("cache"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("out.mp4").is_file());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn dense_layers_beyond_the_model_depth_fail_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let args = generate_args(
        dir.path(),
        &["--attention", "rainfusion", "--dense-layers", "5"],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = vdit(&args, &dir.path().join("cache"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("5 dense layers") && stderr.contains("2 layers"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("encode "),
        "the text encoder ran first:\n{stderr}"
    );
}

/// A kernel-compiling helper process (`VDIT_KERNEL_CACHE_MODULE`, started by vdit itself on a
/// machine's first CUDA run) compiles its module and exits: whatever else its command line
/// says is never run. Without CUDA (or for a name that is no candle module) it fails at once,
/// silently, and writes nothing.
#[test]
fn a_kernel_cache_helper_runs_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vdit"))
        .args(generate_args(dir.path(), &[]))
        .env(vdit_models::kernel_cache::HELPER_ENV, "no-such-module")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
