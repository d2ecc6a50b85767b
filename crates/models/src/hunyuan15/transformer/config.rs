//! The HunyuanVideo 1.5 transformer's hyper-parameters, as diffusers writes them in
//! `transformer/config.json` (`HunyuanVideo15Transformer3DModel`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Hyper-parameters of `HunyuanVideo15Transformer3DModel`. Field names are the config.json keys;
/// [`Default`] is the released 8.3B shape (diffusers' defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HunyuanVideo15Config {
    /// Channels of the transformer input: latent + condition latent + mask (32 + 32 + 1).
    pub in_channels: usize,
    /// Channels of the velocity it returns (the VAE's latent channels).
    pub out_channels: usize,
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    /// Dual-stream blocks.
    pub num_layers: usize,
    /// Blocks of the Qwen text token refiner.
    pub num_refiner_layers: usize,
    /// Feed-forward width over model width (the refiner's and the blocks').
    pub mlp_ratio: f64,
    /// Spatial patch size (height and width).
    pub patch_size: usize,
    /// Temporal patch size.
    pub patch_size_t: usize,
    /// Norm of q and k per head; only "rms_norm" exists in the released models.
    pub qk_norm: String,
    /// Width of the Qwen2.5-VL hidden states (3584).
    pub text_embed_dim: usize,
    /// Width of the ByT5 encoder states (1472).
    pub text_embed_2_dim: usize,
    /// Width of the SigLIP image tokens (1152), image-to-video.
    pub image_embed_dim: usize,
    pub rope_theta: f64,
    /// Head channels rotated by the frame, row and column index; they sum to the head width.
    pub rope_axes_dim: Vec<usize>,
    /// Pixel size the checkpoint was trained for (480, 720, ...); the pipeline's business.
    pub target_size: usize,
    /// "t2v" or "i2v"; the pipeline's business (the network is the same).
    pub task_type: String,
    /// MeanFlow super-resolution models: a second timestep embedding (`timestep_r`).
    pub use_meanflow: bool,
    /// Hidden width of the ByT5 projection. diffusers fixes it at 2048 in code, not in the
    /// config; vdit reads this key (absent from real configs) so small test models can shrink it.
    pub byt5_projection_dim: usize,
}

impl Default for HunyuanVideo15Config {
    fn default() -> Self {
        Self {
            in_channels: 65,
            out_channels: 32,
            num_attention_heads: 16,
            attention_head_dim: 128,
            num_layers: 54,
            num_refiner_layers: 2,
            mlp_ratio: 4.0,
            patch_size: 1,
            patch_size_t: 1,
            qk_norm: "rms_norm".into(),
            text_embed_dim: 3584,
            text_embed_2_dim: 1472,
            image_embed_dim: 1152,
            rope_theta: 256.0,
            rope_axes_dim: vec![16, 56, 56],
            target_size: 640,
            task_type: "i2v".into(),
            use_meanflow: false,
            byt5_projection_dim: 2048,
        }
    }
}

impl HunyuanVideo15Config {
    /// The 8.3B text-to-video transformer (480p and 720p share the shape): 54 blocks, 16 heads
    /// of 128, 65 channels in, 32 out.
    pub fn t2v_8_3b() -> Self {
        Self {
            task_type: "t2v".into(),
            ..Self::default()
        }
    }

    /// Reads a diffusers `config.json`; missing keys take diffusers' defaults.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let error = |reason: String| ModelError::Config {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| error(e.to_string()))?;
        cfg.validate().map_err(error)?;
        Ok(cfg)
    }

    /// Model width: heads × head width.
    pub fn dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Hidden width of every feed-forward network (`int(dim · mlp_ratio)`, as diffusers).
    pub fn mlp_dim(&self) -> usize {
        (self.dim() as f64 * self.mlp_ratio) as usize
    }

    /// Patch size (frames, height, width).
    pub fn patch(&self) -> [usize; 3] {
        [self.patch_size_t, self.patch_size, self.patch_size]
    }

    /// Values per input patch: in_channels · pt · ph · pw.
    pub fn patch_in_features(&self) -> usize {
        self.in_channels * self.patch_size_t * self.patch_size * self.patch_size
    }

    /// Values per output patch: out_channels · pt · ph · pw.
    pub fn patch_out_features(&self) -> usize {
        self.out_channels * self.patch_size_t * self.patch_size * self.patch_size
    }

    /// Checks the values the network relies on; a plain reason when one is wrong.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("num_attention_heads", self.num_attention_heads),
            ("attention_head_dim", self.attention_head_dim),
            ("patch_size", self.patch_size),
            ("patch_size_t", self.patch_size_t),
            ("text_embed_dim", self.text_embed_dim),
            ("text_embed_2_dim", self.text_embed_2_dim),
            ("image_embed_dim", self.image_embed_dim),
            ("byt5_projection_dim", self.byt5_projection_dim),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        if self.qk_norm != "rms_norm" {
            return Err(format!(
                "qk_norm {:?} is not supported (only \"rms_norm\")",
                self.qk_norm
            ));
        }
        if self.rope_axes_dim.len() != 3
            || self.rope_axes_dim.iter().any(|d| d % 2 != 0)
            || self.rope_axes_dim.iter().sum::<usize>() != self.attention_head_dim
        {
            return Err(format!(
                "rope_axes_dim {:?} must be three even widths summing to attention_head_dim {}",
                self.rope_axes_dim, self.attention_head_dim
            ));
        }
        if self.mlp_dim() == 0 {
            return Err(format!(
                "mlp_ratio {} gives no hidden width",
                self.mlp_ratio
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_released_shape_and_bad_values_are_named() {
        let cfg = HunyuanVideo15Config::t2v_8_3b();
        assert_eq!((cfg.dim(), cfg.mlp_dim()), (2048, 8192));
        assert!(cfg.validate().is_ok());
        let partial: HunyuanVideo15Config =
            serde_json::from_str(r#"{"num_layers": 2, "task_type": "t2v"}"#).unwrap();
        assert_eq!(partial.num_layers, 2);
        assert_eq!(partial.rope_axes_dim, vec![16, 56, 56]);
        let bad = HunyuanVideo15Config {
            rope_axes_dim: vec![16, 56, 54],
            ..cfg.clone()
        };
        assert!(bad.validate().unwrap_err().contains("rope_axes_dim"));
        let bad = HunyuanVideo15Config {
            qk_norm: "layer_norm".into(),
            ..cfg
        };
        assert!(bad.validate().unwrap_err().contains("qk_norm"));
    }
}
