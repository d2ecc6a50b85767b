//! Argument checks and raw device pointers shared by the fused elementwise kernels
//! ([`super::fused`], [`super::rows`]).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, DevicePtr, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaStorage};
use candle_core::{DType, Layout, Storage, Tensor};

use crate::{Error, Result};

pub(super) fn check_cuda(t: &Tensor, what: &str) -> Result<()> {
    if t.device().is_cuda() {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "{what} runs on CUDA tensors only"
        )))
    }
}

pub(super) fn check_dtype(t: &Tensor, dtype: DType, what: &str) -> Result<()> {
    if t.dtype() == dtype {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "{what} must be {dtype:?}, got {:?}",
            t.dtype()
        )))
    }
}

pub(super) fn check_16bit(dtype: DType, what: &str) -> Result<()> {
    if matches!(dtype, DType::BF16 | DType::F16) {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "{what} must be bf16 or f16, got {dtype:?}"
        )))
    }
}

pub(super) fn check_vector(t: &Tensor, n: usize, dtype: DType, what: &str) -> Result<()> {
    check_dtype(t, dtype, what)?;
    if t.dims() == [n] {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "{what} must be [{n}], got {:?}",
            t.dims()
        )))
    }
}

/// Device pointer of a small side tensor (weights, tables, gates): the kernels read them through
/// plain pointers. `None` is passed as a null pointer.
pub(super) fn side_ptr<T: CudaDType + DeviceRepr>(t: Option<&Tensor>) -> candle_core::Result<u64> {
    let Some(t) = t else { return Ok(0) };
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(cuda) = &*storage else {
        candle_core::bail!("fused kernels: side tensor not on the CUDA device")
    };
    storage_ptr::<T>(cuda, layout)
}

/// Device pointer of the first element of `storage` under `layout`.
pub(super) fn storage_ptr<T: CudaDType + DeviceRepr>(
    storage: &CudaStorage,
    layout: &Layout,
) -> candle_core::Result<u64> {
    let view: CudaView<'_, T> = storage.as_cuda_slice::<T>()?.slice(layout.start_offset()..);
    let stream = storage.device().cuda_stream();
    let (ptr, _sync) = DevicePtr::device_ptr(&view, &stream);
    Ok(ptr)
}

/// Rows of a row kernel's launch: at least one, and few enough for the kernels' 32-bit counts.
pub(super) fn check_rows(rows: usize) -> candle_core::Result<()> {
    if rows == 0 || rows > i32::MAX as usize {
        candle_core::bail!("fused kernels: {rows} rows is out of range")
    }
    Ok(())
}
