//! TAEHV decoder parity with TAEHV's own PyTorch code (madebyollin/taehv, taehv.py).
//!
//! Fixtures: tests/fixtures/taehv (scripts/reference/gen_taehv.py): two small random decoders of
//! TAEHV's layout under the published key names, a 16-channel one (taew2_1 layout, with a stored
//! temporal grow layer wider than used) and a 48-channel one (taew2_2 layout, patch 2), each with
//! latents and TAEHV's decode turned into vdit's layout and range ([B, 3, F, H, W] in [-1, 1]).

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use vdit_models::taehv::{TaehvConfig, TaehvDecoder};
use vdit_models::weights::WeightFiles;
use vdit_models::ModelError;

mod common;
use common::{fixtures_root, relative_error};

fn file(name: &str) -> PathBuf {
    fixtures_root().join("taehv").join(name)
}

fn weights(case: &str) -> Arc<WeightFiles> {
    Arc::new(WeightFiles::open(&file(&format!("{case}_small.safetensors"))).expect("weights"))
}

/// (latents [1, z, F, h, w], TAEHV's video [1, 3, 4F − 3, s·h, s·w] in [-1, 1]).
fn reference(case: &str) -> (Tensor, Tensor) {
    let r = candle_core::safetensors::load(file(&format!("{case}_case.safetensors")), &Device::Cpu)
        .expect("reference tensors");
    (r["latents"].clone(), r["video"].clone())
}

fn check_case(case: &str, latent_channels: usize, patch: usize) {
    let files = weights(case);
    let config = TaehvDecoder::check(&files).expect("check");
    assert_eq!(config.latent_channels, latent_channels);
    assert_eq!(config.patch_size, patch);
    assert_eq!(config.widths, [16, 12, 8, 8]);
    let decoder = TaehvDecoder::load(&files, DType::F32, &Device::Cpu).expect("load");
    let (latents, video) = reference(case);
    let out = decoder.decode(&latents).expect("decode");
    assert_eq!(out.dims(), video.dims());
    let err = relative_error(&out, &video);
    println!("{case}: whole clip, relative error {err:.2e}");
    assert!(err <= 1e-4, "{case}: relative error {err}");
    // Chunks of 1 and 2 latent frames carry the MemBlocks' memory across: the same video.
    for chunk in [1, 2] {
        let mut parts = Vec::new();
        decoder
            .decode_with_chunks(&latents, chunk, &mut |part| {
                parts.push(part.clone());
                Ok(())
            })
            .expect("chunked decode");
        let chunked = Tensor::cat(&parts, 2).unwrap();
        let err = relative_error(&chunked, &video);
        println!("{case}: chunks of {chunk} latent frames, relative error {err:.2e}");
        assert!(
            err <= 1e-4,
            "{case} in chunks of {chunk}: relative error {err}"
        );
    }
}

#[test]
fn taew2_1_layout_matches_reference() {
    check_case("taew2_1", 16, 1);
}

#[test]
fn taew2_2_layout_with_patch_matches_reference() {
    check_case("taew2_2", 48, 2);
}

#[test]
fn f16_decode_is_close() {
    // (candle has no bf16 matmul on the CPU; the GPU runs bf16.)
    let decoder = TaehvDecoder::load(&weights("taew2_1"), DType::F16, &Device::Cpu).unwrap();
    let (latents, video) = reference("taew2_1");
    let err = relative_error(&decoder.decode(&latents).unwrap(), &video);
    println!("taew2_1 f16: relative error {err:.2e}");
    assert!(err <= 2e-2, "f16 relative error {err}");
}

#[test]
fn wrong_latent_channels_is_one_clear_error() {
    let decoder = TaehvDecoder::load(&weights("taew2_1"), DType::F32, &Device::Cpu).unwrap();
    let latents = Tensor::zeros((1, 48, 2, 3, 4), DType::F32, &Device::Cpu).unwrap();
    let err = decoder.decode(&latents).unwrap_err();
    assert!(matches!(
        err,
        ModelError::LatentChannels {
            got: 48,
            expected: 16,
            ..
        }
    ));
    let text = err.to_string();
    assert!(!text.contains('\n') && text.contains("TAEHV"), "{text}");
}

#[test]
fn a_wan_vae_file_is_not_taehv() {
    let files = Arc::new(
        WeightFiles::open(&fixtures_root().join("vae/diffusion_pytorch_model.safetensors"))
            .expect("vae"),
    );
    let err = TaehvDecoder::check(&files).unwrap_err().to_string();
    assert!(
        err.contains("TAEHV") && err.contains("decoder.1.weight"),
        "{err}"
    );
}

#[test]
fn published_shapes() {
    let (a, b) = (TaehvConfig::taew2_1(), TaehvConfig::taew2_2());
    assert_eq!((a.latent_channels, a.spatial_upscale()), (16, 8));
    assert_eq!((b.latent_channels, b.spatial_upscale()), (48, 16));
    assert_eq!(a.output_frames(21), 81);
    assert_eq!(TaehvConfig::published_file(48), Some("taew2_2.safetensors"));
    // A random decoder of the real shape builds and decodes one small frame.
    let decoder = TaehvDecoder::random(&b, DType::F32, &Device::Cpu).unwrap();
    // Chunks: 2 latent frames at 832×480 (8 frames), the whole of a small clip.
    let wan21 = TaehvDecoder::random(&a, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(wan21.chunk_latent_frames(60, 104), 2);
    assert_eq!(wan21.chunk_latent_frames(32, 32), 12);
    assert_eq!(decoder.chunk_latent_frames(30, 52), 2);
    let latents = Tensor::randn(0f32, 1f32, (1, 48, 1, 2, 2), &Device::Cpu).unwrap();
    assert_eq!(decoder.decode(&latents).unwrap().dims(), &[1, 3, 1, 32, 32]);
}
