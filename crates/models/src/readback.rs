//! Device tensors read back to the host one step behind, so that the device's queue is never
//! drained for them.
//!
//! A chunk decoded on a GPU must reach the host (the video encoder), but `to_vec` on candle's
//! stream waits for everything queued so far: the device then idles while the host converts the
//! bytes, hands them on and queues the next chunk's first kernels. [`Readback`] instead queues
//! an asynchronous copy of each tensor into one of two pinned host buffers, behind the kernels
//! that produce it, and hands the bytes out when the *next* tensor is pushed (or at
//! [`Readback::finish`]), waiting only for that copy. The device keeps computing the next chunk
//! meanwhile.
//!
//! On a CPU (and on other devices) the bytes are read at once, with the same one-step delay.
//! `VDIT_ASYNC_READBACK=0` makes the CUDA path read at once too (the comparison of
//! `scripts/gpu/NOTES.md`).

use candle_core::{DType, Device, Tensor};

use crate::Result;

/// Environment variable: `0` reads every tensor back at once (a synchronising copy), as before
/// the overlapped read-back existed.
pub const ASYNC_READBACK_ENV: &str = "VDIT_ASYNC_READBACK";

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn async_allowed() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var(ASYNC_READBACK_ENV).map_or(true, |v| v.trim() != "0"))
}

/// A tensor's bytes on the host, with the tag it was pushed with.
pub type ReadBytes<Tag> = (Tag, Vec<u8>);

/// Reads u8 tensors back to the host one push behind (see the module documentation).
pub struct Readback<Tag> {
    /// The last pushed tensor, not yet handed out.
    pending: Option<(Tag, InFlight)>,
    #[cfg(feature = "cuda")]
    pinned: cuda::PinnedPair,
}

/// A pushed tensor's bytes: already on the host, or being copied there.
enum InFlight {
    Host(Vec<u8>),
    #[cfg(feature = "cuda")]
    Cuda(cuda::Copy),
}

impl<Tag> Default for Readback<Tag> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Tag> Readback<Tag> {
    pub fn new() -> Self {
        Self {
            pending: None,
            #[cfg(feature = "cuda")]
            pinned: cuda::PinnedPair::default(),
        }
    }

    /// Queues `bytes` (u8, any shape, read in row-major order) for the host and returns the
    /// previously pushed tensor's bytes, if any.
    pub fn push(&mut self, tag: Tag, bytes: &Tensor) -> Result<Option<ReadBytes<Tag>>> {
        if bytes.dtype() != DType::U8 {
            return Err(crate::ModelError::InvalidInput(format!(
                "read-back takes u8 tensors, got {:?}",
                bytes.dtype()
            )));
        }
        let started = self.start(bytes)?;
        let previous = self.take_pending()?;
        self.pending = Some((tag, started));
        Ok(previous)
    }

    /// The last pushed tensor's bytes, if any.
    pub fn finish(&mut self) -> Result<Option<ReadBytes<Tag>>> {
        self.take_pending()
    }

    fn take_pending(&mut self) -> Result<Option<ReadBytes<Tag>>> {
        let Some((tag, in_flight)) = self.pending.take() else {
            return Ok(None);
        };
        #[cfg_attr(not(feature = "cuda"), allow(clippy::infallible_destructuring_match))]
        let bytes = match in_flight {
            InFlight::Host(bytes) => bytes,
            #[cfg(feature = "cuda")]
            InFlight::Cuda(copy) => self.pinned.wait(copy)?,
        };
        Ok(Some((tag, bytes)))
    }

    fn start(&mut self, bytes: &Tensor) -> Result<InFlight> {
        #[cfg(feature = "cuda")]
        if let Device::Cuda(device) = bytes.device() {
            if async_allowed() {
                return Ok(InFlight::Cuda(self.pinned.start(device, bytes)?));
            }
        }
        Ok(InFlight::Host(read_now(bytes)?))
    }
}

/// The bytes of a u8 tensor in row-major order, read synchronously (where it lies on a GPU, this
/// waits for everything queued before it).
pub fn read_now(bytes: &Tensor) -> Result<Vec<u8>> {
    Ok(bytes
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<u8>()?)
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{
        result as driver, CudaEvent, DevicePtr, PinnedHostSlice,
    };
    use candle_core::cuda_backend::CudaDevice;
    use candle_core::{Storage, Tensor};

    use crate::{ModelError, Result};

    fn cuda_error(e: impl std::fmt::Display) -> ModelError {
        ModelError::Candle(candle_core::Error::Msg(format!("read-back: {e}")))
    }

    /// A copy queued into pinned buffer `slot`; `_source` keeps the device tensor alive until
    /// the copy is waited for.
    pub(super) struct Copy {
        slot: usize,
        len: usize,
        _source: Tensor,
    }

    /// One pinned buffer and the event recorded after the last copy into it. The event is ours:
    /// cudarc records a pinned buffer's own event only where it manages several streams, which
    /// candle's one stream does not, so waiting on that one would not wait for the copy.
    struct Slot {
        buffer: PinnedHostSlice<u8>,
        copied: CudaEvent,
    }

    /// Two pinned buffers, used in turn: while the host reads one, the next copy fills the other.
    #[derive(Default)]
    pub(super) struct PinnedPair {
        slots: [Option<Slot>; 2],
        next: usize,
    }

    impl Drop for PinnedPair {
        /// A buffer is freed only after the copy into it is done.
        fn drop(&mut self) {
            for slot in self.slots.iter().flatten() {
                let _ = slot.copied.synchronize();
            }
        }
    }

    impl PinnedPair {
        /// Queues the copy of `bytes` (u8, on `device`) into the next buffer, grown if needed.
        pub(super) fn start(&mut self, device: &CudaDevice, bytes: &Tensor) -> Result<Copy> {
            let bytes = bytes.contiguous()?;
            let len = bytes.elem_count();
            let index = self.next;
            self.next = 1 - self.next;
            let stream = device.cuda_stream();
            let slot = &mut self.slots[index];
            if let Some(old) = slot.as_ref() {
                // The copy that last filled this buffer must be over before it is refilled or
                // freed (it was waited for, unless that push failed).
                old.copied.synchronize().map_err(cuda_error)?;
            }
            if slot.as_ref().is_none_or(|s| s.buffer.len() < len) {
                let context = stream.context();
                // Plain (cached) pinned memory: the host reads it back, which write-combined
                // memory makes slow.
                // SAFETY: the buffer is only read after a copy into it has completed (`wait`).
                let buffer =
                    unsafe { context.alloc_pinned_with_flags::<u8>(len, 0) }.map_err(cuda_error)?;
                let copied = context.new_event(None).map_err(cuda_error)?;
                *slot = Some(Slot { buffer, copied });
            }
            let slot = slot.as_mut().expect("the slot was just filled");
            {
                let (storage, layout) = bytes.storage_and_layout();
                let Storage::Cuda(storage) = &*storage else {
                    return Err(cuda_error("the tensor is not on a CUDA device"));
                };
                let start = layout.start_offset();
                let source = storage.as_cuda_slice::<u8>()?.slice(start..start + len);
                let (source_ptr, _read) = source.device_ptr(&stream);
                let host = &mut slot.buffer.as_mut_slice().map_err(cuda_error)?[..len];
                // SAFETY: `host` is pinned and `len` bytes long, as is the source range, which
                // lies in `bytes`'s storage; `bytes` is kept alive (in `Copy`) until the copy is
                // waited for, and the buffer is not touched before `copied` has fired.
                unsafe { driver::memcpy_dtoh_async(host, source_ptr, stream.cu_stream()) }
                    .map_err(cuda_error)?;
            }
            slot.copied.record(&stream).map_err(cuda_error)?;
            Ok(Copy {
                slot: index,
                len,
                _source: bytes,
            })
        }

        /// Waits for `copy` and returns its bytes.
        pub(super) fn wait(&self, copy: Copy) -> Result<Vec<u8>> {
            let slot = self.slots[copy.slot]
                .as_ref()
                .expect("a copy's buffer exists until it is waited for");
            slot.copied.synchronize().map_err(cuda_error)?;
            let host = slot.buffer.as_slice().map_err(cuda_error)?;
            Ok(host[..copy.len].to_vec())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(values: &[u8], shape: (usize, usize)) -> Tensor {
        Tensor::from_vec(values.to_vec(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn each_push_hands_out_the_one_before_and_finish_the_last() {
        let mut readback = Readback::new();
        assert!(readback.finish().unwrap().is_none());
        assert!(readback
            .push("a", &bytes(&[1, 2, 3, 4], (2, 2)))
            .unwrap()
            .is_none());
        let a = readback.push("b", &bytes(&[5, 6, 7], (1, 3))).unwrap();
        assert_eq!(a, Some(("a", vec![1, 2, 3, 4])));
        // a strided view is read in row-major order
        let c = bytes(&[9, 10, 11, 12], (2, 2)).t().unwrap();
        let b = readback.push("c", &c).unwrap();
        assert_eq!(b, Some(("b", vec![5, 6, 7])));
        assert_eq!(readback.finish().unwrap(), Some(("c", vec![9, 11, 10, 12])));
        assert!(readback.finish().unwrap().is_none());
    }

    #[test]
    fn only_bytes_are_read_back() {
        let mut readback = Readback::new();
        let floats = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let err = readback.push((), &floats).unwrap_err();
        assert!(err.to_string().contains("u8"), "{err}");
    }
}
