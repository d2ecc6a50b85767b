//! `float8_e4m3fn` values cast to a compute dtype, on any device.
//!
//! Why not `Tensor::to_dtype` on CUDA: candle 0.11.1 looks its cast kernel up as
//! `cast_{src}_{dst}` from `DType::as_str`, which spells fp8 `f8e4m3`, while candle-kernels
//! names the kernels `cast_f8_e4m3_{dst}`; the lookup fails with `CUDA_ERROR_NOT_FOUND` ("named
//! symbol not found": an fp8 checkpoint's first forward on the H100). On CUDA this launches the
//! same kernel by its real name; elsewhere it is `to_dtype`.

use candle_core::{DType, Tensor};

use crate::error::Result;

/// `x` (any dtype) as `dtype`; an fp8 CUDA tensor is cast by candle-kernels' fp8 kernel.
pub(crate) fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && x.dtype() == DType::F8E4M3 && dtype != DType::F8E4M3 {
        return Ok(x
            .contiguous()?
            .apply_op1_no_bwd(&cuda::Fp8Cast { to: dtype })?);
    }
    Ok(x.to_dtype(dtype)?)
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{kernels, CudaStorage, CudaStorageSlice, WrapErr};
    use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Shape};
    use half::{bf16, f16};

    /// fp8 → `to` (bf16, f16 or f32), contiguous input.
    pub(super) struct Fp8Cast {
        pub to: DType,
    }

    impl CustomOp1 for Fp8Cast {
        fn name(&self) -> &'static str {
            "fp8-cast"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            bail!("fp8-cast is the CUDA path; the CPU casts with to_dtype")
        }

        fn cuda_fwd(
            &self,
            storage: &CudaStorage,
            layout: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let CudaStorageSlice::F8E4M3(slice) = &storage.slice else {
                bail!("fp8-cast of a tensor that is not fp8")
            };
            let Some((start, end)) = layout.contiguous_offsets() else {
                bail!("fp8-cast needs a contiguous tensor")
            };
            let dev = &storage.device;
            let elements = end - start;
            let input = slice.slice(start..end);
            let kernel = match self.to {
                DType::BF16 => "cast_f8_e4m3_bf16",
                DType::F16 => "cast_f8_e4m3_f16",
                DType::F32 => "cast_f8_e4m3_f32",
                other => bail!("fp8-cast to {other:?} is not built (bf16, f16 or f32)"),
            };
            let func = dev.get_or_load_func(kernel, &kernels::CAST)?;
            let config = LaunchConfig::for_num_elems(elements as u32);
            let dims = layout.dims().len();
            // The kernel's arguments: element count, rank, dims+strides (null: contiguous), in, out.
            let no_info = 0usize;
            macro_rules! launch {
                ($t:ty) => {{
                    // SAFETY: every one of the `elements` outputs is written by the kernel.
                    let out = unsafe { dev.alloc::<$t>(elements)? };
                    let mut builder = func.builder();
                    builder.arg(&elements);
                    builder.arg(&dims);
                    builder.arg(&no_info);
                    builder.arg(&input);
                    builder.arg(&out);
                    // SAFETY: the argument list matches candle-kernels' cast kernel signature.
                    unsafe { builder.launch(config) }.w()?;
                    CudaStorage::wrap_cuda_slice(out, dev.clone())
                }};
            }
            let out = match self.to {
                DType::BF16 => launch!(bf16),
                DType::F16 => launch!(f16),
                _ => launch!(f32),
            };
            Ok((out, layout.shape().clone()))
        }
    }
}
