//! GGUF transformer weights: decoding against gguf-py, the forward pass of quantised files against
//! the f32 one, and the errors a bad file gives.
//!
//! Fixtures (tests/fixtures/gguf, from scripts/reference/gen_gguf.py): `blocks.gguf`, random blocks
//! of every type candle reads with gguf-py's dequantisation of them; `wan_tiny_q8_0.gguf`, the
//! heads2x32 DiT fixture quantised by gguf-py in ComfyUI-GGUF's layout. gguf-py cannot quantise the
//! K types, so the Q6_K / Q5_K_M / Q4_K_M transformers are quantised here by candle (a port of
//! ggml's reference quantisers, what llama.cpp's quantiser does without an importance matrix) and
//! written with candle's GGUF writer, in the same layout.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use rainfusion::DenseAttention;
use vdit_models::wan::keys::original_key;
use vdit_models::wan::{CheckpointKeys, KeyDialect, WanConfig, WanTransformer};
use vdit_models::weights::WeightFiles;

mod common;
use common::{fixture, fixtures_root, forward_on_io, load_io, relative_error};

fn gguf_fixture(name: &str) -> std::path::PathBuf {
    fixtures_root().join("gguf").join(name)
}

/// Every tensor of blocks.gguf, dequantised by candle through the loader, equals gguf-py's
/// dequantisation; the block types come back as QTensors, the float ones do not.
#[test]
fn blocks_decode_as_gguf_py_decodes_them() {
    let files = WeightFiles::open(&gguf_fixture("blocks.gguf")).unwrap();
    assert!(files.is_gguf());
    let reference =
        candle_core::safetensors::load(gguf_fixture("blocks_dequant.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(reference.len(), 12);
    for (name, expected) in &reference {
        let kind = files.gguf_type(name).unwrap();
        assert_eq!(&kind.name(), name);
        let got = files.load(name, None, DType::F32, &Device::Cpu).unwrap();
        let diff = (&got - expected)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let scale = expected
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(scale > 0.0, "{name}: all zero");
        assert!(
            diff <= 1e-6 * scale,
            "{name}: max |candle − gguf-py| = {diff} (max value {scale})"
        );
        let quantized = files.load_quantized(name, None, &Device::Cpu).unwrap();
        assert_eq!(quantized.is_some(), kind.is_quantized(), "{name}");
    }
}

/// Every tensor of the gguf-py Q8_0 file: the same storage type and the same values (sum and sum
/// of squares) as gguf-py gives.
#[test]
fn q8_0_file_decodes_as_gguf_py_decodes_it() {
    let files = WeightFiles::open(&gguf_fixture("wan_tiny_q8_0.gguf")).unwrap();
    assert_eq!(files.gguf_architecture(), Some("wan"));
    let text = std::fs::read_to_string(gguf_fixture("wan_tiny_q8_0_stats.json")).unwrap();
    let stats: HashMap<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(files.keys().len(), stats.len());
    let mut quantized = 0;
    for (name, stat) in &stats {
        let kind = files.gguf_type(name).unwrap();
        assert_eq!(kind.name(), stat["type"].as_str().unwrap(), "{name}");
        quantized += kind.is_quantized() as usize;
        let shape: Vec<usize> = serde_json::from_value(stat["shape"].clone()).unwrap();
        let t = files.load(name, None, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), shape.as_slice(), "{name}");
        let values: Vec<f64> = t
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        let sum: f64 = values.iter().sum();
        let sum_sq: f64 = values.iter().map(|v| v * v).sum();
        let (want_sum, want_sq) = (
            stat["sum"].as_f64().unwrap(),
            stat["sum_sq"].as_f64().unwrap(),
        );
        assert!(
            (sum - want_sum).abs() <= 1e-9 * want_sq.sqrt().max(1.0) * values.len() as f64,
            "{name}: sum {sum} vs {want_sum}"
        );
        assert!(
            (sum_sq - want_sq).abs() <= 1e-9 * want_sq,
            "{name}: sum of squares {sum_sq} vs {want_sq}"
        );
    }
    // 10 per block, time_projection.1, text_embedding.2, head.head.
    assert_eq!(quantized, 23, "Q8_0 tensors");
}

/// Q8_0 forward bounds against the f32 forward of the same weights, about twice what was
/// measured: 1.18e-2 computing in f32, 1.2e-2 in bf16. candle's quantised matmul also rounds
/// the activations to 8-bit blocks (as ggml does); with the weights dequantised to f32 the same
/// file gives 8.2e-3.
const Q8_0_F32_BOUND: f64 = 2.5e-2;
const Q8_0_BF16_BOUND: f64 = 3e-2;

/// The gguf-py Q8_0 file runs as users open it (config inferred from the shapes, original keys
/// recognised): against the diffusers velocity of the f32 weights and our own f32 forward.
#[test]
fn q8_0_file_forward_is_close_to_f32() {
    let path = gguf_fixture("wan_tiny_q8_0.gguf");
    let files = Arc::new(WeightFiles::open(&path).unwrap());
    let keys = CheckpointKeys::detect(&files).unwrap();
    assert_eq!(
        (keys.dialect, keys.prefix.as_str()),
        (KeyDialect::Original, "")
    );
    let case = fixture("heads2x32");
    // Inferring the config assumes head_dim 128: this tiny model needs its config.json.
    let cfg = WanConfig::from_json_file(&case.join("config.json")).unwrap();
    let io = load_io(&case, &Device::Cpu);
    let f32_model = WanTransformer::open(
        &case.join("diffusion_pytorch_model.safetensors"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let f32_out = forward_on_io(&f32_model, &io, &mut DenseAttention);
    assert!(relative_error(&f32_out, &io["velocity"]) <= 1e-4);

    let q8 = WanTransformer::load(&files, &cfg, DType::F32, &Device::Cpu).unwrap();
    let out = forward_on_io(&q8, &io, &mut DenseAttention);
    let vs_f32 = relative_error(&out, &f32_out);
    let vs_diffusers = relative_error(&out, &io["velocity"]);
    eprintln!("Q8_0 (gguf-py) f32 run: rel. error {vs_f32:.2e} vs our f32, {vs_diffusers:.2e} vs diffusers");
    assert!(vs_f32 <= Q8_0_F32_BOUND, "{vs_f32}");
    assert!(vs_f32 > 0.0, "quantisation must change something");

    let bf16 = WanTransformer::load(&files, &cfg, DType::BF16, &Device::Cpu).unwrap();
    let out = forward_on_io(&bf16, &io, &mut DenseAttention);
    let err = relative_error(&out, &f32_out);
    eprintln!("Q8_0 (gguf-py) bf16 run: rel. error {err:.2e} vs our f32");
    assert!(err <= Q8_0_BF16_BOUND, "{err}");
}

// ---------------------------------------------------------------------------------------------
// A model with 256-wide rows, K-quantised by candle.

/// A small Wan whose matrices all have rows of 256 values (whole K-quant blocks).
fn k256_config() -> WanConfig {
    WanConfig {
        num_heads: 2,
        head_dim: 128,
        num_layers: 2,
        ffn_dim: 512,
        text_dim: 256,
        freq_dim: 256,
        ..WanConfig::t2v_1_3b()
    }
}

/// A deterministic uniform generator (xorshift64*), so the bounds below hold for fixed weights.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40; // 24 bits
        bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// Uniform values with standard deviation `std`.
    fn tensor(&mut self, shape: &[usize], mean: f32, std: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let a = std * 3f32.sqrt();
        let values: Vec<f32> = (0..n).map(|_| mean + a * self.uniform()).collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }
}

/// Every parameter of a Wan transformer of `cfg`, under its original key, random: matrices with
/// std 1/√fan_in, norm scales around 1, biases and tables small.
fn random_original_weights(cfg: &WanConfig, seed: u64) -> Vec<(String, Tensor)> {
    let model = WanTransformer::random(cfg, DType::F32, &Device::Cpu).unwrap();
    drop(model); // only to prove the config builds
    let dim = cfg.dim();
    let [pt, ph, pw] = cfg.patch_size;
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        (
            "patch_embedding.weight".into(),
            vec![dim, cfg.in_channels, pt, ph, pw],
        ),
        ("patch_embedding.bias".into(), vec![dim]),
        (
            "condition_embedder.time_embedder.linear_1.weight".into(),
            vec![dim, cfg.freq_dim],
        ),
        (
            "condition_embedder.time_embedder.linear_1.bias".into(),
            vec![dim],
        ),
        (
            "condition_embedder.time_embedder.linear_2.weight".into(),
            vec![dim, dim],
        ),
        (
            "condition_embedder.time_embedder.linear_2.bias".into(),
            vec![dim],
        ),
        (
            "condition_embedder.time_proj.weight".into(),
            vec![6 * dim, dim],
        ),
        ("condition_embedder.time_proj.bias".into(), vec![6 * dim]),
        (
            "condition_embedder.text_embedder.linear_1.weight".into(),
            vec![dim, cfg.text_dim],
        ),
        (
            "condition_embedder.text_embedder.linear_1.bias".into(),
            vec![dim],
        ),
        (
            "condition_embedder.text_embedder.linear_2.weight".into(),
            vec![dim, dim],
        ),
        (
            "condition_embedder.text_embedder.linear_2.bias".into(),
            vec![dim],
        ),
        ("scale_shift_table".into(), vec![1, 2, dim]),
        (
            "proj_out.weight".into(),
            vec![cfg.patch_out_features(), dim],
        ),
        ("proj_out.bias".into(), vec![cfg.patch_out_features()]),
    ];
    for i in 0..cfg.num_layers {
        let p = format!("blocks.{i}");
        shapes.push((format!("{p}.scale_shift_table"), vec![1, 6, dim]));
        for attn in ["attn1", "attn2"] {
            for proj in ["to_q", "to_k", "to_v", "to_out.0"] {
                shapes.push((format!("{p}.{attn}.{proj}.weight"), vec![dim, dim]));
                shapes.push((format!("{p}.{attn}.{proj}.bias"), vec![dim]));
            }
            shapes.push((format!("{p}.{attn}.norm_q.weight"), vec![dim]));
            shapes.push((format!("{p}.{attn}.norm_k.weight"), vec![dim]));
        }
        shapes.push((format!("{p}.norm2.weight"), vec![dim]));
        shapes.push((format!("{p}.norm2.bias"), vec![dim]));
        shapes.push((format!("{p}.ffn.net.0.proj.weight"), vec![cfg.ffn_dim, dim]));
        shapes.push((format!("{p}.ffn.net.0.proj.bias"), vec![cfg.ffn_dim]));
        shapes.push((format!("{p}.ffn.net.2.weight"), vec![dim, cfg.ffn_dim]));
        shapes.push((format!("{p}.ffn.net.2.bias"), vec![dim]));
    }
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    shapes
        .into_iter()
        .map(|(key, shape)| {
            let fan_in: usize = shape.iter().skip(1).product();
            let t = if key.contains("scale_shift_table") {
                rng.tensor(&shape, 0.0, 0.3)
            } else if fan_in > 1 {
                rng.tensor(&shape, 0.0, 1.0 / (fan_in as f32).sqrt())
            } else if key.contains("norm") && key.ends_with("weight") {
                rng.tensor(&shape, 1.0, 0.2)
            } else {
                rng.tensor(&shape, 0.0, 0.1)
            };
            (original_key(&key), t)
        })
        .collect()
}

/// A GGUF quantisation recipe: the main block type, and the one llama.cpp's `_M` mixes give the
/// attention values and the feed-forward output (`None`: the main type everywhere).
#[derive(Clone, Copy, Debug)]
struct Recipe {
    name: &'static str,
    main: GgmlDType,
    more_bits: Option<GgmlDType>,
}

const RECIPES: [Recipe; 4] = [
    Recipe {
        name: "Q8_0",
        main: GgmlDType::Q8_0,
        more_bits: None,
    },
    Recipe {
        name: "Q6_K",
        main: GgmlDType::Q6K,
        more_bits: None,
    },
    Recipe {
        name: "Q5_K_M",
        main: GgmlDType::Q5K,
        more_bits: Some(GgmlDType::Q6K),
    },
    Recipe {
        name: "Q4_K_M",
        main: GgmlDType::Q4K,
        more_bits: Some(GgmlDType::Q6K),
    },
];

/// The storage type of one original-keyed tensor, as ComfyUI-GGUF's converter and quantiser
/// choose it (see scripts/reference/gen_gguf.py).
fn storage_type(key: &str, t: &Tensor, recipe: Recipe) -> GgmlDType {
    let dims = t.dims();
    if dims.len() != 2 || t.elem_count() <= 1024 || key.contains("modulation") {
        return GgmlDType::F32;
    }
    if key.starts_with("time_embedding.") {
        return GgmlDType::F16;
    }
    let kind = match recipe.more_bits {
        Some(more) if key.contains("self_attn.v.") || key.contains("ffn.2.") => more,
        _ => recipe.main,
    };
    if !dims[1].is_multiple_of(kind.block_size()) {
        return GgmlDType::F16;
    }
    kind
}

/// Writes `weights` as a GGUF file of `arch`, each tensor stored as `kind` says.
fn write_gguf(
    path: &Path,
    arch: &str,
    weights: &[(String, Tensor)],
    kind: impl Fn(&str, &Tensor) -> GgmlDType,
) {
    let tensors: Vec<(String, QTensor)> = weights
        .iter()
        .map(|(k, t)| (k.clone(), QTensor::quantize(t, kind(k, t)).unwrap()))
        .collect();
    let arch = gguf_file::Value::String(arch.into());
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &[("general.architecture", &arch)], &refs).unwrap();
}

fn write_safetensors(path: &Path, weights: &[(String, Tensor)]) {
    let map: HashMap<String, Tensor> = weights.iter().cloned().collect();
    candle_core::safetensors::save(&map, path).unwrap();
}

/// Random latents [2, 16, 2, 8, 8], timesteps and a 7-row context for `cfg`.
fn k256_inputs(cfg: &WanConfig) -> HashMap<String, Tensor> {
    let mut rng = Rng(7);
    HashMap::from([
        (
            "latents".to_string(),
            rng.tensor(&[2, cfg.in_channels, 2, 8, 8], 0.0, 1.0),
        ),
        (
            "timesteps".to_string(),
            Tensor::new(&[900f32, 300.0], &Device::Cpu).unwrap(),
        ),
        (
            "context".to_string(),
            rng.tensor(&[2, 7, cfg.text_dim], 0.0, 1.0),
        ),
    ])
}

/// Upper bounds on ‖forward(GGUF) − forward(f32)‖/‖forward(f32)‖ with f32 compute, per recipe,
/// about twice what was measured (1.47e-2, 2.53e-2, 4.49e-2, 8.22e-2; docs/quantised-weights.md).
fn bound(recipe: &str) -> f64 {
    match recipe {
        "Q8_0" => 3e-2,
        "Q6_K" => 5e-2,
        "Q5_K_M" => 9e-2,
        "Q4_K_M" => 0.16,
        other => panic!("no bound for {other}"),
    }
}

/// Each recipe's transformer, opened from its GGUF file as users open it, against the f32
/// transformer of the same weights opened from safetensors: the relative error of one forward.
#[test]
fn k_quant_forward_errors_are_bounded_per_type() {
    let cfg = k256_config();
    let weights = random_original_weights(&cfg, 19);
    let dir = tempfile::tempdir().unwrap();
    let f32_path = dir.path().join("wan_k256.safetensors");
    write_safetensors(&f32_path, &weights);
    let io = k256_inputs(&cfg);
    let f32_model = WanTransformer::open(&f32_path, DType::F32, &Device::Cpu).unwrap();
    let reference = forward_on_io(&f32_model, &io, &mut DenseAttention);
    let mut errors = Vec::new();
    for recipe in RECIPES {
        let path = dir.path().join(format!("wan_k256_{}.gguf", recipe.name));
        write_gguf(&path, "wan", &weights, |k, t| storage_type(k, t, recipe));
        let files = WeightFiles::open(&path).unwrap();
        let quantized = files
            .keys()
            .iter()
            .filter(|k| files.gguf_type(k).unwrap().is_quantized())
            .count();
        // Every block matrix: 10 per block, time_proj, text_embedding.{0,2}, head.
        assert_eq!(quantized, 10 * cfg.num_layers + 4, "{}", recipe.name);
        let model = WanTransformer::open(&path, DType::F32, &Device::Cpu).unwrap();
        let out = forward_on_io(&model, &io, &mut DenseAttention);
        let err = relative_error(&out, &reference);
        eprintln!(
            "{}: forward rel. error {err:.3e} (f32 compute)",
            recipe.name
        );
        errors.push((recipe.name, err));
    }
    for (name, err) in &errors {
        assert!(*err <= bound(name), "{name}: {err} > {}", bound(name));
        assert!(*err > 1e-5, "{name}: {err}: nothing was quantised?");
    }
    // More bits, less error.
    let e: Vec<f64> = errors.iter().map(|(_, e)| *e).collect();
    assert!(e[0] < e[1] && e[1] < e[2] && e[2] < e[3], "{errors:?}");
}

// ---------------------------------------------------------------------------------------------
// Errors.

fn open_error(path: &Path) -> String {
    WanTransformer::open(path, DType::F32, &Device::Cpu)
        .map(|_| ())
        .unwrap_err()
        .to_string()
}

#[test]
fn another_architecture_is_refused_in_one_line() {
    let cfg = k256_config();
    let weights = random_original_weights(&cfg, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("llama.gguf");
    write_gguf(&path, "llama", &weights, |_, _| GgmlDType::F32);
    let err = open_error(&path);
    assert!(
        err.contains("GGUF architecture `llama` is not a Wan transformer (`wan`)"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn a_missing_tensor_is_named() {
    let cfg = k256_config();
    let mut weights = random_original_weights(&cfg, 2);
    weights.retain(|(k, _)| k != "blocks.1.ffn.2.weight");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wan.gguf");
    write_gguf(&path, "wan", &weights, |k, t| {
        storage_type(k, t, RECIPES[0])
    });
    let err = open_error(&path);
    assert!(
        err.contains("missing tensor `blocks.1.ffn.2.weight` (expected shape [256, 512])"),
        "{err}"
    );
}

/// A GGUF file of one tensor of ggml type `type_id` (values: zero bytes).
fn one_tensor_gguf(
    path: &Path,
    name: &str,
    dims_innermost_first: &[u64],
    type_id: u32,
    bytes: usize,
) {
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&1u64.to_le_bytes()); // tensors
    out.extend_from_slice(&0u64.to_le_bytes()); // metadata
    out.extend_from_slice(&(name.len() as u64).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&(dims_innermost_first.len() as u32).to_le_bytes());
    for d in dims_innermost_first {
        out.extend_from_slice(&d.to_le_bytes());
    }
    out.extend_from_slice(&type_id.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // offset
    out.resize(out.len().div_ceil(32) * 32 + bytes, 0);
    std::fs::write(path, out).unwrap();
}

#[test]
fn an_unsupported_quant_type_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iq.gguf");
    // IQ2_XXS (type 16): 66 bytes per 256 values.
    one_tensor_gguf(&path, "blocks.0.self_attn.q.weight", &[256, 4], 16, 4 * 66);
    let files = WeightFiles::open(&path).unwrap();
    let err = files
        .load(
            "blocks.0.self_attn.q.weight",
            None,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("unsupported dtype IQ2_XXS (GGUF"), "{err}");
    assert!(err.contains("blocks.0.self_attn.q.weight"), "{err}");
}

#[test]
fn a_truncated_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.gguf");
    let bytes = std::fs::read(gguf_fixture("wan_tiny_q8_0.gguf")).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = WeightFiles::open(&path).unwrap_err().to_string();
    assert!(err.contains("is not a readable GGUF file"), "{err}");
    std::fs::write(&path, &bytes[..100]).unwrap();
    let err = WeightFiles::open(&path).unwrap_err().to_string();
    assert!(err.contains("header ends early"), "{err}");
}

/// A LoRA on the Q8_0 file, kept apart (runtime) or merged into the blocks (dequantised, added,
/// quantised again): both close to diffusers' velocity of the f32 model with the LoRA, within the
/// Q8_0 bound, and the LoRA must move the output (it is compared against the base too).
#[test]
fn lora_on_a_quantised_file_in_both_modes() {
    use vdit_models::lora::{LoraMode, LoraSet, LoraSpec};
    use vdit_models::wan::keys::lora_targets;
    let case = fixture("heads2x32");
    let cfg = WanConfig::from_json_file(&case.join("config.json")).unwrap();
    let files = Arc::new(WeightFiles::open(&gguf_fixture("wan_tiny_q8_0.gguf")).unwrap());
    let io = load_io(&case, &Device::Cpu);
    let refs = candle_core::safetensors::load(
        fixtures_root().join("lora/reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let expected = &refs["peft"];
    let base_err = relative_error(&io["velocity"], expected);
    let spec = LoraSpec {
        path: fixtures_root().join("lora/peft.safetensors"),
        strength: 0.7,
    };
    for mode in [LoraMode::Runtime, LoraMode::Merge] {
        let set = LoraSet::open(
            std::slice::from_ref(&spec),
            &lora_targets(&cfg),
            mode,
            false,
        )
        .unwrap();
        let model = WanTransformer::load_with_lora(
            &files,
            &cfg,
            DType::F32,
            &Device::Cpu,
            Some(Arc::new(set)),
        )
        .unwrap();
        let err = relative_error(&forward_on_io(&model, &io, &mut DenseAttention), expected);
        eprintln!(
            "Q8_0 + LoRA {}: rel. error {err:.2e} (the LoRA's own effect: {base_err:.2e})",
            mode.name()
        );
        assert!(err <= Q8_0_F32_BOUND, "{}: {err}", mode.name());
        assert!(base_err > 10.0 * err, "the LoRA must matter: {base_err}");
    }
}

/// CPU time of linear layers, x [M, k] · W [n, k]ᵀ: the 1.3B model's feed-forward input (n 8960,
/// k 1536) and attention projection (1536 × 1536), and vdit-tiny's feed-forward (1024 × 256), dense
/// f32 against Q8_0 / Q4_K blocks through candle's quantised matmul, alternating the cases and
/// keeping each one's fastest of five runs (the box is shared). Not a correctness test:
/// `cargo test --release -p vdit-models --test gguf_parity matmul_speed -- --ignored --nocapture`.
#[test]
#[ignore]
fn matmul_speed_on_the_cpu() {
    use candle_core::quantized::QMatMul;
    use candle_core::Module;
    let mut rng = Rng(3);
    for (n, k, ms) in [
        (8960, 1536, &[64, 256, 1024][..]),
        (1536, 1536, &[256, 1024][..]),
        (1024, 256, &[640][..]),
    ] {
        let w = rng.tensor(&[n, k], 0.0, 1.0 / (k as f32).sqrt());
        let q8 = QMatMul::QTensor(Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()));
        let q4 = QMatMul::QTensor(Arc::new(QTensor::quantize(&w, GgmlDType::Q4K).unwrap()));
        for &m in ms {
            let x = rng.tensor(&[m, k], 0.0, 1.0);
            let wt = w.t().unwrap();
            let mut best = [f64::INFINITY; 3];
            for _ in 0..5 {
                let cases: [&dyn Fn() -> Tensor; 3] = [
                    &|| x.matmul(&wt).unwrap(),
                    &|| q8.forward(&x).unwrap(),
                    &|| q4.forward(&x).unwrap(),
                ];
                for (i, case) in cases.iter().enumerate() {
                    let start = std::time::Instant::now();
                    let y = case();
                    let _ = y.sum_all().unwrap().to_scalar::<f32>().unwrap();
                    best[i] = best[i].min(start.elapsed().as_secs_f64());
                }
            }
            eprintln!(
                "W {n}×{k}, M {m:>4}: f32 {:.2} ms, Q8_0 {:.2} ms ({:.2}× f32), Q4_K {:.2} ms ({:.2}× f32)",
                best[0] * 1e3,
                best[1] * 1e3,
                best[1] / best[0],
                best[2] * 1e3,
                best[2] / best[0]
            );
        }
    }
}
