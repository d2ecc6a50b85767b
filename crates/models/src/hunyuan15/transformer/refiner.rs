//! The token refiner of the Qwen prompt stream (`context_embedder`): a conditioning vector from
//! the timestep and the masked mean of the prompt states, an input projection, then a few
//! pre-norm self-attention blocks whose two residual branches are gated by that vector.
//!
//! ```text
//! prompt [B, L, text_dim] ─masked mean─► pooled [B, text_dim] ─Linear·SiLU·Linear─┐
//! t ─sinusoid─► Linear·SiLU·Linear ───────────────────────────────────────────────+─► c [B, dim]
//! prompt ─proj_in─► x [B, L, dim] ─blocks(c, key mask)─► [B, L, dim]
//! block: x += attn(LN1 x)·gate_msa(c);  x += FFN_silu(LN2 x)·gate_mlp(c)
//! ```

use candle_core::{DType, Tensor, D};

use crate::error::Result;
use crate::hunyuan15::transformer::config::HunyuanVideo15Config;
use crate::hunyuan15::transformer::embeddings::TimestepMlp;
use crate::hunyuan15::transformer::layers::{
    masked_attention, merge_heads, split_heads, Activation, FeedForward,
};
use crate::wan::layers::{AffineLayerNorm, Linear, WeightSource};

/// The refiner blocks' LayerNorm epsilon.
const REFINER_NORM_EPS: f64 = 1e-6;

const PREFIX: &str = "context_embedder";

/// One refiner block (`token_refiner.refiner_blocks.{i}`).
struct RefinerBlock {
    norm1: AffineLayerNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    norm2: AffineLayerNorm,
    ff: FeedForward,
    /// SiLU · Linear(dim → 2·dim): the two gates, f32.
    gates: Linear,
    heads: usize,
}

impl RefinerBlock {
    fn load(
        src: &WeightSource,
        i: usize,
        cfg: &HunyuanVideo15Config,
        dtype: DType,
    ) -> Result<Self> {
        let p = format!("{PREFIX}.token_refiner.refiner_blocks.{i}");
        let dim = cfg.dim();
        let linear = |name: &str| src.linear(&format!("{p}.attn.{name}"), dim, dim, dtype);
        Ok(Self {
            norm1: AffineLayerNorm::load(src, &format!("{p}.norm1"), dim, REFINER_NORM_EPS)?,
            to_q: linear("to_q")?,
            to_k: linear("to_k")?,
            to_v: linear("to_v")?,
            to_out: linear("to_out.0")?,
            norm2: AffineLayerNorm::load(src, &format!("{p}.norm2"), dim, REFINER_NORM_EPS)?,
            ff: FeedForward::load(
                src,
                &format!("{p}.ff"),
                dim,
                cfg.mlp_dim(),
                Activation::Silu,
                dtype,
            )?,
            gates: src.linear(&format!("{p}.norm_out.linear"), dim, 2 * dim, DType::F32)?,
            heads: cfg.num_attention_heads,
        })
    }

    /// x `[B, L, dim]` f32, conditioning `[B, dim]` f32, key mask `[B, L]` → `[B, L, dim]` f32.
    fn forward(
        &self,
        x: &Tensor,
        conditioning: &Tensor,
        key_valid: Option<&Tensor>,
    ) -> Result<Tensor> {
        let gates = self.gates.forward(&conditioning.silu()?)?.unsqueeze(1)?; // [B, 1, 2·dim]
        let gate_msa = gates.chunk(2, D::Minus1)?;
        let (gate_msa, gate_mlp) = (&gate_msa[0], &gate_msa[1]);

        let n = self.norm1.forward(x)?;
        let q = split_heads(&self.to_q.forward(&n)?, self.heads)?;
        let k = split_heads(&self.to_k.forward(&n)?, self.heads)?;
        let v = split_heads(&self.to_v.forward(&n)?, self.heads)?;
        let attn = masked_attention(&q, &k, &v, key_valid)?;
        let attn = self
            .to_out
            .forward(&merge_heads(&attn)?)?
            .to_dtype(DType::F32)?;
        let x = (x + attn.broadcast_mul(gate_msa)?)?;

        let ff = self
            .ff
            .forward(&self.norm2.forward(&x)?)?
            .to_dtype(DType::F32)?;
        Ok((&x + ff.broadcast_mul(gate_mlp)?)?)
    }
}

/// `context_embedder`: the Qwen prompt stream's token refiner.
pub(crate) struct TokenRefiner {
    timestep_mlp: TimestepMlp,
    /// `time_text_embed.text_embedder`: Linear · SiLU · Linear on the pooled prompt, f32.
    pooled_1: Linear,
    pooled_2: Linear,
    proj_in: Linear,
    blocks: Vec<RefinerBlock>,
}

impl TokenRefiner {
    pub(crate) fn load(
        src: &WeightSource,
        cfg: &HunyuanVideo15Config,
        dtype: DType,
    ) -> Result<Self> {
        let (text_dim, dim) = (cfg.text_embed_dim, cfg.dim());
        let embed = format!("{PREFIX}.time_text_embed");
        Ok(Self {
            timestep_mlp: TimestepMlp::load(src, &format!("{embed}.timestep_embedder"), dim)?,
            pooled_1: src.linear(
                &format!("{embed}.text_embedder.linear_1"),
                text_dim,
                dim,
                DType::F32,
            )?,
            pooled_2: src.linear(
                &format!("{embed}.text_embedder.linear_2"),
                dim,
                dim,
                DType::F32,
            )?,
            proj_in: src.linear(&format!("{PREFIX}.proj_in"), text_dim, dim, dtype)?,
            blocks: (0..cfg.num_refiner_layers)
                .map(|i| RefinerBlock::load(src, i, cfg, dtype))
                .collect::<Result<_>>()?,
        })
    }

    /// prompt `[B, L, text_dim]`, its validity `[B, L]` f32 (1 / 0; `None`: all valid), the
    /// timestep features `[B, 256]` f32 → refined prompt `[B, L, dim]` f32. Padded rows come out
    /// finite but meaningless: nothing valid depends on them.
    pub(crate) fn forward(
        &self,
        prompt: &Tensor,
        valid: Option<&Tensor>,
        timestep_features: &Tensor,
    ) -> Result<Tensor> {
        let prompt_f32 = prompt.to_dtype(DType::F32)?;
        // The masked mean of the prompt states.
        let pooled = match valid {
            None => prompt_f32.mean(1)?,
            Some(valid) => {
                let weights = valid.unsqueeze(2)?; // [B, L, 1]
                prompt_f32
                    .broadcast_mul(&weights)?
                    .sum(1)?
                    .broadcast_div(&weights.sum(1)?)?
            }
        };
        let conditioning = (self.timestep_mlp.forward(timestep_features)?
            + self
                .pooled_2
                .forward(&self.pooled_1.forward(&pooled)?.silu()?)?)?;
        let mut x = self.proj_in.forward(prompt)?.to_dtype(DType::F32)?;
        for block in &self.blocks {
            x = block.forward(&x, &conditioning, valid)?;
        }
        Ok(x)
    }
}
