//! umT5 text encoder (the encoder half of google/umt5-xxl), as Wan2.1 uses it.
//!
//! Differences from candle-transformers' `t5.rs` that make this a separate implementation: every
//! layer owns and applies its own relative-attention-bias table (T5 computes it once in layer 0
//! and reuses it, which silently gives wrong umT5 embeddings), and padding can be masked.
//!
//! - [`config`]: `Umt5Config` from transformers' `config.json`, the umT5-XXL preset.
//! - [`keys`]: the transformers and Wan2.1-original key dialects, detected automatically.
//! - [`layers`]: RMSNorm, relative-bias self-attention, gated-GELU feed-forward.

pub mod config;
pub mod keys;
pub mod layers;

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

pub use config::Umt5Config;
pub use keys::Umt5Dialect;
use layers::{position_buckets, EncoderLayer, RelativeSelfAttention, T5RmsNorm};

use crate::error::{ModelError, Result};
use crate::weights::WeightFiles;

impl Umt5Config {
    /// The sizes of the encoder stored in `files`, for checkpoints without a `config.json`.
    pub fn from_weights(files: &WeightFiles) -> Result<Self> {
        keys::infer_config(files, &Umt5Dialect::detect(files)?)
    }
}

/// Which layers own a relative-position bias table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BiasTables {
    /// Every layer stores and adds its own table (umT5).
    PerLayer,
    /// Layer 0 stores the only table and every layer adds it (T5, T5 v1.1, ByT5).
    SharedFromFirstLayer,
}

/// The umT5 encoder stack: token embedding, `num_layers` layers, final RMSNorm.
#[derive(Debug, Clone)]
pub struct Umt5Encoder {
    embedding: Tensor, // [vocab_size, d_model] in the weight dtype
    layers: Vec<EncoderLayer>,
    final_norm: T5RmsNorm,
    config: Umt5Config,
    dialect: Umt5Dialect,
    device: Device,
}

impl Umt5Encoder {
    /// Loads the encoder from `files` in either key dialect. `dtype` is the weight dtype the
    /// projections run in: f32 (exact) or bf16 (norms, softmax and the residual stay f32).
    /// f16 is refused: umT5 activations overflow it.
    pub fn load(
        files: &Arc<WeightFiles>,
        cfg: &Umt5Config,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::load_with_bias_tables(files, cfg, dtype, device, BiasTables::PerLayer)
    }

    /// [`load`](Self::load) for either layout of the relative-position bias: umT5's per-layer
    /// tables or classic T5's single table in layer 0 (ByT5 is classic T5).
    pub fn load_with_bias_tables(
        files: &Arc<WeightFiles>,
        cfg: &Umt5Config,
        dtype: DType,
        device: &Device,
        tables: BiasTables,
    ) -> Result<Self> {
        cfg.validate().map_err(|reason| ModelError::Config {
            path: "umT5 config".to_string(),
            reason,
        })?;
        if !matches!(dtype, DType::F32 | DType::BF16) {
            return Err(ModelError::InvalidInput(format!(
                "umT5 runs in f32 or bf16, not {dtype:?} (f16 overflows in its feed-forward)"
            )));
        }
        let dialect = Umt5Dialect::detect(files)?;
        let vb = files.var_builder(dialect.key_map(), dtype, device);
        let embedding = vb.get((cfg.vocab_size, cfg.d_model), "shared.weight")?;
        let shared_bias = match tables {
            BiasTables::PerLayer => None,
            BiasTables::SharedFromFirstLayer => Some(RelativeSelfAttention::load_bias_table(
                &vb.pp("encoder.block.0.layer.0.SelfAttention"),
                cfg,
            )?),
        };
        let layers = (0..cfg.num_layers)
            .map(|i| {
                let layer_vb = vb.pp(format!("encoder.block.{i}"));
                match &shared_bias {
                    None => EncoderLayer::load(layer_vb, cfg),
                    Some(table) => EncoderLayer::load_sharing(layer_vb, cfg, table.clone()),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let final_norm = T5RmsNorm::load(
            vb.pp("encoder.final_layer_norm"),
            cfg.d_model,
            cfg.layer_norm_epsilon,
        )?;
        Ok(Self {
            embedding,
            layers,
            final_norm,
            config: cfg.clone(),
            dialect,
            device: device.clone(),
        })
    }

    /// Opens an encoder from a path: a directory (diffusers `text_encoder/`: its `config.json`
    /// when present, sizes inferred from the weights otherwise), or a single `.safetensors` /
    /// `*.safetensors.index.json` (Wan's converted original, ComfyUI's `umt5_xxl_*`), whose sizes
    /// are inferred from the weights.
    pub fn open(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let files = Arc::new(WeightFiles::open(path)?);
        let config_path = path.join("config.json");
        let cfg = if path.is_dir() && config_path.is_file() {
            Umt5Config::from_json_file(&config_path)?
        } else {
            Umt5Config::from_weights(&files)?
        };
        Self::load(&files, &cfg, dtype, device)
    }

    pub fn config(&self) -> &Umt5Config {
        &self.config
    }

    pub fn dialect(&self) -> &Umt5Dialect {
        &self.dialect
    }

    /// ids [B, L] u32 → hidden [B, L, d_model] f32, every token attending to every token.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.forward_masked(ids, None)
    }

    /// Like [`forward`](Self::forward) with an attention mask [B, L] (nonzero = real token,
    /// 0 = padding) that hides padding keys, as transformers does. Rows of padding positions are
    /// computed too but carry no meaning.
    pub fn forward_masked(&self, ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let (batch, len) = ids.dims2().map_err(|_| {
            ModelError::InvalidInput(format!(
                "umT5 ids must be [batch, len], got {:?}",
                ids.dims()
            ))
        })?;
        if batch == 0 || len == 0 {
            return Err(ModelError::InvalidInput(format!(
                "umT5 ids are empty ({batch}x{len}); a tokenized prompt has at least its EOS"
            )));
        }
        let ids = match ids.dtype() {
            DType::U32 => ids.clone(),
            DType::U8 | DType::I64 => ids.to_dtype(DType::U32)?,
            other => {
                return Err(ModelError::InvalidInput(format!(
                    "umT5 ids must be integers (u32), got {other:?}"
                )))
            }
        }
        .to_device(&self.device)?;
        let largest = ids.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
        if largest >= self.config.vocab_size {
            return Err(ModelError::InvalidInput(format!(
                "token id {largest} is outside the umT5 vocabulary of {} (wrong tokenizer?)",
                self.config.vocab_size
            )));
        }
        let key_bias = attention_mask
            .map(|m| self.key_bias(m, batch, len))
            .transpose()?;

        let mut x = self
            .embedding
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((batch, len, self.config.d_model))?
            .to_dtype(DType::F32)?;
        // The bucket of each (query, key) pair depends only on L: shared by all layers, while
        // each layer looks the buckets up in its own table.
        let buckets = position_buckets(len, &self.config, &self.device)?;
        for layer in &self.layers {
            x = layer.forward(&x, &buckets, key_bias.as_ref())?;
        }
        self.final_norm.forward(&x)
    }

    /// mask [B, L] → additive key bias [B, 1, 1, L] f32: 0 for real keys, f32::MIN for padding
    /// (transformers' value, so padded batches reproduce its numbers).
    fn key_bias(&self, mask: &Tensor, batch: usize, len: usize) -> Result<Tensor> {
        if mask.dims() != [batch, len] {
            return Err(ModelError::InvalidInput(format!(
                "attention mask has shape {:?}, expected [{batch}, {len}] like the ids",
                mask.dims()
            )));
        }
        let is_real = mask
            .to_device(&self.device)?
            .to_dtype(DType::F32)?
            .ne(0f32)?;
        let zeros = Tensor::zeros((batch, len), DType::F32, &self.device)?;
        let padding = Tensor::full(f32::MIN, (batch, len), &self.device)?;
        Ok(is_real
            .where_cond(&zeros, &padding)?
            .reshape((batch, 1, 1, len))?)
    }

    /// Encodes one tokenized prompt the way Wan2.1 and diffusers do: only the real tokens go
    /// through the network (no padding, so no mask is needed), then zero rows are appended.
    /// ids: the prompt's ids including EOS → [1, max_len, d_model] f32 (512 rows for Wan).
    pub fn encode_padded(&self, ids: &[u32], max_len: usize) -> Result<Tensor> {
        if ids.is_empty() {
            return Err(ModelError::InvalidInput(
                "cannot encode an empty token list (the tokenizer appends EOS to every prompt)"
                    .into(),
            ));
        }
        if ids.len() > max_len {
            return Err(ModelError::InvalidInput(format!(
                "{} tokens exceed the text length of {max_len}; truncate when tokenizing",
                ids.len()
            )));
        }
        let ids_tensor = Tensor::from_slice(ids, (1, ids.len()), &self.device)?;
        let hidden = self.forward(&ids_tensor)?; // [1, L, d_model]
        if ids.len() == max_len {
            return Ok(hidden);
        }
        let padding = Tensor::zeros(
            (1, max_len - ids.len(), self.config.d_model),
            DType::F32,
            &self.device,
        )?;
        Ok(Tensor::cat(&[&hidden, &padding], 1)?)
    }
}
