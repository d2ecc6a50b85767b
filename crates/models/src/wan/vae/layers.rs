//! Building blocks of the Wan VAE decoder: the per-layer feature cache, causal 3D convolutions,
//! the channel L2 ("RMS") norm and plain 2D convolutions.
//!
//! Video tensors inside the decoder are frames-major, `[B, T, C, H, W]`, so that every per-frame
//! operation is a free reshape to `[B·T, C, H, W]` for candle's conv2d.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use crate::error::Result;

/// What one temporal conv remembers between decoder calls.
#[derive(Debug, Clone, Default)]
enum CacheSlot {
    /// Nothing decoded yet.
    #[default]
    Fresh,
    /// An `upsample3d` time_conv saw the first chunk and skipped it (no frames kept).
    SkippedFirstChunk,
    /// The last input frames of the conv's stream, `[B, ≤2, C, H, W]`.
    Frames(Tensor),
}

/// The decoder's state through time: one slot per temporal conv. Decoding latent frame by latent
/// frame with this cache gives the same result as a causal conv over the whole stream.
/// Each spatial tile keeps its own cache.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    slots: Vec<CacheSlot>,
}

impl FeatureCache {
    pub fn new(num_slots: usize) -> Self {
        Self {
            slots: vec![CacheSlot::Fresh; num_slots],
        }
    }

    pub fn is_fresh(&self, slot: usize) -> bool {
        matches!(self.slots[slot], CacheSlot::Fresh)
    }

    pub fn mark_skipped_first_chunk(&mut self, slot: usize) {
        self.slots[slot] = CacheSlot::SkippedFirstChunk;
    }

    fn previous_frames(&self, slot: usize) -> Option<&Tensor> {
        match &self.slots[slot] {
            CacheSlot::Frames(t) => Some(t),
            _ => None,
        }
    }
}

/// Hands out cache slot numbers while the decoder is built, in a fixed order.
#[derive(Debug, Default)]
pub struct SlotCounter(usize);

impl SlotCounter {
    pub fn next(&mut self) -> usize {
        self.0 += 1;
        self.0 - 1
    }
    pub fn count(&self) -> usize {
        self.0
    }
}

/// Batches of frames for one conv2d call are limited so that an im2col buffer (used by candle's
/// CUDA and Metal convs) stays below about this many elements.
const IM2COL_BUDGET: usize = 1 << 27;

/// conv2d over `[N, C, H, W]` in groups of frames, so that the im2col buffer stays bounded at
/// video sizes. `kernel` is `[O, C, k, k]`; `padding` symmetric. The result is in x's dtype or f32.
fn conv2d_grouped(x: &Tensor, kernel: &Tensor, padding: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (_, _, kh, kw) = kernel.dims4()?;
    let per_frame = (c * kh * kw * h * w).max(1);
    let group = (IM2COL_BUDGET / per_frame).clamp(1, n.max(1));
    if group >= n || kh * kw == 1 {
        return conv2d_any_dtype(x, kernel, padding);
    }
    let mut parts = Vec::with_capacity(n.div_ceil(group));
    let mut start = 0;
    while start < n {
        let len = group.min(n - start);
        parts.push(conv2d_any_dtype(
            &x.narrow(0, start, len)?,
            kernel,
            padding,
        )?);
        start += len;
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// candle's CPU backend has no bf16 matmul (and so no bf16 conv): there the conv runs in f32 and
/// its f32 result is returned (callers round once, after adding the bias and summing taps).
fn conv2d_any_dtype(x: &Tensor, kernel: &Tensor, padding: usize) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::BF16 {
        let y = x
            .to_dtype(DType::F32)?
            .conv2d(&kernel.to_dtype(DType::F32)?, padding, 1, 1, 1)?;
        return Ok(y);
    }
    Ok(x.conv2d(kernel, padding, 1, 1, 1)?)
}

/// A Conv2d with bias and symmetric padding, applied to `[N, C, H, W]`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor, // [O, C, k, k]
    bias: Tensor,   // [1, O, 1, 1]
    padding: usize,
}

impl Conv2d {
    pub fn new(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        kernel: usize,
        padding: usize,
    ) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim, kernel, kernel), "weight")?;
        let bias = vb.get(out_dim, "bias")?.reshape((1, out_dim, 1, 1))?;
        Ok(Self {
            weight,
            bias,
            padding,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = conv2d_grouped(x, &self.weight, self.padding)?;
        Ok(y.broadcast_add(&self.bias.to_dtype(y.dtype())?)?
            .to_dtype(x.dtype())?)
    }
}

/// Wan's CausalConv3d: zero padding `2·p_t` frames in front and none behind, symmetric in space.
/// With a cache, the previous frames of the stream stand in for the front padding.
///
/// Computed as a sum over the temporal taps of conv2d calls on batched frames.
#[derive(Debug, Clone)]
pub struct CausalConv3d {
    /// One `[O, C, k_h, k_w]` kernel per temporal tap, oldest frame first.
    taps: Vec<Tensor>,
    bias: Tensor, // [1, O, 1, 1]
    spatial_padding: usize,
    out_dim: usize,
    /// Cache slot of a temporal conv (k_t > 1); None for k_t = 1, which needs no history.
    slot: Option<usize>,
}

impl CausalConv3d {
    /// `kernel` = (k_t, k_s) with a k_s × k_s spatial kernel; temporal padding is causal (k_t − 1
    /// frames of history), spatial padding `(k_s − 1) / 2` (Wan's convs are all "same" convs).
    pub fn new(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        kernel: (usize, usize),
        slots: &mut SlotCounter,
    ) -> Result<Self> {
        let (kt, ks) = kernel;
        let weight = vb.get((out_dim, in_dim, kt, ks, ks), "weight")?;
        let bias = vb.get(out_dim, "bias")?.reshape((1, out_dim, 1, 1))?;
        let taps = (0..kt)
            .map(|j| Ok(weight.narrow(2, j, 1)?.squeeze(2)?.contiguous()?))
            .collect::<Result<Vec<_>>>()?;
        let slot = (kt > 1).then(|| slots.next());
        Ok(Self {
            taps,
            bias,
            spatial_padding: (ks - 1) / 2,
            out_dim,
            slot,
        })
    }

    /// x `[B, T, C, H, W]` → `[B, T, O, H, W]`, reading and updating this conv's cache slot.
    pub fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        let history = self.taps.len() - 1;
        let Some(slot) = self.slot else {
            let y = conv2d_grouped(
                &x.reshape((b * t, c, h, w))?,
                &self.taps[0],
                self.spatial_padding,
            )?;
            let y = y
                .broadcast_add(&self.bias.to_dtype(y.dtype())?)?
                .to_dtype(x.dtype())?;
            return Ok(y.reshape((b, t, self.out_dim, h, w))?);
        };
        // The stream so far: cached frames, then this chunk; zero frames fill the rest of the history.
        let stream = match cache.previous_frames(slot) {
            Some(prev) => Tensor::cat(&[prev, x], 1)?,
            None => x.clone(),
        };
        let stream_len = stream.dim(1)?;
        let take = stream_len.min(t + history);
        let padded = stream.narrow(1, stream_len - take, take)?;
        let missing = t + history - take;
        let padded = if missing > 0 {
            padded.pad_with_zeros(1, missing, 0)?
        } else {
            padded
        };
        let keep = history.min(stream_len);
        cache.slots[slot] =
            CacheSlot::Frames(stream.narrow(1, stream_len - keep, keep)?.contiguous()?);

        // Taps are summed in f32 for half-precision inputs, as a fused Conv3d accumulates; rounding
        // each tap separately would add error that the reference does not have.
        let dtype = x.dtype();
        let accumulate = if matches!(dtype, DType::F16 | DType::BF16) {
            DType::F32
        } else {
            dtype
        };
        let mut sum = self.bias.to_dtype(accumulate)?;
        for (j, tap) in self.taps.iter().enumerate() {
            let frames = padded
                .narrow(1, j, t)?
                .contiguous()?
                .reshape((b * t, c, h, w))?;
            let y = conv2d_grouped(&frames, tap, self.spatial_padding)?;
            sum = sum.broadcast_add(&y.to_dtype(accumulate)?)?;
        }
        Ok(sum.to_dtype(dtype)?.reshape((b, t, self.out_dim, h, w))?)
    }
}

/// Wan's RMS_norm: L2-normalise over channels at every pixel, times √C and γ (plus a bias if the
/// checkpoint has one). Half-precision inputs are normalised in f32, as diffusers does.
#[derive(Debug, Clone)]
pub struct ChannelRmsNorm {
    gamma: Tensor, // [1, C, 1, 1]
    bias: Option<Tensor>,
    scale: f64,
}

impl ChannelRmsNorm {
    /// `images`: γ stored as `[C, 1, 1]` (2D attention) instead of `[C, 1, 1, 1]` (3D blocks).
    pub fn new(vb: VarBuilder, dim: usize, images: bool) -> Result<Self> {
        let get = |name: &str| -> Result<Tensor> {
            let t = if images {
                vb.get((dim, 1, 1), name)?
            } else {
                vb.get((dim, 1, 1, 1), name)?
            };
            Ok(t.reshape((1, dim, 1, 1))?)
        };
        let gamma = get("gamma")?;
        let bias = if vb.contains_tensor("bias") {
            Some(get("bias")?)
        } else {
            None
        };
        Ok(Self {
            gamma,
            bias,
            scale: (dim as f64).sqrt(),
        })
    }

    /// x `[N, C, H, W]` → same shape.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = if matches!(dtype, DType::F16 | DType::BF16) {
            x.to_dtype(DType::F32)?
        } else {
            x.clone()
        };
        let norm = xf.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
        let normalized = xf.broadcast_div(&norm)?.to_dtype(dtype)?;
        let y = (normalized * self.scale)?.broadcast_mul(&self.gamma)?;
        Ok(match &self.bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        })
    }

    /// The same on frames-major video `[B, T, C, H, W]`.
    pub fn forward_video(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        Ok(self
            .forward(&x.reshape((b * t, c, h, w))?)?
            .reshape((b, t, c, h, w))?)
    }
}

/// SiLU on any tensor.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    Ok(x.silu()?)
}

/// Softmax attention of one head, `q` `[N, Lq, C]`, `k`, `v` `[N, L, C]` → `[N, Lq, C]`, with the
/// queries taken in row blocks so the score matrix stays bounded (the mid block attends over every
/// pixel of a latent frame).
pub fn single_head_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    const SCORE_BUDGET: usize = 1 << 26;
    let (n, lq, c) = q.dims3()?;
    let l = k.dim(1)?;
    let scale = 1.0 / (c as f64).sqrt();
    let kt = k.transpose(1, 2)?.contiguous()?; // [N, C, L]
    let rows = (SCORE_BUDGET / (n * l).max(1)).clamp(1, lq.max(1));
    let mut outs = Vec::with_capacity(lq.div_ceil(rows));
    let mut start = 0;
    while start < lq {
        let len = rows.min(lq - start);
        let q_rows = q.narrow(1, start, len)?.contiguous()?;
        let scores = (q_rows.matmul(&kt)? * scale)?; // [N, len, L]
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        outs.push(probs.matmul(v)?);
        start += len;
    }
    Ok(Tensor::cat(&outs, 1)?)
}
