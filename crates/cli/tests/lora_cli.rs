//! `vdit generate` with a LoRA and a distilled 4-step schedule against diffusers' WanPipeline
//! with `load_lora_weights` (tests/fixtures/lora, made by scripts/reference/gen_lora_pipeline.py
//! on the tiny model of tests/fixtures/tiny_pipeline): lightx2v's form of LoRA, step list
//! [1000, 750, 500, 250] at shift 5, Euler, guidance 1 (one pass per step); and the errors of
//! the LoRA flags.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use vdit_pipeline::video::read_video;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn reference() -> std::collections::HashMap<String, Tensor> {
    let path = fixtures().join("lora/tiny_pipeline_reference.safetensors");
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// The flags of diffusers' run (see the generator), writing to `out`.
fn flags(out: &Path) -> Vec<String> {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny_pipeline/reference.json")).unwrap(),
    )
    .unwrap();
    let get = |k: &str| json[k].to_string();
    let lora = fixtures().join("lora/tiny_pipeline_lightx2v.safetensors");
    [
        "generate",
        "-p",
        json["prompt"].as_str().unwrap(),
        "--model",
        &fixtures().join("tiny_pipeline/model").display().to_string(),
        "--width",
        &get("width"),
        "--height",
        &get("height"),
        "--frames",
        &get("num_frames"),
        "--timesteps",
        "1000,750,500,250",
        "--shift",
        "5",
        "--sampler",
        "euler",
        "--guidance-scale",
        "1",
        "--lora",
        &lora.display().to_string(),
        "--dtype",
        "f32",
        "--device",
        "cpu",
        "--seed",
        "1",
        "--noise",
        &fixtures()
            .join("lora/tiny_pipeline_reference.safetensors")
            .display()
            .to_string(),
        "-o",
        &out.display().to_string(),
    ]
    .map(String::from)
    .to_vec()
}

fn run_vdit(args: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vdit"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("VDIT_MODELS_DIR")
        .output()
        .unwrap()
}

#[test]
fn a_lora_with_four_distilled_steps_matches_diffusers_end_to_end() {
    let reference = reference();
    let dir = tempfile::tempdir().unwrap();
    for mode in ["merge", "runtime"] {
        let out = dir.path().join(format!("{mode}.png"));
        let latents = dir.path().join(format!("{mode}.safetensors"));
        let mut args = flags(&out);
        args.extend(["--lora-mode", mode, "--latents-out"].map(String::from));
        args.push(latents.display().to_string());
        let run = run_vdit(&args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{mode}: {stderr}");
        assert!(
            stderr.contains("lora ") && stderr.contains("4 steps at t = [1000.0, 750.0"),
            "{stderr}"
        );

        let ours = candle_core::safetensors::load(&latents, &Device::Cpu).unwrap();
        let err =
            rainfusion::reference::relative_error(&ours["latents"], &reference["final_latents"])
                .unwrap();
        assert!(err <= 1e-4, "{mode}: latents relative error {err:e}");

        // The frames: diffusers' [1, T, 3, H, W] in [0, 1] against our 8-bit PNGs.
        let video = read_video(&out).unwrap().video;
        let expected = reference["video"].squeeze(0).unwrap(); // [T, 3, H, W]
        let (t, _, h, w) = expected.dims4().unwrap();
        assert_eq!(
            (
                video.frames.len(),
                video.height as usize,
                video.width as usize
            ),
            (t, h, w)
        );
        let expected: Vec<f32> = expected
            .permute((0, 2, 3, 1))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let ours: Vec<u8> = video.frames.concat();
        let worst = ours
            .iter()
            .zip(&expected)
            .map(|(&a, &b)| (a as f32 / 255.0 - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= 1.0 / 255.0,
            "{mode}: worst pixel difference {worst}"
        );
        eprintln!(
            "{mode}: latents relative error {err:.2e}, worst pixel {:.2} levels",
            worst * 255.0
        );

        let sidecar: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(vdit_pipeline::ownership::sidecar_path(&out)).unwrap(),
        )
        .unwrap();
        let settings = &sidecar["settings"];
        assert_eq!(
            settings["timesteps"],
            serde_json::json!([1000.0, 750.0, 500.0, 250.0])
        );
        assert_eq!(settings["lora"]["mode"], mode);
        assert_eq!(settings["lora"]["first"][0]["strength"], 1.0);
    }
}

#[test]
fn lora_flag_mistakes_get_one_line_each_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = flags(&dir.path().join("x.mp4"));
    args.extend(
        [
            "--lora",
            "missing.safetensors:0.5",
            "--lora-2",
            "other.safetensors",
            "--sampler",
            "unipc",
        ]
        .map(String::from),
    );
    let run = run_vdit(&args);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    for expected in [
        "--lora missing.safetensors: no such file",
        "--lora-2: model",
        "--timesteps needs --sampler euler or lcm",
    ] {
        assert!(stderr.contains(expected), "{expected:?} not in:\n{stderr}");
    }
    assert!(!stderr.contains("sampling"), "{stderr}");

    let bad = run_vdit(&["generate", "-p", "x", "--lora", "a.safetensors:nan"].map(String::from));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && stderr.contains("not a finite number"),
        "{stderr}"
    );
}

#[test]
fn a_lora_for_another_model_fails_before_the_first_step() {
    let dir = tempfile::tempdir().unwrap();
    // A LoRA of the larger fixture transformer: shapes that do not fit the tiny model.
    let mut args = flags(&dir.path().join("x.mp4"));
    let at = args.iter().position(|a| a == "--lora").unwrap();
    args[at + 1] = fixtures()
        .join("lora/peft.safetensors")
        .display()
        .to_string();
    let run = run_vdit(&args);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains("another model size"), "{stderr}");
    // Found by the checks before the prompt is encoded, not when the transformer loads.
    assert!(!stderr.contains("encode "), "{stderr}");
    assert!(!dir.path().join("x.mp4").exists());
}

/// A recipe entry (a registry TOML naming a LoRA on the hub, a step list, a sampler and guidance)
/// resolves its LoRA from the hub cache and runs as the flags would: the same latents as diffusers.
#[test]
fn a_recipe_entry_applies_its_hub_lora_and_sampling_settings() {
    let dir = tempfile::tempdir().unwrap();
    // A hub cache holding the LoRA as if downloaded: models--owner--name/{refs/main, snapshots/<rev>/file}.
    let cache = dir.path().join("cache");
    let repo = cache.join("models--someone--tiny-distill");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    std::fs::create_dir_all(repo.join("snapshots/0123abcd")).unwrap();
    std::fs::copy(
        fixtures().join("lora/tiny_pipeline_lightx2v.safetensors"),
        repo.join("snapshots/0123abcd/distill.safetensors"),
    )
    .unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::write(
        models.join("tiny-4step.toml"),
        format!(
            "name = \"tiny-4step\"\npath = \"{}\"\n[defaults]\nwidth = 48\nheight = 32\nframes = 9\n\
             timesteps = [1000, 750, 500, 250]\nshift = 5.0\nguidance_scale = 1.0\nsampler = \"euler\"\n\
             [[lora]]\nhub_id = \"someone/tiny-distill\"\nfile = \"distill.safetensors\"\n",
            fixtures().join("tiny_pipeline/model").display()
        ),
    )
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny_pipeline/reference.json")).unwrap(),
    )
    .unwrap();
    let latents = dir.path().join("latents.safetensors");
    let run = Command::new(env!("CARGO_BIN_EXE_vdit"))
        .args([
            "generate",
            "-p",
            json["prompt"].as_str().unwrap(),
            "-m",
            "tiny-4step",
        ])
        .args(["--dtype", "f32", "--device", "cpu", "--noise"])
        .arg(fixtures().join("lora/tiny_pipeline_reference.safetensors"))
        .arg("--latents-out")
        .arg(&latents)
        .arg("-o")
        .arg(dir.path().join("clip.gif"))
        .env("VDIT_MODELS_DIR", &models)
        .env("HF_HUB_CACHE", &cache)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("distill.safetensors"), "{stderr}");
    let ours = candle_core::safetensors::load(&latents, &Device::Cpu).unwrap();
    let err =
        rainfusion::reference::relative_error(&ours["latents"], &reference()["final_latents"])
            .unwrap();
    assert!(err <= 1e-4, "latents relative error {err:e}");
}

/// Wan2.2's two experts each take their own LoRA (`--lora` the high-noise one, `--lora-2` the
/// low-noise one), as diffusers' `load_lora_weights(load_into_transformer_2=True)` does.
#[test]
fn each_expert_takes_its_own_lora_like_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let reference = candle_core::safetensors::load(
        fixtures().join("lora/two_expert_reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("wan22_two_expert/reference.json")).unwrap(),
    )
    .unwrap();
    let run = |high: &str, low: &str, name: &str| -> Tensor {
        let latents = dir.path().join(format!("{name}.safetensors"));
        let out = Command::new(env!("CARGO_BIN_EXE_vdit"))
            .args(["generate", "-p", json["prompt"].as_str().unwrap(), "-m"])
            .arg(fixtures().join("wan22_two_expert/model"))
            .args(["--width", "48", "--height", "32", "--frames", "9"])
            .args([
                "--timesteps",
                "1000,750,500,250",
                "--shift",
                "5",
                "--sampler",
                "euler",
            ])
            .args(["--guidance-scale", "1", "--guidance-scale-2", "1"])
            .args(["--dtype", "f32", "--device", "cpu", "--seed", "1", "--lora"])
            .arg(fixtures().join(format!("lora/{high}.safetensors")))
            .arg("--lora-2")
            .arg(fixtures().join(format!("lora/{low}.safetensors")))
            .arg("--noise")
            .arg(fixtures().join("lora/two_expert_reference.safetensors"))
            .arg("--latents-out")
            .arg(&latents)
            .arg("-o")
            .arg(dir.path().join(format!("{name}.gif")))
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("VDIT_MODELS_DIR")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        candle_core::safetensors::load(&latents, &Device::Cpu).unwrap()["latents"].clone()
    };
    let ours = run("two_expert_high", "two_expert_low", "right");
    let err = rainfusion::reference::relative_error(&ours, &reference["final_latents"]).unwrap();
    eprintln!("two experts: latents relative error {err:.2e}");
    assert!(err <= 1e-4, "latents relative error {err:e}");
    // Swapped, each expert gets the other's LoRA: another video.
    let swapped = run("two_expert_low", "two_expert_high", "swapped");
    let apart =
        rainfusion::reference::relative_error(&swapped, &reference["final_latents"]).unwrap();
    assert!(
        apart > 1e-2,
        "swapping the experts' LoRAs changed nothing ({apart:e})"
    );
}
