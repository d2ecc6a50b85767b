//! The HunyuanVideo 1.5 diffusion transformer (diffusers' `HunyuanVideo15Transformer3DModel`,
//! 8.3B: 54 dual-stream blocks of 16 heads × 128).
//!
//! - [`config`]: [`HunyuanVideo15Config`], read from the diffusers config.json.
//! - `embeddings`: latent patches, timestep, ByT5 and image projections, condition-type tags.
//! - `refiner`: the token refiner of the Qwen prompt stream.
//! - [`rope`]: the 3D rotary embedding of the video tokens.
//! - `block`: the dual-stream block with joint attention over `[video; text]`.
//! - `packing`: each sample's valid text tokens first, padding masked (or dropped).
//! - [`model`]: [`HunyuanVideo15Transformer`] and its [`HunyuanVideo15Inputs`].
//!
//! Attention is dense: rainfusion's [`rainfusion::key_masked_attention`], chunked over queries,
//! with a per-key mask when the samples of a batch have different text lengths (no mask, and the
//! fast self-attention kernels, otherwise). A fused CUDA kernel with the mask is not written yet,
//! and RainFusion's joint attention with a dense text band (`rainfusion::joint`, CPU and generic
//! paths) is not wired into this model yet.

mod block;
pub mod config;
mod embeddings;
mod layers;
pub mod model;
mod packing;
mod refiner;
pub mod rope;

pub use config::HunyuanVideo15Config;
pub use model::{HunyuanVideo15Inputs, HunyuanVideo15Transformer};
