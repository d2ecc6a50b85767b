//! umT5 encoder configuration: transformers' `UMT5Config` (`config.json`) and the umT5-XXL preset.

use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// The encoder half of a umT5 model. Field names follow transformers' `config.json`, so a
/// `text_encoder/config.json` deserialises directly; unknown keys (decoder sizes, dropout,
/// `scalable_attention`, ...) are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Umt5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    /// Size of one attention head; `num_heads * d_kv` need not equal `d_model`.
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_heads: usize,
    /// Encoder layers.
    pub num_layers: usize,
    #[serde(default = "default_num_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "default_epsilon")]
    pub layer_norm_epsilon: f64,
    /// Only `gated-gelu` (umT5, T5 v1.1) is supported: wo(gelu_tanh(wi_0 x) * wi_1 x).
    #[serde(default = "default_feed_forward_proj")]
    pub feed_forward_proj: String,
}

fn default_num_buckets() -> usize {
    32
}

fn default_max_distance() -> usize {
    128
}

fn default_epsilon() -> f64 {
    1e-6
}

fn default_feed_forward_proj() -> String {
    "gated-gelu".to_string()
}

impl Umt5Config {
    /// google/umt5-xxl, the text encoder of Wan2.1 (encoder only).
    pub fn umt5_xxl() -> Self {
        Self {
            vocab_size: 256_384,
            d_model: 4096,
            d_kv: 64,
            d_ff: 10_240,
            num_heads: 64,
            num_layers: 24,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: default_feed_forward_proj(),
        }
    }

    /// Reads a transformers `config.json` (UMT5Config / T5Config) and checks it.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let config_error = |reason: String| ModelError::Config {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| config_error(e.to_string()))?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| config_error(e.to_string()))?;
        cfg.validate().map_err(config_error)?;
        Ok(cfg)
    }

    /// Heads times head size: the width of q, k and v.
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// Checks what the encoder relies on; the reason names the offending field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_heads", self.num_heads),
            ("num_layers", self.num_layers),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(format!("`{name}` must be positive"));
        }
        // Bidirectional buckets: half for each sign, and of each half, half exact and half log-spaced.
        let buckets = self.relative_attention_num_buckets;
        if buckets < 4 || !buckets.is_multiple_of(4) {
            return Err(format!(
                "`relative_attention_num_buckets` = {buckets}: expected a positive multiple of 4"
            ));
        }
        if self.relative_attention_max_distance <= buckets / 4 {
            return Err(format!(
                "`relative_attention_max_distance` = {} must exceed num_buckets / 4 = {}",
                self.relative_attention_max_distance,
                buckets / 4
            ));
        }
        if self.layer_norm_epsilon.is_nan() || self.layer_norm_epsilon <= 0.0 {
            return Err("`layer_norm_epsilon` must be positive".to_string());
        }
        if self.feed_forward_proj != "gated-gelu" {
            return Err(format!(
                "`feed_forward_proj` = {:?} is not supported (only \"gated-gelu\", as in umT5)",
                self.feed_forward_proj
            ));
        }
        Ok(())
    }
}
