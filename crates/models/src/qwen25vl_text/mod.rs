//! Qwen2.5-VL's language model (transformers' `Qwen2_5_VLTextModel`) for text-only input: the
//! text encoder of HunyuanVideo 1.5, which reads one of its intermediate hidden states.
//!
//! Why not candle-transformers' `qwen2`: its model returns only the last, normed hidden state
//! (HunyuanVideo takes the state two layers before it, un-normed), it keeps a KV cache that
//! makes `forward` take `&mut self`, and its mask is causal without padding, so a right-padded
//! batch of prompts cannot be encoded in one pass. The network itself is small, so it is written
//! here, loading through vdit's weight files and key maps.
//!
//! Text-only input makes Qwen2.5-VL's multimodal RoPE the ordinary 1-D RoPE: the temporal,
//! height and width position rows are all `0..L`, so every section of the head rotates by the
//! token position (checked against transformers by the parity test).
//!
//! - [`config`]: `Qwen25VlTextConfig` from `config.json`, the 7B preset.
//! - [`layers`]: RMSNorm, grouped-query causal attention with RoPE, SwiGLU feed-forward.

pub mod config;
pub mod layers;

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

pub use config::Qwen25VlTextConfig;
use layers::{causal_bias, rope_tables, DecoderLayer, RmsNorm};

use crate::error::{ModelError, Result};
use crate::weights::{KeyMap, WeightFiles};

/// Where a checkpoint keeps the language model: the prefix before `embed_tokens.weight`.
/// A `Qwen2_5_VLTextModel` saves without one; a whole Qwen2.5-VL model under `model.` (files of
/// transformers before 4.52) or `model.language_model.` (later ones).
const PREFIXES: [&str; 4] = ["", "model.language_model.", "model.", "language_model."];

/// Finds the language model's key prefix in `files`.
pub fn detect_prefix(files: &WeightFiles) -> Result<&'static str> {
    PREFIXES
        .into_iter()
        .find(|p| files.contains(&format!("{p}embed_tokens.weight")))
        .ok_or_else(|| ModelError::UnrecognizedCheckpoint {
            model: "Qwen2.5-VL language model",
            files: files.files_description(),
            expected: "`embed_tokens.weight`, `model.embed_tokens.weight` or \
                       `model.language_model.embed_tokens.weight`"
                .to_string(),
        })
}

/// The token embedding and the first `loaded_layers` decoder layers of the language model, and
/// its final norm when every layer is loaded.
#[derive(Debug, Clone)]
pub struct Qwen25VlTextModel {
    embedding: Tensor, // [vocab_size, hidden] in the weight dtype
    layers: Vec<DecoderLayer>,
    final_norm: Option<RmsNorm>,
    config: Qwen25VlTextConfig,
    device: Device,
}

impl Qwen25VlTextModel {
    /// Loads every layer and the final norm. `dtype`: the projections' dtype, f32 or bf16
    /// (norms, softmax and the residual stream stay f32).
    pub fn load(
        files: &Arc<WeightFiles>,
        cfg: &Qwen25VlTextConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::load_layers(files, cfg, dtype, device, cfg.num_hidden_layers)
    }

    /// Loads only the first `layers` decoder layers (and the final norm only if that is all of
    /// them): enough for [`forward_layers`](Self::forward_layers) up to `layers`, without the
    /// memory of the rest (HunyuanVideo reads the state two layers before the end).
    pub fn load_layers(
        files: &Arc<WeightFiles>,
        cfg: &Qwen25VlTextConfig,
        dtype: DType,
        device: &Device,
        layers: usize,
    ) -> Result<Self> {
        cfg.validate().map_err(|reason| ModelError::Config {
            path: "Qwen2.5-VL text config".to_string(),
            reason,
        })?;
        if !matches!(dtype, DType::F32 | DType::BF16) {
            return Err(ModelError::InvalidInput(format!(
                "the Qwen2.5-VL text model runs in f32 or bf16, not {dtype:?}"
            )));
        }
        if layers > cfg.num_hidden_layers {
            return Err(ModelError::InvalidInput(format!(
                "cannot load {layers} layers of a model with {}",
                cfg.num_hidden_layers
            )));
        }
        let prefix = detect_prefix(files)?;
        let vb = files.var_builder(KeyMap::identity().with_prefix(prefix), dtype, device);
        let embedding = vb.get((cfg.vocab_size, cfg.hidden_size), "embed_tokens.weight")?;
        let decoder_layers = (0..layers)
            .map(|i| DecoderLayer::load(vb.pp(format!("layers.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = (layers == cfg.num_hidden_layers)
            .then(|| RmsNorm::load(vb.pp("norm"), cfg.hidden_size, cfg.rms_norm_eps))
            .transpose()?;
        Ok(Self {
            embedding,
            layers: decoder_layers,
            final_norm,
            config: cfg.clone(),
            device: device.clone(),
        })
    }

    /// Opens a folder with `config.json` and safetensors, loading the first `layers` layers
    /// (`None`: all).
    pub fn open(dir: &Path, dtype: DType, device: &Device, layers: Option<usize>) -> Result<Self> {
        let cfg = Qwen25VlTextConfig::from_json_file(&dir.join("config.json"))?;
        let files = Arc::new(WeightFiles::open(dir)?);
        Self::load_layers(
            &files,
            &cfg,
            dtype,
            device,
            layers.unwrap_or(cfg.num_hidden_layers),
        )
    }

    pub fn config(&self) -> &Qwen25VlTextConfig {
        &self.config
    }

    /// Decoder layers loaded.
    pub fn loaded_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The hidden state after the first `layers` decoder layers, before any norm: transformers'
    /// `hidden_states[layers]` (0: the embeddings). ids [B, L] u32; mask [B, L] (nonzero = real
    /// token; padding keys are hidden from every query, as transformers does). Positions are
    /// 0..L in every row, so padding belongs on the right. → [B, L, hidden] f32; rows of padding
    /// positions carry no meaning.
    pub fn forward_layers(
        &self,
        ids: &Tensor,
        attention_mask: Option<&Tensor>,
        layers: usize,
    ) -> Result<Tensor> {
        if layers > self.layers.len() {
            return Err(ModelError::InvalidInput(format!(
                "asked for the state after {layers} layers, but {} are loaded",
                self.layers.len()
            )));
        }
        let (batch, len) = self.check_ids(ids)?;
        if let Some(mask) = attention_mask {
            if mask.dims() != [batch, len] {
                return Err(ModelError::InvalidInput(format!(
                    "attention mask has shape {:?}, expected [{batch}, {len}] like the ids",
                    mask.dims()
                )));
            }
        }
        let ids = ids.to_dtype(DType::U32)?.to_device(&self.device)?;
        let mut x = self
            .embedding
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((batch, len, self.config.hidden_size))?
            .to_dtype(DType::F32)?;
        if layers == 0 {
            return Ok(x);
        }
        let (cos, sin) = rope_tables(
            len,
            self.config.head_dim(),
            self.config.rope_theta,
            &self.device,
        )?;
        let bias = causal_bias(attention_mask, batch, len, &self.device)?;
        for layer in &self.layers[..layers] {
            x = layer.forward(&x, &cos, &sin, &bias)?;
        }
        Ok(x)
    }

    /// The last hidden state (every layer, then the final norm): transformers'
    /// `last_hidden_state`. Needs the whole model loaded.
    pub fn forward(&self, ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let Some(norm) = &self.final_norm else {
            return Err(ModelError::InvalidInput(format!(
                "only {} of {} layers are loaded: the last hidden state needs all",
                self.layers.len(),
                self.config.num_hidden_layers
            )));
        };
        norm.forward(&self.forward_layers(ids, attention_mask, self.layers.len())?)
    }

    /// transformers' `hidden_states[-(skip + 1)]`: the final normed state for `skip` = 0,
    /// otherwise the un-normed state after `num_hidden_layers − skip` layers.
    pub fn hidden_state_from_end(
        &self,
        ids: &Tensor,
        attention_mask: Option<&Tensor>,
        skip: usize,
    ) -> Result<Tensor> {
        if skip == 0 {
            return self.forward(ids, attention_mask);
        }
        let layers = self
            .config
            .num_hidden_layers
            .checked_sub(skip)
            .ok_or_else(|| {
                ModelError::InvalidInput(format!(
                    "cannot skip {skip} of {} layers",
                    self.config.num_hidden_layers
                ))
            })?;
        self.forward_layers(ids, attention_mask, layers)
    }

    /// Checks ids [B, L] (integers inside the vocabulary) and returns (B, L).
    fn check_ids(&self, ids: &Tensor) -> Result<(usize, usize)> {
        let (batch, len) = ids.dims2().map_err(|_| {
            ModelError::InvalidInput(format!(
                "Qwen2.5-VL ids must be [batch, len], got {:?}",
                ids.dims()
            ))
        })?;
        if batch == 0 || len == 0 {
            return Err(ModelError::InvalidInput(format!(
                "Qwen2.5-VL ids are empty ({batch}x{len})"
            )));
        }
        if !matches!(ids.dtype(), DType::U32 | DType::U8 | DType::I64) {
            return Err(ModelError::InvalidInput(format!(
                "Qwen2.5-VL ids must be integers (u32), got {:?}",
                ids.dtype()
            )));
        }
        let largest = ids
            .to_dtype(DType::U32)?
            .flatten_all()?
            .max(0)?
            .to_scalar::<u32>()? as usize;
        if largest >= self.config.vocab_size {
            return Err(ModelError::InvalidInput(format!(
                "token id {largest} is outside the Qwen2.5-VL vocabulary of {} (wrong tokenizer?)",
                self.config.vocab_size
            )));
        }
        Ok((batch, len))
    }
}
