//! umT5 encoders from GGUF files (llama.cpp's T5 encoder names, as city96's
//! `umt5-xxl-encoder-*.gguf`): the output against transformers' f32 UMT5EncoderModel, and the
//! errors for a file of another architecture or with a tensor missing.
//!
//! Fixtures (tests/fixtures/umt5/gguf, from scripts/reference/gen_umt5_gguf.py):
//! `umt5_tiny_q8_0.gguf`, the weights of tests/fixtures/umt5/hf at Q8_0 (o and wo in F16: their
//! 24 and 48 inputs are not whole 32-value blocks); `umt5_w256_q6_k.gguf`, a 256-wide model at
//! Q6_K (every projection and the embedding), with transformers' output in
//! `umt5_w256_reference.safetensors`.
//!
//! Bounds (relative error ‖out − ref‖/‖ref‖ over real-token rows) against transformers' f32
//! output: Q8_0 f32 run 3.5e-2 (measured 2.66e-2), Q8_0 bf16 run 4e-2 (measured 2.71e-2), Q6_K
//! f32 run 7e-2 (measured 4.63e-2). Against transformers run on the weights gguf-py dequantises
//! from the same file: 2.5e-2 (measured 1.66e-2 and 1.62e-2), which is candle's quantised matmul
//! rounding the activations to 8 bits (the same files dequantised by the loader to f32 weights
//! match it to 5.5e-7 and 5.8e-7, bound 1e-4); a mapping mistake (ffn_gate and ffn_up swapped) gives
//! 0.84 and 0.66. These random models amplify rounding (transformers itself, on the dequantised
//! weights, is 2.2e-2 and 4.6e-2 from its f32 output), so the numbers are the formats' cost
//! here, not a statement about umT5-XXL's trained weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{DType, Device, IndexOp, Tensor};
use vdit_models::umt5::keys::hf_to_gguf_key;
use vdit_models::umt5::{Umt5Config, Umt5Dialect, Umt5Encoder};
use vdit_models::weights::WeightFiles;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn gguf_dir() -> PathBuf {
    fixtures().join("umt5/gguf")
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// ‖out − ref‖ / ‖ref‖ over the real-token rows of a right-padded batch: the encoder's output
/// for `batch`'s `input_ids` and `attention_mask` against `expected` [B, L, d_model].
fn batch_error(encoder: &Umt5Encoder, batch: &HashMap<String, Tensor>, expected: &Tensor) -> f64 {
    let ids = batch["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = &batch["attention_mask"];
    let out = encoder.forward_masked(&ids, Some(mask)).unwrap();
    let lengths = mask
        .to_dtype(DType::F32)
        .unwrap()
        .sum(1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let (mut real_out, mut real_ref) = (Vec::new(), Vec::new());
    for (row, len) in lengths.into_iter().enumerate() {
        real_out.push(out.i((row, ..len as usize)).unwrap());
        real_ref.push(expected.i((row, ..len as usize)).unwrap());
    }
    rainfusion::reference::relative_error(
        &Tensor::cat(&real_out, 0).unwrap(),
        &Tensor::cat(&real_ref, 0).unwrap(),
    )
    .unwrap()
}

/// Against transformers run on the weights gguf-py dequantises from the same file, what remains
/// is candle's quantised matmul rounding the activations to 8 bits (Q8_0 for Q8_0 weights, Q8_K
/// for K-quants).
const LOADER_BOUND: f64 = 2.5e-2;

fn open_encoder(path: &Path, dtype: DType) -> Umt5Encoder {
    Umt5Encoder::open(path, dtype, &Device::Cpu).unwrap()
}

#[test]
fn q8_0_file_matches_transformers() {
    let path = gguf_dir().join("umt5_tiny_q8_0.gguf");
    let files = WeightFiles::open(&path).unwrap();
    assert_eq!(files.gguf_architecture(), Some("t5encoder"));
    // Sizes come from the shapes, as for any single file without a config.json.
    let hf = Umt5Config::from_json_file(&fixtures().join("umt5/hf/config.json")).unwrap();
    assert_eq!(Umt5Config::from_weights(&files).unwrap(), hf);
    Umt5Encoder::check(&files, &hf).unwrap();

    let batch = load(&fixtures().join("umt5/reference.safetensors"));
    let f32_ref = &batch["last_hidden_state"];
    let dequantized = &load(&gguf_dir().join("umt5_tiny_q8_0_dequantized.safetensors"))
        ["last_hidden_state_dequantized"];
    let encoder = open_encoder(&path, DType::F32);
    assert_eq!(encoder.dialect(), &Umt5Dialect::Gguf);
    // q, k, v, wi_0, wi_1 of 3 layers stay Q8_0; o and wo (F16 in the file) are cast.
    assert_eq!(encoder.quantized_projections(), (15, vec!["Q8_0".into()]));
    assert_eq!(encoder.quantized_embedding().as_deref(), Some("Q8_0"));
    let err = batch_error(&encoder, &batch, f32_ref);
    let loader = batch_error(&encoder, &batch, dequantized);
    println!(
        "umT5 Q8_0 GGUF, f32 run: relative error {err:.3e} vs transformers f32, \
         {loader:.3e} vs transformers on the dequantised weights"
    );
    assert!(err <= 3.5e-2, "relative error {err:.3e} > 3.5e-2");
    assert!(loader <= LOADER_BOUND, "{loader:.3e} > {LOADER_BOUND:.0e}");
    // Quantisation must be visible: an exact match would mean the blocks were not used.
    assert!(err > 1e-3, "relative error {err:.3e}: suspiciously exact");

    let encoder = open_encoder(&path, DType::BF16);
    let err = batch_error(&encoder, &batch, f32_ref);
    println!("umT5 Q8_0 GGUF, bf16 run: relative error {err:.3e} vs transformers f32");
    assert!(err <= 4e-2, "relative error {err:.3e} > 4e-2");
}

#[test]
fn q6_k_file_matches_transformers() {
    let path = gguf_dir().join("umt5_w256_q6_k.gguf");
    let encoder = open_encoder(&path, DType::F32);
    let cfg = encoder.config();
    assert_eq!(
        (
            cfg.d_model,
            cfg.num_heads,
            cfg.d_kv,
            cfg.d_ff,
            cfg.num_layers
        ),
        (256, 4, 64, 256, 2)
    );
    assert_eq!(encoder.quantized_projections(), (14, vec!["Q6_K".into()]));
    assert_eq!(encoder.quantized_embedding().as_deref(), Some("Q6_K"));
    let batch = load(&gguf_dir().join("umt5_w256_reference.safetensors"));
    let err = batch_error(&encoder, &batch, &batch["last_hidden_state"]);
    let loader = batch_error(&encoder, &batch, &batch["last_hidden_state_dequantized"]);
    println!(
        "umT5 Q6_K GGUF, f32 run: relative error {err:.3e} vs transformers f32, \
         {loader:.3e} vs transformers on the dequantised weights"
    );
    assert!(err <= 7e-2, "relative error {err:.3e} > 7e-2");
    assert!(loader <= LOADER_BOUND, "{loader:.3e} > {LOADER_BOUND:.0e}");
    assert!(err > 1e-3, "relative error {err:.3e}: suspiciously exact");
}

/// Every tensor of each fixture, read by its llama.cpp name and dequantised by the loader, put
/// back under its transformers name: the encoder on those f32 weights matches transformers on
/// gguf-py's dequantisation to f32 precision, so the names, the shapes and the decoding are
/// exact and the quantised runs above differ only by the quantised matmul.
#[test]
fn dequantised_fixtures_match_transformers_on_the_same_weights() {
    let cases = [
        (
            "umt5_tiny_q8_0.gguf",
            load(&fixtures().join("umt5/reference.safetensors")),
            load(&gguf_dir().join("umt5_tiny_q8_0_dequantized.safetensors")),
        ),
        (
            "umt5_w256_q6_k.gguf",
            load(&gguf_dir().join("umt5_w256_reference.safetensors")),
            load(&gguf_dir().join("umt5_w256_reference.safetensors")),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (name, batch, dequantized) in cases {
        let gguf = WeightFiles::open(&gguf_dir().join(name)).unwrap();
        let cfg = Umt5Config::from_weights(&gguf).unwrap();
        let mut tensors = HashMap::new();
        let mut canonical = vec!["shared.weight".to_string()];
        canonical.push("encoder.final_layer_norm.weight".to_string());
        for key in gguf.keys() {
            let layer = key.strip_prefix("enc.blk.").and_then(|r| r.split_once('.'));
            if let Some((i, _)) = layer {
                for tail in [
                    "layer.0.layer_norm.weight",
                    "layer.0.SelfAttention.q.weight",
                    "layer.0.SelfAttention.k.weight",
                    "layer.0.SelfAttention.v.weight",
                    "layer.0.SelfAttention.o.weight",
                    "layer.0.SelfAttention.relative_attention_bias.weight",
                    "layer.1.layer_norm.weight",
                    "layer.1.DenseReluDense.wi_0.weight",
                    "layer.1.DenseReluDense.wi_1.weight",
                    "layer.1.DenseReluDense.wo.weight",
                ] {
                    canonical.push(format!("encoder.block.{i}.{tail}"));
                }
            }
        }
        canonical.sort();
        canonical.dedup();
        for key in canonical {
            let stored = hf_to_gguf_key(&key);
            let t = gguf.load(&stored, None, DType::F32, &Device::Cpu).unwrap();
            tensors.insert(key, t);
        }
        assert_eq!(
            tensors.len(),
            gguf.keys().len(),
            "{name}: every tensor used"
        );
        let path = dir.path().join(format!("{name}.safetensors"));
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let files = Arc::new(WeightFiles::open(&path).unwrap());
        let encoder = Umt5Encoder::load(&files, &cfg, DType::F32, &Device::Cpu).unwrap();
        let err = batch_error(
            &encoder,
            &batch,
            &dequantized["last_hidden_state_dequantized"],
        );
        println!("{name} dequantised by the loader: relative error {err:.3e} vs transformers on gguf-py's dequantisation");
        assert!(err <= 1e-4, "{name}: relative error {err:.3e} > 1e-4");
    }
}

/// The tensors of the Q8_0 fixture, as candle reads them.
fn fixture_tensors() -> Vec<(String, QTensor)> {
    let path = gguf_dir().join("umt5_tiny_q8_0.gguf");
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let t = content.tensor(&mut file, &name, &Device::Cpu).unwrap();
            (name, t)
        })
        .collect()
}

/// Writes `tensors` as a GGUF file of architecture `arch` at `path`.
fn write_gguf(path: &Path, arch: &str, tensors: &[(String, QTensor)]) {
    let arch = gguf_file::Value::String(arch.into());
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &[("general.architecture", &arch)], &refs).unwrap();
}

/// The error of opening `path` as a umT5 encoder, and of checking it by its headers, with
/// `cfg` when given (else inferred): both one line.
fn errors(path: &Path, cfg: Option<&Umt5Config>) -> (String, String) {
    let files = Arc::new(WeightFiles::open(path).unwrap());
    let checked = match cfg {
        Some(cfg) => Umt5Encoder::check(&files, cfg),
        None => Umt5Config::from_weights(&files).map(|_| ()),
    };
    let loaded = match cfg {
        Some(cfg) => Umt5Encoder::load(&files, cfg, DType::F32, &Device::Cpu).map(|_| ()),
        None => Umt5Encoder::open(path, DType::F32, &Device::Cpu).map(|_| ()),
    };
    let line = |r: Result<(), vdit_models::ModelError>| {
        let msg = format!("{:#}", r.unwrap_err());
        assert!(!msg.contains('\n'), "not one line: {msg}");
        msg
    };
    (line(loaded), line(checked))
}

#[test]
fn another_architecture_or_a_missing_tensor_gives_one_clear_line() {
    // A Wan transformer GGUF given as the text encoder.
    let wan = fixtures().join("gguf/wan_tiny_q8_0.gguf");
    let (loaded, checked) = errors(&wan, None);
    for msg in [&loaded, &checked] {
        assert!(
            msg.contains("GGUF architecture `wan`") && msg.contains("umT5"),
            "{msg}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let hf = Umt5Config::from_json_file(&fixtures().join("umt5/hf/config.json")).unwrap();
    // A projection missing: named as the file spells it, with its shape.
    let without = |name: &str| -> Vec<(String, QTensor)> {
        fixture_tensors()
            .into_iter()
            .filter(|(k, _)| k != name)
            .collect()
    };
    let path = dir.path().join("no_ffn_down.gguf");
    write_gguf(&path, "t5encoder", &without("enc.blk.2.ffn_down.weight"));
    let (loaded, checked) = errors(&path, Some(&hf));
    for msg in [&loaded, &checked] {
        assert!(
            msg.contains("missing tensor `enc.blk.2.ffn_down.weight`") && msg.contains("[32, 48]"),
            "{msg}"
        );
    }

    // A T5 file (bias table in layer 0 only) is not umT5.
    let path = dir.path().join("t5.gguf");
    let t5: Vec<(String, QTensor)> = fixture_tensors()
        .into_iter()
        .filter(|(k, _)| !k.contains("attn_rel_b") || k.starts_with("enc.blk.0."))
        .collect();
    write_gguf(&path, "t5encoder", &t5);
    let (loaded, checked) = errors(&path, None);
    for msg in [&loaded, &checked] {
        assert!(
            msg.contains("enc.blk.1.attn_rel_b.weight") && msg.contains("not umT5"),
            "{msg}"
        );
    }

    // An unknown architecture with T5 names is still refused by its architecture.
    let path = dir.path().join("llama.gguf");
    write_gguf(&path, "llama", &fixture_tensors());
    let (loaded, _) = errors(&path, None);
    assert!(loaded.contains("GGUF architecture `llama`"), "{loaded}");
}

/// Encoder time, f32 safetensors against Q8_0 GGUF, on a random 2-layer encoder of width 1024
/// (d_ff 2816, 16 heads of 64) and 128 tokens. Run with
/// `cargo test --release -p vdit-models --test umt5_gguf_parity -- --ignored --nocapture`.
#[test]
#[ignore = "timing, not a check"]
fn time_f32_against_q8_0() {
    let cfg = Umt5Config {
        vocab_size: 512,
        d_model: 1024,
        d_kv: 64,
        d_ff: 2816,
        num_heads: 16,
        num_layers: 2,
        relative_attention_num_buckets: 32,
        relative_attention_max_distance: 128,
        layer_norm_epsilon: 1e-6,
        feed_forward_proj: "gated-gelu".into(),
    };
    let names = [
        ("layer.0.layer_norm.weight", "attn_norm.weight"),
        ("layer.0.SelfAttention.q.weight", "attn_q.weight"),
        ("layer.0.SelfAttention.k.weight", "attn_k.weight"),
        ("layer.0.SelfAttention.v.weight", "attn_v.weight"),
        ("layer.0.SelfAttention.o.weight", "attn_o.weight"),
        (
            "layer.0.SelfAttention.relative_attention_bias.weight",
            "attn_rel_b.weight",
        ),
        ("layer.1.layer_norm.weight", "ffn_norm.weight"),
        ("layer.1.DenseReluDense.wi_0.weight", "ffn_gate.weight"),
        ("layer.1.DenseReluDense.wi_1.weight", "ffn_up.weight"),
        ("layer.1.DenseReluDense.wo.weight", "ffn_down.weight"),
    ];
    let (d, ff, inner) = (cfg.d_model, cfg.d_ff, cfg.inner_dim());
    let shape_of = |tail: &str| -> Vec<usize> {
        match tail {
            "layer.0.layer_norm.weight" | "layer.1.layer_norm.weight" => vec![d],
            "layer.0.SelfAttention.o.weight" => vec![d, inner],
            "layer.0.SelfAttention.relative_attention_bias.weight" => vec![32, cfg.num_heads],
            "layer.1.DenseReluDense.wi_0.weight" | "layer.1.DenseReluDense.wi_1.weight" => {
                vec![ff, d]
            }
            "layer.1.DenseReluDense.wo.weight" => vec![d, ff],
            _ => vec![inner, d],
        }
    };
    // q further scaled by 1/√d_kv, as T5's initialisation does (no 1/√d in its attention).
    let random = |shape: &[usize], is_q: bool| -> Tensor {
        let std = if shape.len() == 1 {
            0.1
        } else if is_q {
            1.0 / ((shape[1] * cfg.d_kv) as f64).sqrt()
        } else {
            1.0 / (shape[1] as f64).sqrt()
        };
        let mean = if shape.len() == 1 { 1.0 } else { 0.0 };
        Tensor::randn(mean as f32, std as f32, shape, &Device::Cpu).unwrap()
    };
    let mut plain = HashMap::new();
    let mut quantized = Vec::new();
    let mut add = |hf: String, gguf: String, t: Tensor| {
        let kind = if t.rank() == 2 && !hf.contains("relative_attention_bias") {
            candle_core::quantized::GgmlDType::Q8_0
        } else {
            candle_core::quantized::GgmlDType::F32
        };
        quantized.push((gguf, QTensor::quantize(&t, kind).unwrap()));
        plain.insert(hf, t);
    };
    add(
        "shared.weight".into(),
        "token_embd.weight".into(),
        random(&[cfg.vocab_size, d], false),
    );
    for i in 0..cfg.num_layers {
        for (hf, gguf) in names {
            add(
                format!("encoder.block.{i}.{hf}"),
                format!("enc.blk.{i}.{gguf}"),
                random(&shape_of(hf), hf.ends_with("q.weight")),
            );
        }
    }
    add(
        "encoder.final_layer_norm.weight".into(),
        "enc.output_norm.weight".into(),
        random(&[d], false),
    );
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("f32.safetensors");
    candle_core::safetensors::save(&plain, &st).unwrap();
    let gg = dir.path().join("q8_0.gguf");
    write_gguf(&gg, "t5encoder", &quantized);

    let ids: Vec<u32> = (0..128u32).map(|i| (i * 37 + 5) % 512).collect();
    let ids = Tensor::from_vec(ids, (1, 128), &Device::Cpu).unwrap();
    let time = |path: &Path, dtype: DType| -> (f64, Tensor) {
        let encoder = open_encoder(path, dtype);
        let out = encoder.forward(&ids).unwrap(); // warm-up
        let runs = 5;
        let start = std::time::Instant::now();
        for _ in 0..runs {
            encoder.forward(&ids).unwrap();
        }
        (start.elapsed().as_secs_f64() / runs as f64, out)
    };
    // Alternated twice; the faster of the two rounds is kept.
    let (mut f32_s, mut bf16_s, mut q8_s) = (f64::MAX, f64::MAX, f64::MAX);
    let (mut reference, mut out) = (None, None);
    for _ in 0..2 {
        let (s, r) = time(&st, DType::F32);
        (f32_s, reference) = (f32_s.min(s), Some(r));
        bf16_s = bf16_s.min(time(&st, DType::BF16).0);
        let (s, o) = time(&gg, DType::F32);
        (q8_s, out) = (q8_s.min(s), Some(o));
    }
    let (reference, out) = (reference.unwrap(), out.unwrap());
    let err = rainfusion::reference::relative_error(&out, &reference).unwrap();
    println!(
        "umT5 1024-wide x2 layers, 128 tokens, {} threads: f32 {:.1} ms, bf16 {:.1} ms, Q8_0 {:.1} ms \
         (Q8_0 vs f32 relative error {err:.2e})",
        candle_core::utils::get_num_threads(),
        f32_s * 1e3,
        bf16_s * 1e3,
        q8_s * 1e3
    );
}
