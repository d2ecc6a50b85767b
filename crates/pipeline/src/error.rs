//! Errors of the vdit library: settings, model resolution, sampling, and the networks below it.

use std::path::PathBuf;

/// Everything the pipeline library can fail with. The binary wraps these in `anyhow`.
#[derive(Debug, thiserror::Error)]
pub enum VditError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error(transparent)]
    Model(#[from] vdit_models::ModelError),

    #[error(transparent)]
    Weights(#[from] vdit_models::weights::WeightsError),

    #[error(transparent)]
    Attention(#[from] rainfusion::Error),

    /// A setting out of range or inconsistent with another one; the message names the flag.
    #[error("{0}")]
    InvalidSetting(String),

    /// A model name, hub id or directory that cannot be resolved; the message says where vdit looked.
    #[error("{0}")]
    Resolve(String),

    #[error("registry file {path}: {reason}")]
    Registry { path: PathBuf, reason: String },

    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The sampler produced a non-finite latent: the run diverged (often a dtype overflow).
    #[error("non-finite values (NaN or inf) in the latents after sampling step {step} of {steps} (timestep {timestep}); try --dtype f32 or bf16")]
    NonFinite {
        step: usize,
        steps: usize,
        timestep: f32,
    },

    #[error("sampling: {0}")]
    Sampling(String),

    /// A stage after sampling failed. The sampled latents were saved first (`latents`, `None` if
    /// even that failed), so `vdit generate --latents-in` can decode them without sampling again.
    #[error("{error}")]
    AfterSampling {
        error: Box<VditError>,
        latents: Option<PathBuf>,
    },

    #[error(transparent)]
    Video(#[from] crate::video::VideoError),

    #[error("quality metrics: {0}")]
    Metrics(#[from] crate::metrics::MetricsError),

    #[error("prompt-faithfulness analyser: {0}")]
    Eval(#[from] crate::eval::EvalError),
}

pub type Result<T> = std::result::Result<T, VditError>;
