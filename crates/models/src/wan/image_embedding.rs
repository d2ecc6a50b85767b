//! The image embedder of Wan2.1 I2V and FLF2V (`condition_embedder.image_embedder`, originally
//! `img_emb`): CLIP image tokens to the model width, the keys and values every block's
//! cross-attention reads besides the text.
//!
//! ```text
//! image [B, Li, image_dim] (+ FLF2V position table [1, Li, image_dim])
//!   ─LayerNorm(affine, eps 1e-5)─Linear(image_dim→image_dim)─gelu(erf)─Linear(image_dim→dim)─LayerNorm─► [B, Li, dim]
//! ```

use candle_core::{DType, Tensor};

use crate::error::{ModelError, Result};
use crate::wan::config::WanConfig;
use crate::wan::layers::{AffineLayerNorm, Linear, WeightSource};

/// Both LayerNorms are `torch.nn.LayerNorm` with its default epsilon (not the model's 1e-6).
const LAYER_NORM_EPS: f64 = 1e-5;

pub(crate) struct ImageEmbedding {
    norm_in: AffineLayerNorm,
    linear_1: Linear,
    linear_2: Linear,
    norm_out: AffineLayerNorm,
    /// FLF2V: [1, pos_embed_seq_len, image_dim] f32, added to the tokens first.
    position_table: Option<Tensor>,
    image_dim: usize,
    dtype: DType,
}

impl ImageEmbedding {
    /// The embedder of `cfg`, or `None` when the model has no image input.
    pub(crate) fn load(src: &WeightSource, cfg: &WanConfig, dtype: DType) -> Result<Option<Self>> {
        let Some(image_dim) = cfg.image_dim else {
            return Ok(None);
        };
        let p = "condition_embedder.image_embedder";
        let dim = cfg.dim();
        let position_table = cfg
            .pos_embed_seq_len
            .map(|rows| src.get(&format!("{p}.pos_embed"), &[1, rows, image_dim], DType::F32))
            .transpose()?;
        Ok(Some(Self {
            norm_in: AffineLayerNorm::load(src, &format!("{p}.norm1"), image_dim, LAYER_NORM_EPS)?,
            linear_1: src.linear(&format!("{p}.ff.net.0.proj"), image_dim, image_dim, dtype)?,
            linear_2: src.linear(&format!("{p}.ff.net.2"), image_dim, dim, dtype)?,
            norm_out: AffineLayerNorm::load(src, &format!("{p}.norm2"), dim, LAYER_NORM_EPS)?,
            position_table,
            image_dim,
            dtype,
        }))
    }

    /// The rows the model expects per sample: the position table's (FLF2V: both images' tokens,
    /// first image then last), or any number when there is none.
    pub(crate) fn expected_rows(&self) -> Option<usize> {
        self.position_table
            .as_ref()
            .map(|t| t.dim(1).expect("position table is [1, rows, image_dim]"))
    }

    /// image [B, Li, image_dim] (any float dtype) → [B, Li, dim] in the run dtype. Norms in f32,
    /// linear layers in the run dtype, as diffusers' `FP32LayerNorm` around the feed-forward.
    pub(crate) fn forward(&self, image: &Tensor) -> Result<Tensor> {
        let (_, rows, width) = image.dims3()?;
        if width != self.image_dim || self.expected_rows().is_some_and(|r| r != rows) {
            return Err(ModelError::InvalidInput(format!(
                "image embedding must be [B, {}, {}], got {:?}",
                self.expected_rows()
                    .map_or_else(|| "Li".to_string(), |r| r.to_string()),
                self.image_dim,
                image.dims()
            )));
        }
        let mut x = image.to_dtype(DType::F32)?;
        if let Some(table) = &self.position_table {
            x = x.broadcast_add(table)?;
        }
        let h = self.norm_in.forward(&x)?.to_dtype(self.dtype)?;
        let h = self.linear_1.forward(&h)?.gelu_erf()?;
        let h = self.linear_2.forward(&h)?;
        Ok(self.norm_out.forward(&h)?.to_dtype(self.dtype)?)
    }
}
