//! Wan2.1: the 3D diffusion transformer and the causal 3D VAE.

pub mod config;
pub mod rope;
pub mod transformer;
pub mod vae;
