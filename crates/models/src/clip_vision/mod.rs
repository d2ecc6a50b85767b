//! The CLIP image encoder of Wan2.1 I2V and FLF2V: the vision tower of LAION's ViT-H/14
//! (transformers' `CLIPVisionModel`, the hub's `image_encoder/`) up to its penultimate layer, and
//! the image preprocessing of `CLIPImageProcessor`.
//!
//! - [`config`]: [`ClipVisionConfig`] from transformers' config.json, the ViT-H/14 preset.
//! - [`model`]: [`ClipVisionModel`], pixel values → penultimate hidden states [B, 257, 1280].
//! - [`preprocess`]: an RGB8 image → pixel values [1, 3, 224, 224] (PIL's bicubic, bit for bit).

pub mod config;
pub mod model;
pub mod preprocess;

pub use config::{ClipActivation, ClipVisionConfig};
pub use model::ClipVisionModel;
pub use preprocess::preprocess;
