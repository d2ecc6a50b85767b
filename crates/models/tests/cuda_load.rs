//! On a CUDA device the fast loading path (pinned staging, asynchronous uploads, casts on the
//! GPU) gives the very tensors of the plain path (cast on the CPU, then a synchronous upload):
//! bit-identical for bf16 -> bf16, f32 -> bf16, bf16 -> f32, f16 -> bf16, and from shards. The
//! random checkpoints hold a tensor larger than a staging buffer, so chunked uploads and the
//! buffer ring are exercised, and many small ones, so packing is too.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device};
use common::fixtures_root;
use common::load::{assert_fast_matches_plain, random_tensors, retyped, write, write_shards};

/// Elements of the largest random tensor: 96 MB in bf16, more than one 64 MiB staging buffer.
const BIG: usize = 48_000_000;

fn cuda() -> Device {
    Device::new_cuda(0).expect("a CUDA device")
}

fn stored_as(stored: DType, dtype: DType) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "random.safetensors",
        &random_tensors(stored, BIG),
    );
    let n = assert_fast_matches_plain(&path, &path, dtype, &cuda());
    assert_eq!(n, 9);
}

#[test]
fn bf16_to_bf16() {
    stored_as(DType::BF16, DType::BF16);
}

#[test]
fn f32_to_bf16() {
    stored_as(DType::F32, DType::BF16);
}

#[test]
fn bf16_to_f32() {
    stored_as(DType::BF16, DType::F32);
}

#[test]
fn f16_to_bf16() {
    stored_as(DType::F16, DType::BF16);
}

#[test]
fn shards_match_the_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = random_tensors(DType::BF16, BIG);
    let single = write(dir.path(), "single.safetensors", &tensors);
    let index = write_shards(dir.path(), &tensors);
    for dtype in [DType::BF16, DType::F32] {
        assert_eq!(
            assert_fast_matches_plain(&single, &index, dtype, &cuda()),
            tensors.len()
        );
    }
}

#[test]
fn fixtures_match_in_bf16_and_f32() {
    for file in [
        "dit/heads2x32/diffusion_pytorch_model.safetensors",
        "umt5/hf/model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ] {
        let path = fixtures_root().join(file);
        for stored in [DType::BF16, DType::F32] {
            let dir = tempfile::tempdir().unwrap();
            let copy = write(dir.path(), "retyped.safetensors", &retyped(&path, stored));
            for dtype in [DType::BF16, DType::F32] {
                assert!(assert_fast_matches_plain(&copy, &copy, dtype, &cuda()) > 10);
            }
        }
    }
}
