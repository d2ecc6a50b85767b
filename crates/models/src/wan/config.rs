//! Wan transformer configuration (Wan2.1, Wan2.2): read from a diffusers `transformer/config.json`
//! (`WanTransformer3DModel`), an original Wan `config.json` (`WanModel`, `model_type` "t2v" or
//! "ti2v"), or inferred from the checkpoint's tensor shapes; named presets for the released
//! text-to-video transformers (Wan2.1 1.3B and 14B, the Wan2.2 A14B experts, Wan2.2 TI2V-5B).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::weights::WeightFiles;

/// Hyper-parameters of a Wan diffusion transformer (Wan2.1 text-to-video, Wan2.2 T2V-A14B experts
/// and TI2V-5B: one network shape, they differ in sizes and latent channels).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WanConfig {
    /// Patch size (frames, height, width) of the Conv3d patch embedding.
    pub patch_size: [usize; 3],
    pub num_heads: usize,
    /// Channels per head; the model width is `num_heads * head_dim`.
    pub head_dim: usize,
    /// Latent channels in and out (16 for Wan2.1 and Wan2.2-A14B text-to-video, 48 for
    /// Wan2.2 TI2V-5B, whose VAE has 48 latent channels).
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of the text encoder output (4096 for umT5-XXL).
    pub text_dim: usize,
    /// Width of the sinusoidal timestep embedding.
    pub freq_dim: usize,
    /// Hidden width of the feed-forward network.
    pub ffn_dim: usize,
    pub num_layers: usize,
    /// Affine LayerNorm before cross-attention (true for every released model).
    pub cross_attn_norm: bool,
    /// Epsilon of every LayerNorm and RMSNorm.
    pub eps: f64,
    /// Number of text rows the pipeline pads the prompt embedding to.
    pub text_len: usize,
    /// Base of the 3D rotary position embedding.
    pub rope_theta: f64,
}

impl WanConfig {
    /// Wan2.1 T2V 1.3B: 30 layers, 12 heads of 128.
    pub fn t2v_1_3b() -> Self {
        Self {
            num_heads: 12,
            ffn_dim: 8960,
            num_layers: 30,
            ..Self::t2v_base()
        }
    }

    /// Wan2.1 T2V 14B: 40 layers, 40 heads of 128.
    pub fn t2v_14b() -> Self {
        Self {
            num_heads: 40,
            ffn_dim: 13824,
            num_layers: 40,
            ..Self::t2v_base()
        }
    }

    /// Wan2.2 T2V-A14B: each of the two experts (high-noise and low-noise) has the Wan2.1 14B
    /// shape, 40 layers, 40 heads of 128, ffn 13824, 16 latent channels.
    pub fn t2v_a14b() -> Self {
        Self::t2v_14b()
    }

    /// Wan2.2 TI2V-5B: 30 layers, 24 heads of 128 (dim 3072), ffn 14336, 48 latent channels in
    /// and out. Called with per-token timesteps for image-to-video (see `WanTransformer::forward`).
    pub fn ti2v_5b() -> Self {
        Self {
            num_heads: 24,
            ffn_dim: 14336,
            num_layers: 30,
            in_channels: 48,
            out_channels: 48,
            ..Self::t2v_base()
        }
    }

    /// The preset called `name`: "t2v-1.3b", "t2v-14b" (Wan2.1), "t2v-a14b", "ti2v-5b" (Wan2.2).
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "t2v-1.3b" => Some(Self::t2v_1_3b()),
            "t2v-14b" => Some(Self::t2v_14b()),
            "t2v-a14b" => Some(Self::t2v_a14b()),
            "ti2v-5b" => Some(Self::ti2v_5b()),
            _ => None,
        }
    }

    fn t2v_base() -> Self {
        Self {
            patch_size: [1, 2, 2],
            num_heads: 12,
            head_dim: 128,
            in_channels: 16,
            out_channels: 16,
            text_dim: 4096,
            freq_dim: 256,
            ffn_dim: 8960,
            num_layers: 30,
            cross_attn_norm: true,
            eps: 1e-6,
            text_len: 512,
            rope_theta: 10_000.0,
        }
    }

    /// Model width (`num_heads * head_dim`).
    pub fn dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// The token grid (frames, height, width in tokens) of a latent grid [F, H, W]: each divided
    /// by the patch size (rounding down; the transformer refuses grids that are not multiples).
    /// Tokens are numbered in this grid's raster order, which per-token timesteps follow.
    pub fn token_grid(&self, [frames, height, width]: [usize; 3]) -> [usize; 3] {
        let [pt, ph, pw] = self.patch_size;
        [frames / pt, height / ph, width / pw]
    }

    /// Values per input patch: `in_channels * pt * ph * pw`.
    pub fn patch_in_features(&self) -> usize {
        self.in_channels * self.patch_size.iter().product::<usize>()
    }

    /// Values per output patch: `out_channels * pt * ph * pw`.
    pub fn patch_out_features(&self) -> usize {
        self.out_channels * self.patch_size.iter().product::<usize>()
    }

    /// Reads a diffusers (`WanTransformer3DModel`) or original (`WanModel`) config.json, or one
    /// written by serialising this struct; the dialect is recognised from the field names.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| config_error(path, e.to_string()))?;
        Self::from_json_str(&text).map_err(|reason| config_error(path, reason))
    }

    /// As [`WanConfig::from_json_file`], from the file's text. Errors are plain reasons.
    pub fn from_json_str(text: &str) -> std::result::Result<Self, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        let cfg = if value.get("num_attention_heads").is_some() {
            let raw: DiffusersConfig = serde_json::from_value(value).map_err(|e| e.to_string())?;
            raw.into_config()?
        } else if value.get("dim").is_some() && value.get("num_heads").is_some() {
            let raw: OriginalConfig = serde_json::from_value(value).map_err(|e| e.to_string())?;
            raw.into_config()?
        } else if value.get("head_dim").is_some() {
            serde_json::from_value(value).map_err(|e| e.to_string())?
        } else {
            return Err("not a Wan transformer config: expected diffusers fields \
                        (num_attention_heads, attention_head_dim, ...) or original fields (dim, num_heads, ...)"
                .into());
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Infers the configuration from a checkpoint's tensor shapes (for single-file checkpoints that
    /// come without a config.json). Latent channels (16 or 48), widths and depth are read from the
    /// shapes; heads cannot be, and every released Wan2.1 / Wan2.2 model uses `head_dim = 128`,
    /// which is assumed. `key_prefix` and `original_keys` describe the dialect.
    pub(crate) fn infer(
        files: &WeightFiles,
        key_prefix: &str,
        original_keys: bool,
    ) -> Result<Self> {
        let shape = |diffusers: &str, original: &str| -> Result<Vec<usize>> {
            let key = format!(
                "{key_prefix}{}",
                if original_keys { original } else { diffusers }
            );
            files.shape(&key).ok_or_else(|| {
                ModelError::InvalidInput(format!(
                    "cannot infer the Wan config: tensor `{key}` is missing from {:?}",
                    files.paths()
                ))
            })
        };
        let patch = shape("patch_embedding.weight", "patch_embedding.weight")?; // [D, C, pt, ph, pw]
        let text = shape(
            "condition_embedder.text_embedder.linear_1.weight",
            "text_embedding.0.weight",
        )?; // [D, text_dim]
        let time = shape(
            "condition_embedder.time_embedder.linear_1.weight",
            "time_embedding.0.weight",
        )?; // [D, freq_dim]
        let ffn = shape("blocks.0.ffn.net.0.proj.weight", "blocks.0.ffn.0.weight")?; // [ffn, D]
        let head = shape("proj_out.weight", "head.head.weight")?; // [out * pt*ph*pw, D]
        if patch.len() != 5
            || text.len() != 2
            || time.len() != 2
            || ffn.len() != 2
            || head.len() != 2
        {
            return Err(ModelError::InvalidInput(format!(
                "cannot infer the Wan config from {:?}: unexpected tensor ranks",
                files.paths()
            )));
        }
        let dim = patch[0];
        let patch_size = [patch[2], patch[3], patch[4]];
        let patch_volume: usize = patch_size.iter().product();
        let block_prefix = format!("{key_prefix}blocks.");
        let num_layers = files
            .keys()
            .iter()
            .filter_map(|k| {
                k.strip_prefix(&block_prefix)?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |last| last + 1);
        const HEAD_DIM: usize = 128;
        if dim % HEAD_DIM != 0 || patch_volume == 0 || head[0] % patch_volume != 0 {
            return Err(ModelError::InvalidInput(format!(
                "cannot infer the Wan config from {:?}: width {dim} is not a multiple of 128; \
                 pass a config.json",
                files.paths()
            )));
        }
        let cfg = Self {
            patch_size,
            num_heads: dim / HEAD_DIM,
            head_dim: HEAD_DIM,
            in_channels: patch[1],
            out_channels: head[0] / patch_volume,
            text_dim: text[1],
            freq_dim: time[1],
            ffn_dim: ffn[0],
            num_layers,
            ..Self::t2v_base()
        };
        cfg.validate().map_err(ModelError::InvalidInput)?;
        Ok(cfg)
    }

    /// Checks the hyper-parameters can describe a network (positive sizes, RoPE-compatible head_dim).
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("num_heads", self.num_heads),
            ("head_dim", self.head_dim),
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("text_dim", self.text_dim),
            ("ffn_dim", self.ffn_dim),
            ("num_layers", self.num_layers),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        if self.patch_size.contains(&0) {
            return Err(format!("patch_size {:?} has a zero", self.patch_size));
        }
        if self.head_dim % 2 == 1 || self.head_dim < 6 {
            // RoPE rotates channel pairs, split three ways (frames, height, width).
            return Err(format!(
                "head_dim {} must be even and at least 6",
                self.head_dim
            ));
        }
        if self.freq_dim == 0 || self.freq_dim % 2 == 1 {
            return Err(format!(
                "freq_dim {} must be even and positive",
                self.freq_dim
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

/// diffusers `transformer/config.json` of `WanTransformer3DModel`.
#[derive(Deserialize)]
struct DiffusersConfig {
    #[serde(default = "default_patch")]
    patch_size: Vec<usize>,
    num_attention_heads: usize,
    attention_head_dim: usize,
    #[serde(default = "default_channels")]
    in_channels: usize,
    out_channels: Option<usize>,
    #[serde(default = "default_text_dim")]
    text_dim: usize,
    #[serde(default = "default_freq_dim")]
    freq_dim: usize,
    ffn_dim: usize,
    num_layers: usize,
    #[serde(default = "default_true")]
    cross_attn_norm: bool,
    #[serde(default = "default_qk_norm")]
    qk_norm: Option<String>,
    #[serde(default = "default_eps")]
    eps: f64,
    image_dim: Option<usize>,
    added_kv_proj_dim: Option<usize>,
}

impl DiffusersConfig {
    fn into_config(self) -> std::result::Result<WanConfig, String> {
        if self.image_dim.is_some() || self.added_kv_proj_dim.is_some() {
            return Err(
                "image-to-video transformers (image_dim / added_kv_proj_dim) are not supported"
                    .into(),
            );
        }
        match self.qk_norm.as_deref() {
            Some("rms_norm_across_heads") => {}
            other => {
                return Err(format!(
                    "qk_norm {other:?} is not supported (expected \"rms_norm_across_heads\")"
                ))
            }
        }
        let patch_size = three(&self.patch_size)?;
        Ok(WanConfig {
            patch_size,
            num_heads: self.num_attention_heads,
            head_dim: self.attention_head_dim,
            in_channels: self.in_channels,
            out_channels: self.out_channels.unwrap_or(self.in_channels),
            text_dim: self.text_dim,
            freq_dim: self.freq_dim,
            ffn_dim: self.ffn_dim,
            num_layers: self.num_layers,
            cross_attn_norm: self.cross_attn_norm,
            eps: self.eps,
            text_len: 512,
            rope_theta: 10_000.0,
        })
    }
}

/// Original Wan `config.json` of `WanModel`.
#[derive(Deserialize)]
struct OriginalConfig {
    #[serde(default = "default_model_type")]
    model_type: String,
    #[serde(default = "default_patch")]
    patch_size: Vec<usize>,
    dim: usize,
    num_heads: usize,
    #[serde(default = "default_channels")]
    in_dim: usize,
    #[serde(default = "default_channels")]
    out_dim: usize,
    #[serde(default = "default_text_dim")]
    text_dim: usize,
    #[serde(default = "default_freq_dim")]
    freq_dim: usize,
    ffn_dim: usize,
    num_layers: usize,
    #[serde(default = "default_true")]
    cross_attn_norm: bool,
    #[serde(default = "default_true")]
    qk_norm: bool,
    #[serde(default = "default_eps")]
    eps: f64,
    #[serde(default = "default_text_len")]
    text_len: usize,
}

impl OriginalConfig {
    fn into_config(self) -> std::result::Result<WanConfig, String> {
        // "t2v": Wan2.1 and the Wan2.2 A14B experts; "ti2v": Wan2.2 TI2V-5B (no image encoder:
        // the image enters as latents under per-token timesteps). "i2v" models carry an image
        // path (Wan2.1: CLIP embeddings and extra cross-attention) this network does not have.
        if !matches!(self.model_type.as_str(), "t2v" | "ti2v") {
            return Err(format!(
                "model_type {:?} is not supported (only \"t2v\" and \"ti2v\")",
                self.model_type
            ));
        }
        if !self.qk_norm {
            return Err("qk_norm = false is not supported".into());
        }
        if self.num_heads == 0 || !self.dim.is_multiple_of(self.num_heads) {
            return Err(format!(
                "dim {} is not divisible by num_heads {}",
                self.dim, self.num_heads
            ));
        }
        Ok(WanConfig {
            patch_size: three(&self.patch_size)?,
            num_heads: self.num_heads,
            head_dim: self.dim / self.num_heads,
            in_channels: self.in_dim,
            out_channels: self.out_dim,
            text_dim: self.text_dim,
            freq_dim: self.freq_dim,
            ffn_dim: self.ffn_dim,
            num_layers: self.num_layers,
            cross_attn_norm: self.cross_attn_norm,
            eps: self.eps,
            text_len: self.text_len,
            rope_theta: 10_000.0,
        })
    }
}

fn three(v: &[usize]) -> std::result::Result<[usize; 3], String> {
    <[usize; 3]>::try_from(v).map_err(|_| format!("patch_size {v:?} must have three entries"))
}

fn default_patch() -> Vec<usize> {
    vec![1, 2, 2]
}
fn default_channels() -> usize {
    16
}
fn default_text_dim() -> usize {
    4096
}
fn default_freq_dim() -> usize {
    256
}
fn default_true() -> bool {
    true
}
fn default_qk_norm() -> Option<String> {
    Some("rms_norm_across_heads".into())
}
fn default_eps() -> f64 {
    1e-6
}
fn default_text_len() -> usize {
    512
}
fn default_model_type() -> String {
    "t2v".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_published_widths() {
        assert_eq!(WanConfig::t2v_1_3b().dim(), 1536);
        assert_eq!(WanConfig::t2v_14b().dim(), 5120);
        assert_eq!(WanConfig::t2v_1_3b().patch_out_features(), 64);
    }

    #[test]
    fn published_configs_of_both_dialects_agree_with_the_presets() {
        let diffusers = r#"{"_class_name": "WanTransformer3DModel", "added_kv_proj_dim": null,
            "attention_head_dim": 128, "cross_attn_norm": true, "eps": 1e-06, "ffn_dim": 8960,
            "freq_dim": 256, "image_dim": null, "in_channels": 16, "num_attention_heads": 12,
            "num_layers": 30, "out_channels": 16, "patch_size": [1, 2, 2],
            "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024, "text_dim": 4096}"#;
        let original = r#"{"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 5120,
            "eps": 1e-06, "ffn_dim": 13824, "freq_dim": 256, "in_dim": 16, "model_type": "t2v",
            "num_heads": 40, "num_layers": 40, "out_dim": 16, "text_len": 512}"#;
        assert_eq!(
            WanConfig::from_json_str(diffusers).unwrap(),
            WanConfig::t2v_1_3b()
        );
        assert_eq!(
            WanConfig::from_json_str(original).unwrap(),
            WanConfig::t2v_14b()
        );
        let own = serde_json::to_string(&WanConfig::t2v_14b()).unwrap();
        assert_eq!(
            WanConfig::from_json_str(&own).unwrap(),
            WanConfig::t2v_14b()
        );
    }

    /// The Wan2.2 presets against the published configs of both dialects: diffusers'
    /// `transformer/config.json` (`transformer` and `transformer_2` of T2V-A14B are alike) and the
    /// original release's config.json (TI2V-5B: `model_type` "ti2v"; each A14B expert folder:
    /// "t2v").
    #[test]
    fn wan22_presets_match_the_published_configs() {
        let ti2v = WanConfig::ti2v_5b();
        assert_eq!(
            (
                ti2v.dim(),
                ti2v.num_layers,
                ti2v.num_heads,
                ti2v.head_dim,
                ti2v.ffn_dim
            ),
            (3072, 30, 24, 128, 14336)
        );
        assert_eq!((ti2v.in_channels, ti2v.out_channels), (48, 48));
        assert_eq!((ti2v.text_dim, ti2v.freq_dim, ti2v.eps), (4096, 256, 1e-6));
        assert_eq!(ti2v.patch_size, [1, 2, 2]);
        assert!(ti2v.cross_attn_norm);
        assert_eq!(ti2v.patch_in_features(), 192);
        assert_eq!(ti2v.token_grid([31, 44, 80]), [31, 22, 40]); // 1280×704×121: 27,280 tokens

        let a14b = WanConfig::t2v_a14b();
        assert_eq!(
            (a14b.dim(), a14b.num_layers, a14b.num_heads, a14b.ffn_dim),
            (5120, 40, 40, 13824)
        );
        assert_eq!((a14b.in_channels, a14b.out_channels), (16, 16));

        let ti2v_diffusers = r#"{"_class_name": "WanTransformer3DModel",
            "_diffusers_version": "0.35.0.dev0", "added_kv_proj_dim": null,
            "attention_head_dim": 128, "cross_attn_norm": true, "eps": 1e-06, "ffn_dim": 14336,
            "freq_dim": 256, "image_dim": null, "in_channels": 48, "num_attention_heads": 24,
            "num_layers": 30, "out_channels": 48, "patch_size": [1, 2, 2],
            "pos_embed_seq_len": null, "qk_norm": "rms_norm_across_heads",
            "rope_max_seq_len": 1024, "text_dim": 4096}"#;
        let ti2v_original = r#"{"__name__": "Config", "_class_name": "WanModel",
            "_diffusers_version": "0.33.0", "dim": 3072, "eps": 1e-06, "ffn_dim": 14336,
            "freq_dim": 256, "in_dim": 48, "model_type": "ti2v", "num_heads": 24,
            "num_layers": 30, "out_dim": 48, "text_len": 512}"#;
        let a14b_diffusers = r#"{"_class_name": "WanTransformer3DModel",
            "_diffusers_version": "0.35.0.dev0", "added_kv_proj_dim": null,
            "attention_head_dim": 128, "cross_attn_norm": true, "eps": 1e-06, "ffn_dim": 13824,
            "freq_dim": 256, "image_dim": null, "in_channels": 16, "num_attention_heads": 40,
            "num_layers": 40, "out_channels": 16, "patch_size": [1, 2, 2],
            "pos_embed_seq_len": null, "qk_norm": "rms_norm_across_heads",
            "rope_max_seq_len": 1024, "text_dim": 4096}"#;
        let a14b_original = r#"{"__name__": "Config", "_class_name": "WanModel",
            "_diffusers_version": "0.33.0", "dim": 5120, "eps": 1e-06, "ffn_dim": 13824,
            "freq_dim": 256, "in_dim": 16, "model_type": "t2v", "num_heads": 40,
            "num_layers": 40, "out_dim": 16, "text_len": 512}"#;
        for (text, preset) in [
            (ti2v_diffusers, &ti2v),
            (ti2v_original, &ti2v),
            (a14b_diffusers, &a14b),
            (a14b_original, &a14b),
        ] {
            assert_eq!(&WanConfig::from_json_str(text).unwrap(), preset, "{text}");
        }
        for (name, preset) in [
            ("t2v-1.3b", WanConfig::t2v_1_3b()),
            ("t2v-14b", WanConfig::t2v_14b()),
            ("t2v-a14b", a14b),
            ("ti2v-5b", ti2v),
        ] {
            assert_eq!(WanConfig::preset(name), Some(preset));
        }
        assert_eq!(WanConfig::preset("i2v-a14b"), None);
    }

    #[test]
    fn unsupported_configs_are_refused_with_a_reason() {
        let i2v = r#"{"dim": 5120, "num_heads": 40, "ffn_dim": 13824, "num_layers": 40, "model_type": "i2v"}"#;
        assert!(WanConfig::from_json_str(i2v).unwrap_err().contains("i2v"));
        let vae = r#"{"_class_name": "AutoencoderKLWan", "base_dim": 96}"#;
        assert!(WanConfig::from_json_str(vae)
            .unwrap_err()
            .contains("not a Wan transformer config"));
        assert!(WanConfig::from_json_str("{")
            .unwrap_err()
            .contains("invalid JSON"));
    }
}
