//! Parity of the Wan2.1 transformer with diffusers' `WanTransformer3DModel`, on random-weight
//! fixtures from scripts/reference/gen_dit_fixtures.py, in all three key dialects.
//!
//! Each case directory holds diffusers-keyed weights, config.json (diffusers) and
//! config_original.json, original_keys.json (diffusers key → original key, checked in Python
//! against diffusers' own converter) and io.safetensors (latents, timesteps, context, velocity).
//! The original and ComfyUI files are written here from the diffusers file, then read back
//! through the same loader users use.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rainfusion::{DenseAttention, SelfAttention, VideoLayout};
use vdit_models::wan::{CheckpointKeys, KeyDialect, WanConfig, WanTransformer};
use vdit_models::weights::WeightFiles;
use vdit_models::ModelError;

mod common;
use common::{fixture, forward_on_io, load_io, relative_error};

const F32_TOLERANCE: f64 = 1e-4;
const BF16_TOLERANCE: f64 = 2e-2;
const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

fn io(case: &str) -> HashMap<String, Tensor> {
    load_io(&fixture(case), &Device::Cpu)
}

/// Copies a safetensors file with renamed keys and every tensor cast to `dtype`.
fn rewrite(src: &Path, dst: &Path, rename: impl Fn(&str) -> String, dtype: DType) {
    let tensors = candle_core::safetensors::load(src, &Device::Cpu).unwrap();
    let renamed: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| (rename(k), t.to_dtype(dtype).unwrap()))
        .collect();
    candle_core::safetensors::save(&renamed, dst).unwrap();
}

fn original_keys(case: &str) -> HashMap<String, String> {
    let text = std::fs::read_to_string(fixture(case).join("original_keys.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Dialect {
    Diffusers,
    Original,
    ComfyUi,
}

/// Wraps dense attention and records what the transformer passed, to check the contract.
#[derive(Default)]
struct Recording {
    calls: Vec<(usize, Vec<usize>, VideoLayout)>,
}

impl SelfAttention for Recording {
    fn attend(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        layout: &VideoLayout,
    ) -> rainfusion::Result<Tensor> {
        self.calls.push((layer, q.dims().to_vec(), *layout));
        DenseAttention.attend(layer, q, k, v, layout)
    }
}

/// Loads `case` in `dialect` (weights stored as `file_dtype`), runs it in `run_dtype` and returns
/// the relative error against the diffusers velocity.
fn run(case: &str, dialect: Dialect, file_dtype: DType, run_dtype: DType) -> f64 {
    let dir = fixture(case);
    let tmp = tempfile::tempdir().unwrap();
    let (weights, cfg, expected_dialect, prefix) = match dialect {
        Dialect::Diffusers => {
            let path = tmp.path().join(WEIGHTS);
            rewrite(&dir.join(WEIGHTS), &path, |k| k.to_string(), file_dtype);
            (
                path,
                WanConfig::from_json_file(&dir.join("config.json")).unwrap(),
                KeyDialect::Diffusers,
                "",
            )
        }
        Dialect::Original => {
            let map = original_keys(case);
            let path = tmp.path().join(WEIGHTS);
            rewrite(&dir.join(WEIGHTS), &path, |k| map[k].clone(), file_dtype);
            let cfg = WanConfig::from_json_file(&dir.join("config_original.json")).unwrap();
            (path, cfg, KeyDialect::Original, "")
        }
        Dialect::ComfyUi => {
            let map = original_keys(case);
            let path = tmp.path().join("wan2.1_t2v_tiny.safetensors");
            let prefix = "model.diffusion_model.";
            rewrite(
                &dir.join(WEIGHTS),
                &path,
                |k| format!("{prefix}{}", map[k]),
                file_dtype,
            );
            let cfg = WanConfig::from_json_file(&dir.join("config.json")).unwrap();
            (path, cfg, KeyDialect::Original, prefix)
        }
    };
    let files = Arc::new(WeightFiles::open(&weights).unwrap());
    let keys = CheckpointKeys::detect(&files).unwrap();
    assert_eq!(
        (keys.dialect, keys.prefix.as_str()),
        (expected_dialect, prefix)
    );
    let model = WanTransformer::load(&files, &cfg, run_dtype, &Device::Cpu).unwrap();

    let io = io(case);
    let mut attention = Recording::default();
    let out = forward_on_io(&model, &io, &mut attention);
    assert_eq!(out.dtype(), DType::F32);

    // One self-attention call per layer, in order, with [B, heads, L, head_dim] and the token grid.
    let (_, _, f, h, w) = io["latents"].dims5().unwrap();
    let layout = VideoLayout::new(f, h / 2, w / 2);
    let shape = vec![2, cfg.num_heads, layout.video_tokens(), cfg.head_dim];
    let expected: Vec<_> = (0..cfg.num_layers)
        .map(|i| (i, shape.clone(), layout))
        .collect();
    assert_eq!(attention.calls, expected);

    let err = relative_error(&out, &io["velocity"]);
    eprintln!("{case} {dialect:?} file {file_dtype:?} run {run_dtype:?}: relative error {err:.3e}");
    err
}

fn check(case: &str, dialect: Dialect, file_dtype: DType) {
    let err = run(case, dialect, file_dtype, DType::F32);
    assert!(
        err <= F32_TOLERANCE,
        "{case} {dialect:?}: relative error {err:.3e} > {F32_TOLERANCE:e}"
    );
}

// heads2x32: 2 heads × 32, grid 3×6×10 (tokens 3×3×5), weights stored f32.
#[test]
fn heads2x32_diffusers_f32() {
    check("heads2x32", Dialect::Diffusers, DType::F32);
}

#[test]
fn heads2x32_original_f32() {
    check("heads2x32", Dialect::Original, DType::F32);
}

#[test]
fn heads2x32_comfyui_f32() {
    check("heads2x32", Dialect::ComfyUi, DType::F32);
}

// heads2x64: 2 heads × 64, grid 2×10×6 (tokens 2×5×3), weights bf16-exact, so every storage dtype
// holds the same values: diffusers stored bf16, original f32, ComfyUI f16.
#[test]
fn heads2x64_diffusers_bf16_file_f32_run() {
    check("heads2x64", Dialect::Diffusers, DType::BF16);
}

#[test]
fn heads2x64_original_f32() {
    check("heads2x64", Dialect::Original, DType::F32);
}

#[test]
fn heads2x64_comfyui_f16_file_f32_run() {
    check("heads2x64", Dialect::ComfyUi, DType::F16);
}

#[test]
fn heads2x64_bf16_run() {
    let err = run("heads2x64", Dialect::Diffusers, DType::BF16, DType::BF16);
    assert!(
        err <= BF16_TOLERANCE,
        "bf16 run: relative error {err:.3e} > {BF16_TOLERANCE:e}"
    );
}

#[test]
fn heads2x32_bf16_run_from_f32_file() {
    let err = run("heads2x32", Dialect::Original, DType::F32, DType::BF16);
    assert!(
        err <= BF16_TOLERANCE,
        "bf16 run: relative error {err:.3e} > {BF16_TOLERANCE:e}"
    );
}

#[test]
fn both_config_dialects_describe_the_same_model() {
    for case in ["heads2x32", "heads2x64"] {
        let diffusers = WanConfig::from_json_file(&fixture(case).join("config.json")).unwrap();
        let original =
            WanConfig::from_json_file(&fixture(case).join("config_original.json")).unwrap();
        assert_eq!(diffusers, original, "{case}");
    }
}

#[test]
fn open_reads_a_diffusers_directory_with_its_config() {
    let model = WanTransformer::open(&fixture("heads2x32"), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config().head_dim, 32);
    let io = io("heads2x32");
    let out = forward_on_io(&model, &io, &mut DenseAttention);
    assert!(relative_error(&out, &io["velocity"]) <= F32_TOLERANCE);

    // Another grid in between (one frame, narrower) must not leave stale position tables behind.
    let cropped = io["latents"]
        .narrow(2, 0, 1)
        .unwrap()
        .narrow(4, 0, 6)
        .unwrap();
    let small = model.forward(
        &cropped,
        &io["timesteps"],
        &io["context"],
        &mut DenseAttention,
    );
    assert_eq!(small.unwrap().dims(), &[2, 16, 1, 6, 6]);
    let again = forward_on_io(&model, &io, &mut DenseAttention);
    assert!(relative_error(&again, &out) == 0.0);
}

#[test]
fn sharded_original_checkpoint_directory_opens_through_its_index() {
    // The layout of the original 14B release: shards, an index, and the WanModel config.json.
    let dir = tempfile::tempdir().unwrap();
    let map = original_keys("heads2x32");
    let tensors =
        candle_core::safetensors::load(fixture("heads2x32").join(WEIGHTS), &Device::Cpu).unwrap();
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    let names = [
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model-00002-of-00002.safetensors",
    ];
    let mut weight_map = serde_json::Map::new();
    for (shard, chunk) in keys.chunks(keys.len().div_ceil(2)).enumerate() {
        let part: HashMap<String, Tensor> = chunk
            .iter()
            .map(|k| (map[*k].clone(), tensors[*k].clone()))
            .collect();
        candle_core::safetensors::save(&part, dir.path().join(names[shard])).unwrap();
        for k in chunk {
            weight_map.insert(map[*k].clone(), names[shard].into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        dir.path()
            .join("diffusion_pytorch_model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    std::fs::copy(
        fixture("heads2x32").join("config_original.json"),
        dir.path().join("config.json"),
    )
    .unwrap();

    let model = WanTransformer::open(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let io = io("heads2x32");
    let out = forward_on_io(&model, &io, &mut DenseAttention);
    let err = relative_error(&out, &io["velocity"]);
    assert!(err <= F32_TOLERANCE, "sharded: relative error {err:.3e}");
}

#[test]
fn single_comfyui_file_without_config_gets_its_config_from_the_shapes() {
    // heads2x64 is 128 wide; inference assumes the released head_dim 128, so it reads 1 head × 128.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wan2.1_t2v_tiny_fp16.safetensors");
    let map = original_keys("heads2x64");
    let rename = |k: &str| format!("model.diffusion_model.{}", map[k]);
    rewrite(
        &fixture("heads2x64").join(WEIGHTS),
        &path,
        rename,
        DType::F16,
    );
    let model = WanTransformer::open(&path, DType::F32, &Device::Cpu).unwrap();
    let stated = WanConfig::from_json_file(&fixture("heads2x64").join("config.json")).unwrap();
    let expected = WanConfig {
        num_heads: 1,
        head_dim: 128,
        ..stated
    };
    assert_eq!(model.config(), &expected);
}

/// The transformer of the tiny end-to-end pipeline fixture, opened from its diffusers directory
/// (config.json with freq_dim 64, text_dim 32, head_dim 16), on that fixture's noise and 512-row
/// prompt embeddings, against diffusers' velocity for the same batch.
#[test]
fn tiny_pipeline_transformer_matches_diffusers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny_pipeline");
    let model =
        WanTransformer::open(&dir.join("model/transformer"), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config().text_dim, 32);
    let inputs =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let expected =
        candle_core::safetensors::load(fixture("tiny_pipeline_velocity.safetensors"), &Device::Cpu)
            .unwrap();
    let noise = &inputs["noise"]; // [1, 16, 3, 4, 6]
    let latents = Tensor::cat(&[noise, &(noise * 0.5).unwrap()], 0).unwrap();
    let context = Tensor::cat(
        &[&inputs["prompt_embeds"], &inputs["negative_prompt_embeds"]],
        0,
    )
    .unwrap();
    let out = model
        .forward(
            &latents,
            &expected["timesteps"],
            &context,
            &mut DenseAttention,
        )
        .unwrap();
    let err = relative_error(&out, &expected["velocity"]);
    eprintln!("tiny pipeline transformer: relative error {err:.3e}");
    assert!(err <= F32_TOLERANCE, "relative error {err:.3e}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let model = WanTransformer::open(&fixture("heads2x32"), DType::F32, &Device::Cpu).unwrap();
    let io = io("heads2x32");
    let (latents, t, context) = (&io["latents"], &io["timesteps"], &io["context"]);
    let message = |latents: &Tensor, t: &Tensor, context: &Tensor| -> String {
        match model.forward(latents, t, context, &mut DenseAttention) {
            Err(e @ ModelError::InvalidInput(_)) => e.to_string(),
            other => panic!("expected an InvalidInput error, got {other:?}"),
        }
    };
    let eight_channels = latents.narrow(1, 0, 8).unwrap();
    assert!(message(&eight_channels, t, context).contains("8 channels"));
    let odd_width = latents.narrow(4, 0, 9).unwrap();
    assert!(message(&odd_width, t, context).contains("patch size"));
    let three_timesteps = Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap();
    assert!(message(latents, &three_timesteps, context).contains("timesteps"));
    let wide_text = Tensor::zeros((2, 7, 17), DType::F32, &Device::Cpu).unwrap();
    assert!(message(latents, t, &wide_text).contains("context must be [2, Lt, 16]"));
}
