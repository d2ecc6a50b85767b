//! The three key dialects of umT5 encoder checkpoints, detected from the tensor names (and, for
//! GGUF files, `general.architecture`).
//!
//! The network asks for transformers' `UMT5EncoderModel` names (the canonical spelling); a
//! [`KeyMap`] turns them into the names stored in the file, so a missing tensor is reported under
//! the name the file should have had.

use crate::error::{ModelError, Result};
use crate::umt5::Umt5Config;
use crate::weights::{KeyMap, WeightFiles};

/// How the tensors of a umT5 encoder are named in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Umt5Dialect {
    /// transformers `UMT5EncoderModel` (diffusers `text_encoder/`, ComfyUI `umt5_xxl_*.safetensors`).
    /// The token embedding is `shared.weight`, or `encoder.embed_tokens.weight` when only that is stored.
    HuggingFace { embedding_key: String },
    /// Wan2.1's `models_t5_umt5-xxl-enc-bf16.pth`, converted to safetensors with its keys kept
    /// (`token_embedding.weight`, `blocks.N.attn.q.weight`, ...).
    WanOriginal,
    /// A GGUF file in llama.cpp's T5 encoder names (architecture `t5encoder`), as city96's
    /// `umt5-xxl-encoder-*.gguf` files are: `token_embd.weight`, `enc.blk.N.attn_q.weight`, ...,
    /// `enc.output_norm.weight`; see [`hf_to_gguf_key`].
    Gguf,
}

const HF_PROBE: &str = "encoder.block.0.layer.0.SelfAttention.q.weight";
const WAN_PROBE: &str = "blocks.0.attn.q.weight";
const GGUF_PROBE: &str = "enc.blk.0.attn_q.weight";
/// `general.architecture` values of T5-encoder GGUF files: llama.cpp writes `t5encoder` for an
/// encoder-only model (city96's umT5 files), `t5` for a whole T5.
pub const GGUF_ARCHITECTURES: [&str; 2] = ["t5encoder", "t5"];

impl Umt5Dialect {
    /// Recognises the dialect from the stored keys, or says which keys were looked for. A GGUF
    /// file of another architecture (a Wan transformer's `wan`, ...) is refused by name.
    pub fn detect(files: &WeightFiles) -> Result<Self> {
        if let Some(arch) = files.gguf_architecture() {
            if !GGUF_ARCHITECTURES.contains(&arch) {
                return Err(ModelError::UnsupportedCheckpoint {
                    files: describe(files),
                    reason: format!(
                        "GGUF architecture `{arch}` is not a umT5 text encoder (`t5encoder`)"
                    ),
                });
            }
        }
        let dialect = Self::detect_keys(files)?;
        // T5 (not umT5) checkpoints hold a bias table in layer 0 only; loading one would fail on
        // layer 1's table with a bare "missing tensor", so say what the file is instead.
        let keys = dialect.key_map();
        let layer1 =
            |tail: &str| keys.map(&format!("encoder.block.1.layer.0.SelfAttention.{tail}"));
        if files.contains(&layer1("q.weight"))
            && !files.contains(&layer1("relative_attention_bias.weight"))
        {
            return Err(ModelError::UnsupportedCheckpoint {
                files: describe(files),
                reason: format!(
                    "no `{}`: a T5 encoder (one relative-attention table, in layer 0), not umT5 \
                     (a table in every layer)",
                    layer1("relative_attention_bias.weight")
                ),
            });
        }
        Ok(dialect)
    }

    /// The dialect the probe keys name.
    pub(crate) fn detect_keys(files: &WeightFiles) -> Result<Self> {
        // GGUF files normally use llama.cpp's names; one with transformers names reads too.
        if files.contains(GGUF_PROBE) && files.contains("token_embd.weight") {
            return Ok(Self::Gguf);
        }
        if files.contains(HF_PROBE) {
            let embedding_key = ["shared.weight", "encoder.embed_tokens.weight"]
                .into_iter()
                .find(|k| files.contains(k))
                .unwrap_or("shared.weight");
            return Ok(Self::HuggingFace {
                embedding_key: embedding_key.to_string(),
            });
        }
        if files.contains(WAN_PROBE) && files.contains("token_embedding.weight") {
            return Ok(Self::WanOriginal);
        }
        Err(ModelError::UnrecognizedCheckpoint {
            model: "umT5 encoder",
            files: describe(files),
            expected: format!(
                "`{HF_PROBE}` (transformers), `{WAN_PROBE}` (Wan2.1 original) or \
                 `{GGUF_PROBE}` (GGUF, llama.cpp's T5 encoder names)"
            ),
        })
    }

    /// Maps canonical (transformers) keys to this dialect's keys.
    pub fn key_map(&self) -> KeyMap {
        match self {
            Self::HuggingFace { embedding_key } => {
                let embedding_key = embedding_key.clone();
                KeyMap::new(move |key| match key {
                    "shared.weight" => embedding_key.clone(),
                    _ => key.to_string(),
                })
            }
            Self::WanOriginal => KeyMap::new(hf_to_wan_key),
            Self::Gguf => KeyMap::new(hf_to_gguf_key),
        }
    }
}

fn describe(files: &WeightFiles) -> String {
    let paths: Vec<String> = files
        .paths()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    paths.join(", ")
}

/// How a checkpoint form names the encoder's tensors, against transformers' names.
struct KeyNames {
    embedding: &'static str,
    final_norm: &'static str,
    /// Layer i's tensors are `{layer_prefix}{i}.{tail}`.
    layer_prefix: &'static str,
    /// (transformers' tail after `encoder.block.{i}.`, this form's tail).
    tails: &'static [(&'static str, &'static str)],
}

impl KeyNames {
    /// transformers key → this form's key. Unknown keys pass through.
    fn rename(&self, key: &str) -> String {
        match key {
            "shared.weight" | "encoder.embed_tokens.weight" => return self.embedding.into(),
            "encoder.final_layer_norm.weight" => return self.final_norm.into(),
            _ => {}
        }
        let Some((layer, tail)) = key
            .strip_prefix("encoder.block.")
            .and_then(|r| r.split_once('.'))
        else {
            return key.to_string();
        };
        match self.tails.iter().find(|(hf, _)| *hf == tail) {
            Some((_, own)) => format!("{}{layer}.{own}", self.layer_prefix),
            None => key.to_string(),
        }
    }
}

/// Wan2.1's original names (`wan/modules/t5.py`).
const WAN_NAMES: KeyNames = KeyNames {
    embedding: "token_embedding.weight",
    final_norm: "norm.weight",
    layer_prefix: "blocks.",
    tails: &[
        ("layer.0.layer_norm.weight", "norm1.weight"),
        ("layer.0.SelfAttention.q.weight", "attn.q.weight"),
        ("layer.0.SelfAttention.k.weight", "attn.k.weight"),
        ("layer.0.SelfAttention.v.weight", "attn.v.weight"),
        ("layer.0.SelfAttention.o.weight", "attn.o.weight"),
        (
            "layer.0.SelfAttention.relative_attention_bias.weight",
            "pos_embedding.embedding.weight",
        ),
        ("layer.1.layer_norm.weight", "norm2.weight"),
        // The GELU branch of the gated FFN is `gate.0` (a Linear inside nn.Sequential with GELU).
        ("layer.1.DenseReluDense.wi_0.weight", "ffn.gate.0.weight"),
        ("layer.1.DenseReluDense.wi_1.weight", "ffn.fc1.weight"),
        ("layer.1.DenseReluDense.wo.weight", "ffn.fc2.weight"),
    ],
};

/// llama.cpp's T5 encoder names (`llama-arch.cpp`'s `LLM_ARCH_T5ENCODER` table, which city96's
/// umT5 files follow).
const GGUF_NAMES: KeyNames = KeyNames {
    embedding: "token_embd.weight",
    final_norm: "enc.output_norm.weight",
    layer_prefix: "enc.blk.",
    tails: &[
        ("layer.0.layer_norm.weight", "attn_norm.weight"),
        ("layer.0.SelfAttention.q.weight", "attn_q.weight"),
        ("layer.0.SelfAttention.k.weight", "attn_k.weight"),
        ("layer.0.SelfAttention.v.weight", "attn_v.weight"),
        ("layer.0.SelfAttention.o.weight", "attn_o.weight"),
        // umT5 stores a table in every layer; llama.cpp's T5 files only in layer 0.
        (
            "layer.0.SelfAttention.relative_attention_bias.weight",
            "attn_rel_b.weight",
        ),
        ("layer.1.layer_norm.weight", "ffn_norm.weight"),
        // `ffn_gate` is the GELU branch (wi_0), `ffn_up` the linear one (wi_1).
        ("layer.1.DenseReluDense.wi_0.weight", "ffn_gate.weight"),
        ("layer.1.DenseReluDense.wi_1.weight", "ffn_up.weight"),
        ("layer.1.DenseReluDense.wo.weight", "ffn_down.weight"),
    ],
};

/// transformers key → Wan2.1 original key (`wan/modules/t5.py` names). Unknown keys pass through.
pub fn hf_to_wan_key(key: &str) -> String {
    WAN_NAMES.rename(key)
}

/// transformers key → llama.cpp T5 encoder GGUF name (`llama-arch.cpp`'s `LLM_ARCH_T5ENCODER`
/// table, which city96's umT5 files follow). Unknown keys pass through.
pub fn hf_to_gguf_key(key: &str) -> String {
    GGUF_NAMES.rename(key)
}

/// Reads the sizes of an encoder from its tensor shapes, for checkpoints that come without a
/// `config.json` (Wan's original file). Bucket distance and epsilon are not stored in weights:
/// they take umT5's values (128, 1e-6).
pub fn infer_config(files: &WeightFiles, dialect: &Umt5Dialect) -> Result<Umt5Config> {
    let keys = dialect.key_map();
    let shape = |canonical: &str| -> Result<Vec<usize>> {
        let key = keys.map(canonical);
        files.shape(&key).ok_or_else(|| {
            ModelError::Weights(crate::weights::WeightsError::MissingTensor {
                key,
                expected: None,
                files: describe(files),
            })
        })
    };
    let dims2 = |canonical: &str| -> Result<(usize, usize)> {
        match shape(canonical)?.as_slice() {
            &[rows, cols] => Ok((rows, cols)),
            other => Err(ModelError::InvalidInput(format!(
                "tensor `{}` has shape {other:?}, expected a matrix",
                keys.map(canonical)
            ))),
        }
    };
    let (vocab_size, d_model) = dims2("shared.weight")?;
    let (inner_dim, _) = dims2("encoder.block.0.layer.0.SelfAttention.q.weight")?;
    let (num_buckets, num_heads) =
        dims2("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")?;
    let (d_ff, _) = dims2("encoder.block.0.layer.1.DenseReluDense.wi_1.weight")?;
    let num_layers = (0..)
        .take_while(|i| {
            files.contains(&keys.map(&format!("encoder.block.{i}.layer.0.SelfAttention.q.weight")))
        })
        .count();
    if num_heads == 0 || inner_dim % num_heads != 0 {
        return Err(ModelError::InvalidInput(format!(
            "cannot infer umT5 head size: q has {inner_dim} outputs for {num_heads} heads"
        )));
    }
    let cfg = Umt5Config {
        vocab_size,
        d_model,
        d_kv: inner_dim / num_heads,
        d_ff,
        num_heads,
        num_layers,
        relative_attention_num_buckets: num_buckets,
        relative_attention_max_distance: 128,
        layer_norm_epsilon: 1e-6,
        feed_forward_proj: "gated-gelu".to_string(),
    };
    cfg.validate().map_err(|reason| ModelError::Config {
        path: describe(files),
        reason,
    })?;
    Ok(cfg)
}
