//! ByT5 encoder (transformers' `T5EncoderModel` with a ByT5 checkpoint), the glyph-text encoder
//! of HunyuanVideo 1.5, and its byte tokenizer.
//!
//! ByT5 is T5 v1.1 on bytes: gated-GELU feed-forward, RMSNorm, unscaled attention with a
//! relative-position bias. It runs on the [`crate::umt5`] encoder, whose layers are the same; the
//! one difference is that T5 stores a single bias table in layer 0 which every layer adds
//! ([`BiasTables::SharedFromFirstLayer`]), where umT5 gives each layer its own.
//!
//! - [`tokenizer`]: bytes → ids, added tokens, truncation, EOS and padding.

pub mod tokenizer;

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

pub use tokenizer::ByT5Tokenizer;

use crate::error::{ModelError, Result};
use crate::umt5::{BiasTables, Umt5Config, Umt5Encoder};
use crate::weights::WeightFiles;

/// The T5 encoder configuration (`config.json` of a `T5EncoderModel`); same fields as umT5's.
pub type ByT5Config = Umt5Config;

/// The ByT5 encoder stack: byte embedding, layers sharing layer 0's bias table, final RMSNorm.
#[derive(Debug, Clone)]
pub struct ByT5Encoder {
    inner: Umt5Encoder,
    device: Device,
}

impl ByT5Encoder {
    /// Loads the encoder from transformers-named weights (`shared.weight` or
    /// `encoder.embed_tokens.weight`, `encoder.block.N…`). `dtype`: f32 or bf16 projections.
    pub fn load(
        files: &Arc<WeightFiles>,
        cfg: &ByT5Config,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let inner = Umt5Encoder::load_with_bias_tables(
            files,
            cfg,
            dtype,
            device,
            BiasTables::SharedFromFirstLayer,
        )?;
        Ok(Self {
            inner,
            device: device.clone(),
        })
    }

    /// Opens a `text_encoder_2/` folder: `config.json` and its safetensors.
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(ModelError::Config {
                path: config_path.display().to_string(),
                reason: "not found: a ByT5 encoder folder needs its config.json".to_string(),
            });
        }
        let cfg = ByT5Config::from_json_file(&config_path)?;
        let files = Arc::new(WeightFiles::open(dir)?);
        Self::load(&files, &cfg, dtype, device)
    }

    pub fn config(&self) -> &ByT5Config {
        self.inner.config()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// ids [B, L] u32, attention mask [B, L] (nonzero = real token) → last hidden state
    /// [B, L, d_model] f32. Rows of padding positions are computed but carry no meaning.
    pub fn forward_masked(&self, ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        self.inner.forward_masked(ids, attention_mask)
    }

    /// One tokenized text (with EOS) → [1, max_len, d_model] f32: the real tokens encoded alone
    /// (the same numbers as a masked padded run, since padding keys get no weight), then zero
    /// rows up to `max_len`.
    pub fn encode_padded(&self, ids: &[u32], max_len: usize) -> Result<Tensor> {
        self.inner.encode_padded(ids, max_len)
    }
}
