//! Wan2.1 and Wan2.2: the 3D diffusion transformer and the causal 3D VAE.
//!
//! - [`config`]: [`WanConfig`] from diffusers or original config.json, presets (Wan2.1 1.3B/14B,
//!   I2V-14B and FLF2V-14B, Wan2.2 T2V-A14B and I2V-A14B experts, TI2V-5B).
//! - [`keys`]: checkpoint key dialects (diffusers, original, ComfyUI prefix), detected from names.
//! - [`transformer`]: [`WanTransformer`], latents + timesteps (per sample or per token) + text
//!   (+ CLIP image tokens for Wan2.1 I2V / FLF2V) → velocity.
//! - [`block_store`]: [`BlockPlacement`], blocks resident on the compute device or streamed
//!   from the host one at a time (`--offload blocks`).
//! - [`rope`]: the 3D rotary position embedding.

mod block;
pub mod block_store;
#[cfg(feature = "cuda")]
mod block_stream;
pub mod config;
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
mod host_pages;
mod image_embedding;
pub mod keys;
pub(crate) mod layers;
pub mod rope;
pub(crate) mod tensor_map;
pub mod transformer;
pub mod vae;

pub use block_store::BlockPlacement;
pub use config::WanConfig;
pub use keys::{CheckpointKeys, KeyDialect};
pub use layers::{FP8_GEMM_ENV, FP8_GEMM_MIN_WIDTH};
pub use transformer::WanTransformer;
