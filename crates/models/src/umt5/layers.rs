//! The pieces of a umT5 encoder layer: T5 RMSNorm, self-attention with this layer's own
//! relative-position bias, and the gated-GELU feed-forward.
//!
//! The residual stream, norms, attention scores, softmax and the GELU gate are computed in f32
//! whatever the weight dtype; only the projections run in the run dtype (bf16 for a bf16 run).
//!
//! The projections are the Wan transformer's [`Linear`] (bias-free), so a weight stored as GGUF
//! blocks stays quantised (candle's quantised matmul) and a `float8_e4m3fn` one stays fp8; the
//! embedding, norms and bias tables are read through the same [`WeightSource`], which
//! dequantises or casts them.

use candle_core::{DType, Device, Tensor, D};

use crate::error::Result;
use crate::umt5::Umt5Config;
use crate::wan::layers::{Linear, WeightSource};

/// T5 RMSNorm: x · rsqrt(mean(x²) + eps) · weight. No mean subtraction, no bias; weight kept in f32.
#[derive(Debug, Clone)]
pub struct T5RmsNorm {
    weight: Tensor, // [d_model] f32
    eps: f64,
}

impl T5RmsNorm {
    /// `prefix.weight` [dim].
    pub(crate) fn load(src: &WeightSource, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        let weight = src.get(&format!("{prefix}.weight"), &[dim], DType::F32)?;
        Ok(Self { weight, eps })
    }

    /// x: [B, L, d_model] f32 → [B, L, d_model] f32
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean_square = x.sqr()?.mean_keepdim(D::Minus1)?;
        let inv_rms = (mean_square + self.eps)?.sqrt()?.recip()?;
        Ok(x.broadcast_mul(&inv_rms)?.broadcast_mul(&self.weight)?)
    }
}

/// Runs a bias-free projection in its run dtype on an f32 activation, returning f32.
fn project(linear: &Linear, x: &Tensor) -> Result<Tensor> {
    Ok(linear.matmul(x)?.to_dtype(DType::F32)?)
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

/// Multi-head self-attention without score scaling, with a relative-position bias table of its
/// own (umT5; classic T5 shares layer 0's table).
#[derive(Debug, Clone)]
pub struct RelativeSelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    relative_bias: Tensor, // [num_buckets, num_heads] f32
    num_heads: usize,
    head_dim: usize,
    /// The run dtype of the projections and of q·kᵀ and probs·v.
    dtype: DType,
}

impl RelativeSelfAttention {
    /// `prefix` = `encoder.block.{i}.layer.0.SelfAttention`. The layer reads its own bias table
    /// (umT5), or adds `shared_bias` [num_buckets, num_heads] f32, a table stored in another
    /// layer (classic T5, T5 v1.1 and ByT5 keep one, in layer 0).
    pub(crate) fn load(
        src: &WeightSource,
        prefix: &str,
        cfg: &Umt5Config,
        dtype: DType,
        shared_bias: Option<&Tensor>,
    ) -> Result<Self> {
        let inner = cfg.inner_dim();
        let relative_bias = match shared_bias {
            Some(table) => table.clone(),
            None => Self::load_bias_table(src, prefix, cfg)?,
        };
        let linear = |name: &str, input: usize, output: usize| {
            src.linear_no_bias(&format!("{prefix}.{name}"), input, output, dtype)
        };
        Ok(Self {
            q: linear("q", cfg.d_model, inner)?,
            k: linear("k", cfg.d_model, inner)?,
            v: linear("v", cfg.d_model, inner)?,
            o: linear("o", inner, cfg.d_model)?,
            relative_bias,
            num_heads: cfg.num_heads,
            head_dim: cfg.d_kv,
            dtype,
        })
    }

    /// The bias table [num_buckets, num_heads] f32 stored at `prefix` (`…SelfAttention`).
    pub(crate) fn load_bias_table(
        src: &WeightSource,
        prefix: &str,
        cfg: &Umt5Config,
    ) -> Result<Tensor> {
        src.get(
            &format!("{prefix}.relative_attention_bias.weight"),
            &[cfg.relative_attention_num_buckets, cfg.num_heads],
            DType::F32,
        )
    }

    /// The four projections (q, k, v, o).
    pub(crate) fn projections(&self) -> [&Linear; 4] {
        [&self.q, &self.k, &self.v, &self.o]
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
        let weight_dtype = self.dtype;
        let x = x.to_dtype(weight_dtype)?;
        let heads = |linear: &Linear| -> Result<Tensor> {
            // [B, L, H·Dk] → [B, H, L, Dk]
            Ok(linear
                .matmul(&x)?
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
        Ok(self.o.matmul(&context)?.to_dtype(DType::F32)?)
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
    /// `prefix` = `encoder.block.{i}.layer.1.DenseReluDense`.
    pub(crate) fn load(
        src: &WeightSource,
        prefix: &str,
        cfg: &Umt5Config,
        dtype: DType,
    ) -> Result<Self> {
        let linear = |name: &str, input: usize, output: usize| {
            src.linear_no_bias(&format!("{prefix}.{name}"), input, output, dtype)
        };
        Ok(Self {
            wi_0: linear("wi_0", cfg.d_model, cfg.d_ff)?,
            wi_1: linear("wi_1", cfg.d_model, cfg.d_ff)?,
            wo: linear("wo", cfg.d_ff, cfg.d_model)?,
        })
    }

    /// The three projections (wi_0, wi_1, wo).
    pub(crate) fn projections(&self) -> [&Linear; 3] {
        [&self.wi_0, &self.wi_1, &self.wo]
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
    /// `prefix` = `encoder.block.{i}`; projections in `dtype`; `shared_bias` as in
    /// [`RelativeSelfAttention::load`]. Loads in the stored order (norm first), so a missing layer
    /// is reported by its first tensor.
    pub(crate) fn load(
        src: &WeightSource,
        prefix: &str,
        cfg: &Umt5Config,
        dtype: DType,
        shared_bias: Option<&Tensor>,
    ) -> Result<Self> {
        let (dim, eps) = (cfg.d_model, cfg.layer_norm_epsilon);
        let at = |tail: &str| format!("{prefix}.{tail}");
        Ok(Self {
            attention_norm: T5RmsNorm::load(src, &at("layer.0.layer_norm"), dim, eps)?,
            attention: RelativeSelfAttention::load(
                src,
                &at("layer.0.SelfAttention"),
                cfg,
                dtype,
                shared_bias,
            )?,
            feed_forward_norm: T5RmsNorm::load(src, &at("layer.1.layer_norm"), dim, eps)?,
            feed_forward: GatedGeluFeedForward::load(
                src,
                &at("layer.1.DenseReluDense"),
                cfg,
                dtype,
            )?,
        })
    }

    /// The layer's seven projections.
    pub(crate) fn projections(&self) -> impl Iterator<Item = &Linear> {
        self.attention
            .projections()
            .into_iter()
            .chain(self.feed_forward.projections())
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
