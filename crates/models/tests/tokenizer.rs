//! Prompt cleaning and tokenization against diffusers' `prompt_clean` (with ftfy) and
//! transformers' tokenizer (fixtures from scripts/reference/gen_umt5_fixtures.py).

use std::path::{Path, PathBuf};

use candle_core::Device;
use vdit_models::tokenizer::{clean_prompt, PromptTokenizer};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn tiny_tokenizer() -> PromptTokenizer {
    PromptTokenizer::from_file(&fixtures().join("tiny_pipeline/model/tokenizer/tokenizer.json"))
        .unwrap()
}

fn cases() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixtures().join("umt5/tokenizer.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["cases"].as_array().unwrap().clone()
}

#[test]
fn clean_prompt_matches_diffusers_prompt_clean() {
    let cases = cases();
    assert!(cases.len() >= 10);
    for case in &cases {
        let prompt = case["prompt"].as_str().unwrap();
        assert_eq!(
            clean_prompt(prompt),
            case["cleaned"].as_str().unwrap(),
            "prompt {prompt:?}"
        );
    }
}

/// Random strings of tricky pieces (see the generator): whitespace, references, markup, quotes,
/// controls, width forms, ligatures, escapes.
#[test]
fn clean_prompt_matches_diffusers_on_random_strings() {
    let text = std::fs::read_to_string(fixtures().join("umt5/tokenizer.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = json["random_clean"].as_array().unwrap();
    assert!(cases.len() >= 300);
    for case in cases {
        let (input, expected) = (case[0].as_str().unwrap(), case[1].as_str().unwrap());
        assert_eq!(clean_prompt(input), expected, "input {input:?}");
    }
}

#[test]
fn ids_match_transformers_tokenizer() {
    let tokenizer = tiny_tokenizer();
    let mut checked = 0;
    for case in cases() {
        let prompt = case["prompt"].as_str().unwrap();
        for (max_len, ids) in case["ids"].as_object().unwrap() {
            let max_len: usize = max_len.parse().unwrap();
            let expected: Vec<u32> = ids
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let ids = tokenizer.encode(prompt, max_len).unwrap();
            assert_eq!(ids, expected, "prompt {prompt:?}, max_len {max_len}");
            assert!(ids.len() <= max_len);
            assert_eq!(
                ids.last(),
                Some(&1),
                "EOS closes every prompt, truncated or not"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} cases");
}

/// The tiny pipeline's `prompt_ids` were recorded by calling the tokenizer on the raw prompt
/// (its generator did not clean it), while its `prompt_embeds` come from the cleaned prompt:
/// the raw path must reproduce the former, the cleaned path the latter's token count.
#[test]
fn tiny_pipeline_prompt_ids() {
    let pipeline = fixtures().join("tiny_pipeline");
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pipeline.join("reference.json")).unwrap())
            .unwrap();
    let reference =
        candle_core::safetensors::load(pipeline.join("reference.safetensors"), &Device::Cpu)
            .unwrap();
    let expected: Vec<u32> = reference["prompt_ids"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|id| id as u32)
        .collect();
    let prompt = settings["prompt"].as_str().unwrap();
    let max_len = settings["max_sequence_length"].as_u64().unwrap() as usize;
    let tokenizer = tiny_tokenizer();
    assert_eq!(tokenizer.encode_raw(prompt, max_len).unwrap(), expected);

    let cleaned = tokenizer.encode(prompt, max_len).unwrap();
    let embeds = &reference["prompt_embeds"];
    let rows = embeds
        .squeeze(0)
        .unwrap()
        .abs()
        .unwrap()
        .sum(1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(cleaned.len(), rows.iter().filter(|s| **s > 0.0).count());
}

#[test]
fn tokenizer_errors_are_clear() {
    let missing = fixtures().join("no_such_tokenizer.json");
    let msg = PromptTokenizer::from_file(&missing)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no_such_tokenizer.json"), "{msg}");

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("tokenizer.json");
    std::fs::write(&garbage, "{not json").unwrap();
    let msg = PromptTokenizer::from_file(&garbage)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("tokenizer") && msg.contains("tokenizer.json"),
        "{msg}"
    );

    let msg = tiny_tokenizer()
        .encode("a red circle", 1)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("special token"), "{msg}");
    assert_eq!(tiny_tokenizer().encode("a red circle", 2).unwrap().len(), 2);
    assert_eq!(tiny_tokenizer().token_id("</s>"), Some(1));
}
