//! One dual-stream (MMDiT) block of HunyuanVideo 1.5: the video and the text tokens keep their own
//! weights (modulation, projections, norms, feed-forward) and meet in one joint attention over
//! `[video tokens; text tokens]`.
//!
//! ```text
//! per stream s ∈ {video, text}, with (shift, scale, gate)×2 = Linear(SiLU(temb)):
//!   n = LN(x)·(1 + scale_msa) + shift_msa
//!   q, k = RMSNorm_head(Linear n) (video: + RoPE), v = Linear n
//! [o_video; o_text] = attention([q_v; q_t], [k_v; k_t], [v_v; v_t], padded text keys masked)
//!   x += gate_msa · Linear_out(o_s)
//!   x += gate_mlp · FFN_gelu_tanh(LN(x)·(1 + scale_mlp) + shift_mlp)
//! ```
//!
//! Precision: residual streams, norms and modulation in f32; linear layers and attention inputs
//! in the run dtype (attention scores and softmax are f32 whatever it is).

use candle_core::{DType, Tensor, D};

use crate::error::Result;
use crate::hunyuan15::transformer::config::HunyuanVideo15Config;
use rainfusion::{SelfAttention, VideoLayout};

use crate::hunyuan15::transformer::layers::{merge_heads, split_heads, Activation, FeedForward};
use crate::hunyuan15::transformer::rope::HunyuanRope;
use crate::wan::layers::{layer_norm, modulate, Linear, RmsNorm, WeightSource};
use crate::wan::tensor_map::{StreamedBlock, TensorMap};

/// Epsilon of the blocks' LayerNorms and of the q/k RMSNorms.
const BLOCK_NORM_EPS: f64 = 1e-6;

/// What every block of one forward pass shares.
pub(crate) struct BlockContext<'a> {
    /// Timestep embedding `[B, dim]` f32.
    pub temb: &'a Tensor,
    /// RoPE tables of the video tokens, `[Lv, head_dim/2]` f32 each.
    pub rope_cos: &'a Tensor,
    pub rope_sin: &'a Tensor,
    /// The video grid (frames × height × width tokens, raster order) and the text tokens after it.
    pub layout: VideoLayout,
    /// Validity of the text tokens `[B, Lt]` f32 (1 real, 0 padding); `None`: all real.
    pub text_valid: Option<&'a Tensor>,
}

/// One stream's half of a block: modulation, q/k/v with their norms, output projection, FFN.
struct StreamWeights {
    modulation: Linear, // f32, dim → 6·dim
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    to_out: Linear,
    ff: FeedForward,
}

/// The six modulation vectors of one stream, `[B, 1, dim]` f32 each.
struct Modulation {
    shift_msa: Tensor,
    scale_msa: Tensor,
    gate_msa: Tensor,
    shift_mlp: Tensor,
    scale_mlp: Tensor,
    gate_mlp: Tensor,
}

impl StreamWeights {
    fn map_tensors(&self, map: &mut dyn TensorMap) -> Result<Self> {
        Ok(Self {
            modulation: self.modulation.map_tensors(map)?,
            to_q: self.to_q.map_tensors(map)?,
            to_k: self.to_k.map_tensors(map)?,
            to_v: self.to_v.map_tensors(map)?,
            norm_q: self.norm_q.map_tensors(map)?,
            norm_k: self.norm_k.map_tensors(map)?,
            to_out: self.to_out.map_tensors(map)?,
            ff: self.ff.map_tensors(map)?,
        })
    }

    fn modulation(&self, temb: &Tensor) -> Result<Modulation> {
        let m = self.modulation.forward(&temb.silu()?)?.unsqueeze(1)?; // [B, 1, 6·dim]
        let mut parts = m.chunk(6, D::Minus1)?.into_iter();
        let mut next = || parts.next().expect("six chunks");
        Ok(Modulation {
            shift_msa: next(),
            scale_msa: next(),
            gate_msa: next(),
            shift_mlp: next(),
            scale_mlp: next(),
            gate_mlp: next(),
        })
    }

    /// Modulated, normalised stream `n` `[B, L, dim]` → q, k `[B, heads, L, head_dim]` f32
    /// (normalised per head) and v `[B, heads, L, head_dim]` in the run dtype.
    fn qkv(&self, n: &Tensor, heads: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let q = self
            .norm_q
            .forward(&split_heads(&self.to_q.forward(n)?, heads)?)?;
        let k = self
            .norm_k
            .forward(&split_heads(&self.to_k.forward(n)?, heads)?)?;
        let v = split_heads(&self.to_v.forward(n)?, heads)?;
        Ok((q, k, v))
    }

    /// The residual updates after attention: `x + gate_msa·out(o)`, then the gated FFN.
    fn finish(&self, x: &Tensor, attended: &Tensor, m: &Modulation) -> Result<Tensor> {
        let o = self
            .to_out
            .forward(&merge_heads(attended)?)?
            .to_dtype(DType::F32)?;
        let x = (x + o.broadcast_mul(&m.gate_msa)?)?;
        let n = modulate(&layer_norm(&x, BLOCK_NORM_EPS)?, &m.shift_mlp, &m.scale_mlp)?;
        let ff = self.ff.forward(&n)?.to_dtype(DType::F32)?;
        Ok((&x + ff.broadcast_mul(&m.gate_mlp)?)?)
    }
}

/// `transformer_blocks.{i}`.
pub(crate) struct DualStreamBlock {
    video: StreamWeights,
    text: StreamWeights,
    heads: usize,
}

impl DualStreamBlock {
    pub(crate) fn load(
        src: &WeightSource,
        i: usize,
        cfg: &HunyuanVideo15Config,
        dtype: DType,
    ) -> Result<Self> {
        let p = format!("transformer_blocks.{i}");
        let (dim, head_dim) = (cfg.dim(), cfg.attention_head_dim);
        let linear = |name: &str| src.linear(&format!("{p}.{name}"), dim, dim, dtype);
        let norm = |name: &str| {
            RmsNorm::load(
                src,
                &format!("{p}.attn.{name}.weight"),
                head_dim,
                BLOCK_NORM_EPS,
            )
        };
        let ff = |name: &str| {
            FeedForward::load(
                src,
                &format!("{p}.{name}"),
                dim,
                cfg.mlp_dim(),
                Activation::GeluTanh,
                dtype,
            )
        };
        let modulation =
            |name: &str| src.linear(&format!("{p}.{name}.linear"), dim, 6 * dim, DType::F32);
        Ok(Self {
            video: StreamWeights {
                modulation: modulation("norm1")?,
                to_q: linear("attn.to_q")?,
                to_k: linear("attn.to_k")?,
                to_v: linear("attn.to_v")?,
                norm_q: norm("norm_q")?,
                norm_k: norm("norm_k")?,
                to_out: linear("attn.to_out.0")?,
                ff: ff("ff")?,
            },
            text: StreamWeights {
                modulation: modulation("norm1_context")?,
                to_q: linear("attn.add_q_proj")?,
                to_k: linear("attn.add_k_proj")?,
                to_v: linear("attn.add_v_proj")?,
                norm_q: norm("norm_added_q")?,
                norm_k: norm("norm_added_k")?,
                to_out: linear("attn.to_add_out")?,
                ff: ff("ff_context")?,
            },
            heads: cfg.num_attention_heads,
        })
    }

    /// video `[B, Lv, dim]` f32, text `[B, Lt, dim]` f32 → both updated, f32. The joint
    /// attention is `attention`'s ([`SelfAttention::attend_joint`]) as block `layer`.
    pub(crate) fn forward(
        &self,
        video: &Tensor,
        text: &Tensor,
        ctx: &BlockContext,
        layer: usize,
        attention: &mut dyn SelfAttention,
    ) -> Result<(Tensor, Tensor)> {
        let video_tokens = video.dim(1)?;
        let text_tokens = text.dim(1)?;
        let mv = self.video.modulation(ctx.temb)?;
        let mt = self.text.modulation(ctx.temb)?;
        let nv = modulate(
            &layer_norm(video, BLOCK_NORM_EPS)?,
            &mv.shift_msa,
            &mv.scale_msa,
        )?;
        let nt = modulate(
            &layer_norm(text, BLOCK_NORM_EPS)?,
            &mt.shift_msa,
            &mt.scale_msa,
        )?;

        let (qv, kv, vv) = self.video.qkv(&nv, self.heads)?;
        let qv = HunyuanRope::apply(&qv, ctx.rope_cos, ctx.rope_sin)?;
        let kv = HunyuanRope::apply(&kv, ctx.rope_cos, ctx.rope_sin)?;
        let (qt, kt, vt) = self.text.qkv(&nt, self.heads)?;
        // Attention inputs in the run dtype (the dtype of v), where the fast kernels serve.
        let run_dtype = vv.dtype();
        let joint = |a: &Tensor, b: &Tensor| -> Result<Tensor> {
            Ok(Tensor::cat(
                &[&a.to_dtype(run_dtype)?, &b.to_dtype(run_dtype)?],
                2,
            )?)
        };
        let attended = attention.attend_joint(
            layer,
            &joint(&qv, &qt)?,
            &joint(&kv, &kt)?,
            &joint(&vv, &vt)?,
            &ctx.layout,
            ctx.text_valid,
        )?;
        let video_out = attended.narrow(2, 0, video_tokens)?;
        let text_out = attended.narrow(2, video_tokens, text_tokens)?;

        let video = self.video.finish(video, &video_out, &mv)?;
        let text = self.text.finish(text, &text_out, &mt)?;
        Ok((video, text))
    }
}

/// Streamed (`--offload blocks`): both streams' weights, in field order.
impl StreamedBlock for DualStreamBlock {
    fn map_block(&self, map: &mut dyn TensorMap) -> Result<Self> {
        Ok(Self {
            video: self.video.map_tensors(map)?,
            text: self.text.map_tensors(map)?,
            heads: self.heads,
        })
    }
}
