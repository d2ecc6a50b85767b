//! Loading our PTX into candle's CUDA context.

use candle_core::cuda_backend::cudarc::driver::sys::{
    CUdevice_attribute, CUfunction_attribute_enum,
};
use candle_core::cuda_backend::cudarc::driver::CudaFunction;
use candle_core::cuda_backend::{CudaDevice, WrapErr};

use crate::Result;

/// One compiled kernel source (`kernels/<name>.cu`), as PTX for several virtual architectures.
pub(crate) struct PtxModule {
    pub name: &'static str,
    pub sm80: &'static str,
    pub sm90: &'static str,
    /// Hopper-only build (wgmma); `None` when the source has no sm_90a code.
    pub sm90a: Option<&'static str>,
}

pub(crate) const ATTENTION: PtxModule = PtxModule {
    name: "rainfusion_attention",
    sm80: include_str!(concat!(env!("OUT_DIR"), "/attention_sm80.ptx")),
    sm90: include_str!(concat!(env!("OUT_DIR"), "/attention_sm90.ptx")),
    sm90a: Some(include_str!(concat!(
        env!("OUT_DIR"),
        "/attention_sm90a.ptx"
    ))),
};

pub(crate) const MASK: PtxModule = PtxModule {
    name: "rainfusion_mask",
    sm80: include_str!(concat!(env!("OUT_DIR"), "/mask_sm80.ptx")),
    sm90: include_str!(concat!(env!("OUT_DIR"), "/mask_sm90.ptx")),
    sm90a: None,
};

pub(crate) const FUSED: PtxModule = PtxModule {
    name: "rainfusion_fused",
    sm80: include_str!(concat!(env!("OUT_DIR"), "/fused_sm80.ptx")),
    sm90: include_str!(concat!(env!("OUT_DIR"), "/fused_sm90.ptx")),
    sm90a: None,
};

/// Compute capability major of the device (8 for Ampere/Ada, 9 for Hopper).
pub(crate) fn compute_major(dev: &CudaDevice) -> Result<i32> {
    let ctx = dev.cuda_stream().context().clone();
    Ok(ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
        .w()?)
}

/// Loads `function` from `module` (once per device; candle caches the module by name) and
/// allows it `dynamic_smem` bytes of dynamic shared memory (above the 48 KiB default).
pub(crate) fn load(
    dev: &CudaDevice,
    module: &PtxModule,
    function: &str,
    dynamic_smem: u32,
) -> Result<CudaFunction> {
    let major = compute_major(dev)?;
    if major < 8 {
        return Err(crate::Error::InvalidConfig(format!(
            "rainfusion's CUDA kernels need compute capability 8.0 or newer (mma.sync bf16, \
             cp.async); this device is {major}.x"
        )));
    }
    // sm_90a code runs on compute 9.0 only; later chips take the portable compute_90 build.
    let (ptx, tag) = match (major, module.sm90a) {
        (9, Some(sm90a)) => (sm90a, "sm90a"),
        (m, _) if m >= 9 => (module.sm90, "sm90"),
        _ => (module.sm80, "sm80"),
    };
    let func = dev.get_or_load_custom_func(function, &format!("{}_{tag}", module.name), ptx)?;
    if dynamic_smem > 48 * 1024 {
        func.set_attribute(
            CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            dynamic_smem as i32,
        )
        .w()?;
    }
    Ok(func.into_cuda_function())
}
