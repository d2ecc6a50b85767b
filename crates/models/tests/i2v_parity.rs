//! Image-to-video parity with diffusers and transformers, on the fixtures of
//! scripts/reference/gen_i2v_fixtures.py (tests/fixtures/i2v):
//!
//! - the Wan transformer in its three image-to-video forms (`WanTransformer3DModel`): Wan2.1 I2V
//!   (36 channels in, image embedder, image cross-attention), FLF2V (plus the position table over
//!   two images' tokens) and Wan2.2 I2V-A14B (36 channels in, no image input), in the diffusers and
//!   original key dialects;
//! - the CLIP vision tower (`CLIPVisionModelWithProjection`, the hub's `image_encoder/` layout):
//!   `hidden_states[-2]`;
//! - `CLIPImageProcessor`'s preprocessing (PIL backend), on a shrunk and an enlarged image.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rainfusion::DenseAttention;
use vdit_models::clip_vision::preprocess::{resize_bicubic, CLIP_IMAGE_SIZE};
use vdit_models::clip_vision::{preprocess, ClipVisionConfig, ClipVisionModel};
use vdit_models::wan::{CheckpointKeys, KeyDialect, WanConfig, WanTransformer};
use vdit_models::weights::WeightFiles;
use vdit_models::ModelError;

mod common;
use common::{fixtures_root, relative_error};

const F32_TOLERANCE: f64 = 1e-4;
const BF16_TOLERANCE: f64 = 2e-2;
const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

fn case_dir(case: &str) -> PathBuf {
    fixtures_root().join("i2v").join(case)
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn io(case: &str) -> HashMap<String, Tensor> {
    tensors(&case_dir(case).join("io.safetensors"))
}

/// The velocity of `model` on the case's inputs (with its image, if it has one).
fn velocity(model: &WanTransformer, io: &HashMap<String, Tensor>) -> vdit_models::Result<Tensor> {
    model.forward_with_image(
        &io["latents"],
        &io["timesteps"],
        &io["context"],
        io.get("image"),
        &mut DenseAttention,
    )
}

fn check(label: &str, model: &WanTransformer, case: &str, tolerance: f64) {
    let io = io(case);
    let out = velocity(model, &io).unwrap();
    assert_eq!(out.dims(), io["velocity"].dims());
    assert_eq!(out.dtype(), DType::F32);
    let err = relative_error(&out, &io["velocity"]);
    eprintln!("{case} {label}: relative error {err:.3e}");
    assert!(
        err <= tolerance,
        "{case} {label}: relative error {err:.3e} > {tolerance:e}"
    );
}

/// Copies the case's diffusers weights with original Wan key names (`original_keys.json`,
/// checked in Python against diffusers' own converter) behind `prefix`.
fn original_file(case: &str, dir: &Path, prefix: &str) -> PathBuf {
    let text = std::fs::read_to_string(case_dir(case).join("original_keys.json")).unwrap();
    let map: HashMap<String, String> = serde_json::from_str(&text).unwrap();
    let renamed: HashMap<String, Tensor> = tensors(&case_dir(case).join(WEIGHTS))
        .into_iter()
        .map(|(k, t)| (format!("{prefix}{}", map[&k]), t))
        .collect();
    let path = dir.join("wan_i2v_tiny.safetensors");
    candle_core::safetensors::save(&renamed, &path).unwrap();
    path
}

#[test]
fn wan21_i2v_diffusers_f32() {
    let model = WanTransformer::open(&case_dir("wan21_i2v"), DType::F32, &Device::Cpu).unwrap();
    let cfg = model.config();
    assert_eq!((cfg.in_channels, cfg.out_channels), (36, 16));
    assert_eq!((cfg.image_dim, cfg.added_kv_proj_dim), (Some(40), Some(64)));
    check(
        "open diffusers dir, f32",
        &model,
        "wan21_i2v",
        F32_TOLERANCE,
    );
}

#[test]
fn wan21_i2v_bf16() {
    let model = WanTransformer::open(&case_dir("wan21_i2v"), DType::BF16, &Device::Cpu).unwrap();
    check(
        "open diffusers dir, bf16",
        &model,
        "wan21_i2v",
        BF16_TOLERANCE,
    );
}

#[test]
fn flf2v_diffusers_f32() {
    let model = WanTransformer::open(&case_dir("flf2v"), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config().pos_embed_seq_len, Some(10));
    check("open diffusers dir, f32", &model, "flf2v", F32_TOLERANCE);
}

#[test]
fn wan22_i2v_has_no_image_input_f32() {
    let model = WanTransformer::open(&case_dir("wan22_i2v"), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.in_channels(), 36);
    assert!(!model.config().has_image_input());
    check(
        "open diffusers dir, f32",
        &model,
        "wan22_i2v",
        F32_TOLERANCE,
    );
    // The plain forward is the same call.
    let io = io("wan22_i2v");
    let plain = model
        .forward(
            &io["latents"],
            &io["timesteps"],
            &io["context"],
            &mut DenseAttention,
        )
        .unwrap();
    assert!(relative_error(&plain, &io["velocity"]) <= F32_TOLERANCE);
}

/// Original Wan names (`img_emb.proj.*`, `img_emb.emb_pos`, `cross_attn.k_img`, ...), plain and
/// behind ComfyUI's prefix, through `WanTransformer::load` with the case's config.
#[test]
fn original_and_comfyui_keys_f32() {
    for case in ["wan21_i2v", "flf2v"] {
        let cfg = WanConfig::from_json_file(&case_dir(case).join("config.json")).unwrap();
        for prefix in ["", "model.diffusion_model."] {
            let tmp = tempfile::tempdir().unwrap();
            let path = original_file(case, tmp.path(), prefix);
            let files = Arc::new(WeightFiles::open(&path).unwrap());
            let keys = CheckpointKeys::detect(&files).unwrap();
            assert_eq!(
                (keys.dialect, keys.prefix.as_str()),
                (KeyDialect::Original, prefix)
            );
            let model = WanTransformer::load(&files, &cfg, DType::F32, &Device::Cpu).unwrap();
            check(
                &format!("original keys, prefix {prefix:?}, f32"),
                &model,
                case,
                F32_TOLERANCE,
            );
        }
    }
}

/// The original config.json says "i2v" for Wan2.1 I2V and Wan2.2 I2V-A14B alike; the checkpoint
/// tells them apart. (The original format fixes the image width at CLIP's 1280.)
#[test]
fn original_configs_are_told_apart_by_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let with_image = WeightFiles::open(&original_file("wan21_i2v", tmp.path(), "")).unwrap();
    let cfg = WanConfig::from_json_file_for(
        &case_dir("wan21_i2v").join("config_original.json"),
        &with_image,
    )
    .unwrap();
    assert_eq!(
        (cfg.image_dim, cfg.added_kv_proj_dim, cfg.in_channels),
        (Some(1280), Some(64), 36)
    );

    let without = WeightFiles::open(&case_dir("wan22_i2v").join(WEIGHTS)).unwrap();
    let cfg = WanConfig::from_json_file_for(
        &case_dir("wan22_i2v").join("config_original.json"),
        &without,
    )
    .unwrap();
    let stated = WanConfig::from_json_file(&case_dir("wan22_i2v").join("config.json")).unwrap();
    assert_eq!(cfg, stated);

    let flf2v = WanConfig::from_json_file(&case_dir("flf2v").join("config_original.json")).unwrap();
    assert_eq!(flf2v.pos_embed_seq_len, Some(514));
}

/// A single original-keyed file without config.json: the image path's sizes come from the
/// shapes (the image width from `img_emb.proj.0`, the key width from `cross_attn.k_img`, FLF2V's
/// token count from `img_emb.emb_pos`). Only shapes are read, so the tensors are zeros.
#[test]
fn image_path_sizes_are_inferred_from_the_shapes() {
    let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
    let mut tensors: HashMap<String, Tensor> = [
        ("patch_embedding.weight", vec![128, 36, 1, 2, 2]),
        ("text_embedding.0.weight", vec![128, 24]),
        ("time_embedding.0.weight", vec![128, 16]),
        ("blocks.0.ffn.0.weight", vec![96, 128]),
        ("head.head.weight", vec![64, 128]),
        ("img_emb.proj.0.weight", vec![40]),
        ("blocks.0.cross_attn.k_img.weight", vec![128, 128]),
    ]
    .into_iter()
    .map(|(k, s)| (format!("model.diffusion_model.{k}"), zeros(&s)))
    .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wan_i2v.safetensors");
    let infer = |tensors: &HashMap<String, Tensor>| {
        candle_core::safetensors::save(tensors, &path).unwrap();
        WanTransformer::config_for(&path, &WeightFiles::open(&path).unwrap()).unwrap()
    };
    let cfg = infer(&tensors);
    assert_eq!(
        (
            cfg.in_channels,
            cfg.out_channels,
            cfg.image_dim,
            cfg.added_kv_proj_dim
        ),
        (36, 16, Some(40), Some(128))
    );
    assert_eq!(cfg.pos_embed_seq_len, None);
    tensors.insert(
        "model.diffusion_model.img_emb.emb_pos".into(),
        zeros(&[1, 10, 40]),
    );
    assert_eq!(infer(&tensors).pos_embed_seq_len, Some(10));
    tensors.retain(|k, _| !k.contains("img_emb") && !k.contains("k_img"));
    let cfg = infer(&tensors);
    assert_eq!((cfg.in_channels, cfg.image_dim), (36, None));
}

/// One `[1, Li, image_dim]` image serves the whole batch.
#[test]
fn a_shared_image_serves_the_batch() {
    let model = WanTransformer::open(&case_dir("wan21_i2v"), DType::F32, &Device::Cpu).unwrap();
    let io = io("wan21_i2v");
    let first = io["image"].narrow(0, 0, 1).unwrap();
    let both = Tensor::cat(&[&first, &first], 0).unwrap();
    let run = |image: &Tensor| {
        model
            .forward_with_image(
                &io["latents"],
                &io["timesteps"],
                &io["context"],
                Some(image),
                &mut DenseAttention,
            )
            .unwrap()
    };
    let diff = relative_error(&run(&first), &run(&both));
    assert!(diff < 1e-6, "shared image differs by {diff:e}");
}

#[test]
fn image_inputs_and_checkpoints_that_do_not_fit_are_clear_errors() {
    let i2v = WanTransformer::open(&case_dir("wan21_i2v"), DType::F32, &Device::Cpu).unwrap();
    let io = io("wan21_i2v");
    let invalid = |r: vdit_models::Result<Tensor>| match r {
        Err(ModelError::InvalidInput(msg)) => msg,
        other => panic!("expected an invalid-input error, got {other:?}"),
    };
    let msg = invalid(i2v.forward(
        &io["latents"],
        &io["timesteps"],
        &io["context"],
        &mut DenseAttention,
    ));
    assert!(msg.contains("needs the image embedding"), "{msg}");
    let narrow = io["image"].narrow(2, 0, 39).unwrap();
    let msg = invalid(i2v.forward_with_image(
        &io["latents"],
        &io["timesteps"],
        &io["context"],
        Some(&narrow),
        &mut DenseAttention,
    ));
    assert!(msg.contains("image embedding must be"), "{msg}");

    // FLF2V needs exactly both images' tokens (its position table's rows).
    let flf2v = WanTransformer::open(&case_dir("flf2v"), DType::F32, &Device::Cpu).unwrap();
    let flf = self::io("flf2v");
    let one_image = flf["image"].narrow(1, 0, 5).unwrap();
    let msg = invalid(flf2v.forward_with_image(
        &flf["latents"],
        &flf["timesteps"],
        &flf["context"],
        Some(&one_image),
        &mut DenseAttention,
    ));
    assert!(msg.contains("[B, 10, 40]"), "{msg}");

    let wan22 = WanTransformer::open(&case_dir("wan22_i2v"), DType::F32, &Device::Cpu).unwrap();
    let msg = invalid(wan22.forward_with_image(
        &io["latents"],
        &io["timesteps"],
        &io["context"],
        Some(&io["image"]),
        &mut DenseAttention,
    ));
    assert!(msg.contains("takes no image"), "{msg}");

    // A text-to-video config over an image-to-video checkpoint, and the reverse.
    let files = Arc::new(WeightFiles::open(&case_dir("wan21_i2v").join(WEIGHTS)).unwrap());
    let stated = WanConfig::from_json_file(&case_dir("wan21_i2v").join("config.json")).unwrap();
    let no_image = WanConfig {
        image_dim: None,
        added_kv_proj_dim: None,
        ..stated.clone()
    };
    let err = WanTransformer::load(&files, &no_image, DType::F32, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("no image_dim"), "{err}");
    let files22 = Arc::new(WeightFiles::open(&case_dir("wan22_i2v").join(WEIGHTS)).unwrap());
    let err = WanTransformer::load(&files22, &stated, DType::F32, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("no image embedder"), "{err}");
}

/// The LoRA targets of an image-to-video model include its image layers, in both namings.
#[test]
fn lora_targets_cover_the_image_layers() {
    let cfg = WanConfig::from_json_file(&case_dir("wan21_i2v").join("config.json")).unwrap();
    let targets = vdit_models::wan::keys::lora_targets(&cfg);
    let debug = format!("{targets:?}");
    for name in [
        "blocks.1.attn2.add_k_proj",
        "blocks.1.cross_attn.k_img",
        "condition_embedder.image_embedder.ff.net.0.proj",
        "img_emb.proj.1",
    ] {
        assert!(debug.contains(name), "{name} missing");
    }
}

fn clip_io() -> (Tensor, Tensor) {
    let pre = tensors(
        &fixtures_root()
            .join("i2v")
            .join("preprocess_down.safetensors"),
    );
    let io = tensors(&case_dir("clip_vision").join("io.safetensors"));
    (pre["pixel_values"].clone(), io["penultimate"].clone())
}

#[test]
fn clip_vision_penultimate_hidden_states_f32() {
    let model = ClipVisionModel::open(&case_dir("clip_vision"), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config().num_positions(), 257);
    let (pixels, reference) = clip_io();
    let out = model.penultimate_hidden_states(&pixels).unwrap();
    assert_eq!(out.dims(), &[1, 257, 32]);
    let err = relative_error(&out, &reference);
    eprintln!("clip vision f32: relative error {err:.3e}");
    assert!(err <= F32_TOLERANCE, "relative error {err:.3e}");
}

#[test]
fn clip_vision_bf16() {
    let model = ClipVisionModel::open(&case_dir("clip_vision"), DType::BF16, &Device::Cpu).unwrap();
    let (pixels, reference) = clip_io();
    let err = relative_error(
        &model.penultimate_hidden_states(&pixels).unwrap(),
        &reference,
    );
    eprintln!("clip vision bf16: relative error {err:.3e}");
    assert!(err <= BF16_TOLERANCE, "relative error {err:.3e}");
}

#[test]
fn clip_vision_refuses_other_sizes() {
    let model = ClipVisionModel::open(&case_dir("clip_vision"), DType::F32, &Device::Cpu).unwrap();
    let small = Tensor::zeros((1, 3, 112, 112), DType::F32, &Device::Cpu).unwrap();
    let err = model.penultimate_hidden_states(&small).unwrap_err();
    assert!(err.to_string().contains("[B, 3, 224, 224]"), "{err}");
    // A transformer checkpoint is not a CLIP tower.
    let files = Arc::new(WeightFiles::open(&case_dir("wan22_i2v").join(WEIGHTS)).unwrap());
    let cfg =
        ClipVisionConfig::from_json_file(&case_dir("clip_vision").join("config.json")).unwrap();
    let err = ClipVisionModel::load(&files, &cfg, DType::F32, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("not a CLIP vision model"), "{err}");
}

/// [H, W, 3] u8 tensor → (width, height, bytes).
fn rgb8(t: &Tensor) -> (usize, usize, Vec<u8>) {
    let (h, w, _) = t.dims3().unwrap();
    (w, h, t.flatten_all().unwrap().to_vec1::<u8>().unwrap())
}

/// PIL's bicubic enlarging (150 × 100 → 336 × 224), compared byte for byte.
#[test]
fn bicubic_enlarging_equals_pil() {
    let fixture = tensors(
        &fixtures_root()
            .join("i2v")
            .join("preprocess_up.safetensors"),
    );
    let (w, h, rgb) = rgb8(&fixture["image"]);
    let (_, _, expected) = rgb8(&fixture["resized"]);
    let out = resize_bicubic(w, h, &rgb, 336, 224).unwrap();
    let max_diff = out
        .iter()
        .zip(&expected)
        .map(|(a, b)| (*a as i32 - *b as i32).abs())
        .max()
        .unwrap();
    let differing = out.iter().zip(&expected).filter(|(a, b)| a != b).count();
    eprintln!("bicubic 150x100 -> 336x224 vs PIL: max |diff| {max_diff}, {differing} bytes differ");
    assert_eq!(max_diff, 0);
}

/// The whole preprocessing of a shrunk image (260 × 240 → 242 × 224, crop 224) against
/// `CLIPImageProcessor`, then through the CLIP tower.
#[test]
fn preprocessing_matches_clip_image_processor() {
    let fixture = tensors(
        &fixtures_root()
            .join("i2v")
            .join("preprocess_down.safetensors"),
    );
    let (w, h, rgb) = rgb8(&fixture["image"]);
    let pixels = preprocess(w, h, &rgb, &Device::Cpu).unwrap();
    assert_eq!(pixels.dims(), &[1, 3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE]);
    let reference = &fixture["pixel_values"];
    let err = relative_error(&pixels, reference);
    let max_diff = (&pixels - reference)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    eprintln!("preprocess vs CLIPImageProcessor (PIL): relative error {err:.3e}, max |diff| {max_diff:.3e}");
    // One 1/255 step is 0.0146 after normalisation: anything below is the same u8 everywhere.
    assert!(max_diff < 1e-5, "max |diff| {max_diff:e}");
    assert!(err <= 1e-6, "relative error {err:e}");

    let model = ClipVisionModel::open(&case_dir("clip_vision"), DType::F32, &Device::Cpu).unwrap();
    let (_, penultimate) = clip_io();
    let err = relative_error(
        &model.penultimate_hidden_states(&pixels).unwrap(),
        &penultimate,
    );
    eprintln!("image bytes -> preprocess -> CLIP tower: relative error {err:.3e}");
    assert!(err <= F32_TOLERANCE);
}

/// The fused CUDA block path with image cross-attention, and the candle-ops path, in bf16 on a
/// GPU, against diffusers. Run: `cargo test --release -p vdit-models --features cuda --test
/// i2v_parity`.
#[cfg(feature = "cuda")]
#[test]
fn image_cross_attention_on_cuda_both_paths() {
    let dev = Device::new_cuda(0).expect("this test needs a CUDA device");
    // One test reads VDIT_NO_FUSED, in one thread.
    for fused_path in [true, false] {
        if fused_path {
            std::env::remove_var("VDIT_NO_FUSED");
        } else {
            std::env::set_var("VDIT_NO_FUSED", "1");
        }
        for case in ["wan21_i2v", "flf2v"] {
            let model = WanTransformer::open(&case_dir(case), DType::BF16, &dev).unwrap();
            let io: HashMap<String, Tensor> = io(case)
                .into_iter()
                .map(|(k, t)| (k, t.to_device(&dev).unwrap()))
                .collect();
            let out = velocity(&model, &io).unwrap();
            let err = relative_error(&out, &io["velocity"]);
            eprintln!("{case} CUDA bf16 fused {fused_path}: relative error {err:.3e}");
            assert!(
                err <= BF16_TOLERANCE,
                "{case} fused {fused_path}: {err:.3e}"
            );
        }
    }
    std::env::remove_var("VDIT_NO_FUSED");
}
