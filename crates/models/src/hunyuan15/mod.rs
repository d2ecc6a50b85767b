//! HunyuanVideo 1.5 (arXiv 2511.18870; diffusers `HunyuanVideo15Pipeline`): its text encoders'
//! prompt handling, transformer and VAE.
//!
//! - [`text`]: the prompt template, crop and hidden-layer choice of the Qwen2.5-VL stream and the
//!   glyph text of the ByT5 stream, giving the transformer's four text tensors.

pub mod text;
