//! Parity of the Wan transformer in its Wan2.2 TI2V form with diffusers' `WanTransformer3DModel`:
//! 48 latent channels, and timesteps per latent token (`[B, L]`, diffusers' `expand_timesteps`)
//! as well as per sample (`[B]`). Fixtures from scripts/reference/gen_dit22_fixtures.py.
//!
//! tests/fixtures/dit22/ti2v_heads2x32 holds one random model (2 heads × 32, 2 layers, weights
//! stored bf16 and bf16-exact, so the f32 reference is exact for them), its diffusers and original
//! config.json, and two input/output sets on the same latents [2, 48, 3, 6, 10] and context:
//! `io_per_token` (timesteps [2, 45]: the first latent frame's tokens at t = 0, the others at 999
//! in row 0 and 421 in row 1) and `io_per_sample` (timesteps [2] = 999, 421).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rainfusion::DenseAttention;
use vdit_models::wan::{WanConfig, WanTransformer};
use vdit_models::weights::WeightFiles;
use vdit_models::ModelError;

mod common;
use common::{fixtures_root, load_io, relative_error};

const F32_TOLERANCE: f64 = 1e-4;
const BF16_TOLERANCE: f64 = 2e-2;
const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

fn case_dir() -> PathBuf {
    fixtures_root().join("dit22").join("ti2v_heads2x32")
}

/// `io_per_token` or `io_per_sample`: latents, timesteps, context and diffusers' velocity.
fn io(name: &str) -> HashMap<String, Tensor> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        case_dir().join(format!("{name}.safetensors")),
        dir.path().join("io.safetensors"),
    )
    .unwrap();
    load_io(dir.path(), &Device::Cpu)
}

/// The fixture loaded the way a pipeline does with a known config: `WanTransformer::load`.
fn load_with(config_file: &str, dtype: DType) -> WanTransformer {
    let dir = case_dir();
    let cfg = WanConfig::from_json_file(&dir.join(config_file)).unwrap();
    let files = Arc::new(WeightFiles::open(&dir.join(WEIGHTS)).unwrap());
    WanTransformer::load(&files, &cfg, dtype, &Device::Cpu).unwrap()
}

fn velocity_error(model: &WanTransformer, io: &HashMap<String, Tensor>, timesteps: &Tensor) -> f64 {
    let out = model
        .forward(
            &io["latents"],
            timesteps,
            &io["context"],
            &mut DenseAttention,
        )
        .unwrap();
    assert_eq!(out.dims(), io["velocity"].dims());
    assert_eq!(out.dtype(), DType::F32);
    relative_error(&out, &io["velocity"])
}

fn check(label: &str, model: &WanTransformer, io_name: &str, tolerance: f64) {
    let io = io(io_name);
    let err = velocity_error(model, &io, &io["timesteps"]);
    eprintln!("{label} {io_name}: relative error {err:.3e}");
    assert!(
        err <= tolerance,
        "{label} {io_name}: relative error {err:.3e} > {tolerance:e}"
    );
}

#[test]
fn fixture_is_ti2v_shaped_and_its_two_timestep_kinds_differ() {
    let model = load_with("config.json", DType::F32);
    assert_eq!((model.in_channels(), model.out_channels()), (48, 48));
    let token = io("io_per_token");
    let sample = io("io_per_sample");
    assert_eq!(token["timesteps"].dims(), &[2, 45]);
    assert_eq!(sample["timesteps"].dims(), &[2]);
    // Otherwise a model that ignored per-token timesteps could pass the per-token test.
    let apart = relative_error(&token["velocity"], &sample["velocity"]);
    assert!(apart > 0.05, "references only {apart:.3e} apart");
}

#[test]
fn per_token_timesteps_f32() {
    check(
        "load diffusers config, f32",
        &load_with("config.json", DType::F32),
        "io_per_token",
        F32_TOLERANCE,
    );
}

#[test]
fn per_sample_timesteps_f32() {
    check(
        "load diffusers config, f32",
        &load_with("config.json", DType::F32),
        "io_per_sample",
        F32_TOLERANCE,
    );
}

#[test]
fn per_token_timesteps_bf16() {
    check(
        "load diffusers config, bf16",
        &load_with("config.json", DType::BF16),
        "io_per_token",
        BF16_TOLERANCE,
    );
}

#[test]
fn per_sample_timesteps_bf16() {
    check(
        "load diffusers config, bf16",
        &load_with("config.json", DType::BF16),
        "io_per_sample",
        BF16_TOLERANCE,
    );
}

#[test]
fn original_ti2v_config_loads_the_same_model() {
    let diffusers = WanConfig::from_json_file(&case_dir().join("config.json")).unwrap();
    let original = WanConfig::from_json_file(&case_dir().join("config_original.json")).unwrap();
    assert_eq!(diffusers, original);
    check(
        "load original config, f32",
        &load_with("config_original.json", DType::F32),
        "io_per_token",
        F32_TOLERANCE,
    );
}

#[test]
fn open_reads_the_diffusers_directory() {
    let model = WanTransformer::open(&case_dir(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config().in_channels, 48);
    check("open directory, f32", &model, "io_per_token", F32_TOLERANCE);
    check(
        "open directory, f32",
        &model,
        "io_per_sample",
        F32_TOLERANCE,
    );
}

/// Per-token timesteps that are constant per sample are the per-sample model; a shared `[1, L]`
/// row is the same as that row repeated for each sample.
#[test]
fn per_token_forms_agree_with_the_per_sample_and_repeated_forms() {
    let model = load_with("config.json", DType::F32);
    let sample = io("io_per_sample");
    let rows: Vec<f32> = sample["timesteps"].to_vec1().unwrap();
    let constant: Vec<f32> = rows.iter().flat_map(|&t| [t; 45]).collect();
    let constant = Tensor::from_vec(constant, (2, 45), &Device::Cpu).unwrap();
    let err = velocity_error(&model, &sample, &constant);
    eprintln!("constant per-token rows vs diffusers per-sample: relative error {err:.3e}");
    assert!(err <= F32_TOLERANCE, "relative error {err:.3e}");

    let token = io("io_per_token");
    let first_row = token["timesteps"].narrow(0, 0, 1).unwrap(); // [1, 45]
    let repeated = Tensor::cat(&[&first_row, &first_row], 0).unwrap(); // [2, 45]
    let run = |t: &Tensor| {
        model
            .forward(&token["latents"], t, &token["context"], &mut DenseAttention)
            .unwrap()
    };
    let shared = run(&first_row);
    let err = relative_error(&shared, &run(&repeated));
    assert!(err <= 1e-6, "[1, L] vs repeated [2, L]: {err:.3e}");
    // And the first sample of that run is diffusers' first sample (whose row it is).
    let err = relative_error(
        &shared.narrow(0, 0, 1).unwrap(),
        &token["velocity"].narrow(0, 0, 1).unwrap(),
    );
    assert!(err <= F32_TOLERANCE, "shared row, sample 0: {err:.3e}");
}

#[test]
fn timesteps_of_the_wrong_length_are_clear_errors() {
    let model = load_with("config.json", DType::F32);
    let token = io("io_per_token");
    let message = |t: &Tensor| -> String {
        match model.forward(&token["latents"], t, &token["context"], &mut DenseAttention) {
            Err(e @ ModelError::InvalidInput(_)) => e.to_string(),
            other => panic!("expected an InvalidInput error, got {other:?}"),
        }
    };
    let short = token["timesteps"].narrow(1, 0, 44).unwrap();
    assert!(message(&short).contains("[2, 45] or [1, 45]"));
    let three_rows = Tensor::zeros((3, 45), DType::F32, &Device::Cpu).unwrap();
    assert!(message(&three_rows).contains("per latent token"));
    let rank3 = Tensor::zeros((2, 45, 1), DType::F32, &Device::Cpu).unwrap();
    assert!(message(&rank3).contains("timesteps must be"));
}

/// Copies `src` with every tensor zeroed and each axis of the fixture's width 64 (and of the time
/// projection, 6 × 64) widened to 256 (6 × 256): a TI2V-shaped checkpoint, 2 × 128 wide, whose
/// other sizes (48 channels, ffn 96, text 24, freq 16) are the fixture's.
fn widen_to_256(src: &Path, dst: &Path) {
    let tensors = candle_core::safetensors::load(src, &Device::Cpu).unwrap();
    let widened: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| {
            let dims: Vec<usize> = t
                .dims()
                .iter()
                .map(|&d| match d {
                    64 => 256,
                    384 => 1536,
                    d => d,
                })
                .collect();
            (
                k.clone(),
                Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    candle_core::safetensors::save(&widened, dst).unwrap();
}

#[test]
fn single_file_without_config_is_recognised_as_48_channels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wan2.2_ti2v_tiny.safetensors");
    widen_to_256(&case_dir().join(WEIGHTS), &path);
    let model = WanTransformer::open(&path, DType::F32, &Device::Cpu).unwrap();
    let stated = WanConfig::from_json_file(&case_dir().join("config.json")).unwrap();
    let expected = WanConfig {
        num_heads: 2,
        head_dim: 128, // heads cannot be read from shapes: the released head_dim is assumed
        ..stated
    };
    assert_eq!(model.config(), &expected);
    assert_eq!((model.in_channels(), model.out_channels()), (48, 48));

    // It runs on TI2V latents with per-token timesteps (zero weights: zero velocity).
    let token = io("io_per_token");
    let out = model
        .forward(
            &token["latents"],
            &token["timesteps"],
            &token["context"],
            &mut DenseAttention,
        )
        .unwrap();
    assert_eq!(out.dims(), &[2, 48, 3, 6, 10]);

    // The fixture itself (64 wide) is not a multiple of the assumed head_dim: a clear error.
    let narrow = dir.path().join("narrow.safetensors");
    std::fs::copy(case_dir().join(WEIGHTS), &narrow).unwrap();
    let err = WanTransformer::open(&narrow, DType::F32, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("pass a config.json"), "{err}");
}

/// On CUDA (feature `cuda`, needs a GPU) in bf16: per-sample timesteps run the blocks through
/// the fused kernels, per-token timesteps through candle ops; both against diffusers.
#[cfg(feature = "cuda")]
#[test]
fn cuda_bf16_per_token_and_per_sample_match_diffusers() {
    let dev = Device::new_cuda(0).expect("this test needs a CUDA device");
    let model = WanTransformer::open(&case_dir(), DType::BF16, &dev).unwrap();
    for name in ["io_per_token", "io_per_sample"] {
        let io = io(name);
        let out = model
            .forward(
                &io["latents"].to_device(&dev).unwrap(),
                &io["timesteps"].to_device(&dev).unwrap(),
                &io["context"].to_device(&dev).unwrap(),
                &mut DenseAttention,
            )
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap();
        let err = relative_error(&out, &io["velocity"]);
        eprintln!("CUDA bf16 {name}: relative error {err:.3e}");
        assert!(
            err <= BF16_TOLERANCE,
            "CUDA bf16 {name}: relative error {err:.3e} > {BF16_TOLERANCE:e}"
        );
    }
}
