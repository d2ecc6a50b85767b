//! The row kernels' CTA-per-row forms (`rf_ln_affine_*`, `rf_rms_rope_*`, `rf_gated_residual_*`
//! in `kernels/fused.cu`): one CTA of 256 threads per row, element accesses. They stay the
//! default until the warp-per-row forms of [`super::rows`] have run on a GPU
//! (`RAINFUSION_CUDA_ROW_KERNELS=1` selects those); the callers check the arguments.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorage, WrapErr};
use candle_core::{DType, Layout, Shape, Tensor};

use super::checks::{check_rows, side_ptr};
use super::launch::{kernel, CudaOnly, Floats, KernelFloat, TypedOp};
use super::module::FUSED;
use super::row_args::{Norm, Residual, RmsRope};
use crate::Result;

/// Threads per CTA (`THREADS` in fused.cu).
const THREADS: u32 = 256;
/// Widest row these forms take (`THREADS · MAX_PER_THREAD` in fused.cu).
pub(super) const MAX_ROW: usize = 256 * 24;

/// `LayerNorm(x)·a + c` (see [`super::fused::layer_norm_affine`]).
pub(super) fn layer_norm_affine(x: &Tensor, norm: Norm) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op1_no_bwd(&CudaOnly(LnAffineOp(norm)))?)
}

/// `RoPE(RMSNorm(x + bias)·weight)` (see [`super::fused::rms_norm_rope`]).
pub(super) fn rms_norm_rope(x: &Tensor, rope: RmsRope) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op1_no_bwd(&CudaOnly(RmsRopeOp(rope)))?)
}

/// `x + (y + bias)·gate` (see [`super::fused::gated_residual`]).
pub(super) fn gated_residual(x: &Tensor, residual: Residual) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op1_no_bwd(&CudaOnly(GatedResidualOp(residual)))?)
}

fn cta_launch(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

struct LnAffineOp(Norm);

impl TypedOp for LnAffineOp {
    const NAME: &'static str = "layer_norm_affine";
    const FLOATS: Floats = Floats::Half;

    fn dtype(&self, _: &CudaStorage) -> DType {
        self.0.dtype
    }

    fn run<T: KernelFloat>(
        &self,
        x: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (b, l, dim) = layout.shape().dims3()?;
        let rows = b * l;
        check_rows(rows)?;
        let dev = x.device().clone();
        let func = kernel::<T>(&dev, &FUSED, "rf_ln_affine", 0)?;
        let x_view = x.as_cuda_slice::<f32>()?.slice(layout.start_offset()..);
        // SAFETY: the kernel writes every element (one CTA per row, every column).
        let out: CudaSlice<T> = unsafe { dev.alloc::<T>(rows * dim)? };
        let a = side_ptr::<f32>(Some(&self.0.a))?;
        let c = side_ptr::<f32>(Some(&self.0.c))?;
        let (dim_i, per_batch) = (dim as i32, l as i32);
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder
            .arg(&x_view)
            .arg(&a)
            .arg(&c)
            .arg(&out)
            .arg(&dim_i)
            .arg(&per_batch)
            .arg(&self.0.ac_batch_stride)
            .arg(&self.0.eps);
        // SAFETY: arguments match rf_ln_affine_* in fused.cu; a and c hold [B or 1, dim] floats.
        unsafe { builder.launch(cta_launch(rows)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((b, l, dim)),
        ))
    }
}

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
        check_rows(rows)?;
        let dev = x.device().clone();
        let func = kernel::<T>(&dev, &FUSED, "rf_rms_rope", 0)?;
        let x_view = x.as_cuda_slice::<T>()?.slice(layout.start_offset()..);
        // SAFETY: the kernel writes every element (one CTA per row, every pair).
        let out: CudaSlice<T> = unsafe { dev.alloc::<T>(rows * dim)? };
        let bias = side_ptr::<T>(self.0.bias.as_ref())?;
        let weight = side_ptr::<f32>(Some(&self.0.weight))?;
        let cos = side_ptr::<f32>(self.0.rope.as_ref().map(|r| &r.0))?;
        let sin = side_ptr::<f32>(self.0.rope.as_ref().map(|r| &r.1))?;
        let (dim_i, head_dim, tokens) = (dim as i32, self.0.head_dim as i32, self.0.tokens as i32);
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder
            .arg(&x_view)
            .arg(&bias)
            .arg(&weight)
            .arg(&cos)
            .arg(&sin)
            .arg(&out)
            .arg(&dim_i)
            .arg(&head_dim)
            .arg(&tokens)
            .arg(&self.0.eps);
        // SAFETY: arguments match rf_rms_rope_* in fused.cu; the tables are [tokens, head_dim/2].
        unsafe { builder.launch(cta_launch(rows)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((b, l, dim)),
        ))
    }
}

struct GatedResidualOp(Residual);

impl TypedOp for GatedResidualOp {
    const NAME: &'static str = "gated_residual";
    const FLOATS: Floats = Floats::Half;

    fn dtype(&self, _: &CudaStorage) -> DType {
        self.0.y.dtype()
    }

    fn run<T: KernelFloat>(
        &self,
        x: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (b, l, dim) = layout.shape().dims3()?;
        let rows = b * l;
        check_rows(rows)?;
        let dev = x.device().clone();
        let func = kernel::<T>(&dev, &FUSED, "rf_gated_residual", 0)?;
        let x_view = x.as_cuda_slice::<f32>()?.slice(layout.start_offset()..);
        // SAFETY: the kernel writes every element (one CTA per row, every column).
        let out: CudaSlice<f32> = unsafe { dev.alloc::<f32>(rows * dim)? };
        let y = side_ptr::<T>(Some(&self.0.y))?;
        let bias = side_ptr::<T>(self.0.bias.as_ref())?;
        let gate = side_ptr::<f32>(self.0.gate.as_ref())?;
        let (dim_i, per_batch) = (dim as i32, l as i32);
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder
            .arg(&x_view)
            .arg(&y)
            .arg(&bias)
            .arg(&gate)
            .arg(&out)
            .arg(&dim_i)
            .arg(&per_batch);
        // SAFETY: arguments match rf_gated_residual_* in fused.cu; y has x's shape (checked).
        unsafe { builder.launch(cta_launch(rows)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((b, l, dim)),
        ))
    }
}
