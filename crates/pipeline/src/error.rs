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

    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The sampler produced a non-finite latent: the run diverged (a dtype overflow, or NaN in
    /// the weights). [`non_finite_hint`] says what to try for the run's dtype.
    #[error("non-finite values (NaN or inf) in the latents after sampling step {step} of {steps} (timestep {timestep})")]
    NonFinite {
        step: usize,
        steps: usize,
        timestep: f32,
    },

    /// An error with what to try for this run (see [`VditError::with_dtype_hint`]).
    #[error("{error}; {hint}")]
    Hinted {
        error: Box<VditError>,
        hint: &'static str,
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

impl VditError {
    /// A diverged run ([`VditError::NonFinite`]) with the hint for the run's `dtype`
    /// ([`non_finite_hint`]); any other error as it is.
    pub fn with_dtype_hint(self, dtype: candle_core::DType) -> Self {
        match self {
            VditError::NonFinite { .. } => VditError::Hinted {
                error: Box::new(self),
                hint: non_finite_hint(dtype),
            },
            other => other,
        }
    }
}

/// What to try after [`VditError::NonFinite`] in a run of `dtype`: a wider dtype where there is
/// one; in f32 an overflow is unlikely, so the weights or the noise are the suspects.
pub fn non_finite_hint(dtype: candle_core::DType) -> &'static str {
    match dtype {
        candle_core::DType::F16 => "f16 overflows easily: try --dtype bf16 or f32",
        candle_core::DType::BF16 => "try --dtype f32",
        _ => "the run is already f32, so the weights (or --noise) likely hold NaN or inf values: check the checkpoint",
    }
}
