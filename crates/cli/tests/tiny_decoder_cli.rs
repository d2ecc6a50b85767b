//! `vdit generate --decoder tiny` end to end on the tiny fixture model (16-channel latents, 48×32,
//! 9 frames, 4 steps) with the small TAEHV fixture decoders of tests/fixtures/taehv: the video
//! is decoded by TAEHV and the sidecar says so; a TAEHV file of the other latent channels fails
//! before the first step with one line; `--help` explains the flags.

mod common;

use common::{tiny_model, vdit};
use std::path::{Path, PathBuf};

fn taehv_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/taehv")
        .join(name)
}

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
        "4",
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

/// The last non-empty line of stderr, and how many lines start with "error".
fn error_line(stderr: &str) -> (String, usize) {
    let errors = stderr.lines().filter(|l| l.starts_with("error")).count();
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
    (last.unwrap_or_default().to_string(), errors)
}

#[test]
fn tiny_decoder_writes_the_video_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let weights = taehv_fixture("taew2_1_small.safetensors");
    let out = generate(
        dir.path(),
        "tiny.mp4",
        &["--decoder", "tiny", "--tiny-vae", weights.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("decoder      tiny (TAEHV"), "{stderr}");
    assert!(dir.path().join("tiny.mp4").is_file());
    let record = sidecar(&dir.path().join("tiny.mp4.json"));
    assert_eq!(record["settings"]["decoder"]["kind"], "tiny", "{record}");
    assert!(record["settings"]["decoder"]["weights"]
        .as_str()
        .unwrap()
        .ends_with("taew2_1_small.safetensors"));

    // A folder holding the published name is searched for the file of the model's channels.
    let folder = dir.path().join("taehv");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(&weights, folder.join("taew2_1.safetensors")).unwrap();
    let out = generate(
        dir.path(),
        "folder.mp4",
        &["--decoder", "tiny", "--tiny-vae", folder.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let record = sidecar(&dir.path().join("folder.mp4.json"));
    assert!(record["settings"]["decoder"]["weights"]
        .as_str()
        .unwrap()
        .ends_with("taew2_1.safetensors"));

    // The default decoder is recorded too.
    let out = generate(dir.path(), "full.mp4", &[]);
    assert!(out.status.success());
    let record = sidecar(&dir.path().join("full.mp4.json"));
    assert_eq!(record["settings"]["decoder"]["kind"], "full", "{record}");
}

#[test]
fn latent_channel_mismatch_is_one_line_before_sampling() {
    let dir = tempfile::tempdir().unwrap();
    let weights = taehv_fixture("taew2_2_small.safetensors");
    let out = generate(
        dir.path(),
        "x.mp4",
        &["--decoder", "tiny", "--tiny-vae", weights.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let (line, errors) = error_line(&stderr);
    assert_eq!(errors, 1, "{stderr}");
    assert!(
        line.contains("a TAEHV decoder of 48-channel latents")
            && line.contains("this model's latents have 16 channels")
            && line.contains("use taew2_1.safetensors"),
        "{stderr}"
    );
    // Preflight: no step ran and nothing was written.
    assert!(!stderr.contains("step 1/"), "{stderr}");
    assert!(!dir.path().join("x.mp4").exists());
}

#[test]
fn tiny_flags_misused_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let weights = taehv_fixture("taew2_1_small.safetensors");
    // --tiny-vae without --decoder tiny would be ignored.
    let out = generate(
        dir.path(),
        "x.mp4",
        &["--tiny-vae", weights.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("is only read with --decoder tiny"),
        "{stderr}"
    );
    // Offline with an empty cache: the hub file cannot be found, and the line says where.
    let out = generate(dir.path(), "x.mp4", &["--decoder", "tiny", "--offline"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let (line, _) = error_line(&stderr);
    assert!(
        line.contains("taew2_1.safetensors") && line.contains("hub:madebyollin/taehv"),
        "{stderr}"
    );
    // A non-TAEHV file (the full VAE) is named as such.
    let vae = tiny_model().join("vae/diffusion_pytorch_model.safetensors");
    let out = generate(
        dir.path(),
        "x.mp4",
        &["--decoder", "tiny", "--tiny-vae", vae.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("not a recognised TAEHV decoder checkpoint"),
        "{stderr}"
    );
}

#[test]
fn help_explains_the_decoder_flags() {
    let dir = tempfile::tempdir().unwrap();
    let out = vdit(&["generate", "--help"], &dir.path().join("cache"));
    let help = String::from_utf8_lossy(&out.stdout);
    for text in [
        "--decoder",
        "--tiny-vae",
        "taew2_1",
        "taew2_2",
        "madebyollin/taehv",
    ] {
        assert!(help.contains(text), "--help lacks {text}:\n{help}");
    }
}
