//! The pieces of a Qwen2 decoder layer: RMSNorm, causal grouped-query self-attention with RoPE
//! and q/k/v biases, and the SwiGLU feed-forward.
//!
//! The residual stream, norms, RoPE, scores and softmax are f32 whatever the weight dtype; the
//! projections run in the weight dtype (bf16 for a bf16 run).

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{linear, linear_no_bias, Linear, VarBuilder};

use crate::error::Result;
use crate::qwen25vl_text::Qwen25VlTextConfig;

/// RMSNorm: x · rsqrt(mean(x²) + eps) · weight, in f32.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor, // [hidden] f32
    eps: f64,
}

impl RmsNorm {
    pub fn load(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        let weight = vb.to_dtype(DType::F32).get(dim, "weight")?;
        Ok(Self { weight, eps })
    }

    /// x: [B, L, hidden] f32 → [B, L, hidden] f32
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        Ok(candle_nn::ops::rms_norm(&x, &self.weight, self.eps as f32)?)
    }
}

/// Runs a projection in the weight dtype on an f32 activation, returning f32.
fn project(linear: &Linear, x: &Tensor) -> Result<Tensor> {
    let weight_dtype = linear.weight().dtype();
    Ok(linear
        .forward(&x.to_dtype(weight_dtype)?)?
        .to_dtype(DType::F32)?)
}

/// The RoPE tables of positions 0..len: (cos, sin), each [len, head_dim / 2] f32, for the
/// rotate-half convention (first half of a head paired with its second half).
pub fn rope_tables(
    len: usize,
    head_dim: usize,
    theta: f64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    // Frequencies as transformers computes them: theta^(-2i/d) in f32.
    let inv_freq: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let inv_freq = Tensor::from_vec(inv_freq, (1, head_dim / 2), device)?;
    let positions = Tensor::arange(0u32, len as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((len, 1))?;
    let angles = positions.broadcast_mul(&inv_freq)?; // [len, head_dim/2]
    Ok((angles.cos()?, angles.sin()?))
}

/// The additive attention bias of a right- or left-padded causal batch: [B, 1, L, L] f32, 0 where
/// a query may see a key (key ≤ query and key is a real token), f32::MIN elsewhere (transformers'
/// value). `mask`: [B, L], nonzero = real token; `None`: causal only.
pub fn causal_bias(
    mask: Option<&Tensor>,
    batch: usize,
    len: usize,
    device: &Device,
) -> Result<Tensor> {
    let causal: Vec<f32> = (0..len)
        .flat_map(|q| (0..len).map(move |k| if k <= q { 0.0 } else { f32::MIN }))
        .collect();
    let causal = Tensor::from_vec(causal, (1, 1, len, len), device)?;
    let Some(mask) = mask else {
        return Ok(causal.broadcast_as((batch, 1, len, len))?.contiguous()?);
    };
    let is_real = mask
        .to_device(device)?
        .to_dtype(DType::F32)?
        .ne(0f32)?
        .reshape((batch, 1, 1, len))?
        .broadcast_as((batch, 1, len, len))?;
    let hidden = Tensor::full(f32::MIN, (batch, 1, len, len), device)?;
    let causal = causal.broadcast_as((batch, 1, len, len))?;
    Ok(is_real.where_cond(&causal, &hidden)?)
}

/// Causal self-attention: q, k, v with biases, RoPE on q and k, `num_key_value_heads` key/value
/// heads each shared by a group of query heads, scores scaled by 1/√head_dim.
#[derive(Debug, Clone)]
pub struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    /// `vb` at `layers.{i}.self_attn`.
    pub fn load(vb: VarBuilder, cfg: &Qwen25VlTextConfig) -> Result<Self> {
        let head_dim = cfg.head_dim();
        let q_width = cfg.num_attention_heads * head_dim;
        let kv_width = cfg.num_key_value_heads * head_dim;
        Ok(Self {
            q: linear(cfg.hidden_size, q_width, vb.pp("q_proj"))?,
            k: linear(cfg.hidden_size, kv_width, vb.pp("k_proj"))?,
            v: linear(cfg.hidden_size, kv_width, vb.pp("v_proj"))?,
            o: linear_no_bias(q_width, cfg.hidden_size, vb.pp("o_proj"))?,
            num_heads: cfg.num_attention_heads,
            num_kv_heads: cfg.num_key_value_heads,
            head_dim,
        })
    }

    /// x: [B, L, hidden] f32 (normed); cos/sin: [L, head_dim/2] f32 from [`rope_tables`];
    /// bias: [B, 1, L, L] f32 from [`causal_bias`]. Returns [B, L, hidden] f32.
    pub fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (batch, len, _) = x.dims3()?;
        let heads = |linear: &Linear, count: usize| -> Result<Tensor> {
            // [B, L, count·Dh] → [B, count, L, Dh] f32
            Ok(project(linear, x)?
                .reshape((batch, len, count, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = candle_nn::rotary_emb::rope(&heads(&self.q, self.num_heads)?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&heads(&self.k, self.num_kv_heads)?, cos, sin)?;
        let v = heads(&self.v, self.num_kv_heads)?;

        // Grouped-query attention without copying k and v per query head: query head h uses
        // key/value head h / group, so the group's queries stack along the rows of one matmul.
        let group = self.num_heads / self.num_kv_heads;
        let q = q.reshape((batch, self.num_kv_heads, group * len, self.head_dim))?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?
            .reshape((batch, self.num_heads, len, len))?
            .broadcast_add(bias)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.reshape((
            batch,
            self.num_kv_heads,
            group * len,
            len,
        ))?;
        let context = probs
            .matmul(&v)? // [B, kvH, group·L, Dh]
            .reshape((batch, self.num_heads, len, self.head_dim))?
            .transpose(1, 2)?
            .reshape((batch, len, self.num_heads * self.head_dim))?;
        project(&self.o, &context)
    }
}

/// SwiGLU feed-forward: down(silu(gate · x) ⊙ (up · x)).
#[derive(Debug, Clone)]
pub struct FeedForward {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl FeedForward {
    /// `vb` at `layers.{i}.mlp`.
    pub fn load(vb: VarBuilder, cfg: &Qwen25VlTextConfig) -> Result<Self> {
        let (hidden, inner) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate: linear_no_bias(hidden, inner, vb.pp("gate_proj"))?,
            up: linear_no_bias(hidden, inner, vb.pp("up_proj"))?,
            down: linear_no_bias(inner, hidden, vb.pp("down_proj"))?,
        })
    }

    /// x: [B, L, hidden] f32 (normed) → [B, L, hidden] f32
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = candle_nn::ops::silu(&project(&self.gate, x)?)?;
        let hidden = (gate * project(&self.up, x)?)?;
        project(&self.down, &hidden)
    }
}

/// One decoder layer (pre-norm): x += attn(norm1(x)); x += mlp(norm2(x)).
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    input_norm: RmsNorm,
    attention: SelfAttention,
    post_attention_norm: RmsNorm,
    feed_forward: FeedForward,
}

impl DecoderLayer {
    /// `vb` at `layers.{i}`.
    pub fn load(vb: VarBuilder, cfg: &Qwen25VlTextConfig) -> Result<Self> {
        let (dim, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(Self {
            input_norm: RmsNorm::load(vb.pp("input_layernorm"), dim, eps)?,
            attention: SelfAttention::load(vb.pp("self_attn"), cfg)?,
            post_attention_norm: RmsNorm::load(vb.pp("post_attention_layernorm"), dim, eps)?,
            feed_forward: FeedForward::load(vb.pp("mlp"), cfg)?,
        })
    }

    /// x: [B, L, hidden] f32 → [B, L, hidden] f32
    pub fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let attended = self
            .attention
            .forward(&self.input_norm.forward(x)?, cos, sin, bias)?;
        let x = (x + attended)?;
        let fed = self
            .feed_forward
            .forward(&self.post_attention_norm.forward(&x)?)?;
        Ok((x + fed)?)
    }
}
