//! `x·Wᵀ` with a float8_e4m3fn weight through cuBLASLt's fp8 GEMM (Hopper and Ada): the
//! activations are scaled into e4m3 by their own absolute maximum (one scale per call, two passes
//! over x: `rf_absmax_*`, `rf_to_fp8_*` in `kernels/fused.cu`), and the GEMM multiplies both fp8
//! operands on the tensor cores, applying the two per-tensor scales in its epilogue.
//!
//! Why our own cuBLASLt call: cudarc's `Matmul` covers f32, f16 and bf16 operands only; fp8
//! needs the A/B scale pointers and the 8-bit layouts. This is the opt-in alternative to casting
//! each fp8 layer to bf16 for a bf16 GEMM (the default); rounding the activations to e4m3 (3
//! mantissa bits) costs accuracy, which the caller weighs.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublaslt::{result, sys, MatmulShared};
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, CudaStorageSlice, WrapErr};
use candle_core::{DType, Layout, Shape, Storage, Tensor};

use super::launch::{kernel, CudaOnly, Floats, KernelFloat, TypedOp};
use super::linear::{handle, input_width};
use super::module::FUSED;
use crate::{Error, Result};

/// `x·Wᵀ` with `weight` [out, in] float8_e4m3fn times `weight_scale` (one f32 value on the
/// device; `None`: 1), on cuBLASLt's fp8 GEMM.
///
/// x: `[..., in]` bf16/f16 on CUDA → `[..., out]` in x's dtype, contiguous. `in` and `out` must
/// be multiples of 16 (cuBLASLt's fp8 alignment). f32 accumulation.
pub fn linear_fp8(x: &Tensor, weight: &Tensor, weight_scale: Option<&Tensor>) -> Result<Tensor> {
    let input = input_width(x, "fp8 linear")?;
    let (out, w_in) = weight.dims2()?;
    if w_in != input || weight.dtype() != DType::F8E4M3 {
        return Err(Error::InvalidConfig(format!(
            "fp8 linear: weight {:?} {:?} does not fit input [.., {input}] (float8_e4m3fn wanted)",
            weight.dims(),
            weight.dtype(),
        )));
    }
    if input % 16 != 0 || out % 16 != 0 {
        return Err(Error::InvalidConfig(format!(
            "fp8 linear: widths {input} → {out} are not multiples of 16"
        )));
    }
    let scale = match weight_scale {
        Some(s) if s.elem_count() == 1 => s.to_dtype(DType::F32)?.flatten_all()?,
        Some(s) => {
            return Err(Error::InvalidConfig(format!(
                "fp8 linear: one weight scale wanted (per tensor), got {:?}",
                s.dims()
            )))
        }
        None => Tensor::ones(1, DType::F32, x.device())?,
    };
    let op = LinearFp8Op {
        weight: weight.contiguous()?,
        scale,
    };
    Ok(x.contiguous()?.apply_op1_no_bwd(&CudaOnly(op))?)
}

/// Whether [`linear_fp8`] runs on `device`: a CUDA device of compute capability 9.0 or newer.
/// (Ada, 8.9, has fp8 GEMMs too, but they have not run here.)
pub fn fp8_gemm_available(device: &candle_core::Device) -> bool {
    match device {
        candle_core::Device::Cuda(dev) => super::module::compute_major(dev).is_ok_and(|m| m >= 9),
        _ => false,
    }
}

struct LinearFp8Op {
    weight: Tensor, // [out, in] float8_e4m3fn
    scale: Tensor,  // [1] f32
}

/// A cuBLASLt workspace of its own per device (cudarc keeps the handle's private): 32 MiB, as
/// cudarc sizes it on Hopper.
const WORKSPACE_BYTES: usize = 32 << 20;

fn workspace(dev: &CudaDevice) -> candle_core::Result<CudaSlice<u8>> {
    static BUFFERS: OnceLock<Mutex<HashMap<String, CudaSlice<u8>>>> = OnceLock::new();
    let key = format!("{:?}", dev.id());
    let mut buffers = BUFFERS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(b) = buffers.get(&key) {
        return Ok(b.clone());
    }
    let b = dev.alloc_zeros::<u8>(WORKSPACE_BYTES)?;
    buffers.insert(key, b.clone());
    Ok(b)
}

fn lt_err(what: &str, e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("cuBLASLt fp8 {what}: {e:?}"))
}

/// A matmul description, matrix layouts and a preference, destroyed when dropped.
struct Descriptors {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: Vec<sys::cublasLtMatrixLayout_t>,
    pref: sys::cublasLtMatmulPreference_t,
}

impl Drop for Descriptors {
    fn drop(&mut self) {
        // SAFETY: each handle was created by cuBLASLt and is destroyed once.
        unsafe {
            for l in &self.layouts {
                let _ = result::destroy_matrix_layout(*l);
            }
            if !self.desc.is_null() {
                let _ = result::destroy_matmul_desc(self.desc);
            }
            if !self.pref.is_null() {
                let _ = result::destroy_matmul_pref(self.pref);
            }
        }
    }
}

fn set_desc<V>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    value: &V,
) -> candle_core::Result<()> {
    // SAFETY: `value` lives across the call and has the attribute's size.
    unsafe {
        result::set_matmul_desc_attribute(
            desc,
            attr,
            value as *const V as *const c_void,
            std::mem::size_of::<V>(),
        )
    }
    .map_err(|e| lt_err("description", e))
}

impl TypedOp for LinearFp8Op {
    const NAME: &'static str = "cuBLASLt fp8 linear";
    const FLOATS: Floats = Floats::Half;

    fn run<T: KernelFloat>(
        &self,
        x: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let dims = layout.shape().dims().to_vec();
        let input = *dims.last().unwrap_or(&1);
        let n = layout.shape().elem_count();
        let rows = n / input.max(1);
        let out_features = self.weight.dim(0)?;
        let dev = x.device().clone();
        let stream = dev.cuda_stream();
        let x_view: CudaView<'_, T> = x.as_cuda_slice::<T>()?.slice(layout.start_offset()..);

        // The activations in e4m3, scaled by their absolute maximum.
        let mut amax = dev.alloc_zeros::<f32>(1)?;
        // SAFETY: written by rf_to_fp8 (one value; every one of the n bytes).
        let mut x_scale = unsafe { dev.alloc::<f32>(1)? };
        let mut x_fp8 = unsafe { dev.alloc::<u8>(n)? };
        let n_i = n as i64;
        let blocks = n.div_ceil(256).clamp(1, 4096) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let absmax = kernel::<T>(&dev, &FUSED, "rf_absmax", 0)?;
        let mut b = stream.launch_builder(&absmax);
        b.arg(&x_view).arg(&n_i).arg(&mut amax);
        // SAFETY: arguments match rf_absmax_* in fused.cu: x holds n values, amax one zeroed float.
        unsafe { b.launch(cfg) }.w()?;
        let to_fp8 = kernel::<T>(&dev, &FUSED, "rf_to_fp8", 0)?;
        let mut b = stream.launch_builder(&to_fp8);
        b.arg(&x_view)
            .arg(&amax)
            .arg(&mut x_fp8)
            .arg(&mut x_scale)
            .arg(&n_i);
        // SAFETY: arguments match rf_to_fp8_* in fused.cu: n values in, n bytes out, one scale.
        unsafe { b.launch(cfg) }.w()?;

        let (w_guard, w_layout) = self.weight.storage_and_layout();
        let Storage::Cuda(w_storage) = &*w_guard else {
            candle_core::bail!("fp8 linear: weight not on the CUDA device")
        };
        let CudaStorageSlice::F8E4M3(w_slice) = &w_storage.slice else {
            candle_core::bail!("fp8 linear: weight is not float8_e4m3fn")
        };
        let w_view = w_slice.slice(w_layout.start_offset()..);
        let (s_guard, s_layout) = self.scale.storage_and_layout();
        let Storage::Cuda(s_storage) = &*s_guard else {
            candle_core::bail!("fp8 linear: weight scale not on the CUDA device")
        };
        let s_view = s_storage
            .as_cuda_slice::<f32>()?
            .slice(s_layout.start_offset()..);

        // SAFETY: cuBLASLt writes every element of the [rows, out] result (beta = 0).
        let mut out: CudaSlice<T> = unsafe { dev.alloc::<T>(rows * out_features)? };
        let lt = handle(&dev)?;
        let space = workspace(&dev)?;
        let out_type = if T::SUFFIX == "bf16" {
            sys::cudaDataType_t::CUDA_R_16BF
        } else {
            sys::cudaDataType_t::CUDA_R_16F
        };
        use sys::cublasLtMatmulDescAttributes_t as A;
        let mut d = Descriptors {
            desc: std::ptr::null_mut(),
            layouts: Vec::new(),
            pref: std::ptr::null_mut(),
        };
        d.desc = result::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        )
        .map_err(|e| lt_err("description", e))?;
        // Row-major Y[rows, out] = X·Wᵀ is column-major Yᵀ[out, rows] = W·Xᵀ: W stored
        // column-major as [in, out], transposed (A, "T"); X as [in, rows] (B, "N"): the TN form
        // fp8 GEMMs require.
        set_desc(d.desc, A::CUBLASLT_MATMUL_DESC_TRANSA, &1i32)?;
        set_desc(d.desc, A::CUBLASLT_MATMUL_DESC_TRANSB, &0i32)?;
        let (w_ptr, _w_sync) = w_view.device_ptr(&stream);
        let (ws_ptr, _ws_sync) = s_view.device_ptr(&stream);
        let (xs_ptr, _xs_sync) = x_scale.device_ptr(&stream);
        let (xq_ptr, _xq_sync) = x_fp8.device_ptr(&stream);
        let (out_ptr, _out_sync) = out.device_ptr_mut(&stream);
        let (space_ptr, _space_sync) = space.device_ptr(&stream);
        set_desc(d.desc, A::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &ws_ptr)?;
        set_desc(d.desc, A::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &xs_ptr)?;
        let e4m3 = sys::cudaDataType_t::CUDA_R_8F_E4M3;
        let layout_of = |t, r: usize, c: usize, ld: usize| {
            result::create_matrix_layout(t, r as u64, c as u64, ld as i64)
                .map_err(|e| lt_err("layout", e))
        };
        d.layouts.push(layout_of(e4m3, input, out_features, input)?);
        d.layouts.push(layout_of(e4m3, input, rows, input)?);
        d.layouts
            .push(layout_of(out_type, out_features, rows, out_features)?);
        d.pref = result::create_matmul_pref().map_err(|e| lt_err("preference", e))?;
        let space_bytes = WORKSPACE_BYTES;
        // SAFETY: the value lives across the call and has the attribute's size.
        unsafe {
            result::set_matmul_pref_attribute(
                d.pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &space_bytes as *const usize as *const c_void,
                std::mem::size_of::<usize>(),
            )
        }
        .map_err(|e| lt_err("preference", e))?;
        let (a_l, b_l, c_l) = (d.layouts[0], d.layouts[1], d.layouts[2]);
        // SAFETY: the descriptors are valid; the heuristic only reads them.
        let heuristic = unsafe {
            result::get_matmul_algo_heuristic(*lt.handle(), d.desc, a_l, b_l, c_l, c_l, d.pref)
        }
        .map_err(|e| lt_err("algorithm (no fp8 GEMM for this device or shape?)", e))?;
        let (alpha, beta) = (1f32, 0f32);
        // SAFETY: A holds [out, in] fp8 weights, B [rows, in] fp8 activations, D [rows, out]
        // elements of T; the scale pointers hold one f32 each; the workspace is WORKSPACE_BYTES;
        // all on candle's stream, which the sync guards above order against.
        unsafe {
            result::matmul(
                *lt.handle(),
                d.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                w_ptr as *const c_void,
                a_l,
                xq_ptr as *const c_void,
                b_l,
                out_ptr as *const c_void,
                c_l,
                out_ptr as *mut c_void,
                c_l,
                &heuristic.algo,
                space_ptr as *mut c_void,
                space_bytes,
                stream.cu_stream() as *mut _,
            )
        }
        .map_err(|e| lt_err("matmul", e))?;
        drop((
            _w_sync,
            _ws_sync,
            _xs_sync,
            _xq_sync,
            _out_sync,
            _space_sync,
        ));
        let mut out_dims = dims;
        *out_dims.last_mut().expect("at least one axis") = out_features;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from(out_dims),
        ))
    }
}
