//! Broken or foreign checkpoints give clear errors (naming the key, the shapes and the file),
//! never a panic. Each case starts from the valid heads2x32 fixture and damages a copy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use vdit_models::wan::{WanConfig, WanTransformer};
use vdit_models::weights::{WeightFiles, WeightsError};
use vdit_models::ModelError;

const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/dit/heads2x32")
}

fn config() -> WanConfig {
    WanConfig::from_json_file(&fixture().join("config.json")).unwrap()
}

fn tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join(WEIGHTS), &Device::Cpu).unwrap()
}

/// Loads the transformer from `path` with the fixture's config; returns the error.
fn load_error(path: &Path) -> ModelError {
    let result = WeightFiles::open(path)
        .map_err(ModelError::from)
        .and_then(|files| {
            WanTransformer::load(&Arc::new(files), &config(), DType::F32, &Device::Cpu)
        });
    match result {
        Ok(_) => panic!("{} loaded although it is broken", path.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_tensor_names_the_key_its_shape_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.safetensors");
    let mut weights = tensors();
    weights.remove("blocks.1.attn2.norm_k.weight").unwrap();
    candle_core::safetensors::save(&weights, &path).unwrap();

    let err = load_error(&path);
    assert!(
        matches!(err, ModelError::Weights(WeightsError::MissingTensor { .. })),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("`blocks.1.attn2.norm_k.weight`"),
        "{message}"
    );
    assert!(message.contains("[64]"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
}

#[test]
fn missing_tensor_in_an_original_checkpoint_is_named_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("original.safetensors");
    let text = std::fs::read_to_string(fixture().join("original_keys.json")).unwrap();
    let map: HashMap<String, String> = serde_json::from_str(&text).unwrap();
    let mut weights: HashMap<String, Tensor> = tensors()
        .into_iter()
        .map(|(k, t)| (map[&k].clone(), t))
        .collect();
    weights.remove("blocks.0.norm3.bias").unwrap(); // diffusers calls it blocks.0.norm2.bias
    candle_core::safetensors::save(&weights, &path).unwrap();

    let message = load_error(&path).to_string();
    assert!(message.contains("`blocks.0.norm3.bias`"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
}

#[test]
fn wrong_shape_names_the_key_both_shapes_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrong_shape.safetensors");
    let mut weights = tensors();
    let wrong = Tensor::zeros((48, 64), DType::F32, &Device::Cpu).unwrap();
    weights.insert("blocks.0.ffn.net.0.proj.weight".into(), wrong);
    candle_core::safetensors::save(&weights, &path).unwrap();

    let err = load_error(&path);
    assert!(
        matches!(err, ModelError::Weights(WeightsError::ShapeMismatch { .. })),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("`blocks.0.ffn.net.0.proj.weight`"),
        "{message}"
    );
    assert!(
        message.contains("[48, 64]") && message.contains("[64, 64]"),
        "{message}"
    );
    assert!(message.contains(&path.display().to_string()), "{message}");
}

#[test]
fn config_that_does_not_match_the_weights_is_a_shape_error() {
    let heads2x64 = fixture().join("../heads2x64/config.json");
    let cfg = WanConfig::from_json_file(&heads2x64).unwrap();
    let files = Arc::new(WeightFiles::open(&fixture().join(WEIGHTS)).unwrap());
    let err = WanTransformer::load(&files, &cfg, DType::F32, &Device::Cpu).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("patch_embedding.weight") && message.contains("[128, 16, 1, 2, 2]"),
        "{message}"
    );
}

#[test]
fn truncated_file_is_reported_with_its_path() {
    let bytes = std::fs::read(fixture().join(WEIGHTS)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Cut in the tensor data, and cut inside the JSON header.
    for (name, len) in [
        ("half.safetensors", bytes.len() / 2),
        ("header.safetensors", 100),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes[..len]).unwrap();
        let err = load_error(&path);
        assert!(
            matches!(
                err,
                ModelError::Weights(WeightsError::NotSafetensors { .. })
            ),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("truncated"), "{message}");
    }
}

#[test]
fn file_that_is_not_safetensors_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8]); 3] = [
        (
            "model.pth",
            b"PK\x03\x04\x14\x00\x00\x00\x08\x00archive/data.pkl",
        ), // a torch zip
        ("notes.safetensors", b"this is a text file, not tensors\n"),
        ("empty.safetensors", b""),
    ];
    for (name, content) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let err = load_error(&path);
        assert!(
            matches!(
                err,
                ModelError::Weights(WeightsError::NotSafetensors { .. })
            ),
            "{name}: {err:?}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}

#[test]
fn safetensors_of_another_model_is_not_taken_for_a_wan_transformer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vae.safetensors");
    let conv = Tensor::zeros((4, 3, 3, 3), DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &HashMap::from([("decoder.conv_in.weight".to_string(), conv)]),
        &path,
    )
    .unwrap();
    let err = load_error(&path);
    assert!(
        matches!(err, ModelError::UnsupportedCheckpoint { .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("not a Wan transformer") && message.contains("decoder.conv_in.weight"),
        "{message}"
    );
}

#[test]
fn directory_without_weights_or_with_a_bad_config_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let err = WanTransformer::open(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    assert!(
        matches!(err, ModelError::Weights(WeightsError::NoWeights { .. })),
        "{err:?}"
    );

    std::fs::copy(fixture().join(WEIGHTS), dir.path().join(WEIGHTS)).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"_class_name": "AutoencoderKLWan"}"#,
    )
    .unwrap();
    let err = WanTransformer::open(dir.path(), DType::F32, &Device::Cpu).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, ModelError::Config { .. }), "{err:?}");
    assert!(
        message.contains("config.json") && message.contains("not a Wan transformer config"),
        "{message}"
    );
}

#[test]
fn single_file_without_config_and_unusual_width_asks_for_a_config() {
    // Heads cannot be read from shapes; released models use head_dim 128, this fixture does not.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("single.safetensors");
    std::fs::copy(fixture().join(WEIGHTS), &path).unwrap();
    let err = WanTransformer::open(&path, DType::F32, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("pass a config.json"), "{err}");
}
