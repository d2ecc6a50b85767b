use candle_core::Shape;

/// Errors of the rainfusion crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error("attention inputs disagree: q {q:?}, k {k:?}, v {v:?} (expected [batch, heads, tokens, head_dim], same for all three)")]
    ShapeMismatch { q: Shape, k: Shape, v: Shape },

    #[error("layout has {layout_tokens} tokens but the attention inputs have {tensor_tokens}")]
    LayoutMismatch {
        layout_tokens: usize,
        tensor_tokens: usize,
    },

    #[error("invalid attention setting: {0}")]
    InvalidConfig(String),
}

pub type Result<T> = std::result::Result<T, Error>;
