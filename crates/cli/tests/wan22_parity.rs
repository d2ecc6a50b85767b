//! `vdit generate` on the Wan2.2 families against diffusers' WanPipeline
//! (scripts/reference/gen_wan22_pipelines.py):
//! - tests/fixtures/wan22_two_expert: a tiny two-expert (A14B-shaped) model, 6 UniPC steps at
//!   shift 12 with the switch at t = 875 after step 4, guidance 4.0 (high noise) / 3.0 (low noise);
//! - tests/fixtures/wan22_ti2v: a tiny TI2V-shaped model (48 channels, a timestep per token, the
//!   Wan2.2 VAE at 16x), 4 steps at shift 5, guidance 5.
//!
//! Final latents are compared in f32 (<= 1e-4) and bf16 (<= 2e-2); the PNG frames are compared
//! with diffusers' video rounded to 8 bits (at most one level apart). The float decoded video is
//! compared at 1e-4 in crates/pipeline/tests/wan22_stages.rs. Then the expert layouts (diffusers,
//! Wan-AI's high_noise_model/low_noise_model, one file per expert) and the one-line errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use vdit_pipeline::video::read_video;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn reference(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("reference.safetensors"), &Device::Cpu)
        .unwrap()
}

fn reference_json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("reference.json")).unwrap())
        .unwrap()
}

/// The flags of diffusers' run of fixture `name` (reference.json), on model directory `model`,
/// writing `out` and the final latents to `latents`.
fn reference_flags(name: &str, model: &Path, out: &Path, latents: &Path) -> Vec<String> {
    let json = reference_json(name);
    let get = |k: &str| json[k].to_string().trim_matches('"').to_string();
    let mut args: Vec<String> = vec![
        "generate".into(),
        "-p".into(),
        json["prompt"].as_str().unwrap().into(),
        "-n".into(),
        json["negative_prompt"].as_str().unwrap().into(),
        "--model".into(),
        model.display().to_string(),
        "--width".into(),
        get("width"),
        "--height".into(),
        get("height"),
        "--frames".into(),
        get("num_frames"),
        "--steps".into(),
        get("num_inference_steps"),
        "--guidance-scale".into(),
        get("guidance_scale"),
        "--shift".into(),
        get("flow_shift"),
        "--sampler".into(),
        "unipc".into(),
        "--dtype".into(),
        "f32".into(),
        "--device".into(),
        "cpu".into(),
        "--noise".into(),
        fixture(name)
            .join("reference.safetensors")
            .display()
            .to_string(),
        "-o".into(),
        out.display().to_string(),
        "--latents-out".into(),
        latents.display().to_string(),
    ];
    if json.get("guidance_scale_2").is_some() {
        args.extend(["--guidance-scale-2".into(), get("guidance_scale_2")]);
    }
    args
}

fn run_vdit(args: &[String], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vdit"))
        .args(args)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("VDIT_MODELS_DIR")
        .output()
        .unwrap()
}

/// ‖a − b‖ / ‖b‖.
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    rainfusion::reference::relative_error(a, b).unwrap()
}

/// Runs diffusers' settings of fixture `name` on `model` with `extra` flags; returns the final
/// latents and the output path.
fn generate(
    name: &str,
    model: &Path,
    dir: &Path,
    tag: &str,
    extra: &[&str],
) -> (Tensor, PathBuf, String) {
    let out = dir.join(format!("{tag}.png"));
    let latents_path = dir.join(format!("{tag}.safetensors"));
    let mut args = reference_flags(name, model, &out, &latents_path);
    args.extend(extra.iter().map(|s| s.to_string()));
    let run = run_vdit(&args, &dir.join("cache"));
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(run.status.success(), "{tag}:\n{stderr}");
    let latents = candle_core::safetensors::load(&latents_path, &Device::Cpu).unwrap();
    (latents["latents"].clone(), out, stderr)
}

/// Largest difference, in 8-bit levels, between the PNG frames and diffusers' video
/// `[1, T, 3, H, W]` in [0, 1], and the relative error of the frames read as [0, 1] floats.
fn frame_difference(png: &Path, video: &Tensor) -> (u8, f64) {
    let read = read_video(png).unwrap();
    let (_, t, c, h, w) = video.dims5().unwrap();
    assert_eq!(read.video.frames.len(), t);
    assert_eq!(
        (read.video.width as usize, read.video.height as usize),
        (w, h)
    );
    // ours: per frame, H x W x RGB bytes → [T, 3, H, W] floats in [0, 1]
    let bytes: Vec<f32> = read
        .video
        .frames
        .iter()
        .flat_map(|f| f.iter().map(|&b| b as f32 / 255.0))
        .collect();
    let ours = Tensor::from_vec(bytes, (t, h, w, c), &Device::Cpu)
        .unwrap()
        .permute((0, 3, 1, 2))
        .unwrap();
    let expected = video.squeeze(0).unwrap();
    let levels = ((&ours - (&expected * 255.0).unwrap().round().unwrap() / 255.0).unwrap())
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        * 255.0;
    (levels.round() as u8, relative_error(&ours, &expected))
}

#[test]
fn two_expert_model_matches_diffusers_in_f32() {
    let name = "wan22_two_expert";
    let dir = tempfile::tempdir().unwrap();
    let reference = reference(name);
    let (latents, png, stderr) =
        generate(name, &fixture(name).join("model"), dir.path(), "f32", &[]);
    let err = relative_error(&latents, &reference["final_latents"]);
    let (levels, frame_err) = frame_difference(&png, &reference["video"]);
    println!("two experts f32: final latents rel err {err:.2e}; PNG frames {levels} level(s) off diffusers' 8-bit video, rel err {frame_err:.2e}");
    assert!(err <= 1e-4, "latents rel err {err}");
    assert!(levels <= 1, "frames {levels} levels off");
    // The settings block names both scales and the boundary.
    assert!(
        stderr.contains("guidance 4 (high noise, t ≥ 875) / 3 (low noise)"),
        "{stderr}"
    );
    let sidecar: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(vdit_pipeline::ownership::sidecar_path(&png)).unwrap(),
    )
    .unwrap();
    assert_eq!(sidecar["settings"]["guidance_scale_2"], 3.0);
    assert_eq!(sidecar["settings"]["boundary_ratio"], 0.875);
}

/// The guidance of each expert matters: swapping the two scales changes the result (so the
/// parity above cannot come from one scale used throughout).
#[test]
fn each_expert_uses_its_own_guidance_scale() {
    let name = "wan22_two_expert";
    let dir = tempfile::tempdir().unwrap();
    let reference = reference(name);
    let (swapped, _, _) = generate(
        name,
        &fixture(name).join("model"),
        dir.path(),
        "swapped",
        &["--guidance-scale", "3.0", "--guidance-scale-2", "4.0"],
    );
    let err = relative_error(&swapped, &reference["final_latents"]);
    println!("two experts with the guidance scales swapped: rel err {err:.2e}");
    assert!(err > 1e-3, "{err}");
}

#[test]
fn two_expert_bf16_stays_within_bf16_tolerance() {
    let name = "wan22_two_expert";
    let dir = tempfile::tempdir().unwrap();
    let (latents, _, _) = generate(
        name,
        &fixture(name).join("model"),
        dir.path(),
        "bf16",
        &["--dtype", "bf16"],
    );
    let err = relative_error(&latents, &reference(name)["final_latents"]);
    println!("two experts bf16: final latents rel err {err:.2e}");
    assert!(err <= 2e-2 && err > 1e-5, "{err}");
}

/// The same model in Wan-AI's own layout (high_noise_model/, low_noise_model/), with both
/// experts kept loaded, and with the low-noise expert given as a single file (--dit-2): the same
/// latents.
#[test]
fn expert_layouts_and_keep_experts_give_the_same_latents() {
    let name = "wan22_two_expert";
    let dir = tempfile::tempdir().unwrap();
    let source = fixture(name).join("model");
    let (base, _, _) = generate(name, &source, dir.path(), "base", &[]);

    let original = dir.path().join("original");
    copy_dir(&source, &original);
    std::fs::rename(
        original.join("transformer"),
        original.join("high_noise_model"),
    )
    .unwrap();
    std::fs::rename(
        original.join("transformer_2"),
        original.join("low_noise_model"),
    )
    .unwrap();
    let (from_original, _, _) = generate(name, &original, dir.path(), "original", &[]);

    let (kept, _, stderr) = generate(name, &source, dir.path(), "kept", &["--keep-experts"]);
    assert!(stderr.contains("both experts kept loaded"), "{stderr}");

    let single = dir.path().join("single");
    copy_dir(&source, &single);
    std::fs::remove_dir_all(single.join("transformer_2")).unwrap();
    let low_file = source.join("transformer_2/diffusion_pytorch_model.safetensors");
    let (from_file, _, _) = generate(
        name,
        &single,
        dir.path(),
        "single",
        &["--dit-2", low_file.to_str().unwrap()],
    );
    for (what, latents) in [
        ("original layout", from_original),
        ("--keep-experts", kept),
        ("--dit-2 file", from_file),
    ] {
        let diff = (&latents - &base)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{what}");
    }
}

#[test]
fn ti2v_model_matches_diffusers_in_f32_and_bf16() {
    let name = "wan22_ti2v";
    let dir = tempfile::tempdir().unwrap();
    let reference = reference(name);
    let model = fixture(name).join("model");
    let (latents, png, _) = generate(name, &model, dir.path(), "f32", &[]);
    let err = relative_error(&latents, &reference["final_latents"]);
    let (levels, frame_err) = frame_difference(&png, &reference["video"]);
    println!("TI2V f32: final latents rel err {err:.2e}; PNG frames {levels} level(s) off diffusers' 8-bit video, rel err {frame_err:.2e}");
    assert!(err <= 1e-4, "latents rel err {err}");
    assert!(levels <= 1, "frames {levels} levels off");
    assert_eq!(latents.dims(), &[1, 48, 3, 4, 6]);

    let (bf16, _, _) = generate(name, &model, dir.path(), "bf16", &["--dtype", "bf16"]);
    let err = relative_error(&bf16, &reference["final_latents"]);
    println!("TI2V bf16: final latents rel err {err:.2e}");
    assert!(err <= 2e-2 && err > 1e-5, "{err}");

    // --vae-tiling picks tiles for the Wan2.2 VAE's 16x (16x16 latent pixels); this 4x6 latent
    // fits in one, so this checks the wiring only (vae22_parity tests the blending at 16x).
    let (_, tiled_png, _) = generate(name, &model, dir.path(), "tiled", &["--vae-tiling"]);
    let (tiled_levels, _) = frame_difference(&tiled_png, &reference["video"]);
    assert!(tiled_levels <= 1, "tiled frames {tiled_levels} levels off");
}

/// RainFusion on a two-expert model: each expert gets a fresh policy (masks never cross the
/// switch); sparsity 0 equals dense exactly and 0.8 skips blocks, with masks reused over 3 steps.
#[test]
fn rainfusion_runs_on_two_experts() {
    let name = "wan22_two_expert";
    let dir = tempfile::tempdir().unwrap();
    let model = fixture(name).join("model");
    // 5 latent frames of 4x4 tokens: blocks of 16 to skip (frame 0 is the dense sink).
    let grid = ["--size", "64x64", "--frames", "17", "--seed", "7"];
    let mut runs = Vec::new();
    for (tag, extra) in [
        ("dense", vec!["--attention", "dense"]),
        (
            "rf0",
            vec![
                "--attention",
                "rainfusion",
                "--sparsity",
                "0",
                "--dense-steps",
                "0",
            ],
        ),
        (
            "rf08",
            vec![
                "--attention",
                "rainfusion",
                "--sparsity",
                "0.8",
                "--block-size",
                "16",
                "--dense-steps",
                "1",
                "--mask-refresh",
                "3",
            ],
        ),
    ] {
        let out = dir.path().join(format!("{tag}.png"));
        let latents_path = dir.path().join(format!("{tag}.safetensors"));
        let mut args = reference_flags(name, &model, &out, &latents_path);
        let at = args.iter().position(|a| a == "--noise").unwrap();
        args.drain(at..at + 2);
        args.extend(grid.iter().chain(&extra).map(|s| s.to_string()));
        let run = run_vdit(&args, &dir.path().join("cache"));
        assert!(
            run.status.success(),
            "{tag}:\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let sidecar: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(vdit_pipeline::ownership::sidecar_path(&out)).unwrap(),
        )
        .unwrap();
        let density = sidecar["effective_density"].as_f64().unwrap();
        println!("two experts, {tag}: effective density {density:.3}");
        if tag == "rf08" {
            assert!(density < 1.0, "nothing skipped ({density})");
        }
        let latents = candle_core::safetensors::load(&latents_path, &Device::Cpu).unwrap();
        runs.push(
            latents["latents"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
    }
    assert_eq!(runs[0], runs[1], "sparsity 0 must equal dense");
}

/// Runs `args` expecting a usage error; returns its stderr.
fn expect_error(args: &[String], dir: &Path) -> String {
    let run = run_vdit(args, &dir.join("cache"));
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(!run.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "one error line:\n{stderr}");
    stderr
}

#[test]
fn wrong_layouts_and_mismatched_vaes_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let two = fixture("wan22_two_expert").join("model");
    let flags = |name: &str, model: &Path, tag: &str| {
        reference_flags(
            name,
            model,
            &dir.path().join(format!("{tag}.png")),
            &dir.path().join(format!("{tag}.safetensors")),
        )
    };

    // A two-expert model without its low-noise expert.
    let missing = dir.path().join("missing");
    copy_dir(&two, &missing);
    std::fs::remove_dir_all(missing.join("transformer_2")).unwrap();
    let stderr = expect_error(&flags("wan22_two_expert", &missing, "missing"), dir.path());
    assert!(
        stderr.contains("no transformer_2/") && stderr.contains("--dit-2"),
        "{stderr}"
    );

    // One expert in each layout.
    let mixed = dir.path().join("mixed");
    copy_dir(&two, &mixed);
    std::fs::rename(mixed.join("transformer_2"), mixed.join("low_noise_model")).unwrap();
    let stderr = expect_error(&flags("wan22_two_expert", &mixed, "mixed"), dir.path());
    assert!(stderr.contains("mixed expert layouts"), "{stderr}");

    // 48-channel latents for a 16-channel VAE, and the reverse: caught before sampling.
    let mut args = flags("wan22_ti2v", &fixture("wan22_ti2v").join("model"), "vae16");
    args.extend(["--vae".into(), two.join("vae").display().to_string()]);
    let stderr = expect_error(&args, dir.path());
    assert!(
        stderr.contains("48 channels") && stderr.contains("16-channel"),
        "{stderr}"
    );
    assert!(!dir.path().join("vae16.safetensors").exists());
    let mut args = flags("wan22_two_expert", &two, "vae48");
    args.extend([
        "--vae".into(),
        fixture("wan22_ti2v")
            .join("model/vae")
            .display()
            .to_string(),
    ]);
    let stderr = expect_error(&args, dir.path());
    assert!(
        stderr.contains("16 channels") && stderr.contains("48-channel"),
        "{stderr}"
    );

    // Two-expert flags on a one-transformer model.
    let mut args = flags("wan22_ti2v", &fixture("wan22_ti2v").join("model"), "g2");
    args.extend(["--guidance-scale-2", "2", "--keep-experts", "--dit-2"].map(String::from));
    args.push(two.join("transformer_2").display().to_string());
    let run = run_vdit(&args, &dir.path().join("cache"));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--guidance-scale-2: model")
            && stderr.contains("--keep-experts: model")
            && stderr.contains("--dit-2: model"),
        "{stderr}"
    );
}

/// `vdit models` lists both Wan2.2 entries.
#[test]
fn models_lists_the_wan22_entries() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_vdit(&["models".to_string()], &dir.path().join("cache"));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success());
    assert!(
        stdout.contains("wan2.2-t2v-a14b") && stdout.contains("wan2.2-ti2v-5b"),
        "{stdout}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
