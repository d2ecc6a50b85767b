//! Shared by the Wan model tests (dit_parity and vae_parity on the CPU, cuda_dit on the GPU): the
//! diffusers fixtures under tests/fixtures/dit and tests/fixtures/vae and the forward-and-compare
//! step they make.
#![allow(dead_code)] // each test file uses what it needs

pub mod load;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rainfusion::SelfAttention;
use vdit_models::wan::vae::{WanVaeConfig, WanVaeDecoder};
use vdit_models::wan::WanTransformer;
use vdit_models::weights::WeightFiles;

/// The repository's tests/fixtures folder.
pub fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The folder of one DiT fixture (config.json, weights, io.safetensors).
pub fn fixture(case: &str) -> PathBuf {
    fixtures_root().join("dit").join(case)
}

/// The tiny random VAE of tests/fixtures/vae from weights `file` there, in `dtype` on `device`,
/// with diffusers' f32 decode of it: (decoder, latents [1, 16, 4, 5, 7], video), both on the CPU.
pub fn vae_fixture(file: &str, dtype: DType, device: &Device) -> (WanVaeDecoder, Tensor, Tensor) {
    let dir = fixtures_root().join("vae");
    let cfg = WanVaeConfig::from_json_file(&dir.join("config.json")).expect("config");
    let files = Arc::new(WeightFiles::open(&dir.join(file)).expect("weights"));
    let vae = WanVaeDecoder::load(&files, &cfg, dtype, device).expect("load");
    let reference = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
        .expect("reference tensors");
    (
        vae,
        reference["latents"].clone(),
        reference["video"].clone(),
    )
}

/// The inputs and diffusers' velocity stored in `dir/io.safetensors`, on `device`.
pub fn load_io(dir: &Path, device: &Device) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("io.safetensors"), device).unwrap()
}

/// ‖out − reference‖ / ‖reference‖ in f64 on the CPU.
pub fn relative_error(out: &Tensor, reference: &Tensor) -> f64 {
    rainfusion::reference::relative_error(out, reference).unwrap()
}

/// `model` on a fixture's latents, timesteps and context: the velocity [B, 16, F, H, W].
pub fn forward_on_io(
    model: &WanTransformer,
    io: &HashMap<String, Tensor>,
    attention: &mut dyn SelfAttention,
) -> Tensor {
    model
        .forward(&io["latents"], &io["timesteps"], &io["context"], attention)
        .unwrap()
}

/// The number of values of `a` and `b` (same shape, any float dtype) whose bits differ as f32:
/// -0.0 against 0.0 and NaNs count, for checks that two paths give exactly the same output.
pub fn differing_values(a: &Tensor, b: &Tensor) -> usize {
    assert_eq!(a.dims(), b.dims());
    let bits = |t: &Tensor| -> Vec<u32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect()
    };
    let (a, b) = (bits(a), bits(b));
    a.iter().zip(&b).filter(|(x, y)| x != y).count()
}
