//! The three stages called from Rust on the tiny Wan2.2 models of tests/fixtures/wan22_two_expert
//! and tests/fixtures/wan22_ti2v (scripts/reference/gen_wan22_pipelines.py) against diffusers'
//! WanPipeline in f32: prompt embeddings, final latents and the decoded video (floats, before
//! any 8-bit rounding), each within 1e-4. The families are found from the model folders
//! (model_index.json), as for any directory outside the registry.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use vdit_pipeline::options::{DTypeChoice, DeviceChoice};
use vdit_pipeline::registry::Registry;
use vdit_pipeline::sampling::SamplerKind;
use vdit_pipeline::settings::{resolve, GenerateOptions};
use vdit_pipeline::stages::{decode_latents, encode_prompts, sample_latents};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// The settings diffusers was run with (reference.json).
fn reference_options(name: &str, out: &Path) -> GenerateOptions {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(name).join("reference.json")).unwrap(),
    )
    .unwrap();
    let number = |k: &str| json[k].as_f64().unwrap();
    let mut options = GenerateOptions::new(json["prompt"].as_str().unwrap());
    options.negative_prompt = Some(json["negative_prompt"].as_str().unwrap().into());
    options.model = Some(fixture(name).join("model").display().to_string());
    options.width = Some(number("width") as u32);
    options.height = Some(number("height") as u32);
    options.frames = Some(number("num_frames") as u32);
    options.steps = Some(number("num_inference_steps") as usize);
    options.guidance_scale = Some(number("guidance_scale"));
    options.guidance_scale_2 = json["guidance_scale_2"].as_f64();
    options.shift = Some(number("flow_shift"));
    options.sampler = Some(SamplerKind::Unipc);
    options.dtype = DTypeChoice::F32;
    options.device = DeviceChoice::Cpu;
    options.noise = Some(fixture(name).join("reference.safetensors"));
    options.output = Some(out.to_path_buf());
    options
}

fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    rainfusion::reference::relative_error(a, b).unwrap()
}

/// Every stage of fixture `name` against diffusers; returns the family name the folder gave.
fn check_stages(name: &str) -> &'static str {
    let dir = tempfile::tempdir().unwrap();
    let options = reference_options(name, &dir.path().join("out.mp4"));
    let (settings, files) = resolve(&options, &Registry::embedded()).unwrap();
    let reference =
        candle_core::safetensors::load(fixture(name).join("reference.safetensors"), &Device::Cpu)
            .unwrap();
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
    let sampled = sample_latents(&settings, &files, &device, &text, None).unwrap();
    let latent_err = relative_error(&sampled.latents, &reference["final_latents"]);
    let video = decode_latents(&settings, &files, &device, &sampled.latents).unwrap();
    // diffusers' `pt` output is [1, T, 3, H, W] in [0, 1]; ours [1, 3, T, H, W] in [-1, 1].
    let expected =
        ((reference["video"].permute((0, 2, 1, 3, 4)).unwrap() * 2.0).unwrap() - 1.0).unwrap();
    let video_err = relative_error(&video, &expected);
    println!(
        "{name} ({}): prompt embeddings {cond_err:.2e} / {uncond_err:.2e}, final latents {latent_err:.2e}, decoded video {video_err:.2e}",
        settings.family.name
    );
    assert!(cond_err <= 1e-4 && uncond_err <= 1e-4);
    assert!(latent_err <= 1e-4, "latents {latent_err}");
    assert!(video_err <= 1e-4, "video {video_err}");
    settings.family.name
}

#[test]
fn two_expert_stages_match_diffusers_in_f32() {
    assert_eq!(check_stages("wan22_two_expert"), "wan2.2-t2v-a14b");
}

#[test]
fn ti2v_stages_match_diffusers_in_f32() {
    assert_eq!(check_stages("wan22_ti2v"), "wan2.2-ti2v-5b");
}

/// The two-expert settings: the boundary from model_index.json and each expert's guidance.
#[test]
fn two_expert_settings_come_from_the_model_folder() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = reference_options("wan22_two_expert", &dir.path().join("out.mp4"));
    options.guidance_scale_2 = None;
    let (settings, _) = resolve(&options, &Registry::embedded()).unwrap();
    assert_eq!(settings.boundary_ratio, Some(0.875));
    // No --guidance-scale-2 and no registry entry: the family's 3.0.
    assert_eq!(settings.expert_guidance_scales(), vec![4.0, 3.0]);
    let ranges = settings.expert_timesteps();
    assert!(ranges[0].contains(875.0) && !ranges[1].contains(875.0));
    assert!(ranges[1].contains(874.9) && !ranges[0].contains(874.9));
}

/// The boundary in the model folder's model_index.json decides which expert samples each step:
/// a copy of the fixture with `boundary_ratio` 0.95 (the high-noise expert takes 3 of the 6
/// steps instead of 4) samples other latents than the original's 0.875 from the same noise.
#[test]
fn the_model_folders_boundary_moves_the_expert_switch() {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&fixture("wan22_two_expert").join("model"), copy.path());
    let index_path = copy.path().join("model_index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    index["boundary_ratio"] = serde_json::json!(0.95);
    std::fs::write(&index_path, serde_json::to_string(&index).unwrap()).unwrap();

    let out = tempfile::tempdir().unwrap();
    let sample = |model: &Path| {
        let mut options = reference_options("wan22_two_expert", &out.path().join("out.mp4"));
        options.model = Some(model.display().to_string());
        let (settings, files) = resolve(&options, &Registry::embedded()).unwrap();
        let text = encode_prompts(&settings, &files, &Device::Cpu).unwrap();
        let latents = sample_latents(&settings, &files, &Device::Cpu, &text, None)
            .unwrap()
            .latents;
        (settings.boundary_ratio, latents)
    };
    let (boundary, original) = sample(&fixture("wan22_two_expert").join("model"));
    let (moved_boundary, moved) = sample(copy.path());
    assert_eq!((boundary, moved_boundary), (Some(0.875), Some(0.95)));
    let difference = relative_error(&moved, &original);
    assert!(
        difference > 1e-4,
        "boundary 0.95 sampled the same latents as 0.875 (relative difference {difference:.2e})"
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
