//! Traps a careless or hostile user walks into, each answered with one clear line and no panic,
//! abort or hours of silent work: absurd sizes, a model given by path, `--help`'s defaults,
//! `vdit bench` on a CPU, ignored flags, long prompts and messages that name the wrong thing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{tiny_model, vdit};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `generate` on the tiny fixture model at 48x32, 9 frames, 2 steps, writing into `dir`.
fn generate(dir: &Path, extra: &[&str]) -> Output {
    let model = tiny_model();
    let out = dir.join("out.mp4");
    let mut args = vec![
        "generate",
        "-p",
        "a red circle moving right",
        "--model",
        model.to_str().unwrap(),
        "--size",
        "48x32",
        "--frames",
        "9",
        "--steps",
        "2",
        "--seed",
        "1",
        "--device",
        "cpu",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    vdit(&args, &dir.join("cache"))
}

/// Refused with exit status 2, no signal, no panic, and exactly one `error:` line.
fn assert_one_line_refusal(out: &Output, needles: &[&str]) {
    let text = stderr(out);
    assert_eq!(out.status.code(), Some(2), "not a usage error:\n{text}");
    assert!(!text.contains("panicked"), "{text}");
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "not one error line:\n{text}");
    for needle in needles {
        assert!(errors[0].contains(needle), "{needle:?} missing:\n{text}");
    }
    // A broken line continuation in a message shows up as a run of spaces.
    assert!(!errors[0].contains("   "), "stray spaces:\n{text}");
}

#[test]
fn absurd_sizes_are_refused_before_anything_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    for extra in [
        &["--size", "1048576x1048576"][..],
        &["--frames", "4000000001"],
        &["--size", "65536x65536"],
        &["--size", "65536x65536", "--frames", "4000000001"],
    ] {
        let out = generate(dir.path(), extra);
        assert_one_line_refusal(&out, &["memory", "needs about"]);
    }
    // Nothing was written.
    assert!(!dir.path().join("out.mp4").exists());
}

#[test]
fn a_model_given_by_path_gets_its_own_defaults_and_vdit_models_lists_them() {
    let out = vdit(&["models"], Path::new("/nonexistent-cache"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    let tiny = text
        .lines()
        .skip_while(|l| !l.starts_with("vdit-tiny"))
        .take(6)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        tiny.contains("128x128, 17 frames at 16 fps, 30 steps (unipc), shift 3, guidance 5"),
        "{tiny}"
    );
    assert!(tiny.contains("negative none"), "{tiny}");
    let wan = text
        .lines()
        .skip_while(|l| !l.starts_with("wan2.1-t2v-1.3b"))
        .take(6)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        wan.contains("832x480, 81 frames at 16 fps, 50 steps"),
        "{wan}"
    );
    assert!(wan.contains("negative Wan2.1's"), "{wan}");
}

#[test]
fn help_names_the_models_defaults_not_wans() {
    let out = vdit(&["generate", "--help"], Path::new("/nonexistent-cache"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for stale in ["Default 81", "Default 50", "Default 16", "Default unipc"] {
        assert!(!text.contains(stale), "--help still says {stale:?}");
    }
    assert!(
        text.contains("the model's (`vdit models` lists them)"),
        "{text}"
    );
}

#[test]
fn bench_without_a_target_on_a_cpu_refuses_with_a_hint() {
    let out = vdit(
        &["bench", "--device", "cpu"],
        Path::new("/nonexistent-cache"),
    );
    assert_one_line_refusal(
        &out,
        &["hours on a CPU", "--device cuda", "vdit bench attention"],
    );
}

#[test]
fn sparse_flags_with_dense_attention_are_an_error_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let out = generate(dir.path(), &["--sparsity", "0.5"]);
    assert_one_line_refusal(&out, &["--sparsity", "--attention dense", "no effect"]);
    let out = generate(
        dir.path(),
        &["--block-size", "64", "--window", "spatiotemporal"],
    );
    assert_one_line_refusal(&out, &["--block-size, --window", "have no effect"]);
    // With a sparse mode they are taken.
    let out = generate(
        dir.path(),
        &[
            "--attention",
            "rainfusion",
            "--sparsity",
            "0.5",
            "--block-size",
            "16",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_png_run_names_the_files_it_wrote_and_a_long_prompt_is_said_to_be_cut() {
    let dir = tempfile::tempdir().unwrap();
    let long_prompt = "a red circle moving right ".repeat(400);
    let model = tiny_model();
    let out_path = dir.path().join("blue.png");
    let out = vdit(
        &[
            "generate",
            "-p",
            long_prompt.as_str(),
            "--model",
            model.to_str().unwrap(),
            "--size",
            "48x32",
            "--frames",
            "9",
            "--steps",
            "2",
            "--seed",
            "1",
            "--device",
            "cpu",
            "-o",
            out_path.to_str().unwrap(),
        ],
        &dir.path().join("cache"),
    );
    let text = stderr(&out);
    assert!(out.status.success(), "{text}");
    let wrote = text.lines().find(|l| l.starts_with("wrote ")).unwrap();
    assert!(
        wrote.contains("blue_00000.png")
            && wrote.contains("blue_00008.png")
            && wrote.contains("9 frames"),
        "{wrote}"
    );
    assert!(
        !wrote.starts_with(&format!("wrote {} ", out_path.display())),
        "{wrote}"
    );
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("the text encoder reads the first 512"))
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
}

#[test]
fn the_shipped_model_by_path_resolves_like_its_registry_name() {
    // Given as a folder, vdit-tiny keeps its own size: the refusal of an absurd frame count
    // names 128x128 (its vdit.json), not Wan's 832x480.
    let dir = tempfile::tempdir().unwrap();
    let model = repo().join("models/vdit-tiny");
    if !model.join("model_index.json").is_file() {
        return;
    }
    let out = vdit(
        &[
            "generate",
            "-p",
            "x",
            "-m",
            model.to_str().unwrap(),
            "--frames",
            "4000000001",
            "--device",
            "cpu",
            "-o",
            dir.path().join("x.mp4").to_str().unwrap(),
        ],
        &dir.path().join("cache"),
    );
    assert_one_line_refusal(&out, &["128x128, 4000000001 frames"]);
}

#[test]
fn absurd_bench_sizes_are_refused_too() {
    for args in [
        &[
            "bench",
            "--device",
            "cpu",
            "transformer",
            "--preset",
            "tiny",
            "--size",
            "65536x65536",
        ][..],
        &[
            "bench",
            "--device",
            "cpu",
            "attention",
            "--tokens",
            "4000000000",
        ],
        &[
            "bench",
            "--device",
            "cpu",
            "vae",
            "--latent",
            "1000x4096x4096",
            "--base-dim",
            "8",
        ],
    ] {
        let out = vdit(args, Path::new("/nonexistent-cache"));
        assert_one_line_refusal(&out, &["needs about", "memory"]);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// NaN weights make the run diverge: the hint must fit the run's dtype (an f32 run was told to
/// try `--dtype f32`).
#[test]
fn the_divergence_hint_fits_the_runs_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("nan-model");
    copy_dir(&tiny_model(), &model);
    let weights = model.join("transformer/diffusion_pytorch_model.safetensors");
    let tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();
    let poisoned: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(name, t)| {
            let nan = (t.ones_like().unwrap() * f64::NAN).unwrap();
            (name, nan)
        })
        .collect();
    candle_core::safetensors::save(&poisoned, &weights).unwrap();
    for (dtype, says, never) in [
        ("f32", "already f32", "try --dtype f32"),
        ("bf16", "try --dtype f32", "already f32"),
    ] {
        let out = vdit(
            &[
                "generate",
                "-p",
                "a red circle moving right",
                "--model",
                model.to_str().unwrap(),
                "--size",
                "48x32",
                "--frames",
                "5",
                "--steps",
                "2",
                "--seed",
                "1",
                "--device",
                "cpu",
                "--dtype",
                dtype,
                "-o",
                dir.path().join("nan.mp4").to_str().unwrap(),
            ],
            &dir.path().join("cache"),
        );
        let text = stderr(&out);
        assert!(
            !out.status.success(),
            "{dtype}: a NaN model succeeded:\n{text}"
        );
        let error = text
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_default();
        assert!(error.contains("non-finite"), "{dtype}: {text}");
        assert!(
            error.contains(says) && !error.contains(never),
            "{dtype}: {error}"
        );
    }
}
