//! HunyuanVideo 1.5 (arXiv 2511.18870; diffusers `HunyuanVideo15Pipeline`): vdit's second model
//! family, 32-channel latents at ×16 space and ×4 time.
//!
//! - [`vae`]: the causal 3D VAE decoder (`AutoencoderKLHunyuanVideo15`).

pub mod vae;
