//! Block streaming (`--offload blocks`): a transformer whose blocks live on the host and are
//! copied to the compute device one at a time gives exactly the output of the all-resident one,
//! for every kind of weight a block holds (dense, GGUF blocks, fp8 with its scale, unmerged LoRA
//! factors, image cross-attention), and every block of every pass goes through the fetch path.
//!
//! On the CPU the compute and home devices are the same, so dense tensors are shared rather than
//! copied; GGUF blocks are rebuilt from their raw bytes (the path a GPU copy takes). The
//! fetch counter is what fails if streaming silently turns off.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rainfusion::DenseAttention;
use vdit_models::lora::{LoraMode, LoraSet, LoraSpec};
use vdit_models::wan::keys::lora_targets;
use vdit_models::wan::{BlockPlacement, WanConfig, WanTransformer};
use vdit_models::weights::WeightFiles;

mod common;
use common::{differing_values, fixture, fixtures_root, load_io, relative_error};

/// Exactly equal, value by value (as bits: -0.0 and NaN are not waved through).
fn assert_bit_identical(label: &str, a: &Tensor, b: &Tensor) {
    let differing = differing_values(a, b);
    assert_eq!(
        differing,
        0,
        "{label}: {differing} of {} values differ",
        a.elem_count()
    );
}

/// Loads the same weights resident and streamed, runs `passes` forwards of each on the case's
/// inputs and checks: streamed == resident bit for bit, every block fetched once per pass, none
/// fetched when resident. Returns the resident output of the last pass.
fn streamed_equals_resident(
    label: &str,
    load: impl Fn(BlockPlacement) -> WanTransformer,
    io: &HashMap<String, Tensor>,
    passes: u64,
) -> Tensor {
    let resident = load(BlockPlacement::Resident);
    let streamed = load(BlockPlacement::Streamed);
    assert_eq!(resident.block_placement(), BlockPlacement::Resident);
    assert_eq!(streamed.block_placement(), BlockPlacement::Streamed);
    let run = |model: &WanTransformer| -> Tensor {
        model
            .forward_with_image(
                &io["latents"],
                &io["timesteps"],
                &io["context"],
                io.get("image"),
                &mut DenseAttention,
            )
            .unwrap()
    };
    let mut last = None;
    for pass in 0..passes {
        let a = run(&resident);
        let b = run(&streamed);
        assert_bit_identical(&format!("{label}, pass {pass}"), &a, &b);
        last = Some(a);
    }
    let layers = streamed.config().num_layers as u64;
    assert!(
        layers >= 2,
        "{label}: a fixture with one block proves little"
    );
    assert_eq!(
        streamed.block_fetches(),
        layers * passes,
        "{label}: every block of every pass goes through fetch"
    );
    assert_eq!(
        resident.block_fetches(),
        0,
        "{label}: resident blocks are never copied"
    );
    last.unwrap()
}

fn heads2x32() -> (Arc<WeightFiles>, WanConfig, HashMap<String, Tensor>) {
    let dir = fixture("heads2x32");
    let files = Arc::new(WeightFiles::open(&dir).unwrap());
    let cfg = WanConfig::from_json_file(&dir.join("config.json")).unwrap();
    (files, cfg, load_io(&dir, &Device::Cpu))
}

fn load(
    files: &Arc<WeightFiles>,
    cfg: &WanConfig,
    dtype: DType,
    lora: Option<Arc<LoraSet>>,
) -> impl Fn(BlockPlacement) -> WanTransformer {
    let (files, cfg) = (files.clone(), cfg.clone());
    move |placement| {
        WanTransformer::load_placed(&files, &cfg, dtype, &Device::Cpu, lora.clone(), placement)
            .unwrap()
    }
}

#[test]
fn dense_f32_streamed_equals_resident_and_matches_diffusers() {
    let (files, cfg, io) = heads2x32();
    let out = streamed_equals_resident("dense f32", load(&files, &cfg, DType::F32, None), &io, 2);
    // The output is the model's, not a trivial one: it still matches diffusers.
    let err = relative_error(&out, &io["velocity"]);
    assert!(err <= 1e-4, "relative error {err:.3e}");
}

#[test]
fn dense_bf16_streamed_equals_resident() {
    let (files, cfg, io) = heads2x32();
    streamed_equals_resident("dense bf16", load(&files, &cfg, DType::BF16, None), &io, 1);
}

#[test]
fn gguf_q8_0_streamed_equals_resident() {
    let (_, cfg, io) = heads2x32();
    let files =
        Arc::new(WeightFiles::open(&fixtures_root().join("gguf/wan_tiny_q8_0.gguf")).unwrap());
    streamed_equals_resident(
        "gguf q8_0 f32",
        load(&files, &cfg, DType::F32, None),
        &io,
        1,
    );
    streamed_equals_resident(
        "gguf q8_0 bf16",
        load(&files, &cfg, DType::BF16, None),
        &io,
        1,
    );
}

#[test]
fn fp8_scaled_streamed_equals_resident() {
    let (_, cfg, io) = heads2x32();
    let path = fixtures_root().join("fp8/wan_tiny_fp8_scaled.safetensors");
    let files = Arc::new(WeightFiles::open(&path).unwrap());
    streamed_equals_resident(
        "fp8 scaled bf16",
        load(&files, &cfg, DType::BF16, None),
        &io,
        1,
    );
}

#[test]
fn runtime_lora_streamed_equals_resident() {
    let (files, cfg, io) = heads2x32();
    let spec = LoraSpec {
        path: fixtures_root().join("lora/peft.safetensors"),
        strength: 0.8,
    };
    for mode in [LoraMode::Runtime, LoraMode::Merge] {
        let set = LoraSet::open(
            std::slice::from_ref(&spec),
            &lora_targets(&cfg),
            mode,
            false,
        )
        .unwrap();
        let label = format!("lora {}", mode.name());
        let with_lora = streamed_equals_resident(
            &label,
            load(&files, &cfg, DType::F32, Some(Arc::new(set))),
            &io,
            1,
        );
        // The LoRA is in effect: the output moved away from the base model's.
        assert!(
            relative_error(&with_lora, &io["velocity"]) > 1e-3,
            "{label}"
        );
    }
}

#[test]
fn image_cross_attention_streamed_equals_resident() {
    let dir: PathBuf = fixtures_root().join("i2v/wan21_i2v");
    let files = Arc::new(WeightFiles::open(&dir).unwrap());
    let cfg = WanTransformer::config_for(&dir, &files).unwrap();
    assert!(cfg.has_image_input());
    let io = load_io(&dir, &Device::Cpu);
    streamed_equals_resident(
        "wan2.1 i2v f32",
        load(&files, &cfg, DType::F32, None),
        &io,
        1,
    );
}

#[test]
fn random_weights_can_be_streamed_in_every_format() {
    use candle_core::quantized::GgmlDType;
    use vdit_models::weights::RandomWeightFormat;
    let cfg = WanConfig {
        num_heads: 2,
        head_dim: 16,
        num_layers: 3,
        ffn_dim: 64,
        text_dim: 32,
        ..WanConfig::t2v_1_3b()
    };
    let formats = [
        RandomWeightFormat::RunDtype,
        RandomWeightFormat::Gguf(GgmlDType::Q8_0),
        RandomWeightFormat::Fp8Scaled,
    ];
    for format in formats {
        let model = WanTransformer::random_placed(
            &cfg,
            DType::F32,
            &Device::Cpu,
            format,
            BlockPlacement::Streamed,
        )
        .unwrap();
        let latents = Tensor::ones((1, 16, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let timesteps = Tensor::new(&[500f32], &Device::Cpu).unwrap();
        let context = Tensor::ones((1, 3, 32), DType::F32, &Device::Cpu).unwrap();
        let out = model
            .forward(&latents, &timesteps, &context, &mut DenseAttention)
            .unwrap();
        assert_eq!(out.dims(), &[1, 16, 1, 4, 4], "{format:?}");
        let values: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "{format:?}");
        assert_eq!(model.block_fetches(), 3, "{format:?}");
    }
}
