//! `vdit generate` against diffusers' WanPipeline on the tiny random-weight model of
//! tests/fixtures/tiny_pipeline (scripts/reference/gen_tiny_pipeline.py): the same noise,
//! 4 UniPC steps with CFG 5, shift 3; every output format, sparse modes, bf16. The stages called
//! from Rust are checked in crates/pipeline/tests/stages_parity.rs.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use vdit_pipeline::video::read_video;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny_pipeline")
}

fn reference() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join("reference.safetensors"), &Device::Cpu).unwrap()
}

/// The prompt, negative prompt and sizes diffusers was run with (reference.json).
fn reference_flags(out: &Path) -> Vec<String> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("reference.json")).unwrap())
            .unwrap();
    let get = |k: &str| json[k].to_string().trim_matches('"').to_string();
    vec![
        "generate".into(),
        "-p".into(),
        json["prompt"].as_str().unwrap().into(),
        "-n".into(),
        json["negative_prompt"].as_str().unwrap().into(),
        "--model".into(),
        fixture().join("model").display().to_string(),
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
        fixture()
            .join("reference.safetensors")
            .display()
            .to_string(),
        "-o".into(),
        out.display().to_string(),
    ]
}

/// ‖a − b‖ / ‖b‖.
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    rainfusion::reference::relative_error(a, b).unwrap()
}

fn run_vdit(args: &[String], cache: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vdit"))
        .args(args)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("VDIT_MODELS_DIR")
        .output()
        .unwrap()
}

#[test]
fn vdit_generate_writes_mp4_gif_png_and_latents_matching_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let reference = reference();
    for name in ["clip.mp4", "clip.gif", "frames.png"] {
        let out = dir.path().join(name);
        let latents_path = dir.path().join(format!("{name}.latents.safetensors"));
        let mut args = reference_flags(&out);
        args.extend([
            "--latents-out".to_string(),
            latents_path.display().to_string(),
        ]);
        let run = run_vdit(&args, &dir.path().join("cache"));
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{name}:\n{stderr}");
        assert!(stderr.contains("wrote "), "{stderr}");

        let latents = candle_core::safetensors::load(&latents_path, &Device::Cpu).unwrap();
        let err = relative_error(&latents["latents"], &reference["final_latents"]);
        assert!(err <= 1e-4, "{name}: latents rel err {err}");

        let video = read_video(&out).unwrap();
        assert_eq!(video.video.frames.len(), 9, "{name}");
        assert_eq!((video.video.width, video.video.height), (48, 32), "{name}");
        // gif stores delays in 1/100 s, so 16 fps reads back as ≈16.07.
        assert!((video.fps - 16.0).abs() < 0.1, "{name}: fps {}", video.fps);

        let sidecar: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(vdit_pipeline::ownership::sidecar_path(&out)).unwrap(),
        )
        .unwrap();
        assert!(sidecar["settings"]["seed"].as_u64().is_some());
        assert_eq!(sidecar["settings"]["steps"], 4);
        assert_eq!(sidecar["effective_density"], 1.0);
        // The build's optional backends (empty on a CPU-only build).
        assert!(
            sidecar["build_features"].is_array(),
            "{name}: build_features"
        );
        for stage in [
            "encode_s",
            "denoise_s",
            "decode_s",
            "write_s",
            "seconds_per_step",
            "text_encoder_load_s",
            "transformer_load_s",
            "vae_load_s",
            "first_step_s",
            "total_s",
        ] {
            assert!(
                sidecar["timings"][stage].as_f64().unwrap() >= 0.0,
                "{stage}"
            );
        }
        // Each load is part of its stage, and the stages part of the run.
        let t = |k: &str| sidecar["timings"][k].as_f64().unwrap();
        assert!(t("text_encoder_load_s") <= t("encode_s"), "{sidecar}");
        assert!(t("transformer_load_s") <= t("denoise_s"), "{sidecar}");
        assert!(t("vae_load_s") <= t("decode_s"), "{sidecar}");
        let stages = t("encode_s") + t("denoise_s") + t("decode_s") + t("write_s");
        assert!(stages <= t("total_s") && t("total_s") > 0.0, "{sidecar}");
        assert!(stderr.contains("write "), "stage lines: {stderr}");
    }
}

#[test]
fn rainfusion_runs_end_to_end_and_sparsity_zero_equals_dense() {
    let dir = tempfile::tempdir().unwrap();
    let mut latents = Vec::new();
    for (name, extra) in [
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
            ],
        ),
        (
            "v1",
            vec![
                "--attention",
                "rainfusion-v1",
                "--sparsity",
                "0.5",
                "--block-size",
                "16",
                "--dense-steps",
                "0",
            ],
        ),
    ] {
        let out = dir.path().join(format!("{name}.gif"));
        let latents_path = dir.path().join(format!("{name}.safetensors"));
        let mut args = reference_flags(&out);
        args.extend([
            "--latents-out".to_string(),
            latents_path.display().to_string(),
        ]);
        // A grid large enough to have blocks to skip: 5 latent frames of 4×4 tokens, frame 0
        // being the always-dense sink, leaves 4 blocks of 16 tokens. A different noise shape,
        // so from the seed.
        args.extend(["--size", "64x64", "--frames", "17", "--seed", "7"].map(String::from));
        let at = args.iter().position(|a| a == "--noise").unwrap();
        args.drain(at..at + 2);
        args.extend(extra.iter().map(|s| s.to_string()));
        let run = run_vdit(&args, &dir.path().join("cache"));
        assert!(
            run.status.success(),
            "{name}:\n{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let sidecar: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(vdit_pipeline::ownership::sidecar_path(&out)).unwrap(),
        )
        .unwrap();
        let density = sidecar["effective_density"].as_f64().unwrap();
        println!("{name}: effective density {density:.3}");
        if name == "rf08" {
            assert!(density < 1.0, "{name}: nothing was skipped ({density})");
        }
        let t = candle_core::safetensors::load(&latents_path, &Device::Cpu).unwrap();
        latents.push(
            t["latents"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
    }
    assert_eq!(
        latents[0], latents[1],
        "sparsity 0 must give exactly the dense output"
    );
}

#[test]
fn bf16_run_stays_within_bf16_tolerance_of_diffusers_f32() {
    let dir = tempfile::tempdir().unwrap();
    let latents_path = dir.path().join("bf16.safetensors");
    let mut args = reference_flags(&dir.path().join("bf16.gif"));
    // Later flags override earlier ones.
    args.extend(["--dtype", "bf16", "--latents-out"].map(String::from));
    args.push(latents_path.display().to_string());
    let run = run_vdit(&args, &dir.path().join("cache"));
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let latents = candle_core::safetensors::load(&latents_path, &Device::Cpu).unwrap();
    let err = relative_error(&latents["latents"], &reference()["final_latents"]);
    println!("bf16 final latents: rel err {err:.2e}");
    assert!(err <= 2e-2, "bf16 latents rel err {err}");
    // And it is a bf16 run, not a silent f32 one.
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("bf16.gif.json")).unwrap())
            .unwrap();
    assert_eq!(sidecar["settings"]["dtype"], "bf16");
    assert!(err > 1e-5, "suspiciously exact for bf16: {err}");
}

#[test]
fn noise_of_the_wrong_shape_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = reference_flags(&dir.path().join("x.gif"));
    args.extend(["--width", "64", "--height", "64"].map(String::from));
    let run = run_vdit(&args, &dir.path().join("cache"));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--noise")
            && stderr.contains("[1, 16, 3, 4, 6]")
            && stderr.contains("[1, 16, 3, 8, 8]"),
        "{stderr}"
    );
    assert!(!dir.path().join("x.gif").exists());
}
