//! Wan transformer configuration (Wan2.1, Wan2.2): read from a diffusers `transformer/config.json`
//! (`WanTransformer3DModel`), an original Wan `config.json` (`WanModel`, `model_type` "t2v",
//! "ti2v", "i2v" or "flf2v"), or inferred from the checkpoint's tensor shapes; named presets for
//! the released transformers (Wan2.1 T2V 1.3B and 14B, I2V-14B and FLF2V-14B, the Wan2.2 T2V-A14B
//! and I2V-A14B experts, Wan2.2 TI2V-5B).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::weights::WeightFiles;

/// Hyper-parameters of a Wan diffusion transformer (Wan2.1 text-to-video, image-to-video and
/// first-last-frame, Wan2.2 T2V-A14B and I2V-A14B experts and TI2V-5B: one network shape, they
/// differ in sizes, latent channels and whether the blocks also attend to CLIP image tokens).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WanConfig {
    /// Patch size (frames, height, width) of the Conv3d patch embedding.
    pub patch_size: [usize; 3],
    pub num_heads: usize,
    /// Channels per head; the model width is `num_heads * head_dim`.
    pub head_dim: usize,
    /// Latent channels in and out (16 for Wan2.1 and Wan2.2-A14B text-to-video, 48 for
    /// Wan2.2 TI2V-5B, whose VAE has 48 latent channels; image-to-video reads 36 = 16 noise +
    /// 4 frame mask + 16 encoded conditioning video, and writes 16).
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
    /// Width of the image-encoder tokens the transformer attends to (1280 for the CLIP ViT-H/14
    /// penultimate states of Wan2.1 I2V and FLF2V); `None` for models without image
    /// cross-attention (text-to-video, Wan2.2 I2V-A14B and TI2V-5B, which see the image only
    /// through the latents).
    #[serde(default)]
    pub image_dim: Option<usize>,
    /// Input width of each block's image key/value projections (`add_k_proj`, `add_v_proj`): the
    /// projected image tokens, so always the model width. Present exactly when `image_dim` is.
    #[serde(default)]
    pub added_kv_proj_dim: Option<usize>,
    /// FLF2V: rows of the learned position table added to the image tokens before their
    /// projection (2 × 257: the first frame's tokens, then the last frame's).
    #[serde(default)]
    pub pos_embed_seq_len: Option<usize>,
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

    /// Wan2.1 I2V-14B (480P and 720P share the shape): the 14B text-to-video network with 36
    /// latent channels in (16 noise + 4 frame mask + 16 encoded conditioning video), 16 out, an
    /// image embedder from CLIP's 1280-wide tokens and image cross-attention in every block
    /// (`added_kv_proj_dim` 5120). Values of diffusers' `scripts/convert_wan_to_diffusers.py`
    /// ("Wan-I2V-14B-480p" / "-720p", the converter that made Wan-AI/Wan2.1-I2V-14B-480P-Diffusers
    /// and -720P-Diffusers) and of the original release's config.json (`model_type` "i2v",
    /// `in_dim` 36, `dim` 5120).
    pub fn i2v_14b() -> Self {
        Self {
            in_channels: 36,
            image_dim: Some(1280),
            added_kv_proj_dim: Some(5120),
            ..Self::t2v_14b()
        }
    }

    /// Wan2.1 FLF2V-14B-720P: [`Self::i2v_14b`] with a learned position table over the two
    /// images' tokens (`pos_embed_seq_len` 2 × 257), from the same converter ("Wan-FLF2V-14B-720P").
    pub fn flf2v_14b() -> Self {
        Self {
            pos_embed_seq_len: Some(2 * 257),
            ..Self::i2v_14b()
        }
    }

    /// Wan2.2 I2V-A14B, each of its two experts: the 14B network with 36 latent channels in and
    /// no image encoder and no image cross-attention (`image_dim` and `added_kv_proj_dim` null in
    /// the converter's "Wan2.2-I2V-14B-720p" config; the image enters only through the latents).
    pub fn i2v_a14b() -> Self {
        Self {
            in_channels: 36,
            ..Self::t2v_14b()
        }
    }

    /// The preset called `name`: "t2v-1.3b", "t2v-14b", "i2v-14b", "flf2v-14b" (Wan2.1),
    /// "t2v-a14b", "i2v-a14b", "ti2v-5b" (Wan2.2).
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "t2v-1.3b" => Some(Self::t2v_1_3b()),
            "t2v-14b" => Some(Self::t2v_14b()),
            "i2v-14b" => Some(Self::i2v_14b()),
            "flf2v-14b" => Some(Self::flf2v_14b()),
            "t2v-a14b" => Some(Self::t2v_a14b()),
            "i2v-a14b" => Some(Self::i2v_a14b()),
            "ti2v-5b" => Some(Self::ti2v_5b()),
            _ => None,
        }
    }

    /// Whether the blocks attend to image-encoder tokens (Wan2.1 I2V and FLF2V), so that
    /// `WanTransformer::forward_with_image` needs an image embedding.
    pub fn has_image_input(&self) -> bool {
        self.image_dim.is_some()
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
            image_dim: None,
            added_kv_proj_dim: None,
            pos_embed_seq_len: None,
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

    /// [`WanConfig::from_json_file`] for the checkpoint `files`, which settles the one thing an
    /// original config.json cannot say: `model_type` "i2v" is Wan2.1 I2V (CLIP image tokens and
    /// image cross-attention) in Wan2.1's code and Wan2.2 I2V-A14B (neither) in Wan2.2's. An
    /// original "i2v" config over a checkpoint without image-embedder weights is read as Wan2.2's.
    pub fn from_json_file_for(path: &Path, files: &WeightFiles) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| config_error(path, e.to_string()))?;
        let mut cfg = Self::from_json_str(&text).map_err(|reason| config_error(path, reason))?;
        let original_i2v = serde_json::from_str::<Value>(&text).ok().is_some_and(|v| {
            v.get("num_attention_heads").is_none()
                && v.get("model_type").and_then(Value::as_str) == Some("i2v")
        });
        if original_i2v && !has_image_embedder(files) {
            cfg.image_dim = None;
            cfg.added_kv_proj_dim = None;
            cfg.pos_embed_seq_len = None;
        }
        Ok(cfg)
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
        // Image cross-attention (Wan2.1 I2V / FLF2V): the embedder's first LayerNorm gives the
        // image-token width, the first block's image key projection the added key/value width,
        // and FLF2V's position table its rows.
        let optional = |diffusers: &str, original: &str| {
            let key = format!(
                "{key_prefix}{}",
                if original_keys { original } else { diffusers }
            );
            files.shape(&key)
        };
        let image_dim = optional(
            "condition_embedder.image_embedder.norm1.weight",
            "img_emb.proj.0.weight",
        )
        .and_then(|s| s.first().copied());
        let added_kv_proj_dim = optional(
            "blocks.0.attn2.add_k_proj.weight",
            "blocks.0.cross_attn.k_img.weight",
        )
        .and_then(|s| s.get(1).copied());
        let pos_embed_seq_len = optional(
            "condition_embedder.image_embedder.pos_embed",
            "img_emb.emb_pos",
        )
        .and_then(|s| s.get(1).copied());
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
            image_dim,
            added_kv_proj_dim,
            pos_embed_seq_len,
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
        // The image path is one piece: an embedder to the model width and, in every block, key and
        // value projections from that width. diffusers builds either half alone, but neither
        // half-model exists, and each would misread the context (the image tokens would be taken
        // for text, or text rows for image tokens).
        match (self.image_dim, self.added_kv_proj_dim) {
            (None, None) => {
                if self.pos_embed_seq_len.is_some() {
                    return Err("pos_embed_seq_len is set without image_dim".into());
                }
            }
            (Some(image_dim), Some(added)) => {
                if image_dim == 0 {
                    return Err("image_dim must be positive".into());
                }
                if added != self.dim() {
                    return Err(format!(
                        "added_kv_proj_dim {added} must equal the model width {} (the image \
                         embedder projects image tokens to the model width)",
                        self.dim()
                    ));
                }
                if self.pos_embed_seq_len == Some(0) {
                    return Err("pos_embed_seq_len must be positive".into());
                }
            }
            (image_dim, added) => {
                return Err(format!(
                    "image_dim ({image_dim:?}) and added_kv_proj_dim ({added:?}) must be both set \
                     (image cross-attention) or both null"
                ))
            }
        }
        Ok(())
    }
}

/// Whether `files` hold an image embedder (Wan2.1 I2V / FLF2V) under any prefix or dialect.
pub(crate) fn has_image_embedder(files: &WeightFiles) -> bool {
    files.keys().iter().any(|k| {
        k.starts_with("img_emb.")
            || k.contains(".img_emb.")
            || k.contains("condition_embedder.image_embedder.")
    })
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
    pos_embed_seq_len: Option<usize>,
}

impl DiffusersConfig {
    fn into_config(self) -> std::result::Result<WanConfig, String> {
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
            image_dim: self.image_dim,
            added_kv_proj_dim: self.added_kv_proj_dim,
            pos_embed_seq_len: self.pos_embed_seq_len,
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
        // the image enters as latents under per-token timesteps). "i2v" and "flf2v": Wan2.1's
        // image path, CLIP ViT-H/14 tokens (1280 wide; FLF2V two images of 257 tokens with a
        // position table) through `img_emb` and image keys/values in every cross-attention. Wan2.2
        // I2V-A14B also says "i2v" but has no image path: `WanConfig::from_json_file_for` tells
        // the two apart by the checkpoint.
        let (image_dim, pos_embed_seq_len) = match self.model_type.as_str() {
            "t2v" | "ti2v" => (None, None),
            "i2v" => (Some(1280), None),
            "flf2v" => (Some(1280), Some(2 * 257)),
            other => {
                return Err(format!(
                    "model_type {other:?} is not supported (\"t2v\", \"ti2v\", \"i2v\", \"flf2v\")"
                ))
            }
        };
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
            image_dim,
            added_kv_proj_dim: image_dim.map(|_| self.dim),
            pos_embed_seq_len,
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
        assert_eq!(WanConfig::preset("s2v-14b"), None);
    }

    /// The image-to-video presets against the configs diffusers' `convert_wan_to_diffusers.py`
    /// writes for Wan-AI/Wan2.1-I2V-14B-480P-Diffusers (and 720P), Wan2.1-FLF2V-14B-720P and
    /// Wan2.2-I2V-A14B (both experts), and against the original releases' config.json.
    #[test]
    fn i2v_presets_match_the_published_configs() {
        let i2v = WanConfig::i2v_14b();
        assert_eq!(
            (
                i2v.dim(),
                i2v.num_layers,
                i2v.ffn_dim,
                i2v.in_channels,
                i2v.out_channels
            ),
            (5120, 40, 13824, 36, 16)
        );
        assert_eq!(
            (i2v.image_dim, i2v.added_kv_proj_dim),
            (Some(1280), Some(5120))
        );
        assert_eq!(i2v.pos_embed_seq_len, None);
        assert_eq!(WanConfig::flf2v_14b().pos_embed_seq_len, Some(514));
        let a14b = WanConfig::i2v_a14b();
        assert_eq!(
            (a14b.in_channels, a14b.image_dim, a14b.added_kv_proj_dim),
            (36, None, None)
        );

        let common = r#""attention_head_dim": 128, "cross_attn_norm": true, "eps": 1e-06,
            "ffn_dim": 13824, "freq_dim": 256, "in_channels": 36, "num_attention_heads": 40,
            "num_layers": 40, "out_channels": 16, "patch_size": [1, 2, 2],
            "qk_norm": "rms_norm_across_heads", "text_dim": 4096, "rope_max_seq_len": 1024"#;
        let i2v_diffusers = format!(
            r#"{{"_class_name": "WanTransformer3DModel", "image_dim": 1280,
            "added_kv_proj_dim": 5120, "pos_embed_seq_len": null, {common}}}"#
        );
        let flf2v_diffusers = format!(
            r#"{{"_class_name": "WanTransformer3DModel", "image_dim": 1280,
            "added_kv_proj_dim": 5120, "pos_embed_seq_len": 514, {common}}}"#
        );
        let a14b_diffusers = format!(
            r#"{{"_class_name": "WanTransformer3DModel", "image_dim": null,
            "added_kv_proj_dim": null, "pos_embed_seq_len": null, {common}}}"#
        );
        let original = |model_type: &str| {
            format!(
                r#"{{"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 5120,
                "eps": 1e-06, "ffn_dim": 13824, "freq_dim": 256, "in_dim": 36,
                "model_type": "{model_type}", "num_heads": 40, "num_layers": 40, "out_dim": 16,
                "text_len": 512}}"#
            )
        };
        for (text, preset) in [
            (i2v_diffusers, &i2v),
            (flf2v_diffusers, &WanConfig::flf2v_14b()),
            (a14b_diffusers, &a14b),
            (original("i2v"), &i2v),
            (original("flf2v"), &WanConfig::flf2v_14b()),
        ] {
            assert_eq!(&WanConfig::from_json_str(&text).unwrap(), preset, "{text}");
        }
        for name in ["i2v-14b", "flf2v-14b", "i2v-a14b"] {
            assert!(WanConfig::preset(name).is_some(), "{name}");
        }
        // Our own serialisation keeps the image fields; one written before they existed reads
        // as a model without image input.
        let own = serde_json::to_string(&WanConfig::flf2v_14b()).unwrap();
        assert_eq!(
            WanConfig::from_json_str(&own).unwrap(),
            WanConfig::flf2v_14b()
        );
        let mut old: Value = serde_json::to_value(WanConfig::t2v_14b()).unwrap();
        for field in ["image_dim", "added_kv_proj_dim", "pos_embed_seq_len"] {
            old.as_object_mut().unwrap().remove(field);
        }
        assert_eq!(
            WanConfig::from_json_str(&old.to_string()).unwrap(),
            WanConfig::t2v_14b()
        );
    }

    #[test]
    fn half_an_image_path_is_refused() {
        let half = WanConfig {
            added_kv_proj_dim: None,
            ..WanConfig::i2v_14b()
        };
        assert!(half.validate().unwrap_err().contains("both"));
        let narrow = WanConfig {
            added_kv_proj_dim: Some(1280),
            ..WanConfig::i2v_14b()
        };
        assert!(narrow.validate().unwrap_err().contains("model width"));
        let table_alone = WanConfig {
            pos_embed_seq_len: Some(514),
            ..WanConfig::t2v_14b()
        };
        assert!(table_alone.validate().is_err());
    }

    #[test]
    fn unsupported_configs_are_refused_with_a_reason() {
        let s2v = r#"{"dim": 5120, "num_heads": 40, "ffn_dim": 13824, "num_layers": 40, "model_type": "s2v"}"#;
        assert!(WanConfig::from_json_str(s2v).unwrap_err().contains("s2v"));
        let vae = r#"{"_class_name": "AutoencoderKLWan", "base_dim": 96}"#;
        assert!(WanConfig::from_json_str(vae)
            .unwrap_err()
            .contains("not a Wan transformer config"));
        assert!(WanConfig::from_json_str("{")
            .unwrap_err()
            .contains("invalid JSON"));
    }
}
