//! Shared by the Wan transformer tests (dit_parity on the CPU, cuda_dit on the GPU): the
//! diffusers fixtures under tests/fixtures/dit and the forward-and-compare step they all make.
#![allow(dead_code)] // each test file uses what it needs

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rainfusion::SelfAttention;
use vdit_models::wan::WanTransformer;

/// The folder of one DiT fixture (config.json, weights, io.safetensors).
pub fn fixture(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/dit")
        .join(case)
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
