//! HunyuanVideo 1.5 text encoders against transformers and diffusers' pipeline functions, on tiny
//! random models (fixtures from scripts/reference/gen_hunyuan15_text.py): Qwen2.5-VL's language
//! model, the prompt template and crop, the ByT5 encoder, the glyph extraction and the ByT5 byte
//! tokenizer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, IndexOp, Tensor};
use serde_json::Value;
use vdit_models::byt5::{ByT5Config, ByT5Encoder, ByT5Tokenizer};
use vdit_models::hunyuan15::text::{
    chat_text, extract_glyph_text, load_tokenizer, template_prefix_tokens, tokenize_prompts,
    GlyphEncoder, HunyuanTextEncoders, HunyuanTextSettings, QwenPromptEncoder, SYSTEM_MESSAGE,
};
use vdit_models::qwen25vl_text::{Qwen25VlTextConfig, Qwen25VlTextModel};
use vdit_models::umt5::{BiasTables, Umt5Encoder};
use vdit_models::weights::WeightFiles;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hunyuan15/text")
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn reference_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("reference.json")).unwrap()).unwrap()
}

fn prompts(json: &Value) -> Vec<String> {
    json["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

/// The pipeline's settings with the fixture's lengths (crop_start is the tiny tokenizer's
/// template prefix; the real tokenizer's is 108).
fn settings(json: &Value) -> HunyuanTextSettings {
    let get = |key: &str| json[key].as_u64().unwrap() as usize;
    HunyuanTextSettings {
        system_message: json["system_message"].as_str().unwrap().to_string(),
        crop_start: get("crop_start"),
        max_length: get("max_length"),
        glyph_max_length: get("glyph_max_length"),
        hidden_layers_to_skip: get("hidden_layers_to_skip"),
    }
}

fn relative_error(out: &Tensor, reference: &Tensor) -> f64 {
    rainfusion::reference::relative_error(out, reference).unwrap()
}

/// The rows of x [B, L, D] where mask [B, L] is nonzero, stacked: [N, D].
fn real_rows(x: &Tensor, mask: &Tensor) -> Tensor {
    let mask = mask.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
    let mut rows = Vec::new();
    for (b, row) in mask.iter().enumerate() {
        for (i, m) in row.iter().enumerate() {
            if *m != 0.0 {
                rows.push(x.i((b, i)).unwrap().unsqueeze(0).unwrap());
            }
        }
    }
    Tensor::cat(&rows, 0).unwrap()
}

/// max |x| over the rows where mask [B, L] is zero (0 when there are none).
fn max_abs_outside(x: &Tensor, mask: &Tensor) -> f32 {
    let keep = (1.0 - mask.to_dtype(DType::F32).unwrap()).unwrap();
    x.broadcast_mul(&keep.unsqueeze(2).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn qwen_model(dtype: DType) -> Qwen25VlTextModel {
    Qwen25VlTextModel::open(&dir().join("text_encoder"), dtype, &Device::Cpu, None).unwrap()
}

#[test]
fn system_message_and_chat_text_match_the_pipeline() {
    let json = reference_json();
    assert_eq!(SYSTEM_MESSAGE, json["system_message"].as_str().unwrap());
    assert_eq!(
        HunyuanTextSettings::default().system_message,
        SYSTEM_MESSAGE
    );
    for (prompt, expected) in prompts(&json)
        .iter()
        .zip(json["chat_texts"].as_array().unwrap())
    {
        assert_eq!(
            chat_text(prompt, SYSTEM_MESSAGE),
            expected.as_str().unwrap(),
            "chat text of {prompt:?}"
        );
    }
}

#[test]
fn qwen_ids_match_apply_chat_template() {
    let json = reference_json();
    let reference = reference();
    let tokenizer = load_tokenizer(&dir().join("tokenizer/tokenizer.json")).unwrap();
    let prompts = prompts(&json);
    let prompt_refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let ids = tokenize_prompts(&tokenizer, &prompt_refs, &settings(&json)).unwrap();
    let expected_ids = reference["qwen_input_ids"].to_vec2::<i64>().unwrap();
    let expected_mask = reference["qwen_attention_mask"].to_vec2::<i64>().unwrap();
    for (row, (ids, (expected, mask))) in ids
        .iter()
        .zip(expected_ids.iter().zip(&expected_mask))
        .enumerate()
    {
        let real = mask.iter().filter(|m| **m != 0).count();
        let expected: Vec<u32> = expected[..real].iter().map(|&i| i as u32).collect();
        assert_eq!(ids, &expected, "prompt {row}: ids");
    }
    // The crop is the template before the prompt.
    assert_eq!(
        template_prefix_tokens(&tokenizer, SYSTEM_MESSAGE).unwrap(),
        settings(&json).crop_start
    );
    // Two prompts are cut at crop_start + max_length, two are padded: both paths are covered.
    let limit = settings(&json).crop_start + settings(&json).max_length;
    assert_eq!(ids.iter().filter(|r| r.len() == limit).count(), 2);
    assert_eq!(ids.iter().filter(|r| r.len() < limit).count(), 2);
}

#[test]
fn qwen_hidden_states_match_transformers() {
    let reference = reference();
    let ids = reference["qwen_input_ids"].to_dtype(DType::U32).unwrap();
    let mask = &reference["qwen_attention_mask"];
    let model = qwen_model(DType::F32);
    assert_eq!(model.config().num_hidden_layers, 4);

    let skip2 = model.hidden_state_from_end(&ids, Some(mask), 2).unwrap();
    let err = relative_error(
        &real_rows(&skip2, mask),
        &real_rows(&reference["qwen_hidden_skip2"], mask),
    );
    println!("Qwen2.5-VL hidden_states[-3] f32: relative error {err:.3e}");
    assert!(err <= 1e-4, "hidden_states[-3]: relative error {err:.3e}");

    let last = model.forward(&ids, Some(mask)).unwrap();
    let err = relative_error(
        &real_rows(&last, mask),
        &real_rows(&reference["qwen_last_hidden"], mask),
    );
    println!("Qwen2.5-VL last_hidden_state f32: relative error {err:.3e}");
    assert!(err <= 1e-4, "last_hidden_state: relative error {err:.3e}");

    // The state read is not the final one: the two differ, so the test can tell them apart.
    let apart = relative_error(
        &real_rows(&reference["qwen_hidden_skip2"], mask),
        &real_rows(&reference["qwen_last_hidden"], mask),
    );
    assert!(
        apart > 0.1,
        "hidden_states[-3] and the last state differ by only {apart:.3e}"
    );
}

#[test]
fn qwen_prompt_embeds_match_the_pipeline() {
    let json = reference_json();
    let reference = reference();
    let encoder =
        QwenPromptEncoder::open(&dir(), settings(&json), DType::F32, &Device::Cpu).unwrap();
    // Only the layers below the state read are loaded.
    assert_eq!(encoder.model().loaded_layers(), 2);
    let prompts = prompts(&json);
    let prompt_refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let (embeds, mask) = encoder.encode(&prompt_refs).unwrap();
    let expected = &reference["prompt_embeds"];
    assert_eq!(embeds.dims(), expected.dims());
    let expected_mask = reference["prompt_embeds_mask"]
        .to_dtype(DType::F32)
        .unwrap();
    assert_eq!(
        mask.to_vec2::<f32>().unwrap(),
        expected_mask.to_vec2::<f32>().unwrap(),
        "mask after the crop"
    );
    let err = relative_error(&real_rows(&embeds, &mask), &real_rows(expected, &mask));
    println!("HunyuanVideo 1.5 Qwen prompt_embeds f32: relative error {err:.3e}");
    assert!(err <= 1e-4, "prompt_embeds: relative error {err:.3e}");
    assert_eq!(
        max_abs_outside(&embeds, &mask),
        0.0,
        "padding rows are zero"
    );

    // One prompt alone gives its rows of the batch: padding does not leak into real tokens.
    let (alone, alone_mask) = encoder.encode(&prompt_refs[1..2]).unwrap();
    let err = relative_error(
        &real_rows(&alone, &alone_mask),
        &real_rows(&expected.i(1..2).unwrap(), &alone_mask),
    );
    assert!(err <= 1e-4, "single prompt: relative error {err:.3e}");
}

#[test]
fn byt5_tokenizer_ids_match_transformers() {
    let json = reference_json();
    let saved = ByT5Tokenizer::from_dir(&dir().join("tokenizer_2")).unwrap();
    let default = ByT5Tokenizer::default();
    let mut compared = 0;
    for case in json["byt5_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let max_len = case["max_length"].as_u64().unwrap() as usize;
        let to_u32 = |v: &Value| -> Vec<u32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        };
        let (ids, mask) = saved.encode_padded(text, max_len);
        assert_eq!(ids, to_u32(&case["ids"]), "ids of {text:?} at {max_len}");
        assert_eq!(mask, to_u32(&case["mask"]), "mask of {text:?} at {max_len}");
        // Without the added tokens in the text, the default tokenizer agrees.
        if !text.contains("<color-0>") && !text.contains("<en-font-1>") {
            assert_eq!(
                default.encode_padded(text, max_len).0,
                ids,
                "default, {text:?}"
            );
        }
        compared += 1;
    }
    assert_eq!(compared, 20);
    // A folder of older transformers (only added_tokens.json) reads the same tokens.
    let older = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir().join("tokenizer_2/added_tokens.json"),
        older.path().join("added_tokens.json"),
    )
    .unwrap();
    let from_json = ByT5Tokenizer::from_dir(older.path()).unwrap();
    for case in json["byt5_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(from_json.tokenize(text), saved.tokenize(text), "{text:?}");
    }
    // The saved folder carries 3 specials, 125 sentinels and the 2 added tokens.
    assert_eq!(saved.added_tokens().len(), 130);
}

#[test]
fn glyph_texts_match_the_pipeline() {
    let json = reference_json();
    let prompts = json["glyph_prompts"].as_array().unwrap();
    let expected = json["glyph_texts"].as_array().unwrap();
    assert_eq!(prompts.len(), expected.len());
    for (prompt, expected) in prompts.iter().zip(expected) {
        let prompt = prompt.as_str().unwrap();
        assert_eq!(
            extract_glyph_text(prompt).as_deref(),
            expected.as_str(),
            "glyph text of {prompt:?}"
        );
    }
}

#[test]
fn byt5_glyph_embeds_match_the_pipeline() {
    let json = reference_json();
    let reference = reference();
    let glyph_max = settings(&json).glyph_max_length;
    let encoder = GlyphEncoder::open(&dir(), glyph_max, DType::F32, &Device::Cpu).unwrap();
    let prompts = prompts(&json);
    let prompt_refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let (embeds, mask) = encoder.encode(&prompt_refs).unwrap();
    let expected = &reference["prompt_embeds_2"];
    assert_eq!(embeds.dims(), expected.dims());
    let expected_mask = reference["prompt_embeds_mask_2"]
        .to_dtype(DType::F32)
        .unwrap();
    let mask_rows = mask.to_vec2::<f32>().unwrap();
    assert_eq!(mask_rows, expected_mask.to_vec2::<f32>().unwrap());
    // Two prompts without quotes (all zero), one short glyph text, one cut at the glyph length.
    let sums: Vec<f32> = mask_rows.iter().map(|r| r.iter().sum()).collect();
    assert_eq!(sums[..2], [0.0, 0.0]);
    assert!(sums[2] > 0.0 && sums[2] < glyph_max as f32);
    assert_eq!(sums[3], glyph_max as f32);
    let err = relative_error(&real_rows(&embeds, &mask), &real_rows(expected, &mask));
    println!("HunyuanVideo 1.5 ByT5 prompt_embeds_2 f32: relative error {err:.3e}");
    assert!(err <= 1e-4, "prompt_embeds_2: relative error {err:.3e}");
    assert_eq!(
        max_abs_outside(&embeds, &mask),
        0.0,
        "padding rows are zero"
    );
    // Prompts without glyph text get exact zeros, as the pipeline gives them.
    let empty_rows = expected.i(0..2).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(empty_rows.to_scalar::<f32>().unwrap(), 0.0);
}

/// The padded, masked batch (what the pipeline runs per prompt) equals the unpadded encoding.
#[test]
fn byt5_masked_padded_run_matches_the_pipeline() {
    let json = reference_json();
    let reference = reference();
    let glyph_max = settings(&json).glyph_max_length;
    let encoder =
        ByT5Encoder::open(&dir().join("text_encoder_2"), DType::F32, &Device::Cpu).unwrap();
    let tokenizer = ByT5Tokenizer::from_dir(&dir().join("tokenizer_2")).unwrap();
    let text = extract_glyph_text(&prompts(&json)[2]).unwrap();
    let (ids, mask) = tokenizer.encode_padded(&text, glyph_max);
    let ids = Tensor::from_vec(ids, (1, glyph_max), &Device::Cpu).unwrap();
    let mask = Tensor::from_vec(mask, (1, glyph_max), &Device::Cpu).unwrap();
    let out = encoder.forward_masked(&ids, Some(&mask)).unwrap();
    let expected = reference["prompt_embeds_2"].i(2..3).unwrap();
    let err = relative_error(&real_rows(&out, &mask), &real_rows(&expected, &mask));
    println!("ByT5 masked padded batch f32: relative error {err:.3e}");
    assert!(err <= 1e-4, "relative error {err:.3e}");
}

/// ByT5 checkpoints have one bias table (layer 0); reading them as umT5 (a table per layer) fails
/// with the missing key, and a ByT5 run that ignored the shared table would differ.
#[test]
fn byt5_shares_layer_zero_bias_table() {
    let files = Arc::new(WeightFiles::open(&dir().join("text_encoder_2")).unwrap());
    let cfg = ByT5Config::from_json_file(&dir().join("text_encoder_2/config.json")).unwrap();
    let msg = format!(
        "{:#}",
        Umt5Encoder::load(&files, &cfg, DType::F32, &Device::Cpu).unwrap_err()
    );
    assert!(
        msg.contains("encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"),
        "{msg}"
    );
    let shared = Umt5Encoder::load_with_bias_tables(
        &files,
        &cfg,
        DType::F32,
        &Device::Cpu,
        BiasTables::SharedFromFirstLayer,
    );
    assert!(shared.is_ok());
}

#[test]
fn bf16_weights_match_within_bf16_tolerance() {
    let json = reference_json();
    let reference = reference();
    let prompts = prompts(&json);
    let prompt_refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let encoders =
        HunyuanTextEncoders::open(&dir(), settings(&json), DType::BF16, &Device::Cpu).unwrap();
    let out = encoders.encode(&prompt_refs).unwrap();
    let err = relative_error(
        &real_rows(&out.qwen_embeds, &out.qwen_mask),
        &real_rows(&reference["prompt_embeds"], &out.qwen_mask),
    );
    println!("Qwen prompt_embeds bf16 weights: relative error {err:.3e}");
    assert!(err <= 2e-2, "Qwen bf16: relative error {err:.3e}");
    let err = relative_error(
        &real_rows(&out.byt5_embeds, &out.byt5_mask),
        &real_rows(&reference["prompt_embeds_2"], &out.byt5_mask),
    );
    println!("ByT5 prompt_embeds_2 bf16 weights: relative error {err:.3e}");
    assert!(err <= 2e-2, "ByT5 bf16: relative error {err:.3e}");
}

#[test]
fn config_reads_both_rope_spellings_and_nested_text_config() {
    let cfg = Qwen25VlTextConfig::from_json_file(&dir().join("text_encoder/config.json")).unwrap();
    assert_eq!(cfg.rope_theta, 10_000.0);
    assert_eq!(cfg.num_key_value_heads, 2);
    // transformers 4 wrote `rope_theta` at the top; a whole model nests the text sizes.
    let old_style = serde_json::json!({
        "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "rope_theta": 5000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 0]}
    });
    let nested = serde_json::json!({"model_type": "qwen2_5_vl", "text_config": old_style.clone()});
    for value in [old_style, nested] {
        let cfg = Qwen25VlTextConfig::from_json_value(&value).unwrap();
        assert_eq!(
            (cfg.rope_theta, cfg.head_dim(), cfg.num_key_value_heads),
            (5000.0, 4, 1)
        );
    }
    let bad = serde_json::json!({
        "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 3
    });
    let msg = Qwen25VlTextConfig::from_json_value(&bad).unwrap_err();
    assert!(msg.contains("num_attention_heads"), "{msg}");
}

#[test]
fn bad_inputs_give_clear_errors() {
    let model = qwen_model(DType::F32);
    let too_large = Tensor::new(&[[3u32, 400, 1]], &Device::Cpu).unwrap();
    let msg = model.forward(&too_large, None).unwrap_err().to_string();
    assert!(msg.contains("400") && msg.contains("vocabulary"), "{msg}");
    let ids = Tensor::new(&[[3u32, 4, 1]], &Device::Cpu).unwrap();
    let wrong_mask = Tensor::new(&[[1u32, 1]], &Device::Cpu).unwrap();
    let msg = model
        .forward(&ids, Some(&wrong_mask))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("attention mask"), "{msg}");
    let msg = model
        .hidden_state_from_end(&ids, None, 5)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("skip 5"), "{msg}");

    let partial = Qwen25VlTextModel::open(
        &dir().join("text_encoder"),
        DType::F32,
        &Device::Cpu,
        Some(2),
    )
    .unwrap();
    let msg = partial.forward(&ids, None).unwrap_err().to_string();
    assert!(msg.contains("2 of 4"), "{msg}");
    let msg = partial
        .forward_layers(&ids, None, 3)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("3 layers"), "{msg}");

    let msg = Qwen25VlTextModel::open(&dir().join("text_encoder"), DType::F16, &Device::Cpu, None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("F16"), "{msg}");

    // A ByT5 folder is not a Qwen checkpoint.
    let files = Arc::new(WeightFiles::open(&dir().join("text_encoder_2")).unwrap());
    let cfg = Qwen25VlTextConfig::from_json_file(&dir().join("text_encoder/config.json")).unwrap();
    let msg = Qwen25VlTextModel::load(&files, &cfg, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("embed_tokens.weight"), "{msg}");
}

/// Whole Qwen2.5-VL checkpoints keep the language model under `model.language_model.`
/// (transformers 4.52 and later) or `model.` (earlier); both load and give the same numbers.
#[test]
fn whole_model_key_prefixes_load() {
    let reference = reference();
    let ids = reference["qwen_input_ids"].to_dtype(DType::U32).unwrap();
    let mask = &reference["qwen_attention_mask"];
    let cfg = Qwen25VlTextConfig::from_json_file(&dir().join("text_encoder/config.json")).unwrap();
    let tensors =
        candle_core::safetensors::load(dir().join("text_encoder/model.safetensors"), &Device::Cpu)
            .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for prefix in ["model.language_model.", "model."] {
        let mut renamed: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v.clone()))
            .collect();
        // A vision tower and an LM head beside it are ignored.
        renamed.insert(
            "lm_head.weight".to_string(),
            Tensor::zeros((cfg.vocab_size, cfg.hidden_size), DType::F32, &Device::Cpu).unwrap(),
        );
        let path = tmp
            .path()
            .join(format!("{}safetensors", prefix.replace('.', "_")));
        candle_core::safetensors::save(&renamed, &path).unwrap();
        let files = Arc::new(WeightFiles::open(&path).unwrap());
        let model = Qwen25VlTextModel::load(&files, &cfg, DType::F32, &Device::Cpu).unwrap();
        let out = model.hidden_state_from_end(&ids, Some(mask), 2).unwrap();
        let err = relative_error(
            &real_rows(&out, mask),
            &real_rows(&reference["qwen_hidden_skip2"], mask),
        );
        assert!(err <= 1e-4, "prefix {prefix}: relative error {err:.3e}");
    }
}
