//! `vdit generate --image` against diffusers' `WanImageToVideoPipeline`
//! (scripts/reference/gen_i2v_pipelines.py), each from the same noise and input image:
//! - tests/fixtures/i2v_wan21: Wan2.1-I2V in small (CLIP image encoder, 36-channel transformer
//!   with image cross-attention), 4 UniPC steps at shift 3, guidance 5;
//! - tests/fixtures/i2v_flf2v: FLF2V (a first and a last image), 4 steps at shift 16;
//! - tests/fixtures/i2v_wan22: Wan2.2-I2V-A14B (two 36-channel experts, no CLIP, boundary 0.9),
//!   6 steps at shift 5 (3 per expert), guidance 3.5 / 2.0;
//! - tests/fixtures/i2v_ti2v: Wan2.2-TI2V-5B (tests/fixtures/wan22_ti2v/model) with an image:
//!   its latent as the first frame at t = 0.
//!
//! Each input image has the video's size, so neither side resamples it for the VAE; CLIP's
//! resize to 224 is PIL's bicubic, which vdit-models reproduces exactly. The final latents are
//! compared in f32 (≤ 1e-4), the decoded video (the saved latents decoded through the pipeline
//! API) in f32 (≤ 1e-4), and the PNG frames with diffusers' video rounded to 8 bits (at most
//! one level apart). Then the one-line errors and the sidecar's record of the images.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use vdit_pipeline::registry::Registry;
use vdit_pipeline::settings::{resolve, GenerateOptions};
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

/// The model folder a fixture runs (its own, or the one reference.json names).
fn model_of(name: &str) -> PathBuf {
    match reference_json(name)["model"].as_str() {
        Some(path) => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(path),
        None => fixture(name).join("model"),
    }
}

/// The input images of fixture `name`: `--image` and, when there is one, `--last-image`.
fn image_flags(name: &str) -> Vec<String> {
    let json = reference_json(name);
    let images: Vec<&str> = json["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut flags = vec!["--image".to_string(), path_of(name, images[0])];
    if let Some(last) = images.get(1) {
        flags.extend(["--last-image".to_string(), path_of(name, last)]);
    }
    flags
}

fn path_of(name: &str, file: &str) -> String {
    fixture(name).join(file).display().to_string()
}

/// The flags of diffusers' run of fixture `name`, writing `out` and the final latents to
/// `latents`.
fn reference_flags(name: &str, out: &Path, latents: &Path) -> Vec<String> {
    let json = reference_json(name);
    let get = |k: &str| json[k].to_string().trim_matches('"').to_string();
    let mut args: Vec<String> = vec![
        "generate".into(),
        "-p".into(),
        get("prompt"),
        "-n".into(),
        get("negative_prompt"),
        "--model".into(),
        model_of(name).display().to_string(),
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
        path_of(name, "reference.safetensors"),
        "-o".into(),
        out.display().to_string(),
        "--latents-out".into(),
        latents.display().to_string(),
    ];
    if json.get("guidance_scale_2").is_some() {
        args.extend(["--guidance-scale-2".into(), get("guidance_scale_2")]);
    }
    args.extend(image_flags(name));
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

/// Runs diffusers' settings of fixture `name` with `extra` flags: the final latents, the PNG
/// output and stderr.
fn generate(name: &str, dir: &Path, tag: &str, extra: &[&str]) -> (Tensor, PathBuf, String) {
    let out = dir.join(format!("{tag}.png"));
    let latents_path = dir.join(format!("{tag}.safetensors"));
    let mut args = reference_flags(name, &out, &latents_path);
    args.extend(extra.iter().map(|s| s.to_string()));
    let run = run_vdit(&args, &dir.join("cache"));
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(run.status.success(), "{tag}:\n{stderr}");
    let latents = candle_core::safetensors::load(&latents_path, &Device::Cpu).unwrap();
    (latents["latents"].clone(), out, stderr)
}

/// Largest difference, in 8-bit levels, between the PNG frames and diffusers' video
/// `[1, T, 3, H, W]` in [0, 1].
fn frame_levels(png: &Path, video: &Tensor) -> u8 {
    let read = read_video(png).unwrap();
    let (_, t, c, h, w) = video.dims5().unwrap();
    assert_eq!(read.video.frames.len(), t);
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
    let expected = (video.squeeze(0).unwrap() * 255.0)
        .unwrap()
        .round()
        .unwrap()
        / 255.0;
    let levels = (ours - expected.unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        * 255.0;
    levels.round() as u8
}

/// The saved `latents` decoded through the pipeline's own stage for fixture `name`'s settings:
/// `[1, T, 3, H, W]` in [0, 1] as diffusers post-processes it.
fn decoded_video(name: &str, latents: &Tensor, dir: &Path) -> Tensor {
    let json = reference_json(name);
    let mut options = GenerateOptions::new(json["prompt"].as_str().unwrap());
    options.model = Some(model_of(name).display().to_string());
    options.width = json["width"].as_u64().map(|v| v as u32);
    options.height = json["height"].as_u64().map(|v| v as u32);
    options.frames = json["num_frames"].as_u64().map(|v| v as u32);
    options.device = vdit_pipeline::options::DeviceChoice::Cpu;
    options.dtype = vdit_pipeline::options::DTypeChoice::F32;
    options.seed = Some(0);
    options.output = Some(dir.join("decode.mp4"));
    let flags = image_flags(name);
    options.image = Some(PathBuf::from(&flags[1]));
    options.last_image = flags.get(3).map(PathBuf::from);
    let (settings, files) = resolve(&options, &Registry::discover().unwrap()).unwrap();
    let video =
        vdit_pipeline::stages::decode_latents(&settings, &files, &Device::Cpu, latents).unwrap();
    // [1, 3, T, H, W] in [-1, 1] → [1, T, 3, H, W] in [0, 1]
    ((video.permute((0, 2, 1, 3, 4)).unwrap() / 2.0).unwrap() + 0.5)
        .unwrap()
        .clamp(0f32, 1f32)
        .unwrap()
}

/// One fixture end to end: latents and decoded video at f32 ≤ 1e-4, PNG frames ≤ 1 level.
fn check_parity(name: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let reference = reference(name);
    let (latents, png, stderr) = generate(name, dir.path(), "f32", &[]);
    let latents_err = relative_error(&latents, &reference["final_latents"]);
    let video_err = relative_error(
        &decoded_video(name, &latents, dir.path()),
        &reference["video"],
    );
    let levels = frame_levels(&png, &reference["video"]);
    println!(
        "{name} f32: final latents rel err {latents_err:.2e}, decoded video rel err {video_err:.2e}, PNG frames {levels} level(s) off diffusers' 8-bit video"
    );
    assert!(latents_err <= 1e-4, "{name}: latents rel err {latents_err}");
    assert!(video_err <= 1e-4, "{name}: video rel err {video_err}");
    assert!(levels <= 1, "{name}: frames {levels} levels off");
    // The sidecar records the input images and their hashes.
    let sidecar: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(vdit_pipeline::ownership::sidecar_path(&png)).unwrap(),
    )
    .unwrap();
    let image = &sidecar["settings"]["image"];
    assert!(
        image["path"].as_str().unwrap().ends_with("image.png"),
        "{sidecar}"
    );
    assert_eq!(image["sha256"].as_str().unwrap().len(), 64);
    stderr
}

#[test]
fn wan21_i2v_matches_diffusers_in_f32() {
    let stderr = check_parity("i2v_wan21");
    assert!(stderr.contains("image encoder"), "{stderr}");
}

/// bf16 (the transformer, the VAE encoder and CLIP in bf16) stays within the bf16 bound.
#[test]
fn wan21_i2v_bf16_stays_within_bf16_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let (latents, _, _) = generate("i2v_wan21", dir.path(), "bf16", &["--dtype", "bf16"]);
    let err = relative_error(&latents, &reference("i2v_wan21")["final_latents"]);
    println!("i2v_wan21 bf16: final latents rel err {err:.2e}");
    assert!(err <= 2e-2 && err > 1e-5, "{err}");
}

#[test]
fn flf2v_matches_diffusers_in_f32() {
    check_parity("i2v_flf2v");
}

#[test]
fn wan22_i2v_two_experts_match_diffusers_in_f32() {
    let stderr = check_parity("i2v_wan22");
    assert!(
        stderr.contains("guidance 3.5 (high noise, t ≥ 900) / 2 (low noise)"),
        "{stderr}"
    );
}

#[test]
fn ti2v_with_an_image_matches_diffusers_in_f32() {
    check_parity("i2v_ti2v");
}

/// The image matters: another image changes the result (so the parity above cannot come from a
/// run that ignored it), and TI2V's first latent frame is the image's latent.
#[test]
fn the_image_conditions_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let wan21 = reference("i2v_wan21");
    let other = path_of("i2v_flf2v", "last_image.png");
    let (latents, _, _) = generate("i2v_wan21", dir.path(), "other", &["--image", &other]);
    let err = relative_error(&latents, &wan21["final_latents"]);
    println!("Wan2.1 I2V with another image: rel err {err:.2e}");
    assert!(err > 1e-3, "{err}");

    let ti2v = reference("i2v_ti2v");
    let (latents, _, _) = generate("i2v_ti2v", dir.path(), "ti2v", &[]);
    let first = latents.narrow(2, 0, 1).unwrap();
    let err = relative_error(&first, &ti2v["condition"]);
    assert!(
        err <= 1e-5,
        "first latent frame vs the image's latent: {err}"
    );
}

/// `vdit compare` conditions every run on the image, encoded once.
#[test]
fn compare_takes_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let flags = reference_flags(
        "i2v_wan21",
        &dir.path().join("x.png"),
        &dir.path().join("x"),
    );
    // generate's flags without -o, --latents-out and --noise (compare samples from the seed).
    let mut args = vec!["compare".to_string()];
    let mut skip = 0;
    for flag in flags.iter().skip(1) {
        if skip > 0 {
            skip -= 1;
            continue;
        }
        if ["-o", "--latents-out", "--noise"].contains(&flag.as_str()) {
            skip = 1;
            continue;
        }
        args.push(flag.clone());
    }
    args.extend(
        [
            "-o",
            out.to_str().unwrap(),
            "--sparsities",
            "0.5",
            "--timing-rounds",
            "1",
            "--seed",
            "3",
        ]
        .map(String::from),
    );
    let run = run_vdit(&args, &dir.path().join("cache"));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    assert!(report["settings"]["image"]["path"]
        .as_str()
        .unwrap()
        .ends_with("image.png"));
}

/// Runs `args` expecting a usage error; returns its stderr, which has one error line.
fn expect_error(args: &[String], dir: &Path) -> String {
    let run = run_vdit(args, &dir.join("cache"));
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(!run.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "one error line:\n{stderr}");
    assert!(
        !dir.join("err.png").exists(),
        "nothing is written after an error"
    );
    stderr
}

#[test]
fn image_mistakes_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let flags = |name: &str| {
        reference_flags(
            name,
            &dir.path().join("err.png"),
            &dir.path().join("err.safetensors"),
        )
    };
    let without = |args: Vec<String>, flag: &str| -> Vec<String> {
        let at = args.iter().position(|a| a == flag).unwrap();
        args.iter()
            .enumerate()
            .filter(|(i, _)| *i != at && *i != at + 1)
            .map(|(_, a)| a.clone())
            .collect()
    };

    // An image-to-video model without its image.
    let stderr = expect_error(&without(flags("i2v_wan21"), "--image"), dir.path());
    assert!(
        stderr.contains("is image-to-video") && stderr.contains("--image PATH"),
        "{stderr}"
    );
    // FLF2V without its last frame.
    let stderr = expect_error(&without(flags("i2v_flf2v"), "--last-image"), dir.path());
    assert!(stderr.contains("--last-image PATH"), "{stderr}");
    // A last frame for a model that has none (reported once, not also read).
    let mut args = flags("i2v_wan21");
    args.extend(["--last-image".into(), "no/such/last.webp".into()]);
    let stderr = expect_error(&args, dir.path());
    assert!(
        stderr.contains("--last-image: model") && stderr.contains("takes no last frame"),
        "{stderr}"
    );
    // An image for a text-only model.
    let mut args = without(without(flags("i2v_wan21"), "--model"), "--noise");
    args.extend([
        "--model".into(),
        fixture("tiny_pipeline/model").display().to_string(),
    ]);
    let stderr = expect_error(&args, dir.path());
    assert!(stderr.contains("is text-to-video only"), "{stderr}");
    // A missing image, and a file that is no image.
    let mut args = without(flags("i2v_wan21"), "--image");
    args.extend(["--image".into(), "no/such/picture.png".into()]);
    let stderr = expect_error(&args, dir.path());
    assert!(
        stderr.contains("--image no/such/picture.png: no such file"),
        "{stderr}"
    );
    let mut args = without(flags("i2v_wan21"), "--image");
    args.extend(["--image".into(), path_of("i2v_wan21", "reference.json")]);
    let stderr = expect_error(&args, dir.path());
    assert!(stderr.contains("not a png, jpeg or webp"), "{stderr}");
}

/// A model folder missing what image-to-video needs fails in preflight, before any step: a
/// decoder-only VAE file, and a Wan2.1 I2V model without its image encoder.
#[test]
fn missing_image_networks_fail_before_sampling() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixture("i2v_wan21").join("model");
    let model = dir.path().join("model");
    copy_dir(&source, &model);
    let with_model = |model: &Path| {
        let mut args = reference_flags(
            "i2v_wan21",
            &dir.path().join("err.png"),
            &dir.path().join("err.safetensors"),
        );
        let at = args.iter().position(|a| a == "--model").unwrap();
        args[at + 1] = model.display().to_string();
        args
    };
    std::fs::remove_dir_all(model.join("image_encoder")).unwrap();
    let stderr = expect_error(&with_model(&model), dir.path());
    assert!(stderr.contains("image_encoder"), "{stderr}");
    assert!(!stderr.contains("sampling     ["), "{stderr}");

    // The VAE with only its decoder's tensors.
    let model = dir.path().join("decoder_only");
    copy_dir(&source, &model);
    let vae = model.join("vae/diffusion_pytorch_model.safetensors");
    let tensors = candle_core::safetensors::load(&vae, &Device::Cpu).unwrap();
    let decoder: std::collections::HashMap<String, Tensor> = tensors
        .into_iter()
        .filter(|(k, _)| !k.starts_with("encoder.") && !k.starts_with("quant_conv."))
        .collect();
    candle_core::safetensors::save(&decoder, &vae).unwrap();
    let stderr = expect_error(&with_model(&model), dir.path());
    assert!(stderr.contains("no encoder tensors"), "{stderr}");
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

/// Without a size, the video keeps the image's aspect ratio at the model's pixel count (the
/// family's default size here: 832×480 for Wan2.1 I2V, 1280×720 for Wan2.2 I2V-A14B), each side
/// a multiple of 16; TI2V uses Wan2.2's rule at 1280×704 with multiples of 32.
#[test]
fn sizes_follow_the_image_without_size_flags() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::discover().unwrap();
    let size_for = |name: &str, image: &str| {
        let mut options = GenerateOptions::new("x");
        options.model = Some(model_of(name).display().to_string());
        options.device = vdit_pipeline::options::DeviceChoice::Cpu;
        options.output = Some(dir.path().join("size.mp4"));
        options.image = Some(fixture(name).join(image));
        options.frames = Some(5);
        let (settings, _) = resolve(&options, &registry).unwrap();
        (settings.family.name, settings.width, settings.height)
    };
    // A 48×32 image (3:2) on 832·480 pixels: √(399360·2/3) = 516 → 512, √(399360·3/2) = 774 → 768.
    assert_eq!(size_for("i2v_wan21", "image.png"), ("wan2.1-i2v", 768, 512));
    // Wan2.2 I2V-A14B's default is 1280×720: √(921600·2/3) = 784, √(921600·3/2) = 1176 → 1168.
    assert_eq!(
        size_for("i2v_wan22", "image.png"),
        ("wan2.2-i2v-a14b", 1168, 784)
    );
    // 64×32 (2:1) on 1280·704 pixels, Wan2.2's best_output_size: width first gives 1312×672
    // (ratio 1.95), height first 1408×640 (2.2); the first is closer.
    assert_eq!(
        size_for("i2v_ti2v", "image.png"),
        ("wan2.2-ti2v-5b", 1312, 672)
    );
}
