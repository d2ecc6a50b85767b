//! fp8 transformer weights (`float8_e4m3fn`, ComfyUI's scaled files and plain ones): decoding
//! against torch, and the forward pass against the f32 one. Fixtures: tests/fixtures/fp8, from
//! scripts/reference/gen_fp8_fixtures.py (the heads2x32 DiT fixture's weights in fp8).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use rainfusion::DenseAttention;
use vdit_models::lora::{LoraMode, LoraSet, LoraSpec};
use vdit_models::wan::keys::lora_targets;
use vdit_models::wan::{CheckpointKeys, KeyDialect, WanConfig, WanTransformer};
use vdit_models::weights::WeightFiles;

mod common;
use common::{fixture, fixtures_root, forward_on_io, load_io, relative_error};

fn fp8_fixture(name: &str) -> PathBuf {
    fixtures_root().join("fp8").join(name)
}

/// Bounds on the forward's relative error against the f32 weights' (diffusers velocity), about
/// twice what was measured (see the eprintln lines; docs/quantised-weights.md).
const SCALED_F32_BOUND: f64 = 0.1;
const SCALED_BF16_BOUND: f64 = 0.1;
const PLAIN_F32_BOUND: f64 = 0.1;

/// Every e4m3 byte decodes through the loader to torch's value (NaN codes to NaN).
#[test]
fn e4m3_bytes_decode_as_torch_decodes_them() {
    let files = WeightFiles::open(&fp8_fixture("e4m3_values.safetensors")).unwrap();
    assert_eq!(files.stored_dtype("fp8"), Some(DType::F8E4M3));
    let got: Vec<f32> = files
        .load("fp8", None, DType::F32, &Device::Cpu)
        .unwrap()
        .to_vec1()
        .unwrap();
    let want: Vec<f32> = files
        .load("values", None, DType::F32, &Device::Cpu)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(got.len(), 256);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            g == w || (g.is_nan() && w.is_nan()),
            "byte {i:#04x}: {g} vs torch {w}"
        );
    }
}

fn cfg() -> WanConfig {
    WanConfig::from_json_file(&fixture("heads2x32").join("config.json")).unwrap()
}

fn error_of(path: &Path, dtype: DType, lora: Option<LoraSet>) -> f64 {
    let files = Arc::new(WeightFiles::open(path).unwrap());
    let model =
        WanTransformer::load_with_lora(&files, &cfg(), dtype, &Device::Cpu, lora.map(Arc::new))
            .unwrap();
    let io = load_io(&fixture("heads2x32"), &Device::Cpu);
    relative_error(
        &forward_on_io(&model, &io, &mut DenseAttention),
        &io["velocity"],
    )
}

#[test]
fn scaled_fp8_forward_is_close_to_f32() {
    let path = fp8_fixture("wan_tiny_fp8_scaled.safetensors");
    let files = WeightFiles::open(&path).unwrap();
    let keys = CheckpointKeys::detect(&files).unwrap();
    assert_eq!(
        (keys.dialect, keys.prefix.as_str()),
        (KeyDialect::Original, "model.diffusion_model.")
    );
    let f32_err = error_of(&path, DType::F32, None);
    let bf16_err = error_of(&path, DType::BF16, None);
    eprintln!("scaled fp8: rel. error {f32_err:.2e} (f32 compute), {bf16_err:.2e} (bf16 compute)");
    assert!(f32_err <= SCALED_F32_BOUND, "{f32_err}");
    assert!(bf16_err <= SCALED_BF16_BOUND, "{bf16_err}");
    assert!(f32_err > 1e-4, "fp8 must change something: {f32_err}");
}

#[test]
fn plain_fp8_forward_is_close_to_f32() {
    let err = error_of(
        &fp8_fixture("wan_tiny_fp8_e4m3fn.safetensors"),
        DType::F32,
        None,
    );
    eprintln!("plain fp8 e4m3fn: rel. error {err:.2e} (f32 compute)");
    assert!(err <= PLAIN_F32_BOUND, "{err}");
}

/// A LoRA on the scaled fp8 file: kept apart, or merged (the layer is then dense in the run
/// dtype); both near diffusers' velocity of the f32 model with the LoRA.
#[test]
fn lora_on_scaled_fp8_in_both_modes() {
    let refs = candle_core::safetensors::load(
        fixtures_root().join("lora/reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let spec = LoraSpec {
        path: fixtures_root().join("lora/peft.safetensors"),
        strength: 0.7,
    };
    let path = fp8_fixture("wan_tiny_fp8_scaled.safetensors");
    let files = Arc::new(WeightFiles::open(&path).unwrap());
    let io = load_io(&fixture("heads2x32"), &Device::Cpu);
    for mode in [LoraMode::Runtime, LoraMode::Merge] {
        let set = LoraSet::open(
            std::slice::from_ref(&spec),
            &lora_targets(&cfg()),
            mode,
            false,
        )
        .unwrap();
        let model = WanTransformer::load_with_lora(
            &files,
            &cfg(),
            DType::F32,
            &Device::Cpu,
            Some(Arc::new(set)),
        )
        .unwrap();
        let err = relative_error(
            &forward_on_io(&model, &io, &mut DenseAttention),
            &refs["peft"],
        );
        eprintln!("scaled fp8 + LoRA {}: rel. error {err:.2e}", mode.name());
        assert!(err <= SCALED_F32_BOUND, "{}: {err}", mode.name());
    }
}
