//! umT5 text encoder (the encoder half of google/umt5-xxl), as Wan2.1 uses it.
//!
//! Differences from candle-transformers' `t5.rs` that make this a separate implementation: every
//! layer owns and applies its own relative-attention-bias table (T5 computes it once in layer 0
//! and reuses it, which silently gives wrong umT5 embeddings), and padding can be masked.
//!
//! - [`config`]: `Umt5Config` from transformers' `config.json`, the umT5-XXL preset.
//! - [`keys`]: the transformers, Wan2.1-original and GGUF (llama.cpp's T5 encoder names) key
//!   dialects, detected automatically.
//! - [`layers`]: RMSNorm, relative-bias self-attention, gated-GELU feed-forward.
//!
//! - [`embedding`]: the token table, kept in GGUF blocks when it is stored so.
//!
//! A GGUF file (city96's `umt5-xxl-encoder-Q8_0.gguf`, ...) keeps its projections quantised
//! (candle's quantised matmul) and its token table in blocks in host memory (only the prompt's
//! rows are dequantised); its norms and bias tables are dequantised at load.

pub mod config;
mod embedding;
pub mod keys;
pub mod layers;

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

pub use config::Umt5Config;
use embedding::TokenEmbedding;
pub use keys::Umt5Dialect;
use layers::{position_buckets, EncoderLayer, RelativeSelfAttention, T5RmsNorm};

use crate::error::{ModelError, Result};
use crate::wan::layers::WeightSource;
use crate::weights::WeightFiles;

impl Umt5Config {
    /// The sizes of the encoder stored in `files`, for checkpoints without a `config.json`.
    pub fn from_weights(files: &WeightFiles) -> Result<Self> {
        keys::infer_config(files, &Umt5Dialect::detect(files)?)
    }
}

/// Every tensor of an encoder of `cfg` (canonical names) with its shape, in loading order.
fn tensor_shapes(cfg: &Umt5Config) -> Vec<(String, Vec<usize>)> {
    let (d, inner, ff) = (cfg.d_model, cfg.inner_dim(), cfg.d_ff);
    let mut shapes = vec![("shared.weight".to_string(), vec![cfg.vocab_size, d])];
    for i in 0..cfg.num_layers {
        let layer: [(&str, Vec<usize>); 10] = [
            ("layer.0.layer_norm.weight", vec![d]),
            ("layer.0.SelfAttention.q.weight", vec![inner, d]),
            ("layer.0.SelfAttention.k.weight", vec![inner, d]),
            ("layer.0.SelfAttention.v.weight", vec![inner, d]),
            ("layer.0.SelfAttention.o.weight", vec![d, inner]),
            (
                "layer.0.SelfAttention.relative_attention_bias.weight",
                vec![cfg.relative_attention_num_buckets, cfg.num_heads],
            ),
            ("layer.1.layer_norm.weight", vec![d]),
            ("layer.1.DenseReluDense.wi_0.weight", vec![ff, d]),
            ("layer.1.DenseReluDense.wi_1.weight", vec![ff, d]),
            ("layer.1.DenseReluDense.wo.weight", vec![d, ff]),
        ];
        shapes.extend(
            layer
                .into_iter()
                .map(|(tail, shape)| (format!("encoder.block.{i}.{tail}"), shape)),
        );
    }
    shapes.push(("encoder.final_layer_norm.weight".to_string(), vec![d]));
    shapes
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
    embedding: TokenEmbedding, // [vocab_size, d_model]
    layers: Vec<EncoderLayer>,
    final_norm: T5RmsNorm,
    config: Umt5Config,
    dialect: Umt5Dialect,
    device: Device,
}

impl Umt5Encoder {
    /// Loads the encoder from `files` in any key dialect. `dtype` is the dtype the projections
    /// run in: f32 (exact) or bf16 (norms, softmax and the residual stay f32). f16 is refused:
    /// umT5 activations overflow it. Projection weights stored as GGUF blocks stay quantised
    /// (candle's quantised matmul, in f32, its result cast to `dtype`), and so does a GGUF token
    /// table, in host memory; everything else is dequantised or cast to `dtype` (norms and bias
    /// tables to f32).
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
        // `detect` refuses a file with one bias table as "T5, not umT5": right for umT5, not here.
        let dialect = match tables {
            BiasTables::PerLayer => Umt5Dialect::detect(files)?,
            BiasTables::SharedFromFirstLayer => Umt5Dialect::detect_keys(files)?,
        };
        let keys = dialect.key_map();
        let src = WeightSource::new(files.clone(), keys.clone(), device.clone());
        let embedding = TokenEmbedding::load(
            files,
            &keys.map("shared.weight"),
            &src,
            (cfg.vocab_size, cfg.d_model),
            dtype,
        )?;
        let shared_bias = match tables {
            BiasTables::PerLayer => None,
            BiasTables::SharedFromFirstLayer => Some(RelativeSelfAttention::load_bias_table(
                &src,
                "encoder.block.0.layer.0.SelfAttention",
                cfg,
            )?),
        };
        let layers = (0..cfg.num_layers)
            .map(|i| {
                let prefix = format!("encoder.block.{i}");
                EncoderLayer::load(&src, &prefix, cfg, dtype, shared_bias.as_ref())
            })
            .collect::<Result<Vec<_>>>()?;
        let final_norm = T5RmsNorm::load(
            &src,
            "encoder.final_layer_norm",
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
    /// `*.safetensors.index.json` (Wan's converted original, ComfyUI's `umt5_xxl_*`) or `.gguf`
    /// (city96's `umt5-xxl-encoder-*.gguf`), whose sizes are inferred from the weights.
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

    /// Checks, reading only the headers, that `files` hold every tensor an encoder of `cfg`
    /// loads, with its shape, in a type the loader reads: the errors [`Self::load`] would give
    /// (an unknown GGUF architecture, a missing tensor named as the file spells it, a wrong
    /// shape), without the memory or the time of the weights.
    pub fn check(files: &WeightFiles, cfg: &Umt5Config) -> Result<()> {
        cfg.validate().map_err(|reason| ModelError::Config {
            path: "umT5 config".to_string(),
            reason,
        })?;
        let keys = Umt5Dialect::detect(files)?.key_map();
        for (key, shape) in tensor_shapes(cfg) {
            files.check(&keys.map(&key), &shape.into())?;
        }
        files.check_gguf_types()?;
        Ok(())
    }

    pub fn config(&self) -> &Umt5Config {
        &self.config
    }

    pub fn dialect(&self) -> &Umt5Dialect {
        &self.dialect
    }

    /// The GGUF type (`Q8_0`, ...) of the token table when it is kept in blocks.
    pub fn quantized_embedding(&self) -> Option<String> {
        let kind = self.embedding.quantized_type()?;
        Some(crate::weights::gguf::GgufType::Known(kind).name())
    }

    /// How many of the projections (7 per layer) are kept as GGUF blocks, and of which types
    /// (`Q8_0`, `Q6_K`, ...: llama.cpp's names), sorted; the others run in the load dtype.
    pub fn quantized_projections(&self) -> (usize, Vec<String>) {
        let mut types: Vec<String> = Vec::new();
        let mut count = 0;
        for kind in self
            .layers
            .iter()
            .flat_map(|l| l.projections())
            .filter_map(|p| p.quantized_type())
        {
            count += 1;
            let name = crate::weights::gguf::GgufType::Known(kind).name();
            if !types.contains(&name) {
                types.push(name);
            }
        }
        types.sort();
        (count, types)
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
            .rows(&ids.flatten_all()?, &self.device)?
            .reshape((batch, len, self.config.d_model))?;
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
