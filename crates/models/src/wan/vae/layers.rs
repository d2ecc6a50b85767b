//! Building blocks of the Wan VAE decoder and encoder: the per-layer feature cache, causal 3D
//! convolutions, the channel L2 ("RMS") norm and plain 2D convolutions.
//!
//! Video tensors inside the decoder and the encoder are frames-major, `[B, T, C, H, W]`, so that every per-frame
//! operation is a free reshape to `[B·T, C, H, W]` for candle's conv2d.

use std::sync::OnceLock;

use candle_core::conv::CudnnFwdAlgo;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::error::{ModelError, Result};
use crate::profile::span;

/// Stage names of the decode for the stage profiler ([`crate::profile`], `VDIT_PROFILE=1`).
/// Spans are leaves (none wraps another), so the table's shares add up to the decode.
/// "Level" is the resolution of the activations: 0 at the latent resolution, one more after each
/// spatial upsampler (3 = the output resolution for Wan2.1's four blocks).
pub mod stage {
    pub const PRE_PROCESSING: &str = "vae: pre-processing (unnormalise, layout)";
    pub const POST_PROCESSING: &str = "vae: post-processing (to f32, layout, clamp)";
    pub const TILE_BLEND: &str = "vae: tile blending";
    /// Building the causal window from the cached frames and storing the new ones.
    pub const FEATURE_CACHE: &str = "vae: feature cache (cat/narrow/pad)";
    /// Stacking the k_t frames of each window along channels for the one-conv (cuDNN) layout.
    pub const TAP_STACKING: &str = "vae: conv3d tap stacking (cat)";
    pub const CONV_BIAS: &str = "vae: conv bias add";
    pub const RMS_NORM: &str = "vae: rms norm";
    pub const SILU: &str = "vae: silu";
    pub const RESIDUAL_ADD: &str = "vae: residual add";
    pub const ATTENTION: &str = "vae: attention (mid block, all of it)";
    pub const POINTWISE_CONV: &str = "vae: conv 1x1x1 (shortcut, post-quant)";
    pub const UPSAMPLE_TEMPORAL_CONV: &str = "vae: upsample (temporal conv 3x1x1)";
    pub const UPSAMPLE_SPATIAL: &str = "vae: upsample (spatial nearest)";
    pub const HEAD_NORM: &str = "vae: head (norm + silu)";
    pub const HEAD_CONV: &str = "vae: head (conv3d to RGB)";

    /// The 3×3×3 convs of the residual blocks (and conv_in) at resolution `level`.
    pub fn conv3d(level: usize) -> &'static str {
        const NAMES: [&str; 5] = [
            "vae: conv3d 3x3x3 (level 0, latent res)",
            "vae: conv3d 3x3x3 (level 1, 2x)",
            "vae: conv3d 3x3x3 (level 2, 4x)",
            "vae: conv3d 3x3x3 (level 3, 8x)",
            "vae: conv3d 3x3x3 (level 4+)",
        ];
        NAMES[level.min(NAMES.len() - 1)]
    }

    /// The 3×3 conv2d of an upsampler, whose output is at resolution `level`.
    pub fn upsample_conv(level: usize) -> &'static str {
        const NAMES: [&str; 5] = [
            "vae: upsample conv2d 3x3 (to level 0)",
            "vae: upsample conv2d 3x3 (to level 1)",
            "vae: upsample conv2d 3x3 (to level 2)",
            "vae: upsample conv2d 3x3 (to level 3)",
            "vae: upsample conv2d 3x3 (to level 4+)",
        ];
        NAMES[level.min(NAMES.len() - 1)]
    }
}

/// Forces one cuDNN forward algorithm for every conv of the decoder, instead of cuDNN's heuristic
/// pick (to find a faster one on a given GPU): `implicit-gemm`, `implicit-precomp-gemm`, `gemm`,
/// `direct`, `fft`, `fft-tiling`, `winograd` or `winograd-nonfused`. Only read by candle's cuDNN
/// convs, which serve the decoder only with `VDIT_VAE_TENSOR_OPS=0` (the tensor-core path picks
/// its own algorithm per shape).
pub const CONV_ALGO_ENV: &str = "VDIT_VAE_CONV_ALGO";

fn parse_conv_algo(value: &str) -> std::result::Result<CudnnFwdAlgo, String> {
    Ok(match value {
        "implicit-gemm" => CudnnFwdAlgo::ImplicitGemm,
        "implicit-precomp-gemm" => CudnnFwdAlgo::ImplicitPrecompGemm,
        "gemm" => CudnnFwdAlgo::Gemm,
        "direct" => CudnnFwdAlgo::Direct,
        "fft" => CudnnFwdAlgo::Fft,
        "fft-tiling" => CudnnFwdAlgo::FftTiling,
        "winograd" => CudnnFwdAlgo::Winograd,
        "winograd-nonfused" => CudnnFwdAlgo::WinogradNonFused,
        other => {
            return Err(format!(
                "{CONV_ALGO_ENV}={other:?} is not one of implicit-gemm, implicit-precomp-gemm, \
                 gemm, direct, fft, fft-tiling, winograd, winograd-nonfused"
            ))
        }
    })
}

/// The algorithm [`CONV_ALGO_ENV`] asks for (read once); None when unset or empty.
fn forced_conv_algo() -> Result<Option<CudnnFwdAlgo>> {
    static ALGO: OnceLock<std::result::Result<Option<CudnnFwdAlgo>, String>> = OnceLock::new();
    ALGO.get_or_init(|| match std::env::var(CONV_ALGO_ENV) {
        Ok(v) if !v.trim().is_empty() => parse_conv_algo(v.trim()).map(Some),
        _ => Ok(None),
    })
    .clone()
    .map_err(ModelError::InvalidInput)
}

/// Environment variable that, set to `0`, takes the decoder's channel-axis work off rainfusion's
/// fused CUDA kernels (`channel_rms_norm`, `channel_bias_add`) and back to candle ops: the RMS
/// norm (with the SiLU that follows it and the bias of the conv before it), the convs' bias adds
/// and the residual add with the second conv's bias. On by default on CUDA; the CPU never uses
/// them. scripts/gpu/NOTES.md, v10.
pub const FUSED_NORM_ENV: &str = "VDIT_VAE_FUSED_NORM";

/// Whether the fused channel kernels serve `x` (a decoder activation `[N, C, ...]`): a CUDA
/// build and device, bf16/f16/f32, and [`FUSED_NORM_ENV`] not `0` (read once).
pub(crate) fn fused_channel_kernels(x: &Tensor) -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    cfg!(feature = "cuda")
        && x.device().is_cuda()
        && matches!(x.dtype(), DType::BF16 | DType::F16 | DType::F32)
        && *ON.get_or_init(|| std::env::var_os(FUSED_NORM_ENV).is_none_or(|v| v != "0"))
}

/// `x + bias[c]` (+ `residual`) over the channel axis 1 of x `[N, C, ...]`; bias `[C]` f32. One
/// kernel where [`fused_channel_kernels`] holds (the sum rounded once from f32), else candle ops
/// in x's dtype (bias rounded to it, then the residual added).
pub fn add_channel_bias(x: &Tensor, bias: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if fused_channel_kernels(x) {
        return Ok(rainfusion::cuda::fused::channel_bias_add(
            x, bias, residual,
        )?);
    }
    let mut shape = vec![1; x.rank()];
    shape[1] = bias.elem_count();
    let y = x.broadcast_add(&bias.reshape(shape)?.to_dtype(x.dtype())?)?;
    Ok(match residual {
        Some(r) => (y + r)?,
        None => y,
    })
}

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

    /// Keeps `frames` as `slot`'s history (the encoder's strided time convs keep their own).
    pub fn store_frames(&mut self, slot: usize, frames: Tensor) {
        self.slots[slot] = CacheSlot::Frames(frames);
    }

    /// The frames `slot` keeps, if any.
    pub fn previous_frames(&self, slot: usize) -> Option<&Tensor> {
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

/// Whether this build sends `device`'s convs to cuDNN (feature `cudnn`, CUDA device). cuDNN
/// convolves without an im2col buffer and accumulates half-precision inputs in f32, so there the
/// decoder needs neither frame grouping nor a per-tap f32 sum.
fn convs_through_cudnn(device: &Device) -> bool {
    cfg!(feature = "cudnn") && device.is_cuda()
}

/// Batches of frames for one conv2d call are limited so that an im2col buffer (used by candle's
/// CUDA and Metal convs without cuDNN) stays below about this many elements.
const IM2COL_BUDGET: usize = 1 << 27;

/// conv2d over `[N, C, H, W]` in groups of frames, so that the im2col buffer stays bounded at
/// video sizes (one call for all frames where cuDNN runs the conv). `kernel` is `[O, C, k, k]`;
/// `padding` symmetric. The result `[N, O, H', W']` (H' = H at stride 1) is in x's dtype or f32.
fn conv2d_grouped(x: &Tensor, kernel: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (_, _, kh, kw) = kernel.dims4()?;
    let per_frame = (c * kh * kw * h * w).max(1);
    let group = (IM2COL_BUDGET / per_frame).clamp(1, n.max(1));
    if group >= n || kh * kw == 1 || convs_through_cudnn(x.device()) {
        return conv2d_any_dtype(x, kernel, padding, stride);
    }
    let mut parts = Vec::with_capacity(n.div_ceil(group));
    let mut start = 0;
    while start < n {
        let len = group.min(n - start);
        parts.push(conv2d_any_dtype(
            &x.narrow(0, start, len)?,
            kernel,
            padding,
            stride,
        )?);
        start += len;
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// candle's CPU backend has no bf16 matmul (and so no bf16 conv): there the conv runs in f32 and
/// its f32 result is returned (callers round once, after adding the bias and summing taps).
/// The tensor-core path takes stride 1 only (the encoder's stride-2 downsampling convs skip it).
fn conv2d_any_dtype(x: &Tensor, kernel: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::BF16 {
        let y =
            x.to_dtype(DType::F32)?
                .conv2d(&kernel.to_dtype(DType::F32)?, padding, stride, 1, 1)?;
        return Ok(y);
    }
    #[cfg(feature = "cudnn")]
    if stride == 1
        && x.device().is_cuda()
        && matches!(x.dtype(), DType::BF16 | DType::F16)
        && super::cudnn_conv::enabled()
    {
        return super::cudnn_conv::conv2d_tensor_ops(x, kernel, padding);
    }
    if convs_through_cudnn(x.device()) {
        let algo = forced_conv_algo()?;
        return Ok(x.conv2d_with_algo(kernel, padding, stride, 1, 1, algo)?);
    }
    Ok(x.conv2d(kernel, padding, stride, 1, 1)?)
}

/// A Conv2d with bias and symmetric padding, applied to `[N, C, H, W]`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor, // [O, C, k, k]
    bias: Tensor,   // [1, O, 1, 1]
    /// The bias as `[O]` f32, for the fused bias kernel.
    bias_f32: Tensor,
    padding: usize,
    stride: usize,
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
        let bias = vb.get(out_dim, "bias")?;
        Self::from_parts(weight, bias, padding, 1)
    }

    /// A conv from its kernel `[O, C, k, k]` and bias `[O]`, with `stride` in both directions
    /// (the encoder's downsamplers use 2, and a temporal kernel laid out as one 1×1 conv).
    pub fn from_parts(weight: Tensor, bias: Tensor, padding: usize, stride: usize) -> Result<Self> {
        let out_dim = weight.dim(0)?;
        let bias_f32 = bias.to_dtype(DType::F32)?;
        Ok(Self {
            weight,
            bias: bias.reshape((1, out_dim, 1, 1))?,
            bias_f32,
            padding,
            stride,
        })
    }

    /// `[N, C, H, W]` → `[N, O, H', W']` in x's dtype (H' = H for the decoder's "same" convs).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = conv2d_grouped(x, &self.weight, self.padding, self.stride)?;
        if y.dtype() == x.dtype() && fused_channel_kernels(&y) {
            return add_channel_bias(&y, &self.bias_f32, None);
        }
        Ok(y.broadcast_add(&self.bias.to_dtype(y.dtype())?)?
            .to_dtype(x.dtype())?)
    }
}

impl Conv2d {
    /// [`forward`](Self::forward) of x `[N, C, H, W]` upsampled 2× (nearest) → `[N, O, 2H, 2W]`.
    /// Where the in-place cuDNN convolution runs, one frame at a time: each frame is upsampled
    /// and convolved into its place in the output, so only one frame's upsampled copy and one
    /// frame's workspace exist at once (at the 720p upsampler: 0.33 GiB and 0.5 GiB, against
    /// 1.32 and 2.0 GiB for four frames in one call). `up_stage` and `conv_stage` name the two
    /// halves in profiles.
    pub fn forward_nearest_2x(
        &self,
        x: &Tensor,
        up_stage: &'static str,
        conv_stage: &'static str,
    ) -> Result<Tensor> {
        let (n, _, h, w) = x.dims4()?;
        let dev = x.device();
        if n == 1 || self.stride != 1 || !taps_accumulate_in_place(x) {
            let up = span(up_stage, dev, || Ok(x.upsample_nearest2d(2 * h, 2 * w)?))?;
            return span(conv_stage, dev, || self.forward(&up));
        }
        self.forward_nearest_2x_by_frame(x, up_stage, conv_stage)
    }

    #[cfg(feature = "cudnn")]
    fn forward_nearest_2x_by_frame(
        &self,
        x: &Tensor,
        up_stage: &'static str,
        conv_stage: &'static str,
    ) -> Result<Tensor> {
        use super::cudnn_conv::conv2d_tensor_ops_accumulate;
        let (n, _, h, w) = x.dims4()?;
        let o = self.weight.dim(0)?;
        let dev = x.device();
        // zeros, then each frame's conv added in place (cuDNN beta = 1 over zeros)
        let y = Tensor::zeros((n, o, 2 * h, 2 * w), x.dtype(), dev)?;
        for i in 0..n {
            let up = span(up_stage, dev, || {
                Ok(x.narrow(0, i, 1)?.upsample_nearest2d(2 * h, 2 * w)?)
            })?;
            span(conv_stage, dev, || {
                conv2d_tensor_ops_accumulate(&y.narrow(0, i, 1)?, &up, &self.weight, self.padding)
            })?;
        }
        span(conv_stage, dev, || {
            if fused_channel_kernels(&y) {
                add_channel_bias(&y, &self.bias_f32, None)
            } else {
                Ok(y.broadcast_add(&self.bias)?)
            }
        })
    }

    #[cfg(not(feature = "cudnn"))]
    fn forward_nearest_2x_by_frame(
        &self,
        _: &Tensor,
        _: &'static str,
        _: &'static str,
    ) -> Result<Tensor> {
        unreachable!("taps_accumulate_in_place is false without cuDNN")
    }
}

/// The kernel of a [`CausalConv3d`], laid out for the way its temporal taps are computed.
#[derive(Debug, Clone)]
enum TemporalKernel {
    /// One `[O, C, k_h, k_w]` kernel per temporal tap, oldest frame first: one conv2d per tap,
    /// summed (in f32 for half precision).
    Taps(Vec<Tensor>),
    /// `[O, k_t·C, k_h, k_w]`: the taps side by side along the input channels, oldest first, for
    /// one conv2d over the k_t frames of each window stacked likewise. The conv itself sums the
    /// taps (cuDNN accumulates bf16 in f32) and the result is rounded once, as a fused Conv3d does.
    Stacked(Tensor),
}

/// How a [`CausalConv3d`] fills the frames before the stream and the pixels around each frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvPadding {
    /// Zeros (Wan): in time through missing history, in space through the conv's own padding.
    #[default]
    Zeros,
    /// Copies of the nearest edge value (HunyuanVideo 1.5's `F.pad(mode="replicate")`): the
    /// stream's first frame repeated in front, each frame's border rows and columns around it.
    /// The spatial border is one extra copy of the window before the conv, which then pads nothing.
    Replicate,
}

/// Wan's CausalConv3d: zero padding `2·p_t` frames in front and none behind, symmetric in space.
/// With a cache, the previous frames of the stream stand in for the front padding. HunyuanVideo
/// 1.5's causal conv is the same with [`ConvPadding::Replicate`].
///
/// Computed as conv2d calls on batched frames: a sum over the temporal taps, or where cuDNN runs
/// the convs, one conv over the taps stacked along channels.
#[derive(Debug, Clone)]
pub struct CausalConv3d {
    kernel: TemporalKernel,
    /// Temporal taps k_t.
    kt: usize,
    bias: Tensor, // [1, O, 1, 1]
    /// The bias as `[O]` f32, for the fused channel kernels (which may add it later).
    bias_f32: Tensor,
    spatial_padding: usize,
    padding: ConvPadding,
    out_dim: usize,
    /// Cache slot of a temporal conv (k_t > 1); None for k_t = 1, which needs no history.
    slot: Option<usize>,
    /// Profiler stage of the conv itself (see [`stage`]).
    conv_stage: &'static str,
}

impl CausalConv3d {
    /// `kernel` = (k_t, k_s) with a k_s × k_s spatial kernel; temporal padding is causal (k_t − 1
    /// frames of history), spatial padding `(k_s − 1) / 2` (Wan's convs are all "same" convs).
    /// `conv_stage` names the conv in profiles (one of [`stage`]).
    pub fn new(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        kernel: (usize, usize),
        slots: &mut SlotCounter,
        conv_stage: &'static str,
    ) -> Result<Self> {
        let stacked = convs_through_cudnn(vb.device()) && !taps_in_place();
        Self::with_layout(vb, in_dim, out_dim, kernel, slots, conv_stage, stacked)
    }

    /// [`new`](Self::new) with the kernel layout chosen by the caller: `stacked` for one conv over
    /// stacked taps, else one conv per tap.
    fn with_layout(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        kernel: (usize, usize),
        slots: &mut SlotCounter,
        conv_stage: &'static str,
        stacked: bool,
    ) -> Result<Self> {
        let (kt, ks) = kernel;
        let weight = vb.get((out_dim, in_dim, kt, ks, ks), "weight")?;
        let bias = vb.get(out_dim, "bias")?;
        let bias_f32 = bias.to_dtype(DType::F32)?;
        let bias = bias.reshape((1, out_dim, 1, 1))?;
        let kernel = if stacked || kt == 1 {
            // [O, C, k_t, k, k] → [O, k_t, C, k, k] → [O, k_t·C, k, k]
            TemporalKernel::Stacked(weight.permute((0, 2, 1, 3, 4))?.contiguous()?.reshape((
                out_dim,
                kt * in_dim,
                ks,
                ks,
            ))?)
        } else {
            TemporalKernel::Taps(
                (0..kt)
                    .map(|j| Ok(weight.narrow(2, j, 1)?.squeeze(2)?.contiguous()?))
                    .collect::<Result<Vec<_>>>()?,
            )
        };
        let slot = (kt > 1).then(|| slots.next());
        Ok(Self {
            kernel,
            kt,
            bias,
            bias_f32,
            spatial_padding: (ks - 1) / 2,
            padding: ConvPadding::Zeros,
            out_dim,
            slot,
            conv_stage,
        })
    }

    /// The same conv with `padding` in time and space instead of zeros.
    pub fn with_padding(mut self, padding: ConvPadding) -> Self {
        self.padding = padding;
        self
    }

    /// x `[B, T, C, H, W]` → `[B, T, O, H, W]`, reading and updating this conv's cache slot.
    pub fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Result<Tensor> {
        self.forward_with_bias(x, cache, false).map(|(y, _)| y)
    }

    /// [`forward`](Self::forward), except that where the fused channel kernels run the bias is
    /// left out and returned (`[O]` f32) for the caller to add in its next pass over the output
    /// (the next norm's input bias, or the residual add), saving a pass of its own. Elsewhere
    /// the output has its bias and None is returned.
    pub fn forward_deferring_bias(
        &self,
        x: &Tensor,
        cache: &mut FeatureCache,
    ) -> Result<(Tensor, Option<&Tensor>)> {
        self.forward_with_bias(x, cache, true)
    }

    fn forward_with_bias(
        &self,
        x: &Tensor,
        cache: &mut FeatureCache,
        defer_bias: bool,
    ) -> Result<(Tensor, Option<&Tensor>)> {
        let (b, t, c, h, w) = x.dims5()?;
        let dev = x.device();
        let history = self.kt - 1;
        if let (TemporalKernel::Taps(taps), Some(slot)) = (&self.kernel, self.slot) {
            if b == 1
                && self.padding == ConvPadding::Zeros
                && taps_accumulate_in_place(x)
                && taps_over_cache()
            {
                let y = self.taps_over_cache_and_chunk(x, taps, slot, cache)?;
                return self.add_bias(y, x.dtype(), (b, t, h, w), defer_bias);
            }
        }
        let padded = match self.slot {
            None => x.clone(),
            Some(slot) => span(stage::FEATURE_CACHE, dev, || {
                // The stream so far: cached frames, then this chunk; zero frames (or copies of
                // the first frame, replicate padding) fill the rest of the history. History is
                // missing only while the cache still holds the whole stream, so the first frame
                // of `padded` is then the stream's first frame.
                let stream = match cache.previous_frames(slot) {
                    Some(prev) => Tensor::cat(&[prev, x], 1)?,
                    None => x.clone(),
                };
                let stream_len = stream.dim(1)?;
                let take = stream_len.min(t + history);
                let padded = stream.narrow(1, stream_len - take, take)?;
                let missing = t + history - take;
                let keep = history.min(stream_len);
                // A compact copy, not a view: a narrowed frame range of [B, T, C, H, W] with
                // B = 1 is already contiguous, and keeping it as a view would keep the whole
                // stream (k_t − 1 + T frames) alive per conv until the next chunk. Not
                // `Tensor::copy`, which clones the whole buffer under the view (candle 0.11).
                cache.slots[slot] = CacheSlot::Frames(
                    stream
                        .narrow(1, stream_len - keep, keep)?
                        .force_contiguous()?,
                );
                Ok(match (missing, self.padding) {
                    (0, _) => padded,
                    (_, ConvPadding::Zeros) => padded.pad_with_zeros(1, missing, 0)?,
                    (_, ConvPadding::Replicate) => padded.pad_with_same(1, missing, 0)?,
                })
            })?,
        }; // [B, T + k_t − 1, C, H, W]
        let p = self.spatial_padding;
        let (padded, conv_padding) = match self.padding {
            ConvPadding::Replicate if p > 0 => (
                span(stage::FEATURE_CACHE, dev, || {
                    Ok(padded.pad_with_same(3, p, p)?.pad_with_same(4, p, p)?)
                })?,
                0,
            ),
            _ => (padded, p),
        }; // [B, T + k_t − 1, C, H + 2p, W + 2p] when padded here
        let (hp, wp) = (padded.dim(3)?, padded.dim(4)?);
        let dtype = x.dtype();
        let y = match &self.kernel {
            TemporalKernel::Stacked(kernel) => {
                // window i = frames i..i+k_t of `padded`, side by side along channels
                let windows = if self.kt == 1 {
                    padded
                } else {
                    let stacked = span(stage::TAP_STACKING, dev, || {
                        let taps = (0..self.kt)
                            .map(|j| padded.narrow(1, j, t))
                            .collect::<candle_core::Result<Vec<_>>>()?;
                        Ok(Tensor::cat(&taps, 2)?)
                    })?;
                    drop(padded); // not needed beside its k_t-fold copy
                    stacked
                }; // [B, T, k_t·C, H, W]
                let y = span(self.conv_stage, dev, || {
                    conv2d_grouped(
                        &windows.reshape((b * t, self.kt * c, hp, wp))?,
                        kernel,
                        conv_padding,
                        1,
                    )
                })?; // [B·T, O, H, W], x's dtype or f32
                return self.add_bias(y, dtype, (b, t, h, w), defer_bias);
            }
            TemporalKernel::Taps(taps) if taps_accumulate_in_place(&padded) => {
                let y = span(self.conv_stage, dev, || {
                    self.accumulate_taps(&padded, taps, (b, t, c, hp, wp), conv_padding)
                })?; // [B·T, O, H, W] in x's dtype, no bias
                drop(padded);
                return self.add_bias(y, dtype, (b, t, h, w), defer_bias);
            }
            TemporalKernel::Taps(taps) => span(self.conv_stage, dev, || {
                // Taps are summed in f32 for half-precision inputs, as a fused Conv3d accumulates;
                // rounding each tap separately would add error that the reference does not have.
                let accumulate = if matches!(dtype, DType::F16 | DType::BF16) {
                    DType::F32
                } else {
                    dtype
                };
                let mut sum = self.bias.to_dtype(accumulate)?;
                for (j, tap) in taps.iter().enumerate() {
                    let frames =
                        padded
                            .narrow(1, j, t)?
                            .contiguous()?
                            .reshape((b * t, c, hp, wp))?;
                    let y = conv2d_grouped(&frames, tap, conv_padding, 1)?;
                    sum = sum.broadcast_add(&y.to_dtype(accumulate)?)?;
                }
                Ok(sum.to_dtype(dtype)?)
            })?,
        }; // [B·T, O, H, W]
        Ok((y.reshape((b, t, self.out_dim, h, w))?, None))
    }
}

impl CausalConv3d {
    /// The conv's bias on its output y `[B·T, O, H, W]` (x's dtype or f32) → `[B, T, O, H, W]` in
    /// the input dtype; left out and returned instead when `defer_bias` and the fused channel
    /// kernels run (see [`Self::forward_deferring_bias`]).
    fn add_bias(
        &self,
        y: Tensor,
        out_dtype: DType,
        (b, t, h, w): (usize, usize, usize, usize),
        defer_bias: bool,
    ) -> Result<(Tensor, Option<&Tensor>)> {
        let dev = y.device().clone();
        let y = if fused_channel_kernels(&y) && y.dtype() == out_dtype {
            if defer_bias {
                return Ok((y.reshape((b, t, self.out_dim, h, w))?, Some(&self.bias_f32)));
            }
            span(stage::CONV_BIAS, &dev, || {
                add_channel_bias(&y, &self.bias_f32, None)
            })?
        } else {
            span(stage::CONV_BIAS, &dev, || {
                Ok(y.broadcast_add(&self.bias.to_dtype(y.dtype())?)?
                    .to_dtype(out_dtype)?)
            })?
        };
        Ok((y.reshape((b, t, self.out_dim, h, w))?, None))
    }

    /// The temporal taps of a batch-1 chunk x `[1, T, C, H, W]` through cuDNN without joining the
    /// cached frames and the chunk: each tap convolves the frames it needs where they lie (a
    /// range of the cache, a range of the chunk, or both as two calls) and adds the result into
    /// the matching output frames in place; frames of the zero padding in front are skipped.
    /// The last tap reads exactly the chunk's frames, so it writes the whole output first.
    /// Updates `slot` with the stream's last k_t − 1 frames (a copy). → `[T, O, H, W]` in x's
    /// dtype, without the bias. At 720p this saves the (k_t − 1 + T)-frame joined stream per conv
    /// (1 GB for four frames of the last level) and the pass that wrote it.
    #[cfg(feature = "cudnn")]
    fn taps_over_cache_and_chunk(
        &self,
        x: &Tensor,
        taps: &[Tensor],
        slot: usize,
        cache: &mut FeatureCache,
    ) -> Result<Tensor> {
        use super::cudnn_conv::{conv2d_tensor_ops, conv2d_tensor_ops_accumulate};
        let (_, t, c, h, w) = x.dims5()?;
        let dev = x.device();
        let history = self.kt - 1;
        let padding = self.spatial_padding;
        // the cached frames that count: at most the last k_t − 1; zeros stand in for the rest
        let prev = match cache.previous_frames(slot) {
            Some(p) => {
                let n = p.dim(1)?;
                let keep = n.min(history);
                Some(p.narrow(1, n - keep, keep)?)
            }
            None => None,
        };
        let cached = prev.as_ref().map_or(Ok(0), |p| p.dim(1))?;
        let missing = history - cached;
        // frames [start, start + len) of a batch-1 stream part as a batch of images
        let frames = |part: &Tensor, start: usize, len: usize| -> Result<Tensor> {
            Ok(part.narrow(1, start, len)?.reshape((len, c, h, w))?)
        };
        let y = span(self.conv_stage, dev, || {
            let y = conv2d_tensor_ops(&frames(x, 0, t)?, &taps[history], padding)?;
            // Output frame i reads frame i + j of [zeros (missing), cached, chunk] through tap j.
            for (j, tap) in taps.iter().enumerate().take(history) {
                if let Some(prev) = &prev {
                    let (lo, hi) = (j.max(missing), (j + t).min(history));
                    if lo < hi {
                        let out = y.narrow(0, lo - j, hi - lo)?;
                        conv2d_tensor_ops_accumulate(
                            &out,
                            &frames(prev, lo - missing, hi - lo)?,
                            tap,
                            padding,
                        )?;
                    }
                }
                let (lo, hi) = (history, j + t);
                if lo < hi {
                    let out = y.narrow(0, lo - j, hi - lo)?;
                    conv2d_tensor_ops_accumulate(
                        &out,
                        &frames(x, lo - history, hi - lo)?,
                        tap,
                        padding,
                    )?;
                }
            }
            Ok(y)
        })?; // [T, O, H, W]
        span(stage::FEATURE_CACHE, dev, || {
            let keep = history.min(cached + t);
            let kept = if t >= keep {
                // compact: `Tensor::copy` would clone all of x's buffer (candle 0.11)
                x.narrow(1, t - keep, keep)?.force_contiguous()?
            } else {
                let prev = prev.as_ref().expect("keep > t means cached frames exist");
                Tensor::cat(&[&prev.narrow(1, cached - (keep - t), keep - t)?, x], 1)?
            };
            cache.slots[slot] = CacheSlot::Frames(kept);
            Ok(())
        })?;
        Ok(y)
    }

    #[cfg(not(feature = "cudnn"))]
    fn taps_over_cache_and_chunk(
        &self,
        _: &Tensor,
        _: &[Tensor],
        _: usize,
        _: &mut FeatureCache,
    ) -> Result<Tensor> {
        unreachable!("taps_accumulate_in_place is false without cuDNN")
    }

    /// The temporal taps through cuDNN, each reading its frames of `padded` `[B, T + k_t − 1, C,
    /// H, W]` (spatially padded already when `conv_padding` is 0) where they lie (a frame range of a batch-1 stream is contiguous) and adding its conv
    /// to the output in place → `[B·T, O, H, W]` in the input dtype, without the bias. No stacked
    /// copy of k_t·C channels, at the cost of k_t roundings of the sum instead of one.
    #[cfg(feature = "cudnn")]
    fn accumulate_taps(
        &self,
        padded: &Tensor,
        taps: &[Tensor],
        (b, t, c, h, w): (usize, usize, usize, usize, usize),
        conv_padding: usize,
    ) -> Result<Tensor> {
        use super::cudnn_conv::{conv2d_tensor_ops, conv2d_tensor_ops_accumulate};
        let frames = |j: usize| -> Result<Tensor> {
            Ok(padded
                .narrow(1, j, t)?
                .contiguous()?
                .reshape((b * t, c, h, w))?)
        };
        let y = conv2d_tensor_ops(&frames(0)?, &taps[0], conv_padding)?;
        for (j, tap) in taps.iter().enumerate().skip(1) {
            conv2d_tensor_ops_accumulate(&y, &frames(j)?, tap, conv_padding)?;
        }
        Ok(y)
    }

    #[cfg(not(feature = "cudnn"))]
    fn accumulate_taps(
        &self,
        _: &Tensor,
        _: &[Tensor],
        _: (usize, usize, usize, usize, usize),
        _: usize,
    ) -> Result<Tensor> {
        unreachable!("taps_accumulate_in_place is false without cuDNN")
    }
}

/// Environment variable: `0` turns off the default on cuDNN of convolving each temporal tap of a
/// causal conv from the frames where they lie and adding the taps in place
/// ([`super::cudnn_conv::conv2d_tensor_ops_accumulate`]), and goes back to one conv over a
/// k_t-fold stacked copy of the input (at 720p, 4.2 GB for four frames of the last level).
/// Measured on the H100 (scripts/gpu/NOTES.md, "Memory, round 2"): the 720p×81 decode peaks at
/// 22.1 GiB in 4.01 s in place against 26.7 GiB in 4.19 s stacked; at 480p 10.8 against 12.2 GiB
/// at the same time.
pub const TAPS_IN_PLACE_ENV: &str = "VDIT_VAE_TAPS";

/// Whether the taps are accumulated in place: unless [`TAPS_IN_PLACE_ENV`] is `0` (read once).
fn taps_in_place() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var(TAPS_IN_PLACE_ENV).map_or(true, |v| v.trim() != "0"))
}

/// Environment variable: `0` makes the in-place taps read a joined copy of the cached frames and
/// the chunk, as before, instead of each tap reading its frames where they lie
/// ([`CausalConv3d::taps_over_cache_and_chunk`]); for measuring the two side by side.
pub const TAPS_OVER_CACHE_ENV: &str = "VDIT_VAE_SPLIT_TAPS";

/// Unless [`TAPS_OVER_CACHE_ENV`] is `0` (read once).
fn taps_over_cache() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var(TAPS_OVER_CACHE_ENV).map_or(true, |v| v.trim() != "0"))
}

/// Whether a tap conv over `padded` runs as in-place cuDNN accumulation: [`taps_in_place`], a
/// cuDNN build, a 16-bit CUDA input and the tensor-core path on.
fn taps_accumulate_in_place(padded: &Tensor) -> bool {
    #[cfg(feature = "cudnn")]
    {
        taps_in_place()
            && padded.device().is_cuda()
            && matches!(padded.dtype(), DType::BF16 | DType::F16)
            && super::cudnn_conv::enabled()
    }
    #[cfg(not(feature = "cudnn"))]
    {
        let _ = padded;
        false
    }
}

/// Wan's RMS_norm: L2-normalise over channels at every pixel, times √C and γ (plus a bias if the
/// checkpoint has one). Half-precision inputs are normalised in f32, as diffusers does.
#[derive(Debug, Clone)]
pub struct ChannelRmsNorm {
    gamma: Tensor, // [1, C, 1, 1]
    bias: Option<Tensor>,
    /// γ and the bias as `[C]` f32, for the fused CUDA kernel.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    gamma_f32: Tensor,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    bias_f32: Option<Tensor>,
    scale: f64,
    /// `[1, C]` f32 ones: the channel sum of the GPU path as a matmul, made once.
    ones: Tensor,
}

/// The floor of the channel norm (F.normalize's eps): an all-zero pixel stays zero.
const NORM_FLOOR: f64 = 1e-12;

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
        let as_f32 = |t: &Tensor| -> Result<Tensor> { Ok(t.flatten_all()?.to_dtype(DType::F32)?) };
        Ok(Self {
            gamma_f32: as_f32(&gamma)?,
            bias_f32: bias.as_ref().map(as_f32).transpose()?,
            gamma,
            bias,
            scale: (dim as f64).sqrt(),
            ones: Tensor::ones((1, dim), DType::F32, vb.device())?,
        })
    }

    /// x `[N, C, H, W]` → same shape.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if fused_channel_kernels(x) {
            return self.forward_fused(x, None, false);
        }
        if x.device().is_cpu() {
            self.forward_reference(x)
        } else {
            self.forward_lean(x)
        }
    }

    /// SiLU(norm(x + input_bias)) on frames-major video `[B, T, C, H, W]`; `input_bias` `[C]` f32
    /// is the bias a conv left out of x ([`CausalConv3d::forward_deferring_bias`]). One kernel
    /// where [`fused_channel_kernels`] holds (f32 throughout, one rounding); else the bias add,
    /// [`forward`](Self::forward) and [`silu`] as separate passes, each rounded.
    pub fn forward_video_silu(&self, x: &Tensor, input_bias: Option<&Tensor>) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        let frames = x.reshape((b * t, c, h, w))?;
        #[cfg(feature = "cuda")]
        if fused_channel_kernels(x) {
            return Ok(self
                .forward_fused(&frames, input_bias, true)?
                .reshape((b, t, c, h, w))?);
        }
        let frames = match input_bias {
            Some(bias) => add_channel_bias(&frames, bias, None)?,
            None => frames,
        };
        Ok(silu(&self.forward(&frames)?)?.reshape((b, t, c, h, w))?)
    }

    /// One pass of rainfusion's channel norm kernel over x `[N, C, H, W]` (bf16/f16/f32, CUDA):
    /// normalised, scaled by √C·γ, shifted, optionally SiLU, in f32, rounded once.
    #[cfg(feature = "cuda")]
    fn forward_fused(&self, x: &Tensor, input_bias: Option<&Tensor>, silu: bool) -> Result<Tensor> {
        Ok(rainfusion::cuda::fused::channel_rms_norm(
            x,
            &self.gamma_f32,
            self.bias_f32.as_ref(),
            input_bias,
            self.scale,
            NORM_FLOOR,
            silu,
        )?)
    }

    /// The CPU path: normalised in f32 (for half precision), rounded, then scaled.
    fn forward_reference(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = if matches!(dtype, DType::F16 | DType::BF16) {
            x.to_dtype(DType::F32)?
        } else {
            x.clone()
        };
        let norm = xf.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(NORM_FLOOR)?;
        let normalized = xf.broadcast_div(&norm)?.to_dtype(dtype)?;
        let y = (normalized * self.scale)?.broadcast_mul(&self.gamma)?;
        self.add_bias(y)
    }

    /// The GPU path without the fused kernel ([`FUSED_NORM_ENV`]` = 0`, or a build without
    /// `cuda`), with fewer passes over the activation and none in f32 after the norm: the
    /// sum of squares over channels in f32 as a matmul with ones (candle's reduce kernel runs one
    /// block per pixel for a channel sum), then x times √C/‖x‖ (per pixel) and γ in x's dtype.
    /// Three roundings in half precision, as in [`forward_reference`](Self::forward_reference).
    fn forward_lean(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let squares = x.to_dtype(DType::F32)?.sqr()?.reshape((n, c, h * w))?; // [N, C, H·W]
        let sum = self
            .ones
            .broadcast_matmul(&squares)?
            .reshape((n, 1, h, w))?; // [N, 1, H, W] f32
        let factor =
            (sum.sqrt()?.maximum(NORM_FLOOR)?.recip()? * self.scale)?.to_dtype(x.dtype())?;
        let y = x.broadcast_mul(&factor)?.broadcast_mul(&self.gamma)?;
        self.add_bias(y)
    }

    fn add_bias(&self, y: Tensor) -> Result<Tensor> {
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{Device, Tensor};
    use candle_nn::VarBuilder;

    use super::*;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        rainfusion::reference::max_abs_diff(a, b).unwrap()
    }

    fn vars(tensors: Vec<(&str, Tensor)>, dtype: DType) -> VarBuilder<'static> {
        let map: HashMap<String, Tensor> = tensors
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        VarBuilder::from_tensors(map, dtype, &Device::Cpu)
    }

    /// The cuDNN layout (taps stacked along channels, one conv) must compute the same causal
    /// conv as the per-tap sum, chunk after chunk through the cache.
    #[test]
    fn cache_slots_hold_only_their_frames() {
        // A slot keeps k_t − 1 frames of history in a buffer of exactly that size: a view, or
        // candle's `Tensor::copy` of a view (which clones the whole buffer under it), would keep
        // the chunk's or the joined stream's buffer alive until the next chunk.
        let dev = Device::Cpu;
        let (o, c, kt, ks) = (3, 2, 3, 3);
        let vb = vars(
            vec![
                (
                    "weight",
                    Tensor::randn(0f32, 1.0, (o, c, kt, ks, ks), &dev).unwrap(),
                ),
                ("bias", Tensor::zeros(o, DType::F32, &dev).unwrap()),
            ],
            DType::F32,
        );
        let conv = CausalConv3d::new(
            vb,
            c,
            o,
            (kt, ks),
            &mut SlotCounter::default(),
            stage::conv3d(0),
        )
        .unwrap();
        let mut cache = FeatureCache::new(1);
        for (t, history) in [(1, 1), (4, 2), (4, 2)] {
            let x = Tensor::randn(0f32, 1.0, (1, t, c, 5, 6), &dev).unwrap();
            conv.forward(&x, &mut cache).unwrap();
            let kept = cache
                .previous_frames(0)
                .expect("a temporal conv keeps history");
            assert_eq!(kept.dim(1).unwrap(), history, "t={t}");
            let (storage, _) = kept.storage_and_layout();
            let candle_core::Storage::Cpu(cpu) = &*storage else {
                unreachable!("a CPU tensor")
            };
            let held = cpu.as_slice::<f32>().unwrap().len();
            assert_eq!(
                held,
                kept.elem_count(),
                "t={t}: the slot's buffer holds only its frames"
            );
        }
    }

    #[test]
    fn stacked_taps_match_per_tap_sum() {
        let dev = Device::Cpu;
        let (o, c, kt, ks) = (5, 4, 3, 3);
        let weight = Tensor::randn(0f32, 1.0, (o, c, kt, ks, ks), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, o, &dev).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let vb = vars(
                vec![("weight", weight.clone()), ("bias", bias.clone())],
                dtype,
            );
            let build = |stacked| {
                CausalConv3d::with_layout(
                    vb.clone(),
                    c,
                    o,
                    (kt, ks),
                    &mut SlotCounter::default(),
                    stage::conv3d(0),
                    stacked,
                )
                .unwrap()
            };
            let (stacked, per_tap) = (build(true), build(false));
            assert!(matches!(stacked.kernel, TemporalKernel::Stacked(_)));
            assert!(matches!(per_tap.kernel, TemporalKernel::Taps(_)));
            let (mut cache_s, mut cache_t) = (FeatureCache::new(1), FeatureCache::new(1));
            for t in [1, 4, 2, 1] {
                let x = Tensor::randn(0f32, 1.0, (2, t, c, 6, 7), &dev)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let a = stacked.forward(&x, &mut cache_s).unwrap();
                let b = per_tap.forward(&x, &mut cache_t).unwrap();
                assert_eq!(a.dims(), &[2, t, o, 6, 7]);
                assert_eq!(a.dtype(), dtype);
                // outputs are O(10): f32 summation order, or one bf16 rounding (2^-8 relative)
                let tol = if dtype == DType::F32 { 1e-4 } else { 0.25 };
                let diff = max_abs_diff(&a, &b);
                assert!(diff < tol, "{dtype:?} t={t}: {diff}");
            }
        }
    }

    /// Replicate padding (HunyuanVideo 1.5): a stream fed in chunks equals a conv without padding
    /// over the whole stream with its first frame repeated k_t − 1 times in front and every
    /// frame's border pixels repeated around it; in both kernel layouts.
    #[test]
    fn replicate_padding_matches_explicit_padding() {
        let dev = Device::Cpu;
        let (o, c, kt, ks) = (3, 2, 3, 3);
        let weight = Tensor::randn(0f32, 1.0, (o, c, kt, ks, ks), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, o, &dev).unwrap();
        let stream = Tensor::randn(0f32, 1.0, (1, 4, c, 5, 6), &dev).unwrap(); // [B, T, C, H, W]
                                                                               // reference: explicit padding, then Σ over taps of a conv2d without padding
        let padded = stream
            .pad_with_same(1, kt - 1, 0)
            .unwrap()
            .pad_with_same(3, 1, 1)
            .unwrap()
            .pad_with_same(4, 1, 1)
            .unwrap(); // [1, T + 2, C, 7, 8]
        let mut expected = bias.reshape((1, o, 1, 1)).unwrap();
        for j in 0..kt {
            let tap = weight.narrow(2, j, 1).unwrap().squeeze(2).unwrap();
            let frames = padded.narrow(1, j, 4).unwrap().squeeze(0).unwrap(); // [T, C, 7, 8]
            let y = frames
                .contiguous()
                .unwrap()
                .conv2d(&tap.contiguous().unwrap(), 0, 1, 1, 1);
            expected = expected.broadcast_add(&y.unwrap()).unwrap();
        }
        let vb = vars(vec![("weight", weight), ("bias", bias)], DType::F32);
        for stacked in [true, false] {
            let conv = CausalConv3d::with_layout(
                vb.clone(),
                c,
                o,
                (kt, ks),
                &mut SlotCounter::default(),
                stage::conv3d(0),
                stacked,
            )
            .unwrap()
            .with_padding(ConvPadding::Replicate);
            let mut cache = FeatureCache::new(1);
            let mut outs = Vec::new();
            for (start, len) in [(0, 1), (1, 2), (3, 1)] {
                let chunk = stream.narrow(1, start, len).unwrap();
                outs.push(conv.forward(&chunk, &mut cache).unwrap());
            }
            let got = Tensor::cat(&outs, 1).unwrap().squeeze(0).unwrap(); // [T, O, 5, 6]
            let diff = max_abs_diff(&got, &expected);
            assert!(diff < 1e-4, "stacked {stacked}: {diff}");
        }
    }

    /// Every documented value of the algorithm variable parses to its own algorithm; anything
    /// else is an error naming the variable.
    #[test]
    fn conv_algo_names_parse() {
        let names = [
            "implicit-gemm",
            "implicit-precomp-gemm",
            "gemm",
            "direct",
            "fft",
            "fft-tiling",
            "winograd",
            "winograd-nonfused",
        ];
        let algos: Vec<CudnnFwdAlgo> = names.iter().map(|n| parse_conv_algo(n).unwrap()).collect();
        for (i, a) in algos.iter().enumerate() {
            assert!(algos[..i].iter().all(|b| b != a), "{} repeats", names[i]);
        }
        assert_eq!(parse_conv_algo("fft").unwrap(), CudnnFwdAlgo::Fft);
        let err = parse_conv_algo("Winograd").unwrap_err();
        assert!(err.contains(CONV_ALGO_ENV), "{err}");
    }

    /// Stage names are leaves of one fixed set; levels past the last share the last name.
    #[test]
    fn stage_names_by_level() {
        assert_ne!(stage::conv3d(0), stage::conv3d(3));
        assert_eq!(stage::conv3d(7), stage::conv3d(4));
        assert!(stage::upsample_conv(1).contains("level 1"));
        assert!(stage::conv3d(2).starts_with("vae: "));
    }

    /// A 1×1×1 conv (shortcut, post_quant_conv) is one conv2d in either layout.
    #[test]
    fn pointwise_conv_ignores_layout() {
        let dev = Device::Cpu;
        let weight = Tensor::randn(0f32, 1.0, (3, 4, 1, 1, 1), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 3, &dev).unwrap();
        let vb = vars(
            vec![("weight", weight.clone()), ("bias", bias.clone())],
            DType::F32,
        );
        let conv = CausalConv3d::new(
            vb,
            4,
            3,
            (1, 1),
            &mut SlotCounter::default(),
            stage::POINTWISE_CONV,
        )
        .unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 2, 4, 3, 5), &dev).unwrap();
        let y = conv.forward(&x, &mut FeatureCache::new(0)).unwrap();
        // y[b,t,o,h,w] = Σ_c W[o,c]·x[b,t,c,h,w] + bias[o]
        let w2 = weight.reshape((3, 4)).unwrap();
        let expected = w2
            .broadcast_matmul(&x.reshape((2, 4, 15)).unwrap())
            .unwrap()
            .broadcast_add(&bias.reshape((3, 1)).unwrap())
            .unwrap()
            .reshape((1, 2, 3, 3, 5))
            .unwrap();
        assert!(max_abs_diff(&y, &expected) < 1e-5);
    }

    /// The GPU norm (matmul channel sum, scale folded into a per-pixel factor) equals the CPU one.
    #[test]
    fn lean_norm_matches_reference() {
        let dev = Device::Cpu;
        let dim = 6;
        let gamma = Tensor::randn(1f32, 0.2, (dim, 1, 1, 1), &dev).unwrap();
        let bias = Tensor::randn(0f32, 0.2, (dim, 1, 1, 1), &dev).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let norm = ChannelRmsNorm::new(
                vars(
                    vec![("gamma", gamma.clone()), ("bias", bias.clone())],
                    dtype,
                ),
                dim,
                false,
            )
            .unwrap();
            // one pixel all zeros: the 1e-12 floor, not a division by zero
            let x = Tensor::randn(0f32, 3.0, (2, dim, 4, 5), &dev)
                .unwrap()
                .slice_assign(
                    &[0..1, 0..dim, 0..1, 0..1],
                    &Tensor::zeros((1, dim, 1, 1), DType::F32, &dev).unwrap(),
                )
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let a = norm.forward_lean(&x).unwrap();
            let b = norm.forward_reference(&x).unwrap();
            assert_eq!(a.dtype(), dtype);
            assert_eq!(a.dims(), x.dims());
            // outputs are O(√6·γ) ≈ 3: f32 rounding, or a few bf16 ulps
            let tol = if dtype == DType::F32 { 1e-5 } else { 0.1 };
            let diff = max_abs_diff(&a, &b);
            assert!(diff < tol, "{dtype:?}: {diff}");
            let finite = a
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert!(finite.iter().all(|v| v.is_finite()));
        }
    }
}
