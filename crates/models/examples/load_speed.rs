//! Weight-loading throughput: opens a safetensors checkpoint through `WeightFiles` and loads every
//! tensor through the same VarBuilder path the networks use, printing GB, seconds and GB/s per
//! repeat (the first repeat may read from disk; later ones read from the page cache).
//!
//! ```text
//! cargo run --release -p vdit-models --example load_speed -- FILE.safetensors \
//!     [--device cpu|cuda] [--dtype bf16|f32|f16] [--repeat N] [--make-random GB]
//! ```
//! `VDIT_FAST_LOAD=0` measures the plain (previous) path. `--make-random GB` first writes FILE:
//! about GB gigabytes of random bf16 4096x4096 matrices (one random matrix repeated, which is
//! as good as distinct ones for timing) and 4096-vectors, like a transformer's layers. GB/s
//! counts the bytes of the loaded tensors (in the requested dtype).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use vdit_models::weights::{KeyMap, WeightFiles};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut path = None;
    let mut device = "cpu".to_string();
    let mut dtype = DType::BF16;
    let mut repeat = 3usize;
    let mut make_random: Option<f64> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--device" => device = args.next().ok_or("--device needs a value")?,
            "--dtype" => {
                dtype = match args.next().ok_or("--dtype needs a value")?.as_str() {
                    "bf16" => DType::BF16,
                    "f16" => DType::F16,
                    "f32" => DType::F32,
                    other => return Err(format!("unknown dtype {other}").into()),
                }
            }
            "--repeat" => repeat = args.next().ok_or("--repeat needs a value")?.parse()?,
            "--make-random" => {
                make_random = Some(args.next().ok_or("--make-random needs GB")?.parse()?)
            }
            other if path.is_none() => path = Some(PathBuf::from(other)),
            other => return Err(format!("unexpected argument {other}").into()),
        }
    }
    let path = path.ok_or("usage: load_speed FILE.safetensors [--device cpu|cuda] [--dtype bf16|f32|f16] [--repeat N]")?;
    if let Some(gb) = make_random {
        write_random(&path, gb)?;
    }
    let device = match device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        other => return Err(format!("unknown device {other}").into()),
    };

    for round in 0..repeat {
        let start = Instant::now();
        let files = Arc::new(WeightFiles::open(&path)?);
        let method = files.load_method();
        let vb = files.var_builder(KeyMap::identity(), dtype, &device);
        let mut bytes = 0usize;
        let mut tensors = Vec::new();
        for key in files.keys() {
            let shape = files.shape(key).expect("listed key has a shape");
            let tensor = vb.get(shape, key)?;
            bytes += tensor.elem_count() * tensor.dtype().size_in_bytes();
            tensors.push(tensor);
        }
        device.synchronize()?;
        let seconds = start.elapsed().as_secs_f64();
        let gb = bytes as f64 / 1e9;
        println!(
            "round {round}: {method:?} {gb:.2} GB ({} tensors, {dtype:?} on {device:?}) in {seconds:.3} s = {:.2} GB/s",
            tensors.len(),
            gb / seconds
        );
        drop(tensors);
    }
    Ok(())
}

/// Writes about `gb` GB of bf16 layers (a 4096x4096 matrix and a 4096-vector each) to `path`.
fn write_random(path: &std::path::Path, gb: f64) -> Result<(), Box<dyn std::error::Error>> {
    let matrix = Tensor::randn(0f32, 1f32, (4096, 4096), &Device::Cpu)?.to_dtype(DType::BF16)?;
    let vector = Tensor::randn(0f32, 1f32, 4096, &Device::Cpu)?.to_dtype(DType::BF16)?;
    let layer_bytes = (matrix.elem_count() + vector.elem_count()) * 2;
    let layers = ((gb * 1e9) / layer_bytes as f64).ceil().max(1.0) as usize;
    let mut tensors = std::collections::HashMap::new();
    for i in 0..layers {
        tensors.insert(format!("layers.{i}.w"), matrix.clone());
        tensors.insert(format!("layers.{i}.b"), vector.clone());
    }
    candle_core::safetensors::save(&tensors, path)?;
    println!(
        "wrote {layers} layers ({:.2} GB) to {}",
        (layers * layer_bytes) as f64 / 1e9,
        path.display()
    );
    Ok(())
}
