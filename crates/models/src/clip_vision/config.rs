//! CLIP vision tower hyper-parameters, from transformers' `config.json` (`CLIPVisionModel`,
//! `CLIPVisionModelWithProjection`, or a whole `CLIPModel` with a `vision_config` section).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ModelError, Result};

/// The feed-forward activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipActivation {
    /// Exact (erf) gelu: LAION's open_clip ViT-H/14, which Wan2.1 I2V uses.
    Gelu,
    /// `x·σ(1.702x)`: OpenAI's CLIP checkpoints.
    QuickGelu,
}

/// Hyper-parameters of a CLIP vision transformer (ViT with a class token, pre-LayerNorm).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Input side in pixels (square); the position table has (image_size/patch_size)² + 1 rows.
    pub image_size: usize,
    pub patch_size: usize,
    #[serde(default = "default_channels")]
    pub num_channels: usize,
    pub hidden_act: ClipActivation,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_channels() -> usize {
    3
}

fn default_eps() -> f64 {
    1e-5
}

impl ClipVisionConfig {
    /// ViT-H/14 at 224² (laion/CLIP-ViT-H-14-laion2B-s32B-b79K, the `image_encoder/` of
    /// Wan-AI/Wan2.1-I2V-14B-480P-Diffusers and its 720P and FLF2V siblings): width 1280, 32
    /// layers of 16 heads, MLP 5120, exact gelu; 257 tokens (a class token and 16 × 16 patches).
    pub fn vit_h_14() -> Self {
        Self {
            hidden_size: 1280,
            intermediate_size: 5120,
            num_hidden_layers: 32,
            num_attention_heads: 16,
            image_size: 224,
            patch_size: 14,
            num_channels: 3,
            hidden_act: ClipActivation::Gelu,
            layer_norm_eps: 1e-5,
        }
    }

    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| config_error(path, e.to_string()))?;
        Self::from_json_str(&text).map_err(|reason| config_error(path, reason))
    }

    /// Parses a vision config, or a whole CLIP config's `vision_config`. Errors are plain reasons.
    pub fn from_json_str(text: &str) -> std::result::Result<Self, String> {
        let mut value: Value =
            serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        if let Some(vision) = value.get_mut("vision_config") {
            value = vision.take();
        }
        let cfg: Self =
            serde_json::from_value(value).map_err(|e| format!("not a CLIP vision config: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens per image: the class token and one per patch (257 for ViT-H/14 at 224²).
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("patch_size", self.patch_size),
            ("num_channels", self.num_channels),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.image_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(format!(
                "image_size {} must be a positive multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        Ok(())
    }
}

fn config_error(path: &Path, reason: String) -> ModelError {
    ModelError::Config {
        path: path.display().to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The image_encoder/config.json of the Wan2.1 I2V Diffusers repositories (transformers'
    /// `CLIPVisionModelWithProjection` of laion/CLIP-ViT-H-14-laion2B-s32B-b79K), abridged.
    #[test]
    fn the_published_image_encoder_config_is_the_vit_h_14_preset() {
        let text = r#"{"architectures": ["CLIPVisionModelWithProjection"],
            "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "gelu", "hidden_size": 1280,
            "image_size": 224, "initializer_factor": 1.0, "initializer_range": 0.02,
            "intermediate_size": 5120, "layer_norm_eps": 1e-05, "model_type": "clip_vision_model",
            "num_attention_heads": 16, "num_channels": 3, "num_hidden_layers": 32,
            "patch_size": 14, "projection_dim": 1024, "torch_dtype": "bfloat16"}"#;
        let cfg = ClipVisionConfig::from_json_str(text).unwrap();
        assert_eq!(cfg, ClipVisionConfig::vit_h_14());
        assert_eq!((cfg.num_positions(), cfg.head_dim()), (257, 80));
        let whole = r#"{"text_config": {}, "vision_config": {"hidden_act": "quick_gelu",
            "hidden_size": 64, "image_size": 28, "intermediate_size": 128,
            "num_attention_heads": 4, "num_hidden_layers": 2, "patch_size": 14}}"#;
        let small = ClipVisionConfig::from_json_str(whole).unwrap();
        assert_eq!(
            (small.hidden_act, small.num_positions()),
            (ClipActivation::QuickGelu, 5)
        );
        let odd = r#"{"hidden_act": "relu", "hidden_size": 64, "image_size": 28,
            "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2,
            "patch_size": 14}"#;
        assert!(ClipVisionConfig::from_json_str(odd).is_err());
    }
}
