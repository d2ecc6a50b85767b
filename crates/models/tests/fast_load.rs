//! The fast CPU loading path gives the very tensors of the plain (candle) path: same dtype,
//! shape and bits, for the repository's fixtures and a random checkpoint, stored in each float
//! dtype and loaded in each, from one file and from shards.

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device};
use common::fixtures_root;
use common::load::{assert_fast_matches_plain, random_tensors, retyped, write, write_shards};

const FLOATS: [DType; 4] = [DType::BF16, DType::F16, DType::F32, DType::F64];

fn fixture_files() -> Vec<PathBuf> {
    let root = fixtures_root();
    [
        "dit/heads2x32/diffusion_pytorch_model.safetensors",
        "umt5/hf/model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    .iter()
    .map(|f| root.join(f))
    .collect()
}

#[test]
fn fixtures_load_identically_in_every_dtype() {
    for file in fixture_files() {
        for dtype in FLOATS {
            let n = assert_fast_matches_plain(&file, &file, dtype, &Device::Cpu);
            assert!(n > 10, "{} has only {n} tensors", file.display());
        }
    }
}

#[test]
fn every_stored_float_dtype_casts_identically() {
    let dir = tempfile::tempdir().unwrap();
    for stored in FLOATS {
        let path = write(
            dir.path(),
            &format!("{stored:?}.safetensors"),
            &random_tensors(stored, 3_000_000),
        );
        for dtype in FLOATS {
            assert_fast_matches_plain(&path, &path, dtype, &Device::Cpu);
        }
    }
}

#[test]
fn shards_load_identically_to_the_single_file() {
    for file in fixture_files() {
        for stored in [DType::BF16, DType::F32] {
            let dir = tempfile::tempdir().unwrap();
            let tensors = retyped(&file, stored);
            let single = write(dir.path(), "single.safetensors", &tensors);
            let index = write_shards(dir.path(), &tensors);
            for dtype in [DType::BF16, DType::F32] {
                let n = assert_fast_matches_plain(&single, &index, dtype, &Device::Cpu);
                assert_eq!(n, tensors.len());
            }
        }
    }
}
