//! HunyuanVideo 1.5 (Tencent, arXiv 2511.18870): an 8.3B dual-stream diffusion transformer over
//! a 32-channel causal 3D VAE latent, conditioned on Qwen2.5-VL prompt states, ByT5 glyph-text
//! states and, for image-to-video, SigLIP image tokens.
//!
//! - [`transformer`]: the diffusion transformer, [`transformer::HunyuanVideo15Transformer`].

pub mod transformer;
