use crate::weights::WeightsError;

/// Errors of vdit-models: bad checkpoints, bad configs, bad inputs.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Weights(#[from] WeightsError),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error(transparent)]
    Attention(#[from] rainfusion::Error),

    #[error("config {path}: {reason}")]
    Config { path: String, reason: String },

    /// The checkpoint is readable but is not (or not a supported kind of) the expected model.
    #[error("unsupported checkpoint {files}: {reason}")]
    UnsupportedCheckpoint { files: String, reason: String },

    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// Latents whose channel count is not the VAE's z_dim (e.g. Wan2.2's 48-channel latents given
    /// to a 16-channel Wan2.1 VAE).
    #[error(
        "latents {shape:?} have {got} channels but this {vae} VAE decodes {expected}-channel \
         latents (Wan2.1 VAE: 16, Wan2.2 VAE: 48); use the VAE of the model that made them"
    )]
    LatentChannels {
        shape: Vec<usize>,
        got: usize,
        expected: usize,
        vae: &'static str,
    },

    #[error("{files}: not a recognised {model} checkpoint (looked for {expected})")]
    UnrecognizedCheckpoint {
        model: &'static str,
        files: String,
        expected: String,
    },

    /// A LoRA file that cannot be applied to this model.
    #[error("LoRA {path}: {reason}")]
    Lora { path: String, reason: String },

    #[error("tokenizer {path}: {reason}")]
    Tokenizer { path: String, reason: String },
}

pub type Result<T> = std::result::Result<T, ModelError>;
