//! Row kernels of a DiT block's residual stream (`kernels/fused.cu`): the gated residual update
//! and the LayerNorm that follows it, alone or in one pass, and the q/k RMSNorm with RoPE.
//!
//! Each row (`dim` channels of one token) is held in the registers of a group of 1, 2, 4 or 8
//! warps, read with 16-byte (f32) or 8-byte (16-bit) accesses where the width and pointers
//! allow, and reduced with warp shuffles. Re-exported from [`super::fused`].
//!
//! These warp-per-row forms have not yet run on a GPU, so they are opt-in:
//! `RAINFUSION_CUDA_ROW_KERNELS=1` selects them, and otherwise the CTA-per-row kernels of
//! [`super::rows_cta`] run (the fused residual-and-norm then as its two kernels).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DevicePtr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaStorage, WrapErr};
use candle_core::{DType, Layout, Shape, Tensor};

use super::checks::{check_16bit, check_cuda, check_dtype, check_rows, side_ptr, storage_ptr};
use super::launch::{kernel, CudaOnly, Floats, KernelFloat, TypedOp};
use super::module::FUSED;
use super::row_args::{Norm, Residual, RmsRope};
use super::rows_cta;
use crate::{Error, Result};

/// Environment variable: `1` runs the warp-per-row kernels of this module instead of the
/// CTA-per-row ones (until a GPU run has checked them and made them the default).
pub const ROW_KERNELS_ENV: &str = "RAINFUSION_CUDA_ROW_KERNELS";

/// Whether [`ROW_KERNELS_ENV`] selects the warp-per-row kernels (read at every call, so a test
/// or benchmark can compare both in one process).
fn warp_rows() -> bool {
    std::env::var(ROW_KERNELS_ENV).is_ok_and(|v| v.trim() == "1")
}

/// Threads per CTA (`THREADS` in fused.cu).
const THREADS: usize = 256;
/// Values of a row each lane keeps in registers (`LANE_VALUES` in fused.cu).
const LANE_VALUES: usize = 48;
/// Widest row: every warp of a CTA on one row.
const MAX_ROW: usize = THREADS * LANE_VALUES;

/// `LayerNorm(x)·a + c` over the last axis (no learned affine inside the norm; two-pass
/// mean/variance in f32), rounded once to `dtype`.
///
/// x: `[B, L, dim]` f32 on CUDA. a, c: `[B, dim]` (per batch: modulation `1 + scale`, `shift`) or
/// `[dim]` (an affine norm's weight and bias), f32. → `[B, L, dim]` in `dtype` (bf16 or f16).
pub fn layer_norm_affine(
    x: &Tensor,
    a: &Tensor,
    c: &Tensor,
    eps: f64,
    dtype: DType,
) -> Result<Tensor> {
    check_stream(x, "layer_norm_affine", false)?;
    let norm = Norm::new(x, a, c, eps, dtype)?;
    if !warp_rows() {
        return rows_cta::layer_norm_affine(x, norm);
    }
    let op = ResidualNormOp {
        residual: None,
        norm: Some(norm),
        h: None,
    };
    Ok(x.contiguous()?.apply_op1_no_bwd(&CudaOnly(op))?)
}

/// `x + (y + bias)·gate`: a block's residual update. x: `[B, L, dim]` f32; y: `[B, L, dim]`
/// bf16/f16 (a linear layer's output before its bias); bias: `[dim]` in y's dtype; gate:
/// `[B, dim]` f32. → `[B, L, dim]` f32.
pub fn gated_residual(
    x: &Tensor,
    y: &Tensor,
    bias: Option<&Tensor>,
    gate: Option<&Tensor>,
) -> Result<Tensor> {
    // The CTA-per-row update strides over its row: any width.
    check_stream(x, "gated_residual", true)?;
    let residual = Residual::new(x, y, bias, gate)?;
    if !warp_rows() {
        return rows_cta::gated_residual(x, residual);
    }
    let op = ResidualNormOp {
        residual: Some(residual),
        norm: None,
        h: None,
    };
    Ok(x.contiguous()?.apply_op1_no_bwd(&CudaOnly(op))?)
}

/// [`gated_residual`] and then [`layer_norm_affine`] of its result, reading the stream once:
/// `v = x + (y + bias)·gate`, returned with `LayerNorm(v)·a + c` in `dtype` (y's dtype).
///
/// x: `[B, L, dim]` f32; y, bias, gate as in [`gated_residual`]; a, c as in
/// [`layer_norm_affine`]. → (`[B, L, dim]` f32, `[B, L, dim]` in `dtype`).
#[allow(clippy::too_many_arguments)]
pub fn gated_residual_norm(
    x: &Tensor,
    y: &Tensor,
    bias: Option<&Tensor>,
    gate: Option<&Tensor>,
    a: &Tensor,
    c: &Tensor,
    eps: f64,
    dtype: DType,
) -> Result<(Tensor, Tensor)> {
    check_stream(x, "gated_residual_norm", false)?;
    let residual = Residual::new(x, y, bias, gate)?;
    let norm = Norm::new(x, a, c, eps, dtype)?;
    if y.dtype() != dtype {
        return Err(Error::InvalidConfig(format!(
            "gated_residual_norm: y is {:?} but the norm's output is asked as {dtype:?}",
            y.dtype()
        )));
    }
    if !warp_rows() {
        let v = rows_cta::gated_residual(x, residual)?;
        let h = rows_cta::layer_norm_affine(&v, norm)?;
        return Ok((v, h));
    }
    let x = x.contiguous()?;
    // SAFETY: the kernel writes every element of h (every column of every row) before anything
    // reads it; it is not shared until then.
    let h = unsafe { Tensor::empty(x.dims(), dtype, x.device())? };
    let op = ResidualNormOp {
        residual: Some(residual),
        norm: Some(norm),
        h: Some(h.clone()),
    };
    let v = x.apply_op1_no_bwd(&CudaOnly(op))?;
    Ok((v, h))
}

/// `RoPE(RMSNorm(x + bias)·weight)`: the q/k path of Wan attention. RMS over the whole row (all
/// heads, `rms_norm_across_heads`), then, when `rope` is given, each head's interleaved channel
/// pairs rotated by the token's angles.
///
/// x: `[B, L, dim]` bf16/f16 (a linear layer's output before its bias), bias: `[dim]` in x's
/// dtype, weight: `[dim]` f32, rope: `(cos, sin)` each `[L, head_dim/2]` f32. → `[B, L, dim]` in
/// x's dtype, which is `[B, L, heads, head_dim]` memory as the attention kernels read it.
pub fn rms_norm_rope(
    x: &Tensor,
    bias: Option<&Tensor>,
    weight: &Tensor,
    rope: Option<(&Tensor, &Tensor)>,
    head_dim: usize,
    eps: f64,
) -> Result<Tensor> {
    let dim = x.dims3()?.2;
    check_cuda(x, "rms_norm_rope")?;
    check_16bit(x.dtype(), "rms_norm_rope input")?;
    check_width(dim, false)?;
    let rope = RmsRope::new(x, bias, weight, rope, head_dim, eps)?;
    if !warp_rows() {
        return rows_cta::rms_norm_rope(x, rope);
    }
    Ok(x.contiguous()?
        .apply_op1_no_bwd(&CudaOnly(RmsRopeOp(rope)))?)
}

/// x must be a `[B, L, dim]` f32 residual stream on CUDA, `dim` within the kernels' reach (see
/// [`check_width`]).
fn check_stream(x: &Tensor, what: &str, strides_over_row: bool) -> Result<()> {
    x.dims3()?;
    check_cuda(x, what)?;
    check_dtype(x, DType::F32, &format!("{what} x"))?;
    check_width(x.dim(2)?, strides_over_row)
}

/// `dim` within the reach of the kernels in use: those that hold a row in registers have a
/// widest row; the CTA-per-row residual update (`strides_over_row`) has none.
fn check_width(dim: usize, strides_over_row: bool) -> Result<()> {
    let widest = if warp_rows() {
        MAX_ROW
    } else if strides_over_row {
        usize::MAX
    } else {
        rows_cta::MAX_ROW
    };
    if dim == 0 || dim > widest {
        Err(Error::InvalidConfig(format!(
            "fused norm kernels take rows of 1..={widest} channels, got {dim}"
        )))
    } else {
        Ok(())
    }
}

/// Warps per row (the smallest group of 1, 2, 4 or 8 whose registers hold `dim` values) and the
/// launch for `rows` rows: a CTA holds 8 / group rows.
fn row_launch(rows: usize, dim: usize) -> candle_core::Result<(i32, LaunchConfig)> {
    check_rows(rows)?;
    let warps = THREADS / 32;
    let group = [1, 2, 4, 8]
        .into_iter()
        .find(|g| g * 32 * LANE_VALUES >= dim)
        .ok_or_else(|| {
            candle_core::Error::Msg(format!("fused row kernels: {dim} is wider than {MAX_ROW}"))
        })?;
    let blocks = u32::try_from(rows.div_ceil(warps / group))
        .map_err(|_| candle_core::Error::Msg(format!("fused row kernels: {rows} rows")))?;
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    Ok((group as i32, cfg))
}

/// Elements per access: 4 when the row width and every pointer allow 16-byte (f32) and 8-byte
/// (16-bit) accesses, else `narrow`. Null pointers (absent inputs) do not count.
fn access_width(dim: usize, pointers: &[u64], narrow: usize) -> usize {
    if dim.is_multiple_of(4) && pointers.iter().all(|p| p % 16 == 0) {
        4
    } else {
        narrow
    }
}

/// Allocates the op's `[rows, dim]` output in `T`; returns its storage and device pointer.
fn output<T: KernelFloat>(
    dev: &candle_core::cuda_backend::CudaDevice,
    n: usize,
) -> candle_core::Result<(CudaStorage, u64)> {
    // SAFETY: the row kernels write every element of their output.
    let out: CudaSlice<T> = unsafe { dev.alloc::<T>(n)? };
    let stream = dev.cuda_stream();
    let ptr = DevicePtr::device_ptr(&out, &stream).0;
    Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), ptr))
}

/// [`gated_residual`], [`layer_norm_affine`] or both (`rf_residual_norm_*`). The op's own output
/// is the updated stream when there is a residual, else the norm; with both, the norm is
/// written into `h`, allocated by the caller.
struct ResidualNormOp {
    residual: Option<Residual>,
    norm: Option<Norm>,
    h: Option<Tensor>,
}

impl TypedOp for ResidualNormOp {
    const NAME: &'static str = "residual_norm";
    const FLOATS: Floats = Floats::Half;

    fn dtype(&self, x: &CudaStorage) -> DType {
        match (&self.residual, &self.norm) {
            (Some(r), _) => r.y.dtype(),
            (None, Some(n)) => n.dtype,
            (None, None) => x.dtype(),
        }
    }

    fn run<T: KernelFloat>(
        &self,
        x: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (b, l, dim) = layout.shape().dims3()?;
        let rows = b * l;
        let (group, cfg) = row_launch(rows, dim)?;
        let dev = x.device().clone();
        let x_ptr = storage_ptr::<f32>(x, layout)?;
        let (y, bias, gate) = match &self.residual {
            Some(r) => (
                side_ptr::<T>(Some(&r.y))?,
                side_ptr::<T>(r.bias.as_ref())?,
                side_ptr::<f32>(r.gate.as_ref())?,
            ),
            None => (0, 0, 0),
        };
        let (a, c, ac_batch_stride, eps) = match &self.norm {
            Some(n) => (
                side_ptr::<f32>(Some(&n.a))?,
                side_ptr::<f32>(Some(&n.c))?,
                n.ac_batch_stride,
                n.eps,
            ),
            None => (0, 0, 0, 0.0),
        };
        let (storage, out, h) = if self.residual.is_some() {
            let (storage, out) = output::<f32>(&dev, rows * dim)?;
            (storage, out, side_ptr::<T>(self.h.as_ref())?)
        } else {
            let (storage, h) = output::<T>(&dev, rows * dim)?;
            (storage, 0, h)
        };
        let width = access_width(dim, &[x_ptr, y, bias, gate, a, c, out, h], 1);
        let func = kernel::<T>(&dev, &FUSED, &format!("rf_residual_norm_v{width}"), 0)?;
        let (rows_i, dim_i, per_batch) = (rows as i64, dim as i32, l as i32);
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder
            .arg(&x_ptr)
            .arg(&y)
            .arg(&bias)
            .arg(&gate)
            .arg(&out)
            .arg(&a)
            .arg(&c)
            .arg(&ac_batch_stride)
            .arg(&h)
            .arg(&rows_i)
            .arg(&dim_i)
            .arg(&per_batch)
            .arg(&group)
            .arg(&eps);
        // SAFETY: arguments match rf_residual_norm_v* in fused.cu: x, y, out and h hold
        // [rows, dim] (y's shape checked against x's, h allocated at x's shape), bias [dim],
        // gate [B, dim], a and c [dim] or [B, dim] as ac_batch_stride says; the access width
        // divides dim and every pointer is aligned for it.
        unsafe { builder.launch(cfg) }.w()?;
        Ok((storage, Shape::from((b, l, dim))))
    }
}

/// [`rms_norm_rope`] (`rf_rms_rope_v*`).
struct RmsRopeOp(RmsRope);

impl TypedOp for RmsRopeOp {
    const NAME: &'static str = "rms_norm_rope";
    const FLOATS: Floats = Floats::Half;

    fn run<T: KernelFloat>(
        &self,
        x: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (b, l, dim) = layout.shape().dims3()?;
        let rows = b * l;
        let (group, cfg) = row_launch(rows, dim)?;
        let dev = x.device().clone();
        let x_ptr = storage_ptr::<T>(x, layout)?;
        let (storage, out) = output::<T>(&dev, rows * dim)?;
        let bias = side_ptr::<T>(self.0.bias.as_ref())?;
        let weight = side_ptr::<f32>(Some(&self.0.weight))?;
        let cos = side_ptr::<f32>(self.0.rope.as_ref().map(|r| &r.0))?;
        let sin = side_ptr::<f32>(self.0.rope.as_ref().map(|r| &r.1))?;
        // RoPE pairs stay whole in either width (dim and head_dim are even).
        let width = access_width(dim, &[x_ptr, bias, weight, out], 2);
        let func = kernel::<T>(&dev, &FUSED, &format!("rf_rms_rope_v{width}"), 0)?;
        let rows_i = rows as i64;
        let (dim_i, head_dim, tokens) = (dim as i32, self.0.head_dim as i32, self.0.tokens as i32);
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder
            .arg(&x_ptr)
            .arg(&bias)
            .arg(&weight)
            .arg(&cos)
            .arg(&sin)
            .arg(&out)
            .arg(&rows_i)
            .arg(&dim_i)
            .arg(&head_dim)
            .arg(&tokens)
            .arg(&group)
            .arg(&self.0.eps);
        // SAFETY: arguments match rf_rms_rope_v* in fused.cu; x and out hold [rows, dim], the
        // tables [tokens, head_dim/2]; the access width divides dim and every pointer is
        // aligned for it.
        unsafe { builder.launch(cfg) }.w()?;
        Ok((storage, Shape::from((b, l, dim))))
    }
}
