//! The fast CUDA path: stored bytes are copied (by several threads) from the mmap into pinned
//! staging buffers and uploaded with asynchronous host-to-device copies on the device's stream,
//! in the file's dtype; a cast, when asked for, then runs on the GPU.
//!
//! Three pinned buffers form a ring. While the GPU's copy engine drains one, the CPU fills the
//! next; a buffer is refilled only after the event recorded behind its last upload has fired.
//! Small tensors are packed into the same buffer one after another, large ones go through in
//! buffer-sized chunks. Everything is queued on the stream candle's later kernels run on, so a
//! returned tensor may be used at once: its upload is ordered before any use.

use candle_core::cuda_backend::cudarc::driver::{
    result as driver, CudaEvent, CudaSlice, DevicePtrMut, DeviceRepr, PinnedHostSlice,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, DeviceId};
use candle_core::op::BackpropOp;
use candle_core::{DType, Storage, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

use super::host::copy_bytes;
use super::{RawTensor, Result, WeightsError};

/// Bytes per pinned staging buffer.
const SLOT_BYTES: usize = 64 << 20;
/// Staging buffers in the ring: one being filled, up to two being uploaded.
const SLOTS: usize = 3;
/// A chunk never starts in the tail of a buffer smaller than this (unless the whole rest of the
/// tensor fits), so large tensors move in large copies.
const MIN_CHUNK: usize = 1 << 20;
/// Bytes each thread copies into a staging buffer.
const TASK_BYTES: usize = 4 << 20;

/// One pinned buffer and the event recorded after the last upload that reads it.
struct Slot {
    buffer: PinnedHostSlice<u8>,
    uploaded: CudaEvent,
}

/// The ring of pinned staging buffers of one device.
pub(super) struct Stager {
    device: DeviceId,
    slots: Vec<Slot>,
    /// The buffer being filled and how many of its bytes are taken.
    current: usize,
    used: usize,
}

impl Drop for Stager {
    /// A buffer is freed only after the uploads reading it are done.
    fn drop(&mut self) {
        for slot in &self.slots {
            let _ = slot.uploaded.synchronize();
        }
    }
}

fn cuda_error(e: impl std::fmt::Display) -> WeightsError {
    WeightsError::Candle(candle_core::Error::Msg(format!("weight upload: {e}")))
}

impl Stager {
    fn new(device: &CudaDevice) -> Result<Self> {
        let stream = device.cuda_stream();
        let context = stream.context();
        let slots = (0..SLOTS)
            .map(|_| {
                // Plain (cached) pinned memory: the copy engine reads it at full speed and the
                // CPU's memcpy into it needs no write-combining tricks.
                // SAFETY: the buffer's contents are never read before this module writes them.
                let buffer = unsafe { context.alloc_pinned_with_flags::<u8>(SLOT_BYTES, 0) }
                    .map_err(cuda_error)?;
                let uploaded = context.new_event(None).map_err(cuda_error)?;
                Ok(Slot { buffer, uploaded })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            device: device.id(),
            slots,
            current: 0,
            used: 0,
        })
    }

    /// The stager held in `slot` for `device`, made (or remade for another device) if needed.
    pub(super) fn for_device<'a>(
        slot: &'a mut Option<Stager>,
        device: &CudaDevice,
    ) -> Result<&'a mut Stager> {
        if slot.as_ref().is_none_or(|s| s.device != device.id()) {
            *slot = Some(Stager::new(device)?);
        }
        Ok(slot.as_mut().expect("stager was just made"))
    }

    /// `raw` on `device` in `dtype`: uploaded in its stored dtype, cast on the GPU if needed.
    pub(super) fn upload(
        &mut self,
        raw: &RawTensor<'_>,
        dtype: DType,
        device: &CudaDevice,
    ) -> Result<Tensor> {
        let tensor = match raw.dtype {
            DType::BF16 => self.upload_as::<bf16>(raw, device)?,
            DType::F16 => self.upload_as::<f16>(raw, device)?,
            DType::F32 => self.upload_as::<f32>(raw, device)?,
            DType::F64 => self.upload_as::<f64>(raw, device)?,
            DType::U8 => self.upload_as::<u8>(raw, device)?,
            DType::U32 => self.upload_as::<u32>(raw, device)?,
            DType::I64 => self.upload_as::<i64>(raw, device)?,
            other => return Err(cuda_error(format!("no upload for dtype {other:?}"))),
        };
        Ok(tensor.to_dtype(dtype)?)
    }

    fn upload_as<T: CudaDType + DeviceRepr>(
        &mut self,
        raw: &RawTensor<'_>,
        device: &CudaDevice,
    ) -> Result<Tensor> {
        let bytes = raw.bytes;
        let len = bytes.len() / std::mem::size_of::<T>();
        let stream = device.cuda_stream();
        // SAFETY: every element is written by the uploads below before the tensor is used (they
        // are queued on the same stream ahead of any kernel that reads it).
        let mut slice: CudaSlice<T> = unsafe { device.alloc::<T>(len) }?;
        {
            // Dropping `_written` records the slice's write event after the last chunk's upload.
            let (base, _written) = slice.device_ptr_mut(&stream);
            let mut offset = 0;
            while offset < bytes.len() {
                let chunk = self.reserve(bytes.len() - offset)?;
                let slot = &mut self.slots[self.current];
                let staged = &mut slot.buffer.as_mut_slice().map_err(cuda_error)?[chunk.clone()];
                let source = &bytes[offset..offset + staged.len()];
                // SAFETY: `MaybeUninit<u8>` has the layout of `u8`; only writes go through it.
                let staged_uninit = unsafe {
                    std::slice::from_raw_parts_mut(
                        staged.as_mut_ptr().cast::<std::mem::MaybeUninit<u8>>(),
                        staged.len(),
                    )
                };
                staged_uninit
                    .par_chunks_mut(TASK_BYTES)
                    .zip(source.par_chunks(TASK_BYTES))
                    .for_each(|(dst, src)| copy_bytes(dst, src));
                // SAFETY: `staged` is pinned and stays untouched until `uploaded` fires (see
                // `reserve`); the destination range lies inside `slice`, which outlives the copy
                // (its memory is freed on this stream, after the copy).
                unsafe {
                    driver::memcpy_htod_async(base + offset as u64, &*staged, stream.cu_stream())
                }
                .map_err(cuda_error)?;
                slot.uploaded.record(&stream).map_err(cuda_error)?;
                offset += staged.len();
            }
        }
        let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, device.clone()));
        Ok(Tensor::from_storage(
            storage,
            raw.shape,
            BackpropOp::none(),
            false,
        ))
    }

    /// The byte range of the current buffer that the next chunk (of at most `wanted` bytes)
    /// goes into; moves to the next buffer, after waiting for its uploads, when this one is full.
    fn reserve(&mut self, wanted: usize) -> Result<std::ops::Range<usize>> {
        let free = SLOT_BYTES - self.used;
        if free < wanted.min(MIN_CHUNK) {
            self.current = (self.current + 1) % SLOTS;
            self.used = 0;
            self.slots[self.current]
                .uploaded
                .synchronize()
                .map_err(cuda_error)?;
        }
        let start = self.used;
        let len = wanted.min(SLOT_BYTES - start);
        self.used += len;
        Ok(start..start + len)
    }
}
