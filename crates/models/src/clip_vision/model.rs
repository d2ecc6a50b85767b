//! The CLIP vision transformer up to its penultimate layer.
//!
//! ```text
//! pixels [B,3,224,224] ─patches 14×14 (conv, no bias)─► [B,256,1280] ─prepend class token─► [B,257,1280]
//!   ─+ position table─► pre-LayerNorm ─► layers 1..31 (pre-norm attention, pre-norm MLP, residuals) ─► [B,257,1280]
//! ```
//!
//! Wan2.1 I2V and FLF2V read `hidden_states[-2]`: the output of the last layer but one, without
//! the post-LayerNorm, so the last layer is not loaded at all.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rainfusion::dense_attention;

use crate::clip_vision::config::{ClipActivation, ClipVisionConfig};
use crate::error::{ModelError, Result};
use crate::wan::layers::{AffineLayerNorm, Linear, WeightSource};
use crate::weights::{KeyMap, WeightFiles};

/// The name every CLIP vision checkpoint has, after its prefix (`vision_model.` in transformers'
/// `CLIPVisionModel(WithProjection)`).
const PATCH_KEY: &str = "embeddings.patch_embedding.weight";

struct EncoderLayer {
    norm_attention: AffineLayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    norm_mlp: AffineLayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl EncoderLayer {
    fn load(src: &WeightSource, p: &str, cfg: &ClipVisionConfig, dtype: DType) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let linear =
            |name: &str, i: usize, o: usize| src.linear(&format!("{p}.{name}"), i, o, dtype);
        Ok(Self {
            norm_attention: AffineLayerNorm::load(src, &format!("{p}.layer_norm1"), d, eps)?,
            q: linear("self_attn.q_proj", d, d)?,
            k: linear("self_attn.k_proj", d, d)?,
            v: linear("self_attn.v_proj", d, d)?,
            out: linear("self_attn.out_proj", d, d)?,
            norm_mlp: AffineLayerNorm::load(src, &format!("{p}.layer_norm2"), d, eps)?,
            fc1: linear("mlp.fc1", d, cfg.intermediate_size)?,
            fc2: linear("mlp.fc2", cfg.intermediate_size, d)?,
        })
    }

    /// x: residual stream [B, L, hidden] f32 → [B, L, hidden] f32.
    fn forward(&self, x: &Tensor, cfg: &ClipVisionConfig, dtype: DType) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let (heads, head_dim) = (cfg.num_attention_heads, cfg.head_dim());
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, l, heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let h = self.norm_attention.forward(x)?.to_dtype(dtype)?;
        let (q, k, v) = (
            split(self.q.forward(&h)?)?,
            split(self.k.forward(&h)?)?,
            split(self.v.forward(&h)?)?,
        );
        let y = dense_attention(&q, &k, &v, 1.0 / (head_dim as f64).sqrt())?; // [B, heads, L, hd]
        let y = y.transpose(1, 2)?.contiguous()?.reshape((b, l, d))?;
        let x = (x + self.out.forward(&y)?.to_dtype(DType::F32)?)?;

        let h = self.norm_mlp.forward(&x)?.to_dtype(dtype)?;
        let u = self.fc1.forward(&h)?;
        let u = match cfg.hidden_act {
            ClipActivation::Gelu => u.gelu_erf()?,
            ClipActivation::QuickGelu => (&u * candle_nn::ops::sigmoid(&(&u * 1.702)?)?)?,
        };
        Ok((x + self.fc2.forward(&u)?.to_dtype(DType::F32)?)?)
    }
}

/// The CLIP vision tower of Wan2.1 I2V / FLF2V, returning the penultimate layer's hidden states.
///
/// Our own module rather than candle-transformers' `clip::vision_model` (0.11.1): that one's
/// activation enum has only `QuickGelu` (OpenAI's CLIP), while the LAION ViT-H/14 Wan uses was
/// trained with exact gelu (`hidden_act: "gelu"`), so it cannot reproduce these weights' outputs;
/// it also reads no config.json and runs every layer to keep all hidden states where only the
/// penultimate is needed. (Its `chinese_clip` vision model has gelu and the same key names, but
/// matching it to a different model's module is an accident we would not want to depend on.)
pub struct ClipVisionModel {
    cfg: ClipVisionConfig,
    /// Patch embedding as a linear map on flattened patches (c, ph, pw): [hidden, C·p·p].
    patch_weight: Tensor,
    class_token: Tensor,    // [1, 1, hidden] f32
    position_table: Tensor, // [1, positions, hidden] f32
    pre_norm: AffineLayerNorm,
    layers: Vec<EncoderLayer>,
    dtype: DType,
    device: Device,
}

impl std::fmt::Debug for ClipVisionModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipVisionModel")
            .field("cfg", &self.cfg)
            .field("dtype", &self.dtype)
            .finish_non_exhaustive()
    }
}

impl ClipVisionModel {
    /// Opens a transformers CLIP vision folder (the hub's `image_encoder/`: config.json and
    /// model.safetensors, or shards with their index).
    pub fn open(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let cfg = ClipVisionConfig::from_json_file(&dir.join("config.json"))?;
        let files = Arc::new(WeightFiles::open(dir)?);
        Self::load(&files, &cfg, dtype, device)
    }

    /// Loads the tower from `files` (transformers keys under any prefix, `vision_model.` in
    /// `CLIPVisionModel(WithProjection)` and `CLIPModel` files). Projections run in `dtype`
    /// (f32, bf16 or f16); norms, the residual stream and the output are f32. The last layer and
    /// the post-LayerNorm are not read: the penultimate hidden states do not use them.
    pub fn load(
        files: &Arc<WeightFiles>,
        cfg: &ClipVisionConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate().map_err(ModelError::InvalidInput)?;
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(ModelError::InvalidInput(format!(
                "run dtype {dtype:?} is not supported (use f32, bf16 or f16)"
            )));
        }
        let prefix = files
            .keys()
            .iter()
            .filter_map(|k| k.strip_suffix(PATCH_KEY))
            .filter(|p| p.is_empty() || p.ends_with('.'))
            .min_by_key(|p| p.len())
            .map(str::to_string)
            .ok_or_else(|| ModelError::UnsupportedCheckpoint {
                files: files.files_description(),
                reason: format!("not a CLIP vision model: no `{PATCH_KEY}` tensor"),
            })?;
        let keys = if prefix.is_empty() {
            KeyMap::identity()
        } else {
            KeyMap::identity().with_prefix(&prefix)
        };
        let src = WeightSource::new(files.clone(), keys, device.clone());
        let (d, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
        let patch_weight = src
            .get(PATCH_KEY, &[d, c, p, p], dtype)?
            .reshape((d, c * p * p))?;
        let class_token = src
            .get("embeddings.class_embedding", &[d], DType::F32)?
            .reshape((1, 1, d))?;
        let position_table = src
            .get(
                "embeddings.position_embedding.weight",
                &[cfg.num_positions(), d],
                DType::F32,
            )?
            .unsqueeze(0)?;
        let layers = (0..cfg.num_hidden_layers - 1)
            .map(|i| EncoderLayer::load(&src, &format!("encoder.layers.{i}"), cfg, dtype))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            patch_weight,
            class_token,
            position_table,
            pre_norm: AffineLayerNorm::load(&src, "pre_layrnorm", d, cfg.layer_norm_eps)?,
            layers,
            dtype,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &ClipVisionConfig {
        &self.cfg
    }

    /// pixel_values [B, C, image_size, image_size] (normalised, as [`super::preprocess`] makes)
    /// → the penultimate layer's hidden states [B, positions, hidden] f32 (transformers'
    /// `hidden_states[-2]`; [B, 257, 1280] for ViT-H/14), what Wan2.1 I2V's transformer reads.
    pub fn penultimate_hidden_states(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, c, h, w) = match pixel_values.dims4() {
            Ok(dims) => dims,
            Err(_) => {
                return Err(ModelError::InvalidInput(format!(
                    "pixel values must be [B, {}, {s}, {s}], got {:?}",
                    cfg.num_channels,
                    pixel_values.dims(),
                    s = cfg.image_size
                )))
            }
        };
        if b == 0 || c != cfg.num_channels || h != cfg.image_size || w != cfg.image_size {
            return Err(ModelError::InvalidInput(format!(
                "pixel values must be [B, {}, {s}, {s}], got {:?}",
                cfg.num_channels,
                pixel_values.dims(),
                s = cfg.image_size
            )));
        }
        let (p, g, d) = (cfg.patch_size, cfg.grid(), cfg.hidden_size);
        // [B, C, g·p, g·p] → [B, g·g, C·p·p], patches in raster order, each flattened (c, ph, pw).
        let patches = pixel_values
            .to_device(&self.device)?
            .to_dtype(self.dtype)?
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, c * p * p))?;
        let patch_tokens = patches
            .matmul(&self.patch_weight.t()?)?
            .to_dtype(DType::F32)?
            .reshape((b, g * g, d))?;
        let class = self.class_token.broadcast_as((b, 1, d))?.contiguous()?;
        let x = Tensor::cat(&[&class, &patch_tokens], 1)?.broadcast_add(&self.position_table)?;
        let mut x = self.pre_norm.forward(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x, cfg, self.dtype)?;
        }
        Ok(x)
    }
}
