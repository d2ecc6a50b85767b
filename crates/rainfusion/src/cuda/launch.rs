//! What every CUDA-only custom op here shares: the candle `CustomOp1`/`InplaceOp1` plumbing, one
//! dtype dispatch onto the op's single generic body, and the lookup of a kernel's entry point
//! for an element type. An op writes only its body ([`TypedOp::run`] or [`TypedInplaceOp::run`])
//! and wraps itself in [`CudaOnly`] to be applied.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublaslt::{Activation, CudaBlasLT, Matmul, MatmulConfig};
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaSlice, CudaView, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::{CpuStorage, CustomOp1, DType, InplaceOp1, Layout, Shape};
use half::{bf16, f16};

use super::module::{self, KernelModule};

/// An element type the kernels are instantiated for: bf16, f16 or f32.
pub(crate) trait KernelFloat: CudaDType + DeviceRepr {
    /// The suffix of the kernels' entry points for this type (`rf_ln_affine_bf16`, ...).
    const SUFFIX: &'static str;

    /// cuBLASLt's matmul for this type (cudarc implements one per type, so a body generic over
    /// the element type reaches it through here).
    ///
    /// # Safety
    /// As cudarc's `Matmul::matmul`: the views and the output hold the elements `cfg` names.
    unsafe fn lt_matmul(
        lt: &CudaBlasLT,
        cfg: MatmulConfig,
        a: &CudaView<'_, Self>,
        b: &CudaView<'_, Self>,
        c: &mut CudaSlice<Self>,
        bias: Option<&CudaView<'_, Self>>,
        act: Option<&Activation>,
    ) -> candle_core::Result<()>;
}

macro_rules! kernel_float {
    ($t:ty, $suffix:literal) => {
        impl KernelFloat for $t {
            const SUFFIX: &'static str = $suffix;

            unsafe fn lt_matmul(
                lt: &CudaBlasLT,
                cfg: MatmulConfig,
                a: &CudaView<'_, Self>,
                b: &CudaView<'_, Self>,
                c: &mut CudaSlice<Self>,
                bias: Option<&CudaView<'_, Self>>,
                act: Option<&Activation>,
            ) -> candle_core::Result<()> {
                // SAFETY: forwarded from the caller.
                unsafe { Matmul::<$t>::matmul(lt, cfg, a, b, c, bias, act) }
                    .map_err(|e| candle_core::Error::Msg(format!("cuBLASLt matmul: {e:?}")))
            }
        }
    };
}
kernel_float!(bf16, "bf16");
kernel_float!(f16, "f16");
kernel_float!(f32, "f32");

/// The entry point `{base}_{T::SUFFIX}` of `module`, loaded with `dynamic_smem` bytes of dynamic
/// shared memory.
pub(crate) fn kernel<T: KernelFloat>(
    dev: &CudaDevice,
    module: &KernelModule,
    base: &str,
    dynamic_smem: u32,
) -> candle_core::Result<CudaFunction> {
    module::load(dev, module, &format!("{base}_{}", T::SUFFIX), dynamic_smem)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))
}

/// Which element types an op's body takes.
#[derive(Clone, Copy)]
pub(crate) enum Floats {
    /// bf16 and f16.
    Half,
    /// bf16, f16 and f32.
    HalfAndF32,
}

/// A CUDA-only op that returns a new tensor, with one body generic over the element type.
pub(crate) trait TypedOp {
    /// The op's name, in candle's errors and ours.
    const NAME: &'static str;
    /// The element types [`Self::run`] is instantiated for.
    const FLOATS: Floats;

    /// The dtype that picks the instance: the input's unless the op says otherwise (an output
    /// or side tensor's).
    fn dtype(&self, x: &CudaStorage) -> DType {
        x.dtype()
    }

    /// The op on `x` laid out as `layout`.
    fn run<T: KernelFloat>(
        &self,
        x: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)>;
}

/// A CUDA-only op that rewrites its tensor in place, with one body generic over the element
/// type (the tensor's dtype picks the instance).
pub(crate) trait TypedInplaceOp {
    /// The op's name, in candle's errors and ours.
    const NAME: &'static str;
    /// The element types [`Self::run`] is instantiated for.
    const FLOATS: Floats;

    /// The op on `x` laid out as `layout`.
    fn run<T: KernelFloat>(&self, x: &mut CudaStorage, layout: &Layout) -> candle_core::Result<()>;
}

/// A [`TypedOp`] or [`TypedInplaceOp`] as a candle custom op: it fails on the CPU and runs its
/// body's instance for the dtype on CUDA.
pub(crate) struct CudaOnly<O>(pub O);

/// Calls `$run` with the element type `$dtype` names, or fails naming the op.
macro_rules! on_dtype {
    ($dtype:expr, $floats:expr, $name:expr, $run:ident) => {
        match ($dtype, $floats) {
            (DType::BF16, _) => $run!(bf16),
            (DType::F16, _) => $run!(f16),
            (DType::F32, Floats::HalfAndF32) => $run!(f32),
            (other, _) => candle_core::bail!("{}: unsupported dtype {other:?}", $name),
        }
    };
}

impl<O: TypedOp> CustomOp1 for CudaOnly<O> {
    fn name(&self) -> &'static str {
        O::NAME
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("{} runs on CUDA tensors only", O::NAME)
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        macro_rules! run {
            ($t:ty) => {
                self.0.run::<$t>(x, layout)
            };
        }
        on_dtype!(self.0.dtype(x), O::FLOATS, O::NAME, run)
    }
}

impl<O: TypedInplaceOp> InplaceOp1 for CudaOnly<O> {
    fn name(&self) -> &'static str {
        O::NAME
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("{} runs on CUDA tensors only", O::NAME)
    }

    fn cuda_fwd(&self, x: &mut CudaStorage, layout: &Layout) -> candle_core::Result<()> {
        macro_rules! run {
            ($t:ty) => {
                self.0.run::<$t>(x, layout)
            };
        }
        on_dtype!(x.dtype(), O::FLOATS, O::NAME, run)
    }
}
