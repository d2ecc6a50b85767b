//! The input embeddings of the HunyuanVideo 1.5 transformer: the latent patches, the timestep,
//! the ByT5 (glyph text) stream, the SigLIP image tokens and the condition-type tags.
//!
//! Precision: layer norms and the time path in f32, the other linear layers in the run dtype.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::hunyuan15::transformer::config::HunyuanVideo15Config;
use crate::wan::layers::{AffineLayerNorm, Linear, WeightSource};

/// diffusers' `nn.LayerNorm` default epsilon (the ByT5 and image projections' norms).
const TORCH_LAYER_NORM_EPS: f64 = 1e-5;

/// Width of the sinusoidal timestep features every timestep MLP reads.
pub(crate) const TIMESTEP_FEATURES: usize = 256;

/// The Conv3d patch embedding (kernel = stride = patch) as a linear map on flattened patches
/// (c, pt, ph, pw): `x_embedder.proj`.
pub(crate) struct PatchEmbedding {
    proj: Linear,
    patch: [usize; 3],
}

impl PatchEmbedding {
    pub(crate) fn load(
        src: &WeightSource,
        cfg: &HunyuanVideo15Config,
        dtype: DType,
    ) -> Result<Self> {
        let [pt, ph, pw] = cfg.patch();
        let dim = cfg.dim();
        let weight = src
            .get(
                "x_embedder.proj.weight",
                &[dim, cfg.in_channels, pt, ph, pw],
                dtype,
            )?
            .reshape((dim, cfg.patch_in_features()))?;
        let bias = src.get("x_embedder.proj.bias", &[dim], dtype)?;
        Ok(Self {
            proj: Linear::from_parts(weight, bias),
            patch: cfg.patch(),
        })
    }

    /// latents `[B, C, F, H, W]` → tokens `[B, f·h·w, dim]` f32 in (frame, row, column) order,
    /// with (f, h, w) = (F/pt, H/ph, W/pw).
    pub(crate) fn forward(&self, latents: &Tensor, dtype: DType) -> Result<Tensor> {
        let (b, c, frames, height, width) = latents.dims5()?;
        let [pt, ph, pw] = self.patch;
        let (f, h, w) = (frames / pt, height / ph, width / pw);
        let x = latents
            .to_dtype(dtype)?
            .reshape(vec![b, c, f, pt, h, ph, w, pw])?
            .permute(vec![0, 2, 4, 6, 1, 3, 5, 7])? // [B, f, h, w, C, pt, ph, pw]
            .contiguous()?
            .reshape((b, f * h * w, c * pt * ph * pw))?;
        Ok(self.proj.forward(&x)?.to_dtype(DType::F32)?)
    }
}

/// `[N, 256]` f32 sinusoidal features of N timesteps: cos(t·ω_i) then sin(t·ω_i), with
/// ω_i = 10000^(−i/128) (diffusers' `Timesteps(256, flip_sin_to_cos=True, shift 0)`), in f32.
pub(crate) fn timestep_features(timesteps: &[f32], device: &Device) -> Result<Tensor> {
    let half = TIMESTEP_FEATURES / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10_000f32.ln()) * i as f32 / half as f32).exp())
        .collect();
    let mut out = Vec::with_capacity(timesteps.len() * TIMESTEP_FEATURES);
    for &t in timesteps {
        out.extend(freqs.iter().map(|f| (t * f).cos()));
        out.extend(freqs.iter().map(|f| (t * f).sin()));
    }
    Ok(Tensor::from_vec(
        out,
        (timesteps.len(), TIMESTEP_FEATURES),
        device,
    )?)
}

/// A timestep MLP (`TimestepEmbedding`): Linear(256 → dim) · SiLU · Linear(dim → dim), f32.
pub(crate) struct TimestepMlp {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepMlp {
    pub(crate) fn load(src: &WeightSource, prefix: &str, dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: src.linear(
                &format!("{prefix}.linear_1"),
                TIMESTEP_FEATURES,
                dim,
                DType::F32,
            )?,
            linear_2: src.linear(&format!("{prefix}.linear_2"), dim, dim, DType::F32)?,
        })
    }

    /// features `[N, 256]` (see [`timestep_features`]) → `[N, dim]` f32.
    pub(crate) fn forward(&self, features: &Tensor) -> Result<Tensor> {
        self.linear_2
            .forward(&self.linear_1.forward(features)?.silu()?)
    }
}

/// The ByT5 stream's projection (`context_embedder_2`): LayerNorm · Linear · GELU · Linear ·
/// GELU · Linear, from the ByT5 width to the model width (exact-erf GELU, as `nn.GELU()`).
pub(crate) struct GlyphProjection {
    norm: AffineLayerNorm,
    linear_1: Linear,
    linear_2: Linear,
    linear_3: Linear,
}

impl GlyphProjection {
    pub(crate) fn load(
        src: &WeightSource,
        cfg: &HunyuanVideo15Config,
        dtype: DType,
    ) -> Result<Self> {
        let (input, hidden) = (cfg.text_embed_2_dim, cfg.byt5_projection_dim);
        let p = "context_embedder_2";
        Ok(Self {
            norm: AffineLayerNorm::load(src, &format!("{p}.norm"), input, TORCH_LAYER_NORM_EPS)?,
            linear_1: src.linear(&format!("{p}.linear_1"), input, hidden, dtype)?,
            linear_2: src.linear(&format!("{p}.linear_2"), hidden, hidden, dtype)?,
            linear_3: src.linear(&format!("{p}.linear_3"), hidden, cfg.dim(), dtype)?,
        })
    }

    /// ByT5 states `[B, L, text_embed_2_dim]` → `[B, L, dim]` f32.
    pub(crate) fn forward(&self, glyph: &Tensor) -> Result<Tensor> {
        let x = self
            .linear_1
            .forward(&self.norm.forward(glyph)?)?
            .gelu_erf()?;
        let x = self.linear_2.forward(&x)?.gelu_erf()?;
        Ok(self.linear_3.forward(&x)?.to_dtype(DType::F32)?)
    }
}

/// The image tokens' projection (`image_embedder`): LayerNorm · Linear · GELU · Linear ·
/// LayerNorm, from the SigLIP width to the model width.
pub(crate) struct ImageProjection {
    norm_in: AffineLayerNorm,
    linear_1: Linear,
    linear_2: Linear,
    norm_out: AffineLayerNorm,
}

impl ImageProjection {
    pub(crate) fn load(
        src: &WeightSource,
        cfg: &HunyuanVideo15Config,
        dtype: DType,
    ) -> Result<Self> {
        let (input, dim) = (cfg.image_embed_dim, cfg.dim());
        let p = "image_embedder";
        Ok(Self {
            norm_in: AffineLayerNorm::load(
                src,
                &format!("{p}.norm_in"),
                input,
                TORCH_LAYER_NORM_EPS,
            )?,
            linear_1: src.linear(&format!("{p}.linear_1"), input, input, dtype)?,
            linear_2: src.linear(&format!("{p}.linear_2"), input, dim, dtype)?,
            norm_out: AffineLayerNorm::load(
                src,
                &format!("{p}.norm_out"),
                dim,
                TORCH_LAYER_NORM_EPS,
            )?,
        })
    }

    /// image tokens `[B, Li, image_embed_dim]` → `[B, Li, dim]` f32.
    pub(crate) fn forward(&self, image: &Tensor) -> Result<Tensor> {
        let x = self
            .linear_1
            .forward(&self.norm_in.forward(image)?)?
            .gelu_erf()?;
        self.norm_out.forward(&self.linear_2.forward(&x)?)
    }
}

/// Which stream a text-side token came from, as the learned `cond_type_embed` table tags it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConditionType {
    /// Qwen2.5-VL prompt states (through the token refiner).
    Prompt = 0,
    /// ByT5 glyph-text states.
    Glyph = 1,
    /// SigLIP image tokens.
    Image = 2,
}

/// The condition-type table `cond_type_embed.weight` `[3, dim]` f32.
pub(crate) struct ConditionTypeEmbedding {
    table: Tensor,
}

impl ConditionTypeEmbedding {
    pub(crate) fn load(src: &WeightSource, dim: usize) -> Result<Self> {
        Ok(Self {
            table: src.get("cond_type_embed.weight", &[3, dim], DType::F32)?,
        })
    }

    /// tokens `[B, L, dim]` f32 + the row of `kind` → `[B, L, dim]` f32.
    pub(crate) fn tag(&self, tokens: &Tensor, kind: ConditionType) -> Result<Tensor> {
        let row = self.table.narrow(0, kind as usize, 1)?.unsqueeze(0)?; // [1, 1, dim]
        Ok(tokens.broadcast_add(&row)?)
    }
}
