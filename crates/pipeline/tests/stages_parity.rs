//! The three stages called from Rust against diffusers' WanPipeline on the tiny random-weight
//! model of tests/fixtures/tiny_pipeline (scripts/reference/gen_tiny_pipeline.py): the model
//! resolved as users resolve it, the same noise, 4 UniPC steps with CFG 5, shift 3, f32.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use vdit_pipeline::options::{DTypeChoice, DeviceChoice};
use vdit_pipeline::registry::Registry;
use vdit_pipeline::sampling::SamplerKind;
use vdit_pipeline::settings::{resolve, GenerateOptions};
use vdit_pipeline::stages::{decode_latents, encode_prompts, sample_latents};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny_pipeline")
}

fn reference() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join("reference.safetensors"), &Device::Cpu).unwrap()
}

/// The prompt, negative prompt and sizes diffusers was run with (reference.json).
fn reference_options(out: &Path) -> GenerateOptions {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("reference.json")).unwrap())
            .unwrap();
    let number = |k: &str| json[k].as_f64().unwrap();
    let mut options = GenerateOptions::new(json["prompt"].as_str().unwrap());
    options.negative_prompt = Some(json["negative_prompt"].as_str().unwrap().into());
    options.model = Some(fixture().join("model").display().to_string());
    options.width = Some(number("width") as u32);
    options.height = Some(number("height") as u32);
    options.frames = Some(number("num_frames") as u32);
    options.steps = Some(number("num_inference_steps") as usize);
    options.guidance_scale = Some(number("guidance_scale"));
    options.shift = Some(number("flow_shift"));
    options.sampler = Some(SamplerKind::Unipc);
    options.dtype = DTypeChoice::F32;
    options.device = DeviceChoice::Cpu;
    options.noise = Some(fixture().join("reference.safetensors"));
    options.output = Some(out.to_path_buf());
    options
}

/// ‖a − b‖ / ‖b‖.
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    rainfusion::reference::relative_error(a, b).unwrap()
}

#[test]
fn every_stage_matches_diffusers_in_f32() {
    let dir = tempfile::tempdir().unwrap();
    let options = reference_options(&dir.path().join("out.mp4"));
    let (settings, files) = resolve(&options, &Registry::embedded()).unwrap();
    let reference = reference();
    let device = Device::Cpu;

    let text = encode_prompts(&settings, &files, &device).unwrap();
    let cond_err = relative_error(
        text.cond.single_states().unwrap(),
        &reference["prompt_embeds"],
    );
    let uncond_err = relative_error(
        text.uncond.as_ref().unwrap().single_states().unwrap(),
        &reference["negative_prompt_embeds"],
    );
    println!("prompt embeddings: rel err {cond_err:.2e} (cond), {uncond_err:.2e} (uncond)");
    assert!(cond_err <= 1e-4 && uncond_err <= 1e-4);

    let sampled = sample_latents(&settings, &files, &device, &text, None).unwrap();
    let latent_err = relative_error(&sampled.latents, &reference["final_latents"]);
    println!("final latents: rel err {latent_err:.2e}");
    assert!(latent_err <= 1e-4);
    assert_eq!(sampled.effective_density, 1.0);

    let video = decode_latents(&settings, &files, &device, &sampled.latents).unwrap();
    // diffusers' `pt` output is [1, T, 3, H, W] in [0, 1]; ours [1, 3, T, H, W] in [-1, 1].
    let expected =
        ((reference["video"].permute((0, 2, 1, 3, 4)).unwrap() * 2.0).unwrap() - 1.0).unwrap();
    let video_err = relative_error(&video, &expected);
    println!("decoded video: rel err {video_err:.2e}");
    assert!(video_err <= 1e-4);
}
