//! One Wan transformer block: modulated self-attention (through the caller's attention policy),
//! cross-attention to the text (and, in Wan2.1 I2V / FLF2V, to the image tokens, summed before the
//! output projection), and a modulated gelu-tanh feed-forward network, with gates.
//!
//! Precision: the residual stream, norms, modulation and gates are f32; the linear layers run in
//! the model's run dtype (bf16 in production), as in the original Wan code under autocast.

use candle_core::{DType, Tensor};
use rainfusion::{dense_attention, SelfAttention, VideoLayout};

use crate::error::Result;
use crate::profile::span;
use crate::wan::config::WanConfig;
use crate::wan::layers::{layer_norm, modulate, AffineLayerNorm, Linear, RmsNorm, WeightSource};
use crate::wan::rope::WanRope;
use crate::wan::tensor_map::TensorMap;

/// When the block runs through rainfusion's fused CUDA kernels.
#[cfg(feature = "cuda")]
mod fused {
    use std::sync::atomic::{AtomicBool, Ordering};

    use candle_core::{DType, Tensor};

    /// Environment variable that turns the fused CUDA path off (the candle-ops path runs
    /// instead): for comparisons.
    pub(crate) const NO_FUSED_ENV: &str = "VDIT_NO_FUSED";

    /// CUDA tensors, a 16-bit run dtype, and not turned off by [`NO_FUSED_ENV`].
    pub(crate) fn available(x: &Tensor, dtype: DType) -> bool {
        x.device().is_cuda()
            && matches!(dtype, DType::BF16 | DType::F16)
            && std::env::var_os(NO_FUSED_ENV).is_none()
    }

    /// Environment variable that, set to `0`, turns the cuBLASLt bias + gelu epilogue off for the
    /// feed-forward input layer (the matmul and the fused bias + gelu kernel run instead). On by
    /// default since kernels v9 (scripts/gpu/NOTES.md; measured on an H100, 2026-11-23,
    /// scripts/gpu/results/h100-2026-11-23-kernels-v9/): −36 ms per 480p×81 forward.
    pub(crate) const EPILOGUE_ENV: &str = "VDIT_CUBLASLT";

    static EPILOGUE_BROKEN: AtomicBool = AtomicBool::new(false);

    /// Whether the feed-forward input layer goes through cuBLASLt with gelu in its epilogue.
    pub(crate) fn epilogue_gelu_available() -> bool {
        !EPILOGUE_BROKEN.load(Ordering::Relaxed)
            && std::env::var_os(EPILOGUE_ENV).is_none_or(|v| v != "0")
    }

    /// A cuBLASLt failure (an old library, an unsupported shape) is reported once; the
    /// unfused kernels serve from then on.
    pub(crate) fn epilogue_gelu_failed(err: &rainfusion::Error) {
        if !EPILOGUE_BROKEN.swap(true, Ordering::Relaxed) {
            eprintln!(
                "warning: cuBLASLt bias+gelu epilogue failed ({err}); using separate kernels"
            );
        }
    }
}

/// q, k, v, o projections with RMSNorm on q and k over the full width (across heads).
struct AttentionLayer {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    num_heads: usize,
    head_dim: usize,
    /// `b_out + W_out·b_v` (see [`Self::folded_out_bias`]), made on first use.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    folded_out_bias: std::sync::OnceLock<Tensor>,
}

impl AttentionLayer {
    fn load(src: &WeightSource, prefix: &str, cfg: &WanConfig, dtype: DType) -> Result<Self> {
        let dim = cfg.dim();
        let linear = |name: &str| src.linear(&format!("{prefix}.{name}"), dim, dim, dtype);
        Ok(Self {
            to_q: linear("to_q")?,
            to_k: linear("to_k")?,
            to_v: linear("to_v")?,
            to_out: linear("to_out.0")?,
            norm_q: RmsNorm::load(src, &format!("{prefix}.norm_q.weight"), dim, cfg.eps)?,
            norm_k: RmsNorm::load(src, &format!("{prefix}.norm_k.weight"), dim, cfg.eps)?,
            num_heads: cfg.num_heads,
            head_dim: cfg.head_dim,
            folded_out_bias: std::sync::OnceLock::new(),
        })
    }

    /// This layer rebuilt from `map` applied to its tensors. The folded output bias is not
    /// carried: it is remade from the mapped weights on first use (one [1, dim] projection).
    fn map_tensors(&self, map: &mut dyn TensorMap) -> Result<Self> {
        Ok(Self {
            to_q: self.to_q.map_tensors(map)?,
            to_k: self.to_k.map_tensors(map)?,
            to_v: self.to_v.map_tensors(map)?,
            to_out: self.to_out.map_tensors(map)?,
            norm_q: self.norm_q.map_tensors(map)?,
            norm_k: self.norm_k.map_tensors(map)?,
            num_heads: self.num_heads,
            head_dim: self.head_dim,
            folded_out_bias: std::sync::OnceLock::new(),
        })
    }

    /// q and k on the fused CUDA path: each projection (bias added in f32) through RMSNorm
    /// across heads and, for self-attention, RoPE; `[B, L, dim]` memory in the run dtype.
    #[cfg(feature = "cuda")]
    fn fused_qk(
        &self,
        x_q: &Tensor,
        x_k: &Tensor,
        rope: Option<(&Tensor, &Tensor)>,
    ) -> Result<(Tensor, Tensor)> {
        let project = |linear: &Linear, norm: &RmsNorm, x: &Tensor| -> Result<Tensor> {
            let (weight, eps) = norm.parts();
            let y = linear.matmul(x)?;
            Ok(rainfusion::cuda::fused::rms_norm_rope(
                &y,
                Some(linear.bias()),
                weight,
                rope,
                self.head_dim,
                eps,
            )?)
        };
        Ok((
            project(&self.to_q, &self.norm_q, x_q)?,
            project(&self.to_k, &self.norm_k, x_k)?,
        ))
    }

    /// The output projection's bias with v's bias folded in: softmax rows sum to one, so
    /// `attention(q, k, v + b_v)·W_outᵀ + b_out = attention(q, k, v)·W_outᵀ + (b_out + W_out·b_v)`.
    /// Lets the fused path skip the pass that adds b_v to v. [dim] in the run dtype.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn folded_out_bias(&self) -> Result<&Tensor> {
        if let Some(bias) = self.folded_out_bias.get() {
            return Ok(bias);
        }
        let dtype = self.to_out.bias().dtype();
        let b_v = self.to_v.bias().to_dtype(DType::F32)?.unsqueeze(0)?; // [1, dim]
        let b_out = self.to_out.bias().to_dtype(DType::F32)?;
        // W_out·b_v, with any unmerged LoRA of the output projection.
        let projected = self.to_out.project_f32(&b_v)?.squeeze(0)?;
        let folded = (projected + b_out)?.to_dtype(dtype)?;
        Ok(self.folded_out_bias.get_or_init(|| folded))
    }

    /// [B, L, dim] → [B, heads, L, head_dim]
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        Ok(x.reshape((b, l, self.num_heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// [B, heads, L, head_dim] → output projection → [B, L, dim] in the run dtype.
    fn merge_heads_and_project(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, l, d) = x.dims4()?;
        let merged = x.transpose(1, 2)?.contiguous()?.reshape((b, l, h * d))?;
        self.to_out.forward(&merged)
    }

    /// Normalised q, k ([B, heads, L, head_dim] f32) and v ([B, heads, L, head_dim] run dtype).
    fn qkv(&self, x: &Tensor, kv_source: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let q = self.split_heads(&self.norm_q.forward(&self.to_q.forward(x)?)?)?;
        let k = self.split_heads(&self.norm_k.forward(&self.to_k.forward(kv_source)?)?)?;
        let v = self.split_heads(&self.to_v.forward(kv_source)?)?;
        Ok((q, k, v))
    }
}

/// The image half of an I2V cross-attention (`add_k_proj`, `add_v_proj`, `norm_added_k`): keys
/// and values from the projected image tokens, attended by the text attention's own queries.
struct ImageKeyValue {
    to_k: Linear,
    to_v: Linear,
    /// RMSNorm on the keys across heads, as the text keys' `norm_k`.
    norm_k: RmsNorm,
}

impl ImageKeyValue {
    fn load(src: &WeightSource, prefix: &str, cfg: &WanConfig, dtype: DType) -> Result<Self> {
        let dim = cfg.dim();
        // `added_kv_proj_dim` equals the model width (checked by `WanConfig::validate`).
        let input = cfg.added_kv_proj_dim.unwrap_or(dim);
        Ok(Self {
            to_k: src.linear(&format!("{prefix}.add_k_proj"), input, dim, dtype)?,
            to_v: src.linear(&format!("{prefix}.add_v_proj"), input, dim, dtype)?,
            norm_k: RmsNorm::load(src, &format!("{prefix}.norm_added_k.weight"), dim, cfg.eps)?,
        })
    }

    fn map_tensors(&self, map: &mut dyn TensorMap) -> Result<Self> {
        Ok(Self {
            to_k: self.to_k.map_tensors(map)?,
            to_v: self.to_v.map_tensors(map)?,
            norm_k: self.norm_k.map_tensors(map)?,
        })
    }
}

/// The time projection e0 that every block adds to its own modulation table.
pub(crate) enum TimeModulation {
    /// One timestep per sample: e0 [B, 6, dim] f32 (B may be 1, shared by the batch).
    PerSample(Tensor),
    /// One timestep per token (diffusers' `expand_timesteps`, Wan2.2 TI2V): e0 for each distinct
    /// timestep value, `values` [K, 6, dim] f32, and for each token of each sample which value it
    /// takes, `index` [B·L] u32. A run holds only a few distinct timesteps (0 for conditioning
    /// frames, t elsewhere), so the time MLP runs K times and no [B, L, 6, dim] tensor is ever
    /// made: each block gathers one [B, L, dim] modulation row at a time.
    PerToken {
        values: Tensor,
        index: Tensor,
        batch: usize,
        tokens: usize,
    },
}

impl TimeModulation {
    /// `table + e0` for one block, whose learned table is [1, 6, dim] f32. Per sample this is
    /// the whole [B, 6, dim] sum (one small add, as before per-token support); per token only
    /// the [K, 6, dim] sum, gathered to tokens row by row in [`BlockModulation::row`].
    fn with_table(&self, table: &Tensor) -> Result<BlockModulation<'_>> {
        Ok(match self {
            Self::PerSample(e0) => BlockModulation::PerSample(table.broadcast_add(e0)?),
            Self::PerToken {
                values,
                index,
                batch,
                tokens,
            } => BlockModulation::PerToken {
                values: table.broadcast_add(values)?,
                index,
                batch: *batch,
                tokens: *tokens,
            },
        })
    }

    /// e0 [B, 6, dim] f32 when the modulation is per sample, the only form the fused CUDA
    /// kernels take; `None` per token.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn per_sample(&self) -> Option<&Tensor> {
        match self {
            Self::PerSample(e0) => Some(e0),
            Self::PerToken { .. } => None,
        }
    }
}

/// One block's `table + e0` (see [`TimeModulation::with_table`]).
enum BlockModulation<'a> {
    /// [B, 6, dim] f32.
    PerSample(Tensor),
    /// [K, 6, dim] f32 per distinct timestep, and the token → timestep index [B·L] u32.
    PerToken {
        values: Tensor,
        index: &'a Tensor,
        batch: usize,
        tokens: usize,
    },
}

impl BlockModulation<'_> {
    /// Row `row` (0..6: shift, scale, gate of self-attention, then of the FFN): [B, 1, dim] per
    /// sample (a view), [B, L, dim] per token (gathered).
    fn row(&self, row: usize) -> Result<Tensor> {
        Ok(match self {
            Self::PerSample(m) => m.narrow(1, row, 1)?,
            Self::PerToken {
                values,
                index,
                batch,
                tokens,
            } => {
                let dim = values.dim(2)?;
                values
                    .narrow(1, row, 1)?
                    .squeeze(1)? // [K, dim]
                    .contiguous()?
                    .index_select(index, 0)? // [B·L, dim]
                    .reshape((*batch, *tokens, dim))?
            }
        })
    }
}

/// Per-forward inputs shared by every block.
pub(crate) struct BlockContext<'a> {
    /// Time projection e0, per sample or per token.
    pub time_modulation: &'a TimeModulation,
    /// Projected text: [B, Lt, dim] in the run dtype.
    pub text: &'a Tensor,
    /// Projected image tokens (Wan2.1 I2V / FLF2V): [B, Li, dim] in the run dtype; `None` for
    /// models without image cross-attention.
    pub image: Option<&'a Tensor>,
    /// RoPE tables, each [L, head_dim/2] f32.
    pub rope_cos: &'a Tensor,
    pub rope_sin: &'a Tensor,
    pub layout: VideoLayout,
}

pub(crate) struct WanBlock {
    index: usize,
    /// Learned modulation table [1, 6, dim] f32, added to e0: rows are shift/scale/gate of the
    /// self-attention, then shift/scale/gate of the FFN.
    modulation: Tensor,
    self_attn: AttentionLayer,
    cross_norm: Option<AffineLayerNorm>,
    cross_attn: AttentionLayer,
    /// Image keys and values of the cross-attention (models with image input only).
    image_kv: Option<ImageKeyValue>,
    ffn_in: Linear,
    ffn_out: Linear,
    eps: f64,
    dtype: DType,
}

impl WanBlock {
    pub(crate) fn load(
        src: &WeightSource,
        index: usize,
        cfg: &WanConfig,
        dtype: DType,
    ) -> Result<Self> {
        let p = format!("blocks.{index}");
        let dim = cfg.dim();
        let cross_norm = if cfg.cross_attn_norm {
            Some(AffineLayerNorm::load(
                src,
                &format!("{p}.norm2"),
                dim,
                cfg.eps,
            )?)
        } else {
            None
        };
        Ok(Self {
            index,
            modulation: src.get(&format!("{p}.scale_shift_table"), &[1, 6, dim], DType::F32)?,
            self_attn: AttentionLayer::load(src, &format!("{p}.attn1"), cfg, dtype)?,
            cross_norm,
            cross_attn: AttentionLayer::load(src, &format!("{p}.attn2"), cfg, dtype)?,
            image_kv: if cfg.has_image_input() {
                Some(ImageKeyValue::load(src, &format!("{p}.attn2"), cfg, dtype)?)
            } else {
                None
            },
            ffn_in: src.linear(&format!("{p}.ffn.net.0.proj"), dim, cfg.ffn_dim, dtype)?,
            ffn_out: src.linear(&format!("{p}.ffn.net.2"), cfg.ffn_dim, dim, dtype)?,
            eps: cfg.eps,
            dtype,
        })
    }

    /// This block rebuilt from `map` applied to everything it holds (linear weights as stored,
    /// biases, unmerged LoRA factors, norms, the modulation table): with [`ToDevice`], the copy
    /// a streamed block's synchronous fetch makes.
    ///
    /// [`ToDevice`]: crate::wan::tensor_map::ToDevice
    pub(crate) fn map_tensors(&self, map: &mut dyn TensorMap) -> Result<Self> {
        Ok(Self {
            index: self.index,
            modulation: map.tensor(&self.modulation)?,
            self_attn: self.self_attn.map_tensors(map)?,
            cross_norm: self
                .cross_norm
                .as_ref()
                .map(|n| n.map_tensors(map))
                .transpose()?,
            cross_attn: self.cross_attn.map_tensors(map)?,
            image_kv: self
                .image_kv
                .as_ref()
                .map(|kv| kv.map_tensors(map))
                .transpose()?,
            ffn_in: self.ffn_in.map_tensors(map)?,
            ffn_out: self.ffn_out.map_tensors(map)?,
            eps: self.eps,
            dtype: self.dtype,
        })
    }

    /// x: residual stream [B, L, dim] f32 → [B, L, dim] f32. Takes `x` by value: each stage
    /// frees what it no longer needs (the incoming stream after the self-attention residual, each
    /// stage's q/k/v and activations after use), so at most one stage's temporaries are alive;
    /// a shadowed binding would keep them all until the block returns.
    pub(crate) fn forward(
        &self,
        x: Tensor,
        ctx: &BlockContext<'_>,
        attention: &mut dyn SelfAttention,
    ) -> Result<Tensor> {
        // The fused kernels take one modulation row per sample ([B, dim]); per-token modulation
        // ([B, L, dim] rows) always runs as candle ops.
        #[cfg(feature = "cuda")]
        if let (true, Some(e0)) = (
            fused::available(&x, self.dtype),
            ctx.time_modulation.per_sample(),
        ) {
            return self.forward_fused(x, e0, ctx, attention);
        }
        self.forward_ops(x, ctx, attention)
    }

    /// The block in candle ops: any device and dtype; the reference the fused path is held to.
    fn forward_ops(
        &self,
        x: Tensor,
        ctx: &BlockContext<'_>,
        attention: &mut dyn SelfAttention,
    ) -> Result<Tensor> {
        let dev = &x.device().clone(); // not a borrow of x, which is freed part-way
                                       // Modulation rows: [B, 1, dim] per sample, [B, L, dim] per token. Each is made where it is
                                       // used, so that per token at most two [B, L, dim] rows are alive at once.
        let m = ctx.time_modulation.with_table(&self.modulation)?;
        let row = |i: usize| m.row(i);

        // Self-attention over the video tokens, with 3D RoPE on q and k.
        let h = span("self: norm + modulate", dev, || {
            let (shift_sa, scale_sa) = (row(0)?, row(1)?);
            Ok(modulate(&layer_norm(&x, self.eps)?, &shift_sa, &scale_sa)?.to_dtype(self.dtype)?)
        })?;
        let (q, k, v) = span("self: qkv + norm + rope", dev, || {
            let (q, k, v) = self.self_attn.qkv(&h, &h)?;
            let q = WanRope::apply(&q, ctx.rope_cos, ctx.rope_sin)?.to_dtype(self.dtype)?;
            let k = WanRope::apply(&k, ctx.rope_cos, ctx.rope_sin)?.to_dtype(self.dtype)?;
            Ok((q, k, v))
        })?;
        drop(h);
        let y = span("self: attention", dev, || {
            Ok(attention.attend(self.index, &q, &k, &v, &ctx.layout)?) // [B, heads, L, head_dim]
        })?;
        drop((q, k, v));
        let next = span("self: out + gated residual", dev, || {
            let y = self
                .self_attn
                .merge_heads_and_project(&y)?
                .to_dtype(DType::F32)?;
            Ok((&x + y.broadcast_mul(&row(2)?)?)?)
        })?;
        drop(y);
        drop(x); // the incoming stream, shadowed below, would otherwise live on
        let x = next;

        // Cross-attention to every text row: no mask, no RoPE, no modulation, no gate.
        let (q, k, v) = span("cross: norm + qkv", dev, || {
            let h = match &self.cross_norm {
                Some(norm) => norm.forward(&x)?,
                None => x.clone(),
            }
            .to_dtype(self.dtype)?;
            let (q, k, v) = self.cross_attn.qkv(&h, ctx.text)?;
            Ok((q.to_dtype(self.dtype)?, k.to_dtype(self.dtype)?, v))
        })?;
        let y = span("cross: attention", dev, || {
            let scale = 1.0 / (self.cross_attn.head_dim as f64).sqrt();
            let y = dense_attention(&q, &k, &v, scale)?;
            let Some((image_kv, image)) = self.image_kv.as_ref().zip(ctx.image) else {
                return Ok(y);
            };
            // The image tokens: their own keys and values, the same queries, the two results
            // summed (each softmax over its own keys) before the output projection.
            let ca = &self.cross_attn;
            let k_img =
                ca.split_heads(&image_kv.norm_k.forward(&image_kv.to_k.forward(image)?)?)?;
            let v_img = ca.split_heads(&image_kv.to_v.forward(image)?)?;
            let y_img = dense_attention(&q, &k_img.to_dtype(self.dtype)?, &v_img, scale)?;
            Ok((y + y_img)?)
        })?;
        drop((q, k, v));
        let next = span("cross: out + residual", dev, || {
            let y = self
                .cross_attn
                .merge_heads_and_project(&y)?
                .to_dtype(DType::F32)?;
            Ok((&x + y)?)
        })?;
        drop(y);
        drop(x); // the incoming stream, shadowed below, would otherwise live on
        let x = next;

        // Feed-forward network.
        let h = span("ffn: norm + modulate", dev, || {
            let (shift_ff, scale_ff) = (row(3)?, row(4)?);
            Ok(modulate(&layer_norm(&x, self.eps)?, &shift_ff, &scale_ff)?.to_dtype(self.dtype)?)
        })?;
        let u = span("ffn: in + gelu", dev, || {
            Ok(self.ffn_in.forward(&h)?.gelu()?)
        })?;
        drop(h);
        let y = span("ffn: out", dev, || {
            Ok(self.ffn_out.forward(&u)?.to_dtype(DType::F32)?)
        })?;
        drop(u);
        span("ffn: gated residual", dev, || {
            Ok((&x + y.broadcast_mul(&row(5)?)?)?)
        })
    }

    /// The block through rainfusion's fused CUDA kernels (bf16/f16 on CUDA): LayerNorm with the
    /// modulation, q/k RMSNorm with RoPE, and bias + gate + residual each in one pass (the
    /// residual updates after self- and cross-attention also write the next sub-block's norm),
    /// with q, k and v kept in the `[B, L, heads, head_dim]` memory the projections write (the
    /// attention kernels read it in place). Same arithmetic as [`Self::forward_ops`] in f32, except that
    /// the linear layers' biases are added in f32 before rounding instead of after.
    /// `e0` is the per-sample time projection [B, 6, dim] f32.
    #[cfg(feature = "cuda")]
    fn forward_fused(
        &self,
        x: Tensor,
        e0: &Tensor,
        ctx: &BlockContext<'_>,
        attention: &mut dyn SelfAttention,
    ) -> Result<Tensor> {
        use rainfusion::cuda::fused::{
            bias_gelu_inplace, gated_residual, gated_residual_norm, layer_norm_affine,
        };
        use rainfusion::cuda::OutputLayout;
        let dev = &x.device().clone(); // not a borrow of x, which is freed part-way
        let (b, l, dim) = x.dims3()?;
        let (heads, head_dim) = (self.self_attn.num_heads, self.self_attn.head_dim);
        let m = self.modulation.broadcast_add(e0)?; // [B, 6, dim]
        let row = |i: usize| -> Result<Tensor> { Ok(m.narrow(1, i, 1)?.squeeze(1)?.contiguous()?) }; // [B, dim]
        let (shift_sa, scale_sa, gate_sa) = (row(0)?, (row(1)? + 1.0)?, row(2)?);
        let (shift_ff, scale_ff, gate_ff) = (row(3)?, (row(4)? + 1.0)?, row(5)?);
        // [B, L, dim] → [B, heads, L, head_dim] view of the same memory.
        let split = |t: &Tensor, len: usize| -> Result<Tensor> {
            Ok(t.reshape((b, len, heads, head_dim))?.transpose(1, 2)?)
        };
        // [B, heads, L, head_dim] → [B, L, dim] (one copy).
        let merge = |t: &Tensor| -> Result<Tensor> {
            Ok(t.transpose(1, 2)?.contiguous()?.reshape((b, l, dim))?)
        };

        let h = span("self: norm + modulate", dev, || {
            Ok(layer_norm_affine(
                &x, &scale_sa, &shift_sa, self.eps, self.dtype,
            )?)
        })?;
        let (q, k, v) = span("self: qkv + norm + rope", dev, || {
            let sa = &self.self_attn;
            let (q, k) = sa.fused_qk(&h, &h, Some((ctx.rope_cos, ctx.rope_sin)))?;
            let v = sa.to_v.matmul(&h)?; // its bias is folded into the output projection's
            Ok((split(&q, l)?, split(&k, l)?, split(&v, l)?))
        })?;
        drop(h);
        let y = span("self: attention", dev, || {
            // [B, L, heads, head_dim] memory → [B, L, dim] with no copy.
            let y = attention.attend_tokens(self.index, &q, &k, &v, &ctx.layout)?;
            Ok(y.reshape((b, l, dim))?)
        })?;
        drop((q, k, v));
        // The updated stream and the cross-attention's input, its norm taken in the same pass.
        let (next, h) = span("self: out + gated residual + cross norm", dev, || {
            let o = self.self_attn.to_out.matmul(&y)?;
            let bias = self.self_attn.folded_out_bias()?;
            Ok(match &self.cross_norm {
                Some(norm) => {
                    let (weight, norm_bias, eps) = norm.parts();
                    gated_residual_norm(
                        &x,
                        &o,
                        Some(bias),
                        Some(&gate_sa),
                        weight,
                        norm_bias,
                        eps,
                        self.dtype,
                    )?
                }
                None => {
                    let next = gated_residual(&x, &o, Some(bias), Some(&gate_sa))?;
                    let h = next.to_dtype(self.dtype)?;
                    (next, h)
                }
            })
        })?;
        drop(y);
        drop(x); // the incoming stream, shadowed below, would otherwise live on
        let x = next;

        let (q, k, v) = span("cross: qkv", dev, || {
            let ca = &self.cross_attn;
            let text_len = ctx.text.dim(1)?;
            let (q, k) = ca.fused_qk(&h, ctx.text, None)?;
            let v = ca.to_v.matmul(ctx.text)?; // bias folded into the output projection's
            Ok((split(&q, l)?, split(&k, text_len)?, split(&v, text_len)?))
        })?;
        drop(h);
        let y = span("cross: attention", dev, || {
            let scale = 1.0 / (head_dim as f64).sqrt();
            if rainfusion::cuda::is_supported(&q, 128) {
                // [B, L, heads, head_dim] memory: the projection reads it with no copy.
                let y = rainfusion::cuda::cross_attention(&q, &k, &v, scale, OutputLayout::Blhd)?;
                Ok(y.reshape((b, l, dim))?)
            } else {
                Ok(merge(&dense_attention(&q, &k, &v, scale)?)?)
            }
        })?;
        // Image tokens (Wan2.1 I2V / FLF2V), as the text above: keys through the fused RMSNorm (no
        // RoPE), values with their own bias (only the text values' bias is folded into the output
        // projection's), the same queries; the result is added before the output projection.
        let y = match self.image_kv.as_ref().zip(ctx.image) {
            None => y,
            Some((image_kv, image)) => span("cross: image attention", dev, || {
                let image_len = image.dim(1)?;
                let (weight, eps) = image_kv.norm_k.parts();
                let k_img = rainfusion::cuda::fused::rms_norm_rope(
                    &image_kv.to_k.matmul(image)?,
                    Some(image_kv.to_k.bias()),
                    weight,
                    None,
                    head_dim,
                    eps,
                )?;
                let v_img = image_kv.to_v.forward(image)?;
                let (k_img, v_img) = (split(&k_img, image_len)?, split(&v_img, image_len)?);
                let scale = 1.0 / (head_dim as f64).sqrt();
                let y_img = if rainfusion::cuda::is_supported(&q, 128) {
                    rainfusion::cuda::cross_attention(
                        &q,
                        &k_img,
                        &v_img,
                        scale,
                        OutputLayout::Blhd,
                    )?
                    .reshape((b, l, dim))?
                } else {
                    merge(&dense_attention(&q, &k_img, &v_img, scale)?)?
                };
                Ok((y + y_img)?)
            })?,
        };
        drop((q, k, v));
        // The updated stream and the feed-forward's modulated norm, in one pass.
        let (next, h) = span("cross: out + residual + ffn norm", dev, || {
            let o = self.cross_attn.to_out.matmul(&y)?;
            let bias = self.cross_attn.folded_out_bias()?;
            Ok(gated_residual_norm(
                &x,
                &o,
                Some(bias),
                None,
                &scale_ff,
                &shift_ff,
                self.eps,
                self.dtype,
            )?)
        })?;
        drop(y);
        drop(x); // the incoming stream, shadowed below, would otherwise live on
        let x = next;

        let u = span("ffn: in + gelu", dev, || {
            // The epilogue kernel reads the weight itself: not with an unmerged LoRA, nor a
            // weight kept quantised (`plain_weight` is `None` for both).
            if let (true, Some(w)) = (fused::epilogue_gelu_available(), self.ffn_in.plain_weight())
            {
                let bias = self.ffn_in.bias();
                match rainfusion::cuda::linear(&h, w, Some(bias), true) {
                    Ok(u) => return Ok(u),
                    Err(e) => fused::epilogue_gelu_failed(&e),
                }
            }
            let u = self.ffn_in.matmul(&h)?;
            bias_gelu_inplace(&u, Some(self.ffn_in.bias()))?;
            Ok(u)
        })?;
        drop(h);
        let o = span("ffn: out", dev, || self.ffn_out.matmul(&u))?;
        drop(u);
        span("ffn: gated residual", dev, || {
            Ok(gated_residual(
                &x,
                &o,
                Some(self.ffn_out.bias()),
                Some(&gate_ff),
            )?)
        })
    }
}

impl crate::wan::tensor_map::StreamedBlock for WanBlock {
    fn map_block(&self, map: &mut dyn TensorMap) -> Result<Self> {
        self.map_tensors(map)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use rainfusion::dense_attention;

    use super::*;
    use crate::wan::layers::WeightSource;

    /// Folding v's bias into the output projection's bias changes nothing but rounding: the fused
    /// CUDA path relies on it (softmax rows sum to one).
    #[test]
    fn folded_value_bias_gives_the_same_attention_output() {
        let cfg = WanConfig {
            num_heads: 2,
            head_dim: 16,
            num_layers: 1,
            ffn_dim: 64,
            ..WanConfig::t2v_1_3b()
        };
        let src = WeightSource::random(Device::Cpu);
        let layer = AttentionLayer::load(&src, "blocks.0.attn1", &cfg, DType::F32).unwrap();
        let (b, l) = (2, 24);
        let h = Tensor::randn(0f32, 1.0, (b, l, cfg.dim()), &Device::Cpu).unwrap();
        let text = Tensor::randn(0f32, 1.0, (b, 7, cfg.dim()), &Device::Cpu).unwrap();
        let scale = 1.0 / (cfg.head_dim as f64).sqrt();
        let (q, k, v) = layer.qkv(&h, &text).unwrap();
        let with_bias = layer
            .merge_heads_and_project(&dense_attention(&q, &k, &v, scale).unwrap())
            .unwrap();
        let v_no_bias = layer
            .split_heads(&layer.to_v.matmul(&text).unwrap())
            .unwrap();
        let y = dense_attention(&q, &k, &v_no_bias, scale).unwrap();
        let merged = y
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((b, l, cfg.dim()))
            .unwrap();
        let folded = layer
            .to_out
            .matmul(&merged)
            .unwrap()
            .broadcast_add(layer.folded_out_bias().unwrap())
            .unwrap();
        let diff = (with_bias - folded)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "max difference {diff}");
        // The bias must matter at all for the check to mean anything.
        let bias_norm = layer
            .to_v
            .bias()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(bias_norm > 1e-3);
    }
}
