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
//! Each block's joint attention over `[video; text]` goes to a [`rainfusion::SelfAttention`]
//! policy (`attend_joint`, block index = layer): dense by default ([`rainfusion::DenseAttention`]:
//! the fast self-attention kernels when every text token is real, a per-key mask when the samples
//! of a batch have different text lengths), or RainFusion (`rainfusion::joint`: video × video
//! blocks predicted, the text band dense, padded text excluded; fused kernels on CUDA).

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
