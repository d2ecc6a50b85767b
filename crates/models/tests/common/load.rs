//! Shared by the weight-loading tests (fast_load on the CPU, cuda_load on the GPU): checkpoints
//! written on the fly (random, re-typed, sharded) and a bit-for-bit comparison of two loads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use vdit_models::weights::{LoadMethod, WeightFiles};

/// Every element's bit pattern (widened to u64), read back on the CPU.
pub fn tensor_bits(tensor: &Tensor) -> Vec<u64> {
    let flat = tensor
        .flatten_all()
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap();
    match flat.dtype() {
        DType::BF16 => flat
            .to_vec1::<half::bf16>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits() as u64)
            .collect(),
        DType::F16 => flat
            .to_vec1::<half::f16>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits() as u64)
            .collect(),
        DType::F32 => flat
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits() as u64)
            .collect(),
        DType::F64 => flat
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect(),
        DType::U8 => flat
            .to_vec1::<u8>()
            .unwrap()
            .iter()
            .map(|&v| v as u64)
            .collect(),
        DType::U32 => flat
            .to_vec1::<u32>()
            .unwrap()
            .iter()
            .map(|&v| v as u64)
            .collect(),
        DType::I64 => flat
            .to_vec1::<i64>()
            .unwrap()
            .iter()
            .map(|&v| v as u64)
            .collect(),
        other => panic!("no bit comparison for {other:?}"),
    }
}

/// Writes `tensors` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, tensors: &HashMap<String, Tensor>) -> PathBuf {
    let path = dir.join(name);
    candle_core::safetensors::save(tensors, &path).unwrap();
    path
}

/// A random checkpoint in `stored` dtype: vectors of odd lengths (packing of small tensors into
/// one staging buffer), matrices of a few MB and one of `big_elems` elements (chunked uploads).
pub fn random_tensors(stored: DType, big_elems: usize) -> HashMap<String, Tensor> {
    let mut tensors = HashMap::new();
    let mut add = |name: &str, shape: &[usize]| {
        let t = Tensor::randn(0f32, 1f32, shape, &Device::Cpu).unwrap();
        tensors.insert(name.to_string(), t.to_dtype(stored).unwrap());
    };
    for (i, len) in [1usize, 3, 4097, 65_537].into_iter().enumerate() {
        add(&format!("vectors.{i}"), &[len]);
    }
    for i in 0..4 {
        add(&format!("matrices.{i}"), &[1024 + i, 1536]);
    }
    add("big", &[big_elems / 1000, 1000]);
    tensors
}

/// The tensors of the safetensors file `path`, re-typed to `stored` (floats only).
pub fn retyped(path: &Path, stored: DType) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let t = if t.dtype().is_float() {
                t.to_dtype(stored).unwrap()
            } else {
                t
            };
            (k, t)
        })
        .collect()
}

/// `tensors` split into two shard files and a `model.safetensors.index.json` in `dir`; returns
/// the index's path.
pub fn write_shards(dir: &Path, tensors: &HashMap<String, Tensor>) -> PathBuf {
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let mut shards = [HashMap::new(), HashMap::new()];
    let mut weight_map = serde_json::Map::new();
    for (i, key) in keys.into_iter().enumerate() {
        shards[i % 2].insert(key.clone(), tensors[key].clone());
        weight_map.insert(key.clone(), names[i % 2].into());
    }
    for (name, shard) in names.iter().zip(&shards) {
        write(dir, name, shard);
    }
    let index = dir.join("model.safetensors.index.json");
    let json = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(&index, json.to_string()).unwrap();
    index
}

/// Loads every key of `reference` (plain method) and of `candidate` (fast method), both opened
/// from their paths, in `dtype` on `device`, and asserts equal dtypes, shapes and bits. Returns
/// the number of tensors compared.
pub fn assert_fast_matches_plain(
    reference: &Path,
    candidate: &Path,
    dtype: DType,
    device: &Device,
) -> usize {
    let plain = WeightFiles::open(reference)
        .unwrap()
        .with_load_method(LoadMethod::Plain);
    let fast = WeightFiles::open(candidate)
        .unwrap()
        .with_load_method(LoadMethod::Fast);
    assert_eq!(
        plain.keys(),
        fast.keys(),
        "{} vs {}",
        reference.display(),
        candidate.display()
    );
    // Everything first, then compare: the fast uploads are in flight together, as in real use.
    let keys = plain.keys();
    let loaded: Vec<(Tensor, Tensor)> = keys
        .iter()
        .map(|key| {
            let shape = plain.shape(key).map(candle_core::Shape::from);
            (
                plain.load(key, shape.as_ref(), dtype, device).unwrap(),
                fast.load(key, shape.as_ref(), dtype, device).unwrap(),
            )
        })
        .collect();
    for (key, (a, b)) in keys.iter().zip(&loaded) {
        assert_eq!(b.dtype(), dtype, "`{key}` dtype");
        assert_eq!(a.dims(), b.dims(), "`{key}` shape");
        assert!(b.device().same_device(device), "`{key}` device");
        assert!(
            tensor_bits(a) == tensor_bits(b),
            "`{key}` differs ({:?} -> {dtype:?})",
            a.dtype()
        );
    }
    keys.len()
}
