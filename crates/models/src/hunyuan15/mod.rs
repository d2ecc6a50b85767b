//! HunyuanVideo 1.5 (Tencent, arXiv 2511.18870; diffusers `HunyuanVideo15Pipeline`): an 8.3B
//! dual-stream diffusion transformer over a 32-channel causal 3D VAE latent (×16 space, ×4
//! time), conditioned on Qwen2.5-VL prompt states, ByT5 glyph-text states and, for
//! image-to-video, SigLIP image tokens.
//!
//! - [`transformer`]: the diffusion transformer, [`transformer::HunyuanVideo15Transformer`].
//! - [`text`]: the prompt template, crop and hidden-layer choice of the Qwen2.5-VL stream and the
//!   glyph text of the ByT5 stream, giving the transformer's four text tensors.
//! - [`vae`]: the causal 3D VAE decoder (`AutoencoderKLHunyuanVideo15`).

pub mod text;
pub mod transformer;
pub mod vae;
