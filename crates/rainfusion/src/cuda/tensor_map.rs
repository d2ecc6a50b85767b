//! TMA descriptors (the driver's `CUtensorMap`) for the Hopper attention kernel's q, k, v tiles.

use candle_core::cuda_backend::cudarc::driver::sys;
use candle_core::cuda_backend::cudarc::driver::DeviceRepr;

/// A tensor map passed by value as a kernel argument (`__grid_constant__` in the kernel): 128
/// opaque bytes, aligned as CUDA 13 aligns `CUtensorMap` (older headers ask for 64).
#[repr(C, align(128))]
pub(crate) struct TensorMapArg([u64; 16]);

// SAFETY: plain bytes, read by the kernel as its 128-byte parameter of the same layout.
unsafe impl DeviceRepr for TensorMapArg {}

/// Whether a `[B, H, L, D]` view at byte address `ptr` with element strides `(batch, head,
/// token)` can be read through a tensor map: TMA needs a 16-byte-aligned start and strides that
/// are multiples of 16 bytes (2-byte elements).
pub(crate) fn fits_tma(ptr: u64, strides: (i64, i64, i64)) -> bool {
    let (sb, sh, sl) = strides;
    ptr.is_multiple_of(16) && [sb, sh, sl].iter().all(|s| *s > 0 && (*s * 2) % 16 == 0)
}

/// The 4-d map (head_dim, tokens, heads, batch) of a bf16 or f16 `[B, H, L, D]` view at `ptr`
/// (head_dim contiguous, element strides `(batch, head, token)`): boxes of 64 × 128 (a 128-byte
/// row segment of 128 tokens) in the 128-byte swizzle the kernel's tiles use; rows past L read
/// as zeros. The caller checks [`fits_tma`] first.
pub(crate) fn qkv_tile_map(
    ptr: u64,
    bf16: bool,
    (b, h, l, d): (usize, usize, usize, usize),
    (sb, sh, sl): (i64, i64, i64),
) -> Result<TensorMapArg, String> {
    use sys::CUtensorMapDataType_enum as DataType;
    let dims = [d as u64, l as u64, h as u64, b as u64];
    let strides = [sl as u64 * 2, sh as u64 * 2, sb as u64 * 2];
    let boxes = [64u32, 128, 1, 1];
    let element_strides = [1u32; 4];
    let mut map = TensorMapArg([0; 16]);
    let data_type = if bf16 {
        DataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
    } else {
        DataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16
    };
    // SAFETY: `map` is 128 writable, 128-aligned bytes (a CUtensorMap); the arrays hold rank 4
    // dims, boxes and element strides and rank − 1 strides, as the driver reads them.
    let result = unsafe {
        sys::cuTensorMapEncodeTiled(
            (&mut map as *mut TensorMapArg).cast(),
            data_type,
            4,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            sys::CUtensorMapInterleave_enum::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle_enum::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion_enum::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill_enum::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    match result {
        sys::CUresult::CUDA_SUCCESS => Ok(map),
        error => Err(format!("cuTensorMapEncodeTiled: {error:?}")),
    }
}
