//! LoRAs against diffusers' `load_lora_weights`: one random LoRA per published key form on the
//! f32 `heads2x32` transformer fixture (scripts/reference/gen_lora_fixtures.py), merged at load
//! and kept unmerged, alone and two stacked; and the errors for LoRAs that do not fit.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rainfusion::DenseAttention;
use vdit_models::lora::{LoraMode, LoraSet, LoraSpec};
use vdit_models::wan::keys::lora_targets;
use vdit_models::wan::{WanConfig, WanTransformer};
use vdit_models::weights::WeightFiles;
use vdit_models::ModelError;

mod common;
use common::{fixture, fixtures_root, forward_on_io, load_io, relative_error};

const F32_TOLERANCE: f64 = 1e-4;

fn lora_file(case: &str) -> PathBuf {
    fixtures_root()
        .join("lora")
        .join(format!("{case}.safetensors"))
}

fn reference(case: &str) -> Tensor {
    let refs = candle_core::safetensors::load(
        fixtures_root().join("lora/reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    refs[case].clone()
}

fn base() -> (Arc<WeightFiles>, WanConfig) {
    let dir = fixture("heads2x32");
    let files = Arc::new(WeightFiles::open(&dir).unwrap());
    let cfg = WanTransformer::config_for(&dir, &files).unwrap();
    (files, cfg)
}

fn open(specs: &[LoraSpec], mode: LoraMode, partial: bool) -> Result<LoraSet, ModelError> {
    let (_, cfg) = base();
    LoraSet::open(specs, &lora_targets(&cfg), mode, partial)
}

/// The velocity of the fixture transformer with `specs` applied in `mode`.
fn velocity(specs: &[LoraSpec], mode: LoraMode) -> Tensor {
    let (files, cfg) = base();
    let set = open(specs, mode, false).unwrap();
    let model =
        WanTransformer::load_with_lora(&files, &cfg, DType::F32, &Device::Cpu, Some(Arc::new(set)))
            .unwrap();
    let io: HashMap<String, Tensor> = load_io(&fixture("heads2x32"), &Device::Cpu);
    forward_on_io(&model, &io, &mut DenseAttention)
}

fn spec(case: &str, strength: f64) -> LoraSpec {
    LoraSpec {
        path: lora_file(case),
        strength,
    }
}

fn check(case: &str, strength: f64) {
    let expected = reference(case);
    for mode in [LoraMode::Merge, LoraMode::Runtime] {
        let err = relative_error(&velocity(&[spec(case, strength)], mode), &expected);
        eprintln!("{case} {}: relative error {err:.2e}", mode.name());
        assert!(err <= F32_TOLERANCE, "{case} {}: {err:.3e}", mode.name());
    }
}

#[test]
fn peft_lora_matches_diffusers() {
    check("peft", 0.7);
}

#[test]
fn kohya_lora_with_alpha_matches_diffusers() {
    check("kohya", 1.0);
}

#[test]
fn lightx2v_lora_with_full_deltas_matches_diffusers() {
    check("lightx2v", 1.0);
}

#[test]
fn musubi_lora_matches_diffusers() {
    check("musubi", 1.3);
}

#[test]
fn two_stacked_loras_match_diffusers() {
    let expected = reference("stacked");
    for mode in [LoraMode::Merge, LoraMode::Runtime] {
        let out = velocity(&[spec("peft", 0.6), spec("kohya", -0.8)], mode);
        let err = relative_error(&out, &expected);
        assert!(err <= F32_TOLERANCE, "stacked {}: {err:.3e}", mode.name());
    }
}

#[test]
fn strength_zero_gives_the_base_model() {
    let io = load_io(&fixture("heads2x32"), &Device::Cpu);
    let err = relative_error(
        &velocity(&[spec("lightx2v", 0.0)], LoraMode::Merge),
        &io["velocity"],
    );
    assert!(err <= F32_TOLERANCE, "{err:.3e}");
}

#[test]
fn summaries_name_the_format_and_the_layers() {
    let set = open(
        &[spec("kohya", 1.0), spec("musubi", 1.0)],
        LoraMode::Merge,
        false,
    )
    .unwrap();
    let summaries = set.summaries();
    // 2 blocks × 10 linear layers, plus the head for the kohya file.
    assert_eq!(
        (summaries[0].format, summaries[0].layers),
        ("original Wan (lora_down/up)", 21)
    );
    assert_eq!((summaries[1].format, summaries[1].layers), ("kohya", 20));
}

/// Copies a fixture LoRA with extra or renamed keys.
fn doctored(
    case: &str,
    edit: impl Fn(&mut HashMap<String, Tensor>),
) -> (tempfile::TempDir, LoraSpec) {
    let mut tensors = candle_core::safetensors::load(lora_file(case), &Device::Cpu).unwrap();
    edit(&mut tensors);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("doctored.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    (
        dir,
        LoraSpec {
            path,
            strength: 1.0,
        },
    )
}

#[test]
fn a_lora_for_another_model_is_refused() {
    let (_dir, spec) = doctored("peft", |t| {
        let renamed: HashMap<String, Tensor> = t
            .drain()
            .map(|(k, v)| {
                (
                    k.replace("transformer.", "transformer.single_transformer_blocks.0."),
                    v,
                )
            })
            .collect();
        *t = renamed;
    });
    let err = open(&[spec], LoraMode::Merge, true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("none of its") && err.contains("another model"),
        "{err}"
    );
}

#[test]
fn a_partial_match_is_an_error_unless_allowed() {
    let (_dir, spec) = doctored("kohya", |t| {
        let extra = Tensor::zeros((4, 8), DType::F32, &Device::Cpu).unwrap();
        t.insert(
            "diffusion_model.img_emb.proj.1.lora_down.weight".into(),
            extra,
        );
    });
    let err = open(std::slice::from_ref(&spec), LoraMode::Merge, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("1 of its")
            && err.contains("img_emb.proj.1")
            && err.contains("--lora-partial"),
        "{err}"
    );
    let set = open(&[spec], LoraMode::Merge, true).unwrap();
    assert_eq!(set.summaries()[0].ignored.len(), 1);
}

#[test]
fn a_lora_of_another_size_fails_at_load_naming_the_layer() {
    let (_dir, spec) = doctored("peft", |t| {
        let key = "transformer.blocks.0.attn1.to_q.lora_B.weight";
        let wide = Tensor::zeros((96, 4), DType::F32, &Device::Cpu).unwrap();
        t.insert(key.into(), wide);
    });
    let (files, cfg) = base();
    for mode in [LoraMode::Merge, LoraMode::Runtime] {
        let set = open(std::slice::from_ref(&spec), mode, false).unwrap();
        let err = WanTransformer::load_with_lora(
            &files,
            &cfg,
            DType::F32,
            &Device::Cpu,
            Some(Arc::new(set)),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("blocks.0.attn1.to_q") && err.contains("another model size"),
            "{err}"
        );
    }
}

#[test]
fn a_factor_without_its_partner_is_an_error() {
    let (_dir, spec) = doctored("peft", |t| {
        t.remove("transformer.blocks.1.ffn.net.2.lora_B.weight");
    });
    let err = open(&[spec], LoraMode::Merge, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ffn.net.2.lora_A") && err.contains("no partner"),
        "{err}"
    );
}
