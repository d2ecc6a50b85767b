//! umT5 encoder parity with transformers' UMT5EncoderModel on a tiny random-weight model
//! (fixtures from scripts/reference/gen_umt5_fixtures.py), in both key dialects.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, IndexOp, Tensor};
use vdit_models::umt5::layers::relative_position_bucket;
use vdit_models::umt5::{Umt5Config, Umt5Dialect, Umt5Encoder};
use vdit_models::weights::WeightFiles;
use vdit_models::ModelError;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn umt5_dir() -> PathBuf {
    fixtures().join("umt5")
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(umt5_dir().join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn open(path: &Path) -> Arc<WeightFiles> {
    Arc::new(WeightFiles::open(path).unwrap())
}

fn hf_config() -> Umt5Config {
    Umt5Config::from_json_file(&umt5_dir().join("hf/config.json")).unwrap()
}

/// ‖out − ref‖ / ‖ref‖ in f64.
fn relative_error(out: &Tensor, reference: &Tensor) -> f64 {
    rainfusion::reference::relative_error(out, reference).unwrap()
}

/// The real-token lengths of the reference batch rows.
fn lengths(reference: &HashMap<String, Tensor>) -> Vec<usize> {
    let mask = reference["attention_mask"].to_dtype(DType::F32).unwrap();
    let sums = mask.sum(1).unwrap().to_vec1::<f32>().unwrap();
    sums.into_iter().map(|s| s as usize).collect()
}

/// Compares the encoder's masked batch output with transformers', over real-token rows only
/// (rows of padding positions are not part of any contract).
fn batch_error(encoder: &Umt5Encoder) -> f64 {
    let reference = reference();
    let ids = reference["input_ids"].to_dtype(DType::U32).unwrap();
    let out = encoder
        .forward_masked(&ids, Some(&reference["attention_mask"]))
        .unwrap();
    let expected = &reference["last_hidden_state"];
    let (mut real_out, mut real_ref) = (Vec::new(), Vec::new());
    for (row, len) in lengths(&reference).into_iter().enumerate() {
        real_out.push(out.i((row, ..len)).unwrap());
        real_ref.push(expected.i((row, ..len)).unwrap());
    }
    relative_error(
        &Tensor::cat(&real_out, 0).unwrap(),
        &Tensor::cat(&real_ref, 0).unwrap(),
    )
}

#[test]
fn relative_buckets_match_transformers() {
    let reference = reference();
    let positions = reference["relative_positions"].to_vec1::<i64>().unwrap();
    let buckets = reference["relative_buckets"].to_vec1::<i64>().unwrap();
    for (rel, expected) in positions.iter().zip(&buckets) {
        assert_eq!(
            relative_position_bucket(*rel, 32, 128) as i64,
            *expected,
            "bucket of relative position {rel}"
        );
    }
    // The spec's worked values (wan2.1.md §4.1).
    for (rel, bucket) in [
        (-200, 15),
        (-64, 14),
        (-20, 10),
        (-8, 8),
        (-1, 1),
        (0, 0),
        (1, 17),
    ]
    .into_iter()
    .chain([(7, 23), (8, 24), (12, 25), (20, 26), (64, 30), (128, 31)])
    {
        assert_eq!(relative_position_bucket(rel, 32, 128), bucket, "rel {rel}");
    }
}

#[test]
fn hf_keys_f32_match_transformers() {
    let files = open(&umt5_dir().join("hf"));
    let encoder = Umt5Encoder::load(&files, &hf_config(), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(encoder.dialect(), Umt5Dialect::HuggingFace { .. }));
    let err = batch_error(&encoder);
    println!("umT5 f32, transformers keys: relative error {err:.3e}");
    assert!(err <= 1e-4, "relative error {err:.3e} > 1e-4");
}

#[test]
fn wan_original_keys_f32_match_transformers() {
    let files = open(&umt5_dir().join("wan/model.safetensors"));
    // Wan's original file has no config.json: the sizes come from the tensor shapes.
    let cfg = Umt5Config::from_weights(&files).unwrap();
    assert_eq!(cfg, hf_config());
    let encoder = Umt5Encoder::load(&files, &cfg, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(encoder.dialect(), &Umt5Dialect::WanOriginal);
    let err = batch_error(&encoder);
    println!("umT5 f32, Wan original keys: relative error {err:.3e}");
    assert!(err <= 1e-4, "relative error {err:.3e} > 1e-4");
}

#[test]
fn open_reads_a_directory_or_a_bare_file() {
    let from_dir = Umt5Encoder::open(&umt5_dir().join("hf"), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(from_dir.config(), &hf_config());
    // A bare HF-keyed file (as ComfyUI ships it) has no config: sizes come from the shapes.
    let from_file = Umt5Encoder::open(
        &umt5_dir().join("hf/model.safetensors"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(from_file.config(), &hf_config());
    let err = batch_error(&from_file);
    assert!(err <= 1e-4, "relative error {err:.3e}");
    let msg = Umt5Encoder::open(&umt5_dir().join("missing"), DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("missing"), "{msg}");
}

/// Some exports store the embedding only under the encoder's name.
#[test]
fn embedding_under_encoder_embed_tokens_loads() {
    let mut tensors =
        candle_core::safetensors::load(umt5_dir().join("hf/model.safetensors"), &Device::Cpu)
            .unwrap();
    let embedding = tensors.remove("shared.weight").unwrap();
    tensors.insert("encoder.embed_tokens.weight".to_string(), embedding);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("embed_tokens.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let encoder = Umt5Encoder::load(&open(&path), &hf_config(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(
        encoder.dialect(),
        &Umt5Dialect::HuggingFace {
            embedding_key: "encoder.embed_tokens.weight".to_string()
        }
    );
    let err = batch_error(&encoder);
    assert!(err <= 1e-4, "relative error {err:.3e}");
}

#[test]
fn bf16_weights_match_within_bf16_tolerance() {
    let files = open(&umt5_dir().join("hf"));
    let encoder = Umt5Encoder::load(&files, &hf_config(), DType::BF16, &Device::Cpu).unwrap();
    let err = batch_error(&encoder);
    println!("umT5 bf16 weights: relative error {err:.3e}");
    assert!(err <= 2e-2, "relative error {err:.3e} > 2e-2");
}

#[test]
fn encode_padded_runs_real_tokens_then_appends_zero_rows() {
    let reference = reference();
    let files = open(&umt5_dir().join("hf"));
    let encoder = Umt5Encoder::load(&files, &hf_config(), DType::F32, &Device::Cpu).unwrap();
    let ids = reference["input_ids"].to_dtype(DType::U32).unwrap();
    let max_len = 200;
    for (row, len) in lengths(&reference).into_iter().enumerate() {
        let row_ids = ids.i((row, ..len)).unwrap().to_vec1::<u32>().unwrap();
        let padded = encoder.encode_padded(&row_ids, max_len).unwrap();
        assert_eq!(padded.dims(), [1, max_len, 32]);
        let real = padded.i((0, ..len)).unwrap();
        let err = relative_error(
            &real,
            &reference["last_hidden_state"].i((row, ..len)).unwrap(),
        );
        println!("encode_padded row {row} ({len} tokens): relative error {err:.3e}");
        assert!(err <= 1e-4, "row {row}: relative error {err:.3e}");
        let tail = padded
            .i((0, len..))
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(
            tail.to_scalar::<f32>().unwrap(),
            0.0,
            "row {row}: padding rows not zero"
        );
    }
    // A prompt exactly max_len long gets no padding.
    let exact = encoder.encode_padded(&[5, 6, 1], 3).unwrap();
    assert_eq!(exact.dims(), [1, 3, 32]);
}

/// candle's t5.rs reuses layer 0's bias table in every layer; with umT5 weights that must give
/// visibly different numbers, which the parity tests above would catch.
#[test]
fn every_layer_applies_its_own_bias_table() {
    let mut tensors =
        candle_core::safetensors::load(umt5_dir().join("hf/model.safetensors"), &Device::Cpu)
            .unwrap();
    let key = |i: usize| {
        format!("encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight")
    };
    let layer0 = tensors[&key(0)].clone();
    for i in 1..hf_config().num_layers {
        tensors.insert(key(i), layer0.clone());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared_bias.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let encoder = Umt5Encoder::load(&open(&path), &hf_config(), DType::F32, &Device::Cpu).unwrap();
    let err = batch_error(&encoder);
    println!("layer-0 bias reused everywhere: relative error {err:.3e}");
    assert!(
        err > 1e-2,
        "sharing layer 0's bias changed the output by only {err:.3e}"
    );
}

#[test]
fn tiny_pipeline_text_encoder_matches_diffusers_prompt_embeds() {
    let pipeline = fixtures().join("tiny_pipeline");
    let model = pipeline.join("model");
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pipeline.join("reference.json")).unwrap())
            .unwrap();
    let reference =
        candle_core::safetensors::load(pipeline.join("reference.safetensors"), &Device::Cpu)
            .unwrap();
    let tokenizer =
        vdit_models::tokenizer::PromptTokenizer::from_file(&model.join("tokenizer/tokenizer.json"))
            .unwrap();
    let cfg = Umt5Config::from_json_file(&model.join("text_encoder/config.json")).unwrap();
    let files = open(&model.join("text_encoder"));
    let encoder = Umt5Encoder::load(&files, &cfg, DType::F32, &Device::Cpu).unwrap();
    let max_len = settings["max_sequence_length"].as_u64().unwrap() as usize;
    for (prompt_key, embeds_key) in [
        ("prompt", "prompt_embeds"),
        ("negative_prompt", "negative_prompt_embeds"),
    ] {
        let prompt = settings[prompt_key].as_str().unwrap();
        let ids = tokenizer.encode(prompt, max_len).unwrap();
        let embeds = encoder.encode_padded(&ids, max_len).unwrap();
        let expected = &reference[embeds_key];
        let err = relative_error(&embeds, expected);
        println!(
            "tiny_pipeline {embeds_key} ({} tokens): relative error {err:.3e}",
            ids.len()
        );
        assert!(err <= 1e-4, "{embeds_key}: relative error {err:.3e}");
        // diffusers zero-pads after the real tokens too: the zero rows must coincide.
        let ref_rows = expected.i(0).unwrap().abs().unwrap().sum(1).unwrap();
        let ref_real = ref_rows
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .filter(|s| **s > 0.0)
            .count();
        assert_eq!(ids.len(), ref_real, "{embeds_key}: real-token count");
    }
}

#[test]
fn bad_inputs_give_clear_errors() {
    let files = open(&umt5_dir().join("hf"));
    let cfg = hf_config();
    let encoder = Umt5Encoder::load(&files, &cfg, DType::F32, &Device::Cpu).unwrap();

    let too_large = Tensor::new(&[[3u32, 300, 1]], &Device::Cpu).unwrap();
    let msg = encoder.forward(&too_large).unwrap_err().to_string();
    assert!(msg.contains("300") && msg.contains("vocabulary"), "{msg}");

    let flat = Tensor::new(&[3u32, 4, 1], &Device::Cpu).unwrap();
    let msg = encoder.forward(&flat).unwrap_err().to_string();
    assert!(msg.contains("[batch, len]"), "{msg}");

    let msg = encoder.encode_padded(&[], 512).unwrap_err().to_string();
    assert!(msg.contains("empty"), "{msg}");
    let msg = encoder.encode_padded(&[4; 10], 8).unwrap_err().to_string();
    assert!(msg.contains("exceed"), "{msg}");

    let ids = Tensor::new(&[[3u32, 4, 1]], &Device::Cpu).unwrap();
    let wrong_mask = Tensor::new(&[[1u32, 1]], &Device::Cpu).unwrap();
    let msg = encoder
        .forward_masked(&ids, Some(&wrong_mask))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("attention mask"), "{msg}");

    let msg = Umt5Encoder::load(&files, &cfg, DType::F16, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("F16") && msg.contains("bf16"), "{msg}");

    // One layer too many: the error names the key as the Wan file spells it.
    let wan = open(&umt5_dir().join("wan/model.safetensors"));
    let deeper = Umt5Config {
        num_layers: cfg.num_layers + 1,
        ..cfg.clone()
    };
    let msg = format!(
        "{:#}",
        Umt5Encoder::load(&wan, &deeper, DType::F32, &Device::Cpu).unwrap_err()
    );
    assert!(msg.contains("blocks.3.norm1.weight"), "{msg}");

    // Wrong width: shape mismatch naming key and shapes.
    let wider = Umt5Config {
        d_model: 64,
        ..cfg.clone()
    };
    let msg = format!(
        "{:#}",
        Umt5Encoder::load(&files, &wider, DType::F32, &Device::Cpu).unwrap_err()
    );
    assert!(
        msg.contains("shared.weight") && msg.contains("[300, 32]"),
        "{msg}"
    );

    // Not a umT5 checkpoint at all.
    let dit = open(&fixtures().join("tiny_pipeline/model/transformer"));
    let err = Umt5Encoder::load(&dit, &cfg, DType::F32, &Device::Cpu).unwrap_err();
    assert!(
        matches!(err, ModelError::UnrecognizedCheckpoint { .. }),
        "{err}"
    );

    // A config that is not gated-gelu.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(
        &path,
        r#"{"vocab_size": 10, "d_model": 8, "d_kv": 2, "d_ff": 16, "num_heads": 4,
            "num_layers": 1, "feed_forward_proj": "relu"}"#,
    )
    .unwrap();
    let msg = Umt5Config::from_json_file(&path).unwrap_err().to_string();
    assert!(
        msg.contains("feed_forward_proj") && msg.contains("relu"),
        "{msg}"
    );
}

/// ComfyUI's `umt5_xxl_fp8_e4m3fn_scaled.safetensors` form: the matrices in `float8_e4m3fn`, each
/// with a per-tensor `<name>.scale_weight`. The projections stay fp8 and are scaled at each
/// forward, the table is scaled at load; dropping the scales must show.
#[test]
fn scaled_fp8_file_matches_transformers() {
    let tensors =
        candle_core::safetensors::load(umt5_dir().join("hf/model.safetensors"), &Device::Cpu)
            .unwrap();
    let mut scaled = HashMap::new();
    for (key, t) in &tensors {
        if t.rank() != 2 || key.contains("relative_attention_bias") {
            scaled.insert(key.clone(), t.clone());
            continue;
        }
        // Per-tensor scale: the largest magnitude lands on e4m3's largest finite value, 448.
        let scale = t
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            / 448.0;
        let stored = (t / scale as f64).unwrap().to_dtype(DType::F8E4M3).unwrap();
        let stem = key.strip_suffix("weight").unwrap();
        scaled.insert(key.clone(), stored);
        scaled.insert(
            format!("{stem}scale_weight"),
            Tensor::new(&[scale], &Device::Cpu).unwrap(),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("umt5_fp8_scaled.safetensors");
    candle_core::safetensors::save(&scaled, &path).unwrap();
    let files = open(&path);
    assert_eq!(files.stored_dtype(HF_Q), Some(DType::F8E4M3));
    let encoder = Umt5Encoder::load(&files, &hf_config(), DType::F32, &Device::Cpu).unwrap();
    let err = batch_error(&encoder);
    println!("umT5 scaled fp8 (e4m3fn, per-tensor scale), f32 run: relative error {err:.3e}");
    // Measured 1.1e-1: e4m3's 3-bit mantissa, amplified by this random model (its Q8_0 GGUF form
    // is 2.7e-2 off, umt5_gguf_parity.rs); bounded at about twice that.
    assert!(err <= 0.2, "relative error {err:.3e} > 0.2");

    // The same values without their scales: far off, so the scales above were applied.
    scaled.retain(|k, _| !k.ends_with("scale_weight"));
    let unscaled = dir.path().join("umt5_fp8_unscaled.safetensors");
    candle_core::safetensors::save(&scaled, &unscaled).unwrap();
    let encoder =
        Umt5Encoder::load(&open(&unscaled), &hf_config(), DType::F32, &Device::Cpu).unwrap();
    let err_unscaled = batch_error(&encoder);
    println!("the same without scale_weight: relative error {err_unscaled:.3e}");
    assert!(err_unscaled > 5.0 * err, "{err_unscaled:.3e} vs {err:.3e}");
}

const HF_Q: &str = "encoder.block.0.layer.0.SelfAttention.q.weight";
