//! Loading our kernels into candle's CUDA context: machine code (cubin) when the build holds one
//! for the device's chip, else PTX, which the driver JIT-compiles at first use.
//!
//! `VDIT_CUBIN=0` forces PTX; `VDIT_PROFILE=1` prints each module's load time (once per module
//! and device), so the two can be compared. Modules are cached per device here (candle's own
//! cache takes only PTX).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use candle_core::cuda_backend::cudarc::driver::sys::{
    CUdevice_attribute, CUfunction_attribute_enum,
};
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaModule};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDevice, DeviceId, WrapErr};

use crate::Result;

/// `0` loads PTX even where a cubin for the device's chip was built.
pub const CUBIN_ENV: &str = "VDIT_CUBIN";
/// Set (and not `0`), each module load prints its source (cubin or PTX) and time to stderr.
pub const PROFILE_ENV: &str = "VDIT_PROFILE";

/// One build of a kernel source: PTX for a virtual architecture and, where built, a cubin of the
/// same code for the matching real chip.
pub(crate) struct KernelBuild {
    pub ptx: &'static str,
    pub cubin: Option<&'static [u8]>,
}

/// One compiled kernel source (`kernels/<name>.cu`) for several architectures.
pub(crate) struct KernelModule {
    pub name: &'static str,
    /// compute_80 PTX; cubin for sm_80 (every 8.x chip runs it).
    pub sm80: KernelBuild,
    /// compute_90 PTX; cubin for sm_90 where it is the build Hopper runs.
    pub sm90: KernelBuild,
    /// Hopper-only build (wgmma) with its sm_90a cubin; `None` when the source has no sm_90a code.
    pub sm90a: Option<KernelBuild>,
}

macro_rules! out_file {
    ($file:literal) => {
        concat!(env!("OUT_DIR"), "/", $file)
    };
}

pub(crate) const ATTENTION: KernelModule = KernelModule {
    name: "rainfusion_attention",
    sm80: KernelBuild {
        ptx: include_str!(out_file!("attention_sm80.ptx")),
        cubin: Some(include_bytes!(out_file!("attention_sm80.cubin"))),
    },
    // Only chips after Hopper take this build (Hopper takes sm90a): PTX alone.
    sm90: KernelBuild {
        ptx: include_str!(out_file!("attention_sm90.ptx")),
        cubin: None,
    },
    sm90a: Some(KernelBuild {
        ptx: include_str!(out_file!("attention_sm90a.ptx")),
        cubin: Some(include_bytes!(out_file!("attention_sm90a.cubin"))),
    }),
};

pub(crate) const MASK: KernelModule = KernelModule {
    name: "rainfusion_mask",
    sm80: KernelBuild {
        ptx: include_str!(out_file!("mask_sm80.ptx")),
        cubin: Some(include_bytes!(out_file!("mask_sm80.cubin"))),
    },
    sm90: KernelBuild {
        ptx: include_str!(out_file!("mask_sm90.ptx")),
        cubin: Some(include_bytes!(out_file!("mask_sm90.cubin"))),
    },
    sm90a: None,
};

pub(crate) const FUSED: KernelModule = KernelModule {
    name: "rainfusion_fused",
    sm80: KernelBuild {
        ptx: include_str!(out_file!("fused_sm80.ptx")),
        cubin: Some(include_bytes!(out_file!("fused_sm80.cubin"))),
    },
    sm90: KernelBuild {
        ptx: include_str!(out_file!("fused_sm90.ptx")),
        cubin: Some(include_bytes!(out_file!("fused_sm90.cubin"))),
    },
    sm90a: None,
};

/// Compute capability major of the device (8 for Ampere/Ada, 9 for Hopper).
pub(crate) fn compute_major(dev: &CudaDevice) -> Result<i32> {
    // Asked of the driver once per device: every attention launch and fp8 layer asks.
    static MAJORS: OnceLock<Mutex<HashMap<DeviceId, i32>>> = OnceLock::new();
    let majors = MAJORS.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(major) = majors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&dev.id())
    {
        return Ok(*major);
    }
    let ctx = dev.cuda_stream().context().clone();
    let major = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
        .w()?;
    majors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(dev.id(), major);
    Ok(major)
}

fn env_flag(name: &str) -> Option<bool> {
    std::env::var_os(name).map(|v| !v.is_empty() && v != "0")
}

/// Loaded modules by device and build (`<module>_<tag>`).
type ModuleCache = Mutex<HashMap<(DeviceId, String), Arc<CudaModule>>>;

fn loaded() -> &'static ModuleCache {
    static LOADED: OnceLock<ModuleCache> = OnceLock::new();
    LOADED.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Functions already loaded, by device, module, name and dynamic shared memory allowed.
type FunctionCache = Mutex<HashMap<(DeviceId, &'static str, String, u32), CudaFunction>>;

fn functions() -> &'static FunctionCache {
    static FUNCTIONS: OnceLock<FunctionCache> = OnceLock::new();
    FUNCTIONS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Loads `function` from `module` (the module once per device) and allows it `dynamic_smem`
/// bytes of dynamic shared memory (above the 48 KiB default). The function is looked up once
/// per device: later calls skip the driver's queries (compute capability, function lookup,
/// attribute), which every launch paid before.
pub(crate) fn load(
    dev: &CudaDevice,
    module: &KernelModule,
    function: &str,
    dynamic_smem: u32,
) -> Result<CudaFunction> {
    let key = (dev.id(), module.name, function.to_string(), dynamic_smem);
    if let Some(f) = functions()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
    {
        return Ok(f.clone());
    }
    let func = load_uncached(dev, module, function, dynamic_smem)?;
    functions()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, func.clone());
    Ok(func)
}

fn load_uncached(
    dev: &CudaDevice,
    module: &KernelModule,
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
    // sm_90a code runs on compute 9.0 only; later chips take the portable compute_90 PTX. A
    // cubin runs only on chips of its own major version.
    let (build, tag, cubin_major) = match (major, &module.sm90a) {
        (9, Some(sm90a)) => (sm90a, "sm90a", 9),
        (m, _) if m >= 9 => (&module.sm90, "sm90", 9),
        _ => (&module.sm80, "sm80", 8),
    };
    let cubin = build
        .cubin
        .filter(|_| major == cubin_major && env_flag(CUBIN_ENV) != Some(false));
    let key = (dev.id(), format!("{}_{tag}", module.name));

    let mut modules = loaded().lock().unwrap_or_else(|e| e.into_inner());
    let cuda_module = match modules.get(&key) {
        Some(m) => m.clone(),
        None => {
            let context = dev.cuda_stream().context().clone();
            let start = Instant::now();
            let image = match cubin {
                Some(bytes) => Ptx::from_binary(bytes.to_vec()),
                None => Ptx::from_src(build.ptx),
            };
            let m = context.load_module(image).w()?;
            if env_flag(PROFILE_ENV) == Some(true) {
                eprintln!(
                    "rainfusion: module {} loaded from {} in {:.1} ms",
                    key.1,
                    if cubin.is_some() {
                        "cubin"
                    } else {
                        "PTX (driver JIT)"
                    },
                    start.elapsed().as_secs_f64() * 1e3
                );
            }
            modules.insert(key, m.clone());
            m
        }
    };
    drop(modules);
    let func = cuda_module.load_function(function).w()?;
    if dynamic_smem > 48 * 1024 {
        func.set_attribute(
            CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            dynamic_smem as i32,
        )
        .w()?;
    }
    Ok(func)
}
