//! `vdit generate` on HunyuanVideo 1.5 text-to-video against diffusers' `HunyuanVideo15Pipeline`
//! (scripts/reference/gen_hunyuan15_pipeline.py): tests/fixtures/hunyuan15_pipeline/model is a
//! tiny random-weight pipeline folder (Qwen2.5-VL + ByT5 text encoders, patch-1 transformer,
//! ×16 VAE, FlowMatchEuler scheduler at shift 7, guider at scale 4.5). From the saved noise, 4
//! steps: the final latents must match diffusers' at f32 relative error ≤ 1e-4, for a prompt
//! without quoted text (the glyph stream all padding, the default negative prompt "") and one
//! quoting two texts (with a negative prompt). The family is found from model_index.json, the
//! shift from the scheduler's config, the guidance from the guider's and the Euler sampler on
//! σ = 1 − k/N from the family: only the size, frames, steps and prompts are passed.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hunyuan15_pipeline")
}

fn reference_json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("reference.json")).unwrap())
        .unwrap()
}

/// The flags of diffusers' run of `case`, writing `out` (and the final latents to `latents`
/// when given).
fn flags(case: &str, out: &Path, latents: Option<&Path>) -> Vec<String> {
    let json = reference_json();
    let get = |k: &str| json[k].to_string();
    let texts = &json["cases"][case];
    let mut args: Vec<String> = vec![
        "generate".into(),
        "-p".into(),
        texts["prompt"].as_str().unwrap().into(),
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
    ];
    if let Some(negative) = texts["negative_prompt"].as_str() {
        args.extend(["-n".into(), negative.into()]);
    }
    if let Some(latents) = latents {
        args.extend(["--latents-out".into(), latents.display().to_string()]);
    }
    args
}

/// [`flags`] of `case` writing `out`, from seed 7 instead of diffusers' noise.
fn seeded_flags(case: &str, out: &Path) -> Vec<String> {
    let mut args = flags(case, out, None);
    let at = args.iter().position(|a| a == "--noise").unwrap();
    args.drain(at..at + 2);
    args.extend(["--seed".into(), "7".into()]);
    args
}

/// Runs `case`; returns vdit's final latents and its stderr.
fn final_latents(case: &str, dir: &Path, extra: &[&str]) -> (Tensor, String) {
    let latents_path = dir.join(format!("{case}.safetensors"));
    let mut args = flags(case, &dir.join(format!("{case}.mp4")), Some(&latents_path));
    if extra.contains(&"--dtype") {
        let at = args.iter().position(|a| a == "--dtype").unwrap();
        args.drain(at..at + 2);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let run = common::vdit(&args, &dir.join("cache"));
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(run.status.success(), "{case}:\n{stderr}");
    let latents = candle_core::safetensors::load(&latents_path, &Device::Cpu).unwrap();
    (latents["latents"].clone(), stderr)
}

fn reference(name: &str) -> Tensor {
    candle_core::safetensors::load(fixture().join("reference.safetensors"), &Device::Cpu).unwrap()
        [name]
        .clone()
}

/// ‖a − b‖ / ‖b‖.
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    rainfusion::reference::relative_error(a, b).unwrap()
}

#[test]
fn final_latents_match_diffusers_in_f32() {
    let dir = tempfile::tempdir().unwrap();
    let mut results = Vec::new();
    for case in ["plain", "glyph"] {
        let (latents, stderr) = final_latents(case, dir.path(), &[]);
        let expected = reference(&format!("final_latents_{case}"));
        let err = relative_error(&latents, &expected);
        println!("HunyuanVideo 1.5 {case}: final latents rel err {err:.2e} vs diffusers");
        assert!(err <= 1e-4, "{case}: rel err {err}\n{stderr}");
        // The family's sampler and the model's own scheduler shift and guider scale were used.
        assert!(
            stderr.contains("4 steps, euler, shift 7, guidance 4.5"),
            "{stderr}"
        );
        results.push(latents);
    }
    // The two prompts lead to different videos (the comparison above can tell them apart).
    let apart = relative_error(&results[0], &reference("final_latents_glyph"));
    assert!(apart > 1e-2, "plain vs glyph reference: {apart}");
}

/// bf16 against diffusers' f32 run with the timesteps rounded to bf16, as both pipelines cast
/// the timestep to the transformer's dtype (954.5 → 956 here; on this tiny random model that
/// alone moves diffusers' result 1.2e-1). Also printed: the distance to diffusers' run of the
/// whole pipeline in bf16, which rounds other intermediates than vdit (it keeps the latents and
/// the residual streams in bf16, vdit in f32).
#[test]
fn bf16_stays_within_bf16_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let (latents, _) = final_latents("glyph", dir.path(), &["--dtype", "bf16"]);
    let err = relative_error(&latents, &reference("final_latents_glyph_bf16_timesteps"));
    let bf16 = relative_error(&latents, &reference("final_latents_glyph_bf16"));
    println!(
        "bf16: final latents rel err {err:.2e} vs diffusers f32 with bf16 timesteps ({bf16:.2e} vs diffusers' bf16 run)"
    );
    assert!(err <= 2e-2, "rel err {err}");
}

/// Guidance matters: another scale moves the result away from diffusers' (so the match above
/// cannot come from an unguided run).
#[test]
fn another_guidance_scale_changes_the_latents() {
    let dir = tempfile::tempdir().unwrap();
    let (latents, _) = final_latents("glyph", dir.path(), &["--guidance-scale", "1.5"]);
    let err = relative_error(&latents, &reference("final_latents_glyph"));
    println!("guidance 1.5 instead of the guider's 4.5: rel err {err:.2e}");
    assert!(err > 1e-3, "{err}");
}

/// An ordinary run (seeded noise, no latents file) writes an mp4 of the requested size and
/// frame count through the HunyuanVideo VAE, and its sidecar.
#[test]
fn generate_writes_an_mp4() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clip.mp4");
    let mut args = seeded_flags("plain", &out);
    args.extend(["--steps".into(), "2".into()]);
    let run = common::vdit(&args, &dir.path().join("cache"));
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(run.status.success(), "{stderr}");
    let video = vdit_pipeline::video::read_video(&out).unwrap();
    let json = reference_json();
    assert_eq!(
        video.video.frames.len() as u64,
        json["num_frames"].as_u64().unwrap()
    );
    assert_eq!(
        (video.video.width as u64, video.video.height as u64),
        (
            json["width"].as_u64().unwrap(),
            json["height"].as_u64().unwrap()
        )
    );
    assert!(vdit_pipeline::ownership::sidecar_path(&out).is_file());
}

/// RainFusion runs each block's joint attention: at sparsity 0 the run is the dense one exactly
/// (the two samples of the guidance batch have different text lengths: the padded joint path),
/// and at 0.75 in blocks of 16 it skips blocks and stays near it; RainFusion 1.0's head
/// patterns are refused with one line.
#[test]
fn rainfusion_runs_the_joint_attention_and_v1_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (dense, _) = final_latents("glyph", dir.path(), &[]);
    let rf = [
        "--attention",
        "rainfusion",
        "--block-size",
        "16",
        "--dense-steps",
        "1",
    ];
    let (none_skipped, _) = final_latents(
        "glyph",
        dir.path(),
        &[&rf[..], &["--sparsity", "0"]].concat(),
    );
    assert_eq!(relative_error(&none_skipped, &dense), 0.0);
    let (sparse, stderr) = final_latents(
        "glyph",
        dir.path(),
        &[&rf[..], &["--sparsity", "0.75"]].concat(),
    );
    let err = relative_error(&sparse, &dense);
    println!("RainFusion 0.75 (blocks of 16, one dense step): final latents {err:.2e} from dense");
    assert!(err > 0.0 && err < 0.5, "{err}\n{stderr}");

    let mut args = flags("plain", &dir.path().join("clip.mp4"), None);
    args.extend(["--attention".into(), "rainfusion-v1".into()]);
    let run = common::vdit(&args, &dir.path().join("cache"));
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(!run.status.success());
    assert!(stderr.contains("--attention rainfusion-v1"), "{stderr}");
}

/// `--offload blocks` streams the dual-stream blocks from host memory: the same final latents
/// bit for bit, and the settings say so.
#[test]
fn offload_blocks_streams_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (resident, _) = final_latents("plain", dir.path(), &[]);
    let (streamed, stderr) = final_latents("plain", dir.path(), &["--offload", "blocks"]);
    assert_eq!(relative_error(&streamed, &resident), 0.0);
    assert!(stderr.contains("offload      blocks"), "{stderr}");
}

/// `vdit compare` runs on the HunyuanVideo family: its dense clip is `vdit generate`'s clip of
/// the same seed frame for frame (the same networks and sampler, loaded once), and a sparse
/// setting skips blocks of the joint attention and is reported against it.
#[test]
fn compare_runs_hunyuan_and_its_baseline_is_generate() {
    let dir = tempfile::tempdir().unwrap();
    let report_dir = dir.path().join("report");
    let mut args = seeded_flags("glyph", &report_dir);
    args[0] = "compare".into();
    args.extend(
        [
            "--steps",
            "3",
            "--sparsities",
            "0.75",
            "--block-size",
            "16",
            "--dense-steps",
            "1",
        ]
        .map(String::from),
    );
    let run = common::vdit(&args, &dir.path().join("cache"));
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(run.status.success(), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("compare.json")).unwrap())
            .unwrap();
    let runs = report["runs"].as_array().unwrap();
    let labels: Vec<&str> = runs.iter().map(|r| r["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["dense", "rainfusion 0.75"]);
    let density = runs[1]["effective_density"].as_f64().unwrap();
    assert!(density > 0.0 && density < 1.0, "{density}\n{stderr}");
    assert!(runs[1]["vs_baseline"]["latent_cosine"].as_f64().unwrap() > 0.5);

    let generated = dir.path().join("generated.mp4");
    let mut args = seeded_flags("glyph", &generated);
    args.extend(["--steps".into(), "3".into()]);
    let run = common::vdit(&args, &dir.path().join("cache"));
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let a = vdit_pipeline::video::read_video(&report_dir.join("dense.mp4")).unwrap();
    let b = vdit_pipeline::video::read_video(&generated).unwrap();
    assert_eq!(a.video.frames.len(), b.video.frames.len());
    assert!(
        a.video.frames == b.video.frames,
        "compare's dense clip differs from generate's of the same seed"
    );
}

/// A HunyuanVideo 1.5 folder of another pipeline (image-to-video) is named as such, not taken
/// for a Wan model.
#[test]
fn other_hunyuan_pipelines_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_dir(&fixture().join("model"), &model);
    let index = model.join("model_index.json");
    let text = std::fs::read_to_string(&index).unwrap().replace(
        "\"HunyuanVideo15Pipeline\"",
        "\"HunyuanVideo15ImageToVideoPipeline\"",
    );
    std::fs::write(&index, text).unwrap();
    let mut args = flags("plain", &dir.path().join("clip.mp4"), None);
    let at = args.iter().position(|a| a == "--model").unwrap();
    args[at + 1] = model.display().to_string();
    let run = common::vdit(&args, &dir.path().join("cache"));
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(!run.status.success());
    assert!(
        stderr.contains("HunyuanVideo15ImageToVideoPipeline")
            && stderr.contains("text-to-video only"),
        "{stderr}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
