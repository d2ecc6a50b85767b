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

/// The overlapped read-back (`vdit_models::readback`, the decode stage's path to the video
/// encoder) gives each tensor's bytes, one push late, through its two pinned buffers: chunks
/// of several sizes (a buffer grows), a strided view, and work queued behind each copy.
#[test]
fn readback_gives_every_tensor_in_order() {
    use candle_core::Tensor;
    use vdit_models::readback::Readback;
    let device = cuda();
    let mut readback = Readback::new();
    let mut expected = Vec::new();
    let mut got = Vec::new();
    for (i, len) in [3usize, 1 << 20, 5_000_001, 7, 1 << 22]
        .into_iter()
        .enumerate()
    {
        let values = Tensor::arange(0u32, len as u32, &device)
            .unwrap()
            .affine(1.0, i as f64)
            .unwrap()
            .to_dtype(DType::U8)
            .unwrap();
        // every other tensor a transposed view: [2, len/2]ᵀ
        let tensor = if i % 2 == 1 && len % 2 == 0 {
            values.reshape((2, len / 2)).unwrap().t().unwrap()
        } else {
            values
        };
        expected.push((i, tensor.flatten_all().unwrap().to_vec1::<u8>().unwrap()));
        got.extend(readback.push(i, &tensor).unwrap());
        // later work on the stream does not disturb the copy in flight
        let _busy = (tensor.to_dtype(DType::F32).unwrap() * 2.0).unwrap();
    }
    got.extend(readback.finish().unwrap());
    assert_eq!(got.len(), expected.len());
    for ((i, bytes), (j, want)) in got.iter().zip(&expected) {
        assert_eq!(i, j);
        assert!(bytes == want, "tensor {i}: bytes differ");
    }
}
