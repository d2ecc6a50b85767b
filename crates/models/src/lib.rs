//! vdit-models: the networks of vdit and the loading of their checkpoints.
//!
//! - [`weights`]: safetensors (single file or shards), key dialects, dtype casts, clear errors.

pub mod weights;
