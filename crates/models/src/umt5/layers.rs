//! The pieces of a umT5 encoder layer: T5 RMSNorm, self-attention with this layer's own
//! relative-position bias, and the gated-GELU feed-forward.
//!
//! The residual stream, norms, attention scores, softmax and the GELU gate are computed in f32
//! whatever the weight dtype; only the projections run in the weight dtype (bf16 for a bf16 run).

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{linear_no_bias, Linear, VarBuilder};

use crate::error::Result;
use crate::umt5::Umt5Config;

/// T5 RMSNorm: x · rsqrt(mean(x²) + eps) · weight. No mean subtraction, no bias; weight kept in f32.
#[derive(Debug, Clone)]
pub struct T5RmsNorm {
    weight: Tensor, // [d_model] f32
    eps: f64,
}

impl T5RmsNorm {
    pub fn load(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        let weight = vb.to_dtype(DType::F32).get(dim, "weight")?;
        Ok(Self { weight, eps })
    }

    /// x: [B, L, d_model] f32 → [B, L, d_model] f32
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean_square = x.sqr()?.mean_keepdim(D::Minus1)?;
        let inv_rms = (mean_square + self.eps)?.sqrt()?.recip()?;
        Ok(x.broadcast_mul(&inv_rms)?.broadcast_mul(&self.weight)?)
    }
}

/// Runs a bias-free projection in the weight dtype on an f32 activation, returning f32.
fn project(linear: &Linear, x: &Tensor) -> Result<Tensor> {
    let weight_dtype = linear.weight().dtype();
    Ok(linear
        .forward(&x.to_dtype(weight_dtype)?)?
        .to_dtype(DType::F32)?)
}

/// Bucket of a relative position `key_pos − query_pos` for bidirectional (encoder) attention.
///
/// Half the buckets take positive offsets. Within a half, offsets below `num_buckets / 4` get a
/// bucket each; larger ones are log-spaced up to `max_distance`, beyond which they share the last
/// bucket. The log is evaluated in f32 exactly as transformers does (`log(a / e) / ln(d / e) · e`
/// truncated), because offsets such as 16, 32 and 64 fall on bucket edges where f64 arithmetic
/// could land on the other side.
pub fn relative_position_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> u32 {
    let half = num_buckets / 2;
    let max_exact = half / 2;
    let base = if relative > 0 { half } else { 0 };
    let distance = relative.unsigned_abs() as usize;
    let offset = if distance < max_exact {
        distance
    } else {
        let log_ratio = (distance as f32 / max_exact as f32).ln()
            / ((max_distance as f64 / max_exact as f64).ln() as f32)
            * (half - max_exact) as f32;
        (max_exact + log_ratio as usize).min(half - 1)
    };
    (base + offset) as u32
}

/// Buckets of every (query, key) pair of a sequence: [len · len] u32, row-major by query.
pub fn position_buckets(len: usize, cfg: &Umt5Config, device: &Device) -> Result<Tensor> {
    let buckets: Vec<u32> = (0..len as i64)
        .flat_map(|query| {
            (0..len as i64).map(move |key| {
                relative_position_bucket(
                    key - query,
                    cfg.relative_attention_num_buckets,
                    cfg.relative_attention_max_distance,
                )
            })
        })
        .collect();
    Ok(Tensor::from_vec(buckets, len * len, device)?)
}

/// Multi-head self-attention without score scaling, adding a relative-position bias table: its
/// own (umT5) or layer 0's (classic T5, ByT5).
#[derive(Debug, Clone)]
pub struct RelativeSelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    relative_bias: Tensor, // [num_buckets, num_heads] f32
    num_heads: usize,
    head_dim: usize,
}

impl RelativeSelfAttention {
    /// Loads the projections and this layer's own bias table (umT5).
    pub fn load(vb: VarBuilder, cfg: &Umt5Config) -> Result<Self> {
        let relative_bias = Self::load_bias_table(&vb, cfg)?;
        Self::load_sharing(vb, cfg, relative_bias)
    }

    /// The bias table [num_buckets, num_heads] f32 stored under `vb` (at `…SelfAttention`).
    pub fn load_bias_table(vb: &VarBuilder, cfg: &Umt5Config) -> Result<Tensor> {
        Ok(vb.to_dtype(DType::F32).get(
            (cfg.relative_attention_num_buckets, cfg.num_heads),
            "relative_attention_bias.weight",
        )?)
    }

    /// Loads the projections and applies a bias table read elsewhere: classic T5 (T5 v1.1,
    /// ByT5) stores one table in layer 0 and every layer adds it.
    pub fn load_sharing(vb: VarBuilder, cfg: &Umt5Config, relative_bias: Tensor) -> Result<Self> {
        let inner = cfg.inner_dim();
        Ok(Self {
            q: linear_no_bias(cfg.d_model, inner, vb.pp("q"))?,
            k: linear_no_bias(cfg.d_model, inner, vb.pp("k"))?,
            v: linear_no_bias(cfg.d_model, inner, vb.pp("v"))?,
            o: linear_no_bias(inner, cfg.d_model, vb.pp("o"))?,
            relative_bias,
            num_heads: cfg.num_heads,
            head_dim: cfg.d_kv,
        })
    }

    /// x: [B, L, d_model] f32 (normed); buckets: [L·L] u32 from [`position_buckets`];
    /// key_bias: [B, 1, 1, L] f32, 0 for real keys and f32::MIN for padding.
    /// Returns [B, L, d_model] f32.
    pub fn forward(
        &self,
        x: &Tensor,
        buckets: &Tensor,
        key_bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (batch, len, _) = x.dims3()?;
        let weight_dtype = self.q.weight().dtype();
        let x = x.to_dtype(weight_dtype)?;
        let heads = |linear: &Linear| -> Result<Tensor> {
            // [B, L, H·Dk] → [B, H, L, Dk]
            Ok(linear
                .forward(&x)?
                .reshape((batch, len, self.num_heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k, v) = (heads(&self.q)?, heads(&self.k)?, heads(&self.v)?);

        // Raw q·kᵀ (T5 has no 1/√d scaling): [B, H, L, L], then bias and softmax in f32.
        let scores = q.matmul(&k.t()?.contiguous()?)?.to_dtype(DType::F32)?;
        let position_bias = self
            .relative_bias
            .index_select(buckets, 0)? // [L·L, H]
            .reshape((len, len, self.num_heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)?; // [1, H, L, L]
        let mut scores = scores.broadcast_add(&position_bias)?;
        if let Some(key_bias) = key_bias {
            scores = scores.broadcast_add(key_bias)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(weight_dtype)?;
        let context = probs
            .matmul(&v)? // [B, H, L, Dk]
            .transpose(1, 2)?
            .reshape((batch, len, self.num_heads * self.head_dim))?;
        Ok(self.o.forward(&context)?.to_dtype(DType::F32)?)
    }
}

/// Gated-GELU feed-forward: wo(gelu_tanh(wi_0 · x) ⊙ (wi_1 · x)).
#[derive(Debug, Clone)]
pub struct GatedGeluFeedForward {
    wi_0: Linear,
    wi_1: Linear,
    wo: Linear,
}

impl GatedGeluFeedForward {
    pub fn load(vb: VarBuilder, cfg: &Umt5Config) -> Result<Self> {
        Ok(Self {
            wi_0: linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("wi_0"))?,
            wi_1: linear_no_bias(cfg.d_model, cfg.d_ff, vb.pp("wi_1"))?,
            wo: linear_no_bias(cfg.d_ff, cfg.d_model, vb.pp("wo"))?,
        })
    }

    /// x: [B, L, d_model] f32 (normed) → [B, L, d_model] f32
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // candle's `gelu` is the tanh approximation (transformers' gelu_new); done in f32 because
        // its bf16 kernel rounds at every step.
        let gate = project(&self.wi_0, x)?.gelu()?;
        let hidden = (gate * project(&self.wi_1, x)?)?;
        project(&self.wo, &hidden)
    }
}

/// One encoder layer (pre-norm): x += attn(norm1(x)); x += ffn(norm2(x)).
#[derive(Debug, Clone)]
pub struct EncoderLayer {
    attention_norm: T5RmsNorm,
    attention: RelativeSelfAttention,
    feed_forward_norm: T5RmsNorm,
    feed_forward: GatedGeluFeedForward,
}

impl EncoderLayer {
    /// `vb` at `encoder.block.{i}`; the layer reads its own bias table (umT5).
    pub fn load(vb: VarBuilder, cfg: &Umt5Config) -> Result<Self> {
        Self::load_with(vb, cfg, None)
    }

    /// `vb` at `encoder.block.{i}`; the layer adds `relative_bias` [num_buckets, num_heads] f32,
    /// a table shared with other layers (classic T5).
    pub fn load_sharing(vb: VarBuilder, cfg: &Umt5Config, relative_bias: Tensor) -> Result<Self> {
        Self::load_with(vb, cfg, Some(relative_bias))
    }

    /// Loads in the order of the stored layer (norm first), so a missing layer is reported by its
    /// first tensor.
    fn load_with(vb: VarBuilder, cfg: &Umt5Config, shared_bias: Option<Tensor>) -> Result<Self> {
        let eps = cfg.layer_norm_epsilon;
        let attention_norm = T5RmsNorm::load(vb.pp("layer.0.layer_norm"), cfg.d_model, eps)?;
        let attention_vb = vb.pp("layer.0.SelfAttention");
        let attention = match shared_bias {
            None => RelativeSelfAttention::load(attention_vb, cfg)?,
            Some(table) => RelativeSelfAttention::load_sharing(attention_vb, cfg, table)?,
        };
        Ok(Self {
            attention_norm,
            attention,
            feed_forward_norm: T5RmsNorm::load(vb.pp("layer.1.layer_norm"), cfg.d_model, eps)?,
            feed_forward: GatedGeluFeedForward::load(vb.pp("layer.1.DenseReluDense"), cfg)?,
        })
    }

    /// x: [B, L, d_model] f32 → [B, L, d_model] f32
    pub fn forward(
        &self,
        x: &Tensor,
        buckets: &Tensor,
        key_bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let attended =
            self.attention
                .forward(&self.attention_norm.forward(x)?, buckets, key_bias)?;
        let x = (x + attended)?;
        let fed = self
            .feed_forward
            .forward(&self.feed_forward_norm.forward(&x)?)?;
        Ok((x + fed)?)
    }
}
