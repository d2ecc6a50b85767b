//! Qwen2.5-VL language-model configuration, from the `config.json` of a `Qwen2_5_VLTextModel`
//! (HunyuanVideo 1.5's `text_encoder/`) or of a whole Qwen2.5-VL model (its `text_config`).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ModelError, Result};

/// The sizes of the language model. Vision fields, `mrope_section`, sliding-window settings and
/// the token ids are not read: for text-only input the three multimodal position rows are equal,
/// so the multimodal RoPE is the 1-D RoPE whatever the sections.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen25VlTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); each serves `num_attention_heads / this` heads.
    pub num_key_value_heads: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
}

/// The fields as `config.json` spells them; `rope_theta` moved into `rope_parameters` in
/// transformers 5.
#[derive(Debug, Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default)]
    use_sliding_window: bool,
}

#[derive(Debug, Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
}

fn default_eps() -> f64 {
    1e-6
}

fn default_act() -> String {
    "silu".to_string()
}

/// Qwen2.5-VL's RoPE base.
const DEFAULT_ROPE_THETA: f64 = 1_000_000.0;

impl Qwen25VlTextConfig {
    /// Qwen2.5-VL-7B-Instruct's language model, HunyuanVideo 1.5's text encoder.
    pub fn qwen25_vl_7b() -> Self {
        Self {
            vocab_size: 152_064,
            hidden_size: 3584,
            intermediate_size: 18_944,
            num_hidden_layers: 28,
            num_attention_heads: 28,
            num_key_value_heads: 4,
            rms_norm_eps: 1e-6,
            rope_theta: DEFAULT_ROPE_THETA,
        }
    }

    /// Reads a `config.json`: a text model's, or a whole model's whose `text_config` holds the
    /// language model's sizes.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let config_error = |reason: String| ModelError::Config {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| config_error(e.to_string()))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| config_error(e.to_string()))?;
        Self::from_json_value(&value).map_err(config_error)
    }

    /// [`from_json_file`](Self::from_json_file) on parsed JSON; the error is the reason alone.
    pub fn from_json_value(value: &Value) -> std::result::Result<Self, String> {
        let text_part = match value.get("text_config") {
            Some(inner) if inner.get("hidden_size").is_some() => inner,
            _ => value,
        };
        let raw: RawConfig =
            serde_json::from_value(text_part.clone()).map_err(|e| e.to_string())?;
        if raw.hidden_act != "silu" {
            return Err(format!(
                "`hidden_act` = {:?} is not supported (Qwen2.5-VL uses \"silu\")",
                raw.hidden_act
            ));
        }
        if raw.use_sliding_window {
            return Err("`use_sliding_window` = true is not supported".to_string());
        }
        let rope_theta = raw
            .rope_parameters
            .and_then(|p| p.rope_theta)
            .or(raw.rope_theta)
            .unwrap_or(DEFAULT_ROPE_THETA);
        let cfg = Self {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks what the model relies on; the reason names the offending field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(format!("`{name}` must be positive"));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "`hidden_size` = {} is not a multiple of `num_attention_heads` = {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "head width {} must be even for RoPE",
                self.head_dim()
            ));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(format!(
                "`num_attention_heads` = {} is not a multiple of `num_key_value_heads` = {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return Err("`rms_norm_eps` must be positive".to_string());
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 1.0 {
            return Err("`rope_theta` must exceed 1".to_string());
        }
        Ok(())
    }
}
