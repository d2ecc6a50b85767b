//! The vdit pipeline library: model resolution, sampling, guidance, video output.

pub mod args;
pub mod bench;
pub mod compare;
pub mod error;
pub mod eval;
pub mod eval_cmd;
pub mod hub;
pub mod metrics;
pub mod pipeline;
pub mod registry;
pub mod sampling;
pub mod settings;
pub mod video;

pub use error::{Result, VditError};
