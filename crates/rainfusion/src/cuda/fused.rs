//! Fused elementwise kernels around attention in a video-DiT block (`kernels/fused.cu`), as
//! candle custom ops. Each replaces a chain of candle ops that would each read and write the
//! whole `[B, L, dim]` activation (in f32): LayerNorm + modulation, q/k RMSNorm + RoPE,
//! bias + gate + residual add (the row kernels, in `rows.rs`, re-exported here), bias + gelu.
//!
//! All arithmetic is f32; the residual stream is f32, the other activations bf16 or f16.
//!
//! Two channel-axis kernels serve a VAE decoder's `[N, C, pixels]` activations (bf16, f16 or
//! f32): [`channel_rms_norm`] (L2 norm over channels with γ, β, an optional input bias and an
//! optional SiLU, one read and one write) and [`channel_bias_add`] (a conv's per-channel bias,
//! optionally with a residual).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorage, WrapErr};
use candle_core::{DType, Layout, Shape, Tensor};

use super::checks::{check_16bit, check_cuda, check_rows, check_vector, side_ptr};
use super::launch::{kernel, CudaOnly, Floats, KernelFloat, TypedInplaceOp, TypedOp};
use super::module::FUSED;
use crate::{Error, Result};

pub use super::rows::{gated_residual, gated_residual_norm, layer_norm_affine, rms_norm_rope};

/// Threads per CTA of `rf_bias_gelu` (`THREADS` in fused.cu).
const THREADS: u32 = 256;

/// `gelu_tanh(y + bias)` in place. y: `[..., n]` bf16/f16, contiguous (a fresh matmul output);
/// bias: `[n]` in y's dtype.
pub fn bias_gelu_inplace(y: &Tensor, bias: Option<&Tensor>) -> Result<()> {
    check_cuda(y, "bias_gelu")?;
    check_16bit(y.dtype(), "bias_gelu input")?;
    if !y.is_contiguous() {
        return Err(Error::InvalidConfig(
            "bias_gelu works in place on a contiguous tensor".into(),
        ));
    }
    let n = *y
        .dims()
        .last()
        .ok_or_else(|| Error::InvalidConfig("bias_gelu needs at least one axis".into()))?;
    let bias = match bias {
        Some(bias) => {
            check_vector(bias, n, y.dtype(), "bias")?;
            Some(bias.contiguous()?)
        }
        None => None,
    };
    Ok(y.inplace_op1(&CudaOnly(BiasGeluOp { bias }))?)
}

/// Shared memory of one [`channel_rms_norm`] CTA for its `[C, tile]` slab of x; the tile shrinks
/// as C grows. With the partial sums beside it a CTA asks for 49 KiB (the limit is raised at
/// load): 4 CTAs per SM, as many as the kernel's registers allow.
const CHANNEL_NORM_SMEM: usize = 48 * 1024;
/// Threads per CTA of the channel kernels (`CHANNEL_THREADS` in fused.cu).
const CHANNEL_THREADS: usize = 256;
/// Pixels one `rf_channel_bias` CTA covers (`CHANNEL_THREADS · BIAS_PER_THREAD` in fused.cu).
const BIAS_TILE: usize = CHANNEL_THREADS * 8;

/// The L2 ("RMS") norm over channels of a VAE activation, at every pixel, in one pass:
///
/// `y = act(u · scale / max(‖u‖_C, norm_floor) · gamma[c] + beta[c])` with `u = x + input_bias[c]`
/// and `act` = SiLU when `silu`, else the identity.
///
/// x: `[N, C, ...]` bf16, f16 or f32 on CUDA (the trailing axes are the pixels, e.g. `[N, C, H,
/// W]`); gamma: `[C]` f32; beta: `[C]` f32 (the norm's own bias, if it has one); input_bias: `[C]`
/// f32 (the bias of the conv that produced x, when the conv left it out). → x's shape and dtype.
/// f32 arithmetic, one rounding of the result: x is read once and y written once.
pub fn channel_rms_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: Option<&Tensor>,
    input_bias: Option<&Tensor>,
    scale: f64,
    norm_floor: f64,
    silu: bool,
) -> Result<Tensor> {
    check_cuda(x, "channel_rms_norm")?;
    let channels = channel_dims(x, "channel_rms_norm")?.1;
    let elem = x.dtype().size_in_bytes();
    if channel_norm_tile(channels, elem).is_none() {
        return Err(Error::InvalidConfig(format!(
            "channel_rms_norm: {channels} channels of {:?} do not fit one CTA's shared memory",
            x.dtype()
        )));
    }
    let vector = |t: &Tensor, what: &str| -> Result<Tensor> {
        check_vector(t, channels, DType::F32, what)?;
        Ok(t.contiguous()?)
    };
    let optional = |t: Option<&Tensor>, what: &str| t.map(|t| vector(t, what)).transpose();
    let op = ChannelNormOp {
        gamma: vector(gamma, "channel_rms_norm gamma")?,
        beta: optional(beta, "channel_rms_norm beta")?,
        input_bias: optional(input_bias, "channel_rms_norm input bias")?,
        scale: scale as f32,
        norm_floor: norm_floor as f32,
        silu,
    };
    Ok(x.contiguous()?.apply_op1_no_bwd(&CudaOnly(op))?)
}

/// `x + bias[c]` (plus `residual`, when given) in one pass: a conv's per-channel bias, and the
/// residual add that may follow it.
///
/// x: `[N, C, ...]` bf16, f16 or f32 on CUDA; bias: `[C]` f32; residual: x's shape and dtype.
/// → x's shape and dtype, rounded once from f32.
pub fn channel_bias_add(x: &Tensor, bias: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
    check_cuda(x, "channel_bias_add")?;
    let channels = channel_dims(x, "channel_bias_add")?.1;
    check_vector(bias, channels, DType::F32, "channel_bias_add bias")?;
    let residual = match residual {
        Some(r) => {
            if r.dims() != x.dims() || r.dtype() != x.dtype() {
                return Err(Error::InvalidConfig(format!(
                    "channel_bias_add: residual {:?} {:?} must match x {:?} {:?}",
                    r.dims(),
                    r.dtype(),
                    x.dims(),
                    x.dtype()
                )));
            }
            Some(r.contiguous()?)
        }
        None => None,
    };
    let op = ChannelBiasOp {
        bias: bias.contiguous()?,
        residual,
    };
    Ok(x.contiguous()?.apply_op1_no_bwd(&CudaOnly(op))?)
}

/// (images N, channels C, pixels) of a `[N, C, ...]` activation for the channel kernels.
fn channel_dims(x: &Tensor, what: &str) -> Result<(usize, usize, usize)> {
    let dims = x.dims();
    if dims.len() < 2 {
        return Err(Error::InvalidConfig(format!(
            "{what}: x must be [N, C, ...], got {dims:?}"
        )));
    }
    if !matches!(x.dtype(), DType::BF16 | DType::F16 | DType::F32) {
        return Err(Error::InvalidConfig(format!(
            "{what}: x must be bf16, f16 or f32, got {:?}",
            x.dtype()
        )));
    }
    let (n, c) = (dims[0], dims[1]);
    let pixels: usize = dims[2..].iter().product();
    if n == 0 || c == 0 || pixels == 0 || c > i32::MAX as usize {
        return Err(Error::InvalidConfig(format!(
            "{what}: empty or oversized x {dims:?}"
        )));
    }
    Ok((n, c, pixels))
}

/// Pixels per `rf_channel_norm` CTA: the widest power of two up to 128 whose `[C, tile]` slab
/// fits [`CHANNEL_NORM_SMEM`] (64 at C = 384 in 16 bits, 128 at C ≤ 192). A power of two at most
/// the thread count, as the kernel's lane split needs.
fn channel_norm_tile(channels: usize, elem_bytes: usize) -> Option<usize> {
    let mut tile = 128.min(CHANNEL_THREADS);
    while tile > 0 {
        if channels * tile * elem_bytes <= CHANNEL_NORM_SMEM {
            return Some(tile);
        }
        tile /= 2;
    }
    None
}

/// CTAs for `rows` independent pieces of `tiles` CTAs each, on the grid's x axis (no 65535 limit).
fn channel_launch(rows: usize, tiles: usize, smem: usize) -> candle_core::Result<LaunchConfig> {
    let blocks = rows
        .checked_mul(tiles)
        .filter(|&b| b > 0 && b <= i32::MAX as usize)
        .ok_or_else(|| candle_core::Error::Msg(format!("channel kernels: {rows}×{tiles} CTAs")))?;
    Ok(LaunchConfig {
        grid_dim: (blocks as u32, 1, 1),
        block_dim: (CHANNEL_THREADS as u32, 1, 1),
        shared_mem_bytes: smem as u32,
    })
}

fn row_launch(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

struct BiasGeluOp {
    bias: Option<Tensor>,
}

impl TypedInplaceOp for BiasGeluOp {
    const NAME: &'static str = "bias_gelu";
    const FLOATS: Floats = Floats::Half;

    fn run<T: KernelFloat>(&self, y: &mut CudaStorage, layout: &Layout) -> candle_core::Result<()> {
        let dims = layout.shape().dims();
        let n = *dims.last().unwrap_or(&1);
        let rows = layout.shape().elem_count() / n.max(1);
        check_rows(rows)?;
        let dev = y.device().clone();
        let func = kernel::<T>(&dev, &FUSED, "rf_bias_gelu", 0)?;
        let bias = side_ptr::<T>(self.bias.as_ref())?;
        let start = layout.start_offset();
        let slice = y.as_cuda_slice_mut::<T>()?;
        let mut view = slice.slice_mut(start..);
        let n_i = n as i32;
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder.arg(&mut view).arg(&bias).arg(&n_i);
        // SAFETY: arguments match rf_bias_gelu_* in fused.cu; y is contiguous (checked).
        unsafe { builder.launch(row_launch(rows)) }.w()?;
        Ok(())
    }
}

struct ChannelNormOp {
    gamma: Tensor,
    beta: Option<Tensor>,
    input_bias: Option<Tensor>,
    scale: f32,
    norm_floor: f32,
    silu: bool,
}

impl TypedOp for ChannelNormOp {
    const NAME: &'static str = "channel_rms_norm";
    const FLOATS: Floats = Floats::HalfAndF32;

    fn run<T: KernelFloat>(
        &self,
        x: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let shape = layout.shape().clone();
        let dims = shape.dims();
        let (images, channels) = (dims[0], dims[1]);
        let pixels: usize = dims[2..].iter().product();
        let elem = std::mem::size_of::<T>();
        let tile = channel_norm_tile(channels, elem)
            .ok_or_else(|| candle_core::Error::Msg("channel_rms_norm: too many channels".into()))?;
        let tiles = pixels.div_ceil(tile);
        // partial sums of squares (a float per thread), then the slab
        let smem = CHANNEL_THREADS * 4 + channels * tile * elem;
        let cfg = channel_launch(images, tiles, smem)?;
        let dev = x.device().clone();
        let func = kernel::<T>(&dev, &FUSED, "rf_channel_norm", smem as u32)?;
        let x_view = x.as_cuda_slice::<T>()?.slice(layout.start_offset()..);
        // SAFETY: the kernel writes every element (every pixel of every tile, every channel).
        let out: CudaSlice<T> = unsafe { dev.alloc::<T>(shape.elem_count())? };
        let in_bias = side_ptr::<f32>(self.input_bias.as_ref())?;
        let gamma = side_ptr::<f32>(Some(&self.gamma))?;
        let beta = side_ptr::<f32>(self.beta.as_ref())?;
        let (channels_i, pixels_i, tile_i, tiles_i) =
            (channels as i32, pixels as i64, tile as i32, tiles as i64);
        let apply_silu = i32::from(self.silu);
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder
            .arg(&x_view)
            .arg(&in_bias)
            .arg(&gamma)
            .arg(&beta)
            .arg(&out)
            .arg(&channels_i)
            .arg(&pixels_i)
            .arg(&tile_i)
            .arg(&tiles_i)
            .arg(&self.scale)
            .arg(&self.norm_floor)
            .arg(&apply_silu);
        // SAFETY: arguments match rf_channel_norm_* in fused.cu; x is contiguous [N, C, pixels]
        // (made so by the caller); the side vectors hold [C] floats; the dynamic shared memory
        // is the [C, tile] slab the kernel indexes.
        unsafe { builder.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), shape))
    }
}

struct ChannelBiasOp {
    bias: Tensor,
    residual: Option<Tensor>,
}

impl TypedOp for ChannelBiasOp {
    const NAME: &'static str = "channel_bias_add";
    const FLOATS: Floats = Floats::HalfAndF32;

    fn run<T: KernelFloat>(
        &self,
        x: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let shape = layout.shape().clone();
        let dims = shape.dims();
        let (images, channels) = (dims[0], dims[1]);
        let pixels: usize = dims[2..].iter().product();
        let tiles = pixels.div_ceil(BIAS_TILE);
        let cfg = channel_launch(images * channels, tiles, 0)?;
        let dev = x.device().clone();
        let func = kernel::<T>(&dev, &FUSED, "rf_channel_bias", 0)?;
        let x_view = x.as_cuda_slice::<T>()?.slice(layout.start_offset()..);
        // SAFETY: the kernel writes every element (every pixel of every row).
        let out: CudaSlice<T> = unsafe { dev.alloc::<T>(shape.elem_count())? };
        let bias = side_ptr::<f32>(Some(&self.bias))?;
        let residual = side_ptr::<T>(self.residual.as_ref())?;
        let (channels_i, pixels_i, tiles_i) = (channels as i32, pixels as i64, tiles as i64);
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder
            .arg(&x_view)
            .arg(&bias)
            .arg(&residual)
            .arg(&out)
            .arg(&channels_i)
            .arg(&pixels_i)
            .arg(&tiles_i);
        // SAFETY: arguments match rf_channel_bias_* in fused.cu; x and the residual are
        // contiguous [N, C, pixels] of the same shape (checked); bias holds [C] floats.
        unsafe { builder.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), shape))
    }
}
