//! vdit-models: the networks of vdit and the loading of their checkpoints.
//!
//! - [`weights`]: safetensors (single file or shards), key dialects, dtype casts, clear errors.
//! - [`wan`]: the Wan2.1 diffusion transformer and the Wan VAE.
//! - [`hunyuan15`]: the HunyuanVideo 1.5 diffusion transformer.
//! - [`lora`]: LoRA files in every published form, merged at load or applied per pass.
//! - [`umt5`] and [`tokenizer`]: the umT5 text encoder and its prompt tokenizer.
//! - [`taehv`]: TAEHV, the tiny preview decoder of Wan latents (taew2_1, taew2_2).
//! - [`hunyuan15`]: HunyuanVideo 1.5 (its VAE decoder).
//! - [`clip_vision`]: the CLIP image encoder of Wan2.1 I2V / FLF2V and its preprocessing.
//! - [`hunyuan15`]: HunyuanVideo 1.5; its text encoders are [`qwen25vl_text`] (Qwen2.5-VL's
//!   language model) and [`byt5`] (the glyph encoder and its byte tokenizer).

pub mod byt5;
pub mod clip_vision;
pub mod error;
mod fp8;
pub mod hunyuan15;
pub mod kernel_cache;
pub mod lora;
pub mod parallel;
pub mod profile;
pub mod queue_drain;
pub mod qwen25vl_text;
pub mod readback;
pub mod taehv;
pub mod tokenizer;
pub mod umt5;
pub mod wan;
pub mod weights;

pub use error::{ModelError, Result};
