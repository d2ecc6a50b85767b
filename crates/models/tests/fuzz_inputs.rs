//! Byte-mutation fuzzing (proptest) of the files vdit-models reads: safetensors headers and
//! shard indexes (`WeightFiles::open`), the transformer, VAE and umT5 configs, the tokenizer file
//! and the prompt text. Every mutated input must give an `Err` or a usable value, never a panic.
//!
//! Each target starts from a valid input and applies a few random mutations (overwrite, insert,
//! delete, truncate, a splice of a boundary number). Cases per target: `VDIT_FUZZ_CASES` (default
//! 128, a few seconds each in CI); `scripts/fuzz.sh` runs many more.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Tensor};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

use vdit_models::tokenizer::{clean_prompt, PromptTokenizer};
use vdit_models::umt5::Umt5Config;
use vdit_models::wan::vae::WanVaeConfig;
use vdit_models::wan::WanConfig;
use vdit_models::weights::WeightFiles;

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures"))
}

fn cases() -> u32 {
    std::env::var("VDIT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128)
}

fn config() -> Config {
    Config {
        cases: cases(),
        // Failures are reported with the shrunk input; no regression files in the tree.
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        max_shrink_iters: 256,
        ..Config::default()
    }
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    Overwrite(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    /// Writes a boundary number (0, 1, 2^31, 2^63, u64::MAX, ...) as 8 little-endian bytes.
    Splice(usize, u64),
    /// Writes ASCII digits of a boundary number (text formats: JSON numbers).
    Digits(usize, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let boundary = prop_oneof![
        Just(0u64),
        Just(1),
        Just(u32::MAX as u64),
        Just(1 << 31),
        Just(1 << 40),
        Just(i64::MAX as u64),
        Just(u64::MAX),
        any::<u64>(),
    ];
    prop_oneof![
        3 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Overwrite(p, b)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Insert(p, b)),
        2 => any::<usize>().prop_map(Mutation::Delete),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), boundary.clone()).prop_map(|(p, v)| Mutation::Splice(p, v)),
        1 => (any::<usize>(), boundary).prop_map(|(p, v)| Mutation::Digits(p, v)),
    ]
}

/// Applies `mutations` to `seed`; positions fall in `0..focus` (the part worth mutating, e.g. a
/// safetensors header) when `focus` is shorter than the input.
fn mutate(seed: &[u8], mutations: &[Mutation], focus: usize) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for m in mutations {
        let span = focus.min(bytes.len()).max(1);
        match *m {
            Mutation::Overwrite(p, b) => {
                if !bytes.is_empty() {
                    let i = p % span.min(bytes.len());
                    bytes[i] = b;
                }
            }
            Mutation::Insert(p, b) => bytes.insert(p % (span + 1).min(bytes.len() + 1), b),
            Mutation::Delete(p) => {
                if !bytes.is_empty() {
                    bytes.remove(p % span.min(bytes.len()));
                }
            }
            Mutation::Truncate(p) => bytes.truncate(p % (bytes.len() + 1)),
            Mutation::Splice(p, v) => {
                let i = p % span.min(bytes.len()).max(1);
                for (k, b) in v.to_le_bytes().into_iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(i + k) {
                        *slot = b;
                    }
                }
            }
            Mutation::Digits(p, v) => {
                let i = p % (span + 1).min(bytes.len() + 1);
                let digits = v.to_string();
                bytes.splice(i..i, digits.bytes());
            }
        }
    }
    bytes
}

/// Counts the cases run, printed by each target (scripts/fuzz.sh reads the lines).
struct Executions(&'static str, AtomicU64);

impl Executions {
    const fn new(name: &'static str) -> Self {
        Self(name, AtomicU64::new(0))
    }
    fn tick(&self) {
        self.1.fetch_add(1, Ordering::Relaxed);
    }
    fn report(&self) {
        eprintln!(
            "fuzz {}: {} executions",
            self.0,
            self.1.load(Ordering::Relaxed)
        );
    }
}

/// A small valid safetensors file of several dtypes and ranks.
fn safetensors_seed() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.safetensors");
    let dev = Device::Cpu;
    let tensors = std::collections::HashMap::from([
        (
            "blocks.0.attn.q.weight".to_string(),
            Tensor::arange(0f32, 24.0, &dev)
                .unwrap()
                .reshape((4, 6))
                .unwrap(),
        ),
        (
            "head.bias".to_string(),
            Tensor::ones(5, DType::BF16, &dev).unwrap(),
        ),
        (
            "scale".to_string(),
            Tensor::ones((), DType::F16, &dev).unwrap(),
        ),
    ]);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    std::fs::read(&path).unwrap()
}

/// Opens `path` with every load method and loads every tensor it lists as f32 and bf16.
fn open_and_load(path: &Path) {
    use vdit_models::weights::LoadMethod;
    for method in [LoadMethod::Fast, LoadMethod::Plain] {
        let Ok(files) = WeightFiles::open(path) else {
            return;
        };
        let files = files.with_load_method(method);
        for key in files.keys() {
            let _ = files.shape(key);
            for dtype in [DType::F32, DType::BF16] {
                let _ = files.load(key, None, dtype, &Device::Cpu);
            }
        }
    }
}

static SAFETENSORS: Executions = Executions::new("safetensors header");
static SHARD_INDEX: Executions = Executions::new("shard index");
static WAN_CONFIG: Executions = Executions::new("transformer config");
static VAE_CONFIG: Executions = Executions::new("VAE config");
static UMT5_CONFIG: Executions = Executions::new("umT5 config");
static TOKENIZER_FILE: Executions = Executions::new("tokenizer file");
static PROMPT_TEXT: Executions = Executions::new("prompt text");

#[test]
fn fuzz_safetensors_header() {
    let seed = safetensors_seed();
    let header_end = 8 + u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize + 16;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    proptest!(config(), |(mutations in prop::collection::vec(mutation(), 1..6))| {
        SAFETENSORS.tick();
        std::fs::write(&path, mutate(&seed, &mutations, header_end)).unwrap();
        open_and_load(&path);
    });
    SAFETENSORS.report();
}

#[test]
fn fuzz_shard_index() {
    let seed = safetensors_seed();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.safetensors"), &seed).unwrap();
    std::fs::write(dir.path().join("b.safetensors"), &seed).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let index_seed = br#"{"metadata": {"total_size": 120}, "weight_map": {"blocks.0.attn.q.weight": "a.safetensors", "head.bias": "b.safetensors", "scale": "a.safetensors"}}"#;
    let path = dir.path().join("model.safetensors.index.json");
    proptest!(config(), |(mutations in prop::collection::vec(mutation(), 1..6))| {
        SHARD_INDEX.tick();
        std::fs::write(&path, mutate(index_seed, &mutations, usize::MAX)).unwrap();
        open_and_load(&path);
    });
    SHARD_INDEX.report();
}

/// Parses mutated copies of `seed` with `parse`; a config that parses is used the way the
/// networks use it (`exercise`).
fn fuzz_text_file<T>(
    seed: &[u8],
    counter: &'static Executions,
    parse: impl Fn(&Path) -> Option<T>,
    exercise: impl Fn(&T),
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    proptest!(config(), |(mutations in prop::collection::vec(mutation(), 1..6))| {
        counter.tick();
        std::fs::write(&path, mutate(seed, &mutations, usize::MAX)).unwrap();
        if let Some(value) = parse(&path) {
            exercise(&value);
        }
    });
}

#[test]
fn fuzz_transformer_config() {
    for seed_file in [
        "tiny_pipeline/model/transformer/config.json",
        "dit/heads2x32/config.json",
    ] {
        let Ok(seed) = std::fs::read(fixtures().join(seed_file)) else {
            continue;
        };
        fuzz_text_file(
            &seed,
            &WAN_CONFIG,
            |p| WanConfig::from_json_file(p).ok(),
            |cfg| {
                let _ = cfg.patch_out_features();
                let _ = serde_json::to_string(cfg);
            },
        );
    }
    WAN_CONFIG.report();
}

#[test]
fn fuzz_vae_config() {
    let seed = std::fs::read(fixtures().join("vae/config.json")).unwrap();
    fuzz_text_file(
        &seed,
        &VAE_CONFIG,
        |p| WanVaeConfig::from_json_file(p).ok(),
        |cfg| {
            let _ = serde_json::to_string(cfg);
        },
    );
    VAE_CONFIG.report();
}

#[test]
fn fuzz_umt5_config() {
    let seed =
        std::fs::read(fixtures().join("tiny_pipeline/model/text_encoder/config.json")).unwrap();
    fuzz_text_file(
        &seed,
        &UMT5_CONFIG,
        |p| Umt5Config::from_json_file(p).ok(),
        |cfg| {
            let _ = cfg.inner_dim();
        },
    );
    UMT5_CONFIG.report();
}

#[test]
fn fuzz_tokenizer_file() {
    let seed =
        std::fs::read(fixtures().join("tiny_pipeline/model/tokenizer/tokenizer.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    proptest!(config(), |(mutations in prop::collection::vec(mutation(), 1..6))| {
        TOKENIZER_FILE.tick();
        std::fs::write(&path, mutate(&seed, &mutations, usize::MAX)).unwrap();
        if let Ok(tokenizer) = PromptTokenizer::from_file(&path) {
            for prompt in ["a red circle moving right", "", "&amp; &#x1F600; <b>x</b>"] {
                for max_len in [0, 1, 2, 16, 512] {
                    let _ = tokenizer.encode(prompt, max_len);
                }
            }
        }
    });
    TOKENIZER_FILE.report();
}

/// Arbitrary prompt text (HTML references, control characters, long runs) through the cleaning
/// and the real tokenizer.
#[test]
fn fuzz_prompt_text() {
    let tokenizer = PromptTokenizer::from_file(
        &fixtures().join("tiny_pipeline/model/tokenizer/tokenizer.json"),
    )
    .unwrap();
    let piece = prop_oneof![
        any::<char>().prop_map(|c| c.to_string()),
        "[ -~]{0,12}",
        Just("&".to_string()),
        Just("&#".to_string()),
        Just("&#x".to_string()),
        Just(";".to_string()),
        "&#[0-9]{1,12};?",
        "&#[xX][0-9a-fA-F]{1,10};?",
        "&[a-zA-Z]{1,10};?",
        Just("\u{fffd}".to_string()),
        Just(" \t\n\r".to_string()),
    ];
    proptest!(config(), |(parts in prop::collection::vec(piece, 0..40))| {
        PROMPT_TEXT.tick();
        let prompt: String = parts.concat();
        let _ = clean_prompt(&prompt);
        for max_len in [1, 2, 512] {
            let _ = tokenizer.encode(&prompt, max_len);
        }
    });
    PROMPT_TEXT.report();
}

/// Found by `fuzz_tokenizer_file`: a syntax error inside the `decoder` object made the tokenizers
/// crate panic ("Helper: Error(\"expected `:`\")") instead of returning an error.
#[test]
fn a_syntax_error_in_the_tokenizer_decoder_is_an_error() {
    let seed =
        std::fs::read_to_string(fixtures().join("tiny_pipeline/model/tokenizer/tokenizer.json"))
            .unwrap();
    let at = seed.find("\"decoder\"").unwrap();
    let colon = at + seed[at..].find("\"type\":").unwrap() + "\"type\"".len();
    let mut broken = seed.clone();
    broken.remove(colon); // `"type" "Metaspace"`
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, broken).unwrap();
    let err = PromptTokenizer::from_file(&path).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("expected"),
        "{err}"
    );
}

/// Found by `fuzz_tokenizer_file`: a template post-processor naming a special token its
/// `special_tokens` map lacks made every encode panic inside the tokenizers crate ("no entry found
/// for key"). Reading such a file is now an error line.
#[test]
fn a_template_naming_an_undefined_special_token_is_an_error() {
    let seed =
        std::fs::read_to_string(fixtures().join("tiny_pipeline/model/tokenizer/tokenizer.json"))
            .unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&seed).unwrap();
    json["post_processor"]["single"][1]["SpecialToken"]["id"] = "</x>".into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, serde_json::to_string(&json).unwrap()).unwrap();
    let err = PromptTokenizer::from_file(&path).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("tokenizers library"),
        "{err}"
    );
}
