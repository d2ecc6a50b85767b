//! Overlapped block streaming on CUDA: the copy of block i+1 runs on a second stream while
//! block i computes on candle's stream (the inside of [`super::block_store::BlockStore::fetch`]
//! when the compute device is a GPU and `VDIT_OFFLOAD_SYNC` is not `1`).
//!
//! ```text
//! compute stream:  ..block i-1 | alloc(i+1) ·rec A· | block i kernels | wait C | block i+1 ..
//! copy stream:                          wait A → memcpy block i+1 → rec C
//! ```
//!
//! Host memory. The host blocks' buffers are page-locked in place with `cuMemHostRegister` at
//! load (and unregistered when the store is dropped), rather than copied into cudarc pinned
//! buffers: a 14B model's blocks are ~28 GB in bf16, and a pinned copy would hold them twice
//! while loading (or need the loader to write into pinned memory, which candle's CPU tensors
//! cannot own). Only page-locked memory lets `cuMemcpyHtoDAsync` run on the copy engine without
//! the host thread waiting: from pageable memory the driver stages the bytes through its own
//! buffer, may wait for the stream first, and returns only when the staging is done.
//!
//! Ordering between the two streams is explicit, with events; it does not rely on cudarc's
//! per-slice event tracking. The copy stream is created with the raw driver call and wrapped as
//! a borrowed stream, so the context stays out of cudarc's multi-stream mode: candle does not
//! turn tracking off, and entering that mode would make every kernel launch of the run record
//! and wait on events for each argument. The rules kept here:
//! - Destination buffers are allocated on the compute stream (candle's allocator, stream
//!   ordered), event A is recorded there after the allocations, and the copy stream waits on A
//!   before writing: the memory may be what block i-1 just freed, and block i-1's kernels may
//!   still be reading it until the compute stream reaches A.
//! - Event C is recorded on the copy stream after the block's last copy; the compute stream
//!   waits on C when the block is handed to the block loop, before any of its kernels.
//! - The buffers are freed on the compute stream (the stream they were allocated on) when the
//!   block's copy is dropped, after its kernels; a prefetched block that is never used is first
//!   waited for (C) on the compute stream, then dropped.
//! - The host buffers are read by the copy stream until C: the streamer synchronises the copy
//!   stream before it unpins, and it is dropped before the host blocks.
//!
//! What is overlapped: every dense tensor of a block (run-dtype weights, biases, norms, the
//! modulation table, unmerged LoRA factors). GGUF blocks are copied on the compute stream
//! (`QStorage::from_data`), unpinned: candle 0.11 has no public way to build a CUDA `QStorage`
//! around a buffer filled elsewhere. fp8 blocks are cast to the run dtype at load
//! (`WeightSource::casting_fp8`).

use std::sync::{Arc, Mutex};

use candle_core::cuda_backend::cudarc::driver::{
    result as driver, sys, CudaContext, CudaEvent, CudaStream, DevicePtr, DeviceRepr,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, Device, Shape, Storage, Tensor};

use crate::error::{ModelError, Result};
use crate::wan::host_pages::{interior, page_pieces};
use crate::wan::tensor_map::{qtensor_to_device, StreamedBlock, TensorMap};

fn cuda_error(what: &str, e: impl std::fmt::Display) -> ModelError {
    ModelError::Candle(candle_core::Error::Msg(format!(
        "block streaming: {what}: {e}"
    )))
}

/// The next block, copied (or being copied) on the copy stream.
struct Prefetched<B> {
    index: usize,
    block: B,
    /// Recorded on the copy stream after the block's last copy.
    copied: CudaEvent,
}

/// The copy stream, the pinned host blocks and the block being prefetched.
pub(crate) struct BlockStreamer<B> {
    device: CudaDevice,
    /// candle's stream: every kernel of the run.
    compute: Arc<CudaStream>,
    /// Created here (non-blocking), destroyed in `Drop`.
    copy: Arc<CudaStream>,
    pinned: PinnedHost,
    /// At most one: with the block the loop is running, two blocks' copies on the GPU.
    next: Mutex<Option<Prefetched<B>>>,
}

impl<B: StreamedBlock> BlockStreamer<B> {
    /// Pins the host blocks and creates the copy stream. `blocks` must outlive the streamer
    /// (the store drops the streamer first).
    pub(crate) fn new(blocks: &[B], device: &CudaDevice) -> Result<Self> {
        let compute = device.cuda_stream();
        let context = compute.context().clone();
        context
            .bind_to_thread()
            .map_err(|e| cuda_error("bind", e))?;
        let raw = driver::stream::create(driver::stream::StreamKind::NonBlocking)
            .map_err(|e| cuda_error("create the copy stream", e))?;
        // SAFETY: `raw` is a stream of this context; it is destroyed in `Drop`, after the last
        // use of this wrapper (which is never handed out).
        let copy = unsafe { context.wrap_borrowed_stream(raw) };
        let pinned = PinnedHost::register(blocks, context.clone())?;
        Ok(Self {
            device: device.clone(),
            compute,
            copy,
            pinned,
            next: Mutex::new(None),
        })
    }

    /// Host bytes that could not be page-locked (their copies still work, from pageable memory,
    /// without overlap).
    pub(crate) fn unpinned_bytes(&self) -> usize {
        self.pinned.failed_bytes
    }

    /// Block `index` on the compute device, ordered before any kernel queued after this returns;
    /// starts the copy of block `index + 1` (when there is one) on the copy stream.
    pub(crate) fn fetch(&self, blocks: &[B], index: usize) -> Result<B> {
        let mut next = self.next.lock().expect("block prefetch lock");
        let ready = match next.take() {
            Some(prefetched) if prefetched.index == index => prefetched,
            stale => {
                if let Some(stale) = stale {
                    // Not asked for (a forward stopped part-way): its buffers are freed on the
                    // compute stream, which must first see the copies into them done.
                    self.compute
                        .wait(&stale.copied)
                        .map_err(|e| cuda_error("wait for a stale copy", e))?;
                }
                self.start(&blocks[index], index)?
            }
        };
        self.compute
            .wait(&ready.copied)
            .map_err(|e| cuda_error("wait for the copy", e))?;
        if index + 1 < blocks.len() {
            *next = Some(self.start(&blocks[index + 1], index + 1)?);
        }
        Ok(ready.block)
    }

    /// Allocates block `index`'s buffers on the compute stream and queues its copies on the copy
    /// stream.
    fn start(&self, block: &B, index: usize) -> Result<Prefetched<B>> {
        let mut plan = CopyPlan {
            device: &self.device,
            compute: &self.compute,
            copies: Vec::new(),
        };
        let block = block.map_block(&mut plan)?;
        let context = self.compute.context();
        let allocated = context
            .new_event(None)
            .map_err(|e| cuda_error("event", e))?;
        allocated
            .record(&self.compute)
            .map_err(|e| cuda_error("record the allocations", e))?;
        self.copy
            .wait(&allocated)
            .map_err(|e| cuda_error("wait for the allocations", e))?;
        let pieces = plan.copies.iter().flat_map(|copy| {
            page_pieces(copy.src, copy.bytes)
                .map(move |(src, bytes)| (copy.dst + (src - copy.src) as u64, src, bytes))
        });
        for (dst, src, bytes) in pieces {
            // SAFETY: `src` points into a host block's storage, alive until the streamer is
            // dropped (which synchronises this stream first); `dst` lies in a fresh buffer of
            // at least the copy's bytes, owned by `block`, not read before `copied` completes
            // and freed on the compute stream after that.
            unsafe {
                let src = std::slice::from_raw_parts(src as *const u8, bytes);
                driver::memcpy_htod_async(dst, src, self.copy.cu_stream())
            }
            .map_err(|e| {
                // `block` (and its buffers) is dropped on return: the copies already queued
                // into it must be done first.
                let _ = self.copy.synchronize();
                cuda_error("copy to the device", e)
            })?;
        }
        let copied = context
            .new_event(None)
            .map_err(|e| cuda_error("event", e))?;
        copied
            .record(&self.copy)
            .map_err(|e| cuda_error("record the copies", e))?;
        Ok(Prefetched {
            index,
            block,
            copied,
        })
    }
}

impl<B> Drop for BlockStreamer<B> {
    fn drop(&mut self) {
        // The copy stream reads the pinned host blocks until its last copy is done.
        let _ = self.copy.synchronize();
        if let Some(prefetched) = self.next.get_mut().ok().and_then(|n| n.take()) {
            // Freed on the compute stream: ordered after the copies into it.
            let _ = self.compute.wait(&prefetched.copied);
        }
        self.pinned.unregister();
        let _ = self.copy.context().bind_to_thread();
        // SAFETY: created in `new`, not used after this (the wrapper does not destroy it).
        let _ = unsafe { driver::stream::destroy(self.copy.cu_stream()) };
    }
}

/// One host→device copy of a prefetch.
struct PendingCopy {
    dst: sys::CUdeviceptr,
    /// Address in a host block's storage.
    src: usize,
    bytes: usize,
}

/// The map that gives a block's copy: each dense host tensor gets a fresh buffer on the compute
/// device, filled later by the copy stream; GGUF blocks are copied at once on the compute stream.
struct CopyPlan<'a> {
    device: &'a CudaDevice,
    compute: &'a Arc<CudaStream>,
    copies: Vec<PendingCopy>,
}

impl CopyPlan<'_> {
    fn planned<T: CudaDType + DeviceRepr>(&mut self, src: &[T], shape: &Shape) -> Result<Tensor> {
        // SAFETY: every element is written by the copy queued for it before the compute stream
        // is let past the `copied` event (see `BlockStreamer::start`).
        let slice = unsafe { self.device.alloc::<T>(src.len()) }?;
        // The second half (an event record, a no-op outside cudarc's multi-stream mode) is
        // dropped at once: the ordering is the streamer's events.
        let (dst, _) = slice.device_ptr(self.compute);
        self.copies.push(PendingCopy {
            dst,
            src: src.as_ptr() as usize,
            bytes: std::mem::size_of_val(src),
        });
        let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, self.device.clone()));
        Ok(Tensor::from_storage(
            storage,
            shape.clone(),
            BackpropOp::none(),
            false,
        ))
    }
}

impl TensorMap for CopyPlan<'_> {
    fn tensor(&mut self, t: &Tensor) -> Result<Tensor> {
        {
            let (storage, layout) = t.storage_and_layout();
            if let (Storage::Cpu(cpu), Some((start, end))) =
                (&*storage, layout.contiguous_offsets())
            {
                if end > start {
                    let shape = t.shape();
                    match cpu {
                        CpuStorage::BF16(v) => return self.planned(&v[start..end], shape),
                        CpuStorage::F16(v) => return self.planned(&v[start..end], shape),
                        CpuStorage::F32(v) => return self.planned(&v[start..end], shape),
                        // fp8 blocks are cast to the run dtype at load when streamed onto
                        // CUDA (`WeightSource::casting_fp8`: the H100 runs of cuda_block_stream
                        // failed for them); any other fp8 tensor takes candle's copy below.
                        CpuStorage::F8E4M3(_) => {}
                        CpuStorage::U8(v) => return self.planned(&v[start..end], shape),
                        CpuStorage::U32(v) => return self.planned(&v[start..end], shape),
                        CpuStorage::I64(v) => return self.planned(&v[start..end], shape),
                        _ => {}
                    }
                }
            }
        }
        // Anything else (not on the host, strided, empty, a dtype without a CUDA slice type,
        // fp8): candle's copy, on the compute stream.
        Ok(t.to_device(&Device::Cuda(self.device.clone()))?)
    }

    fn quantized(&mut self, q: &Arc<QTensor>) -> Result<Arc<QTensor>> {
        Ok(Arc::new(qtensor_to_device(
            q,
            &Device::Cuda(self.device.clone()),
        )?))
    }
}

/// Host blocks' buffers page-locked in place (`cuMemHostRegister`), unregistered on drop.
struct PinnedHost {
    /// Start addresses passed to `cuMemHostRegister` (the handle `cuMemHostUnregister` takes).
    registered: Vec<usize>,
    failed_bytes: usize,
    context: Arc<CudaContext>,
}

impl PinnedHost {
    fn register<B: StreamedBlock>(blocks: &[B], context: Arc<CudaContext>) -> Result<Self> {
        let mut collect = HostRanges::default();
        for block in blocks {
            block.map_block(&mut collect)?;
        }
        // each buffer's interior: the pages wholly inside it (see `PAGE`)
        let mut ranges: Vec<(usize, usize)> = collect
            .ranges
            .into_iter()
            .filter_map(|(start, len)| interior(start, len))
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::new();
        for (start, end) in ranges {
            match merged.last_mut() {
                // The same buffer seen through two tensors; distinct buffers' interiors never
                // overlap, and adjacent ones are not joined (they may be separate mappings).
                Some((_, last_end)) if start < *last_end => *last_end = (*last_end).max(end),
                _ => merged.push((start, end)),
            }
        }
        context
            .bind_to_thread()
            .map_err(|e| cuda_error("bind", e))?;
        let mut pinned = Self {
            registered: Vec::new(),
            failed_bytes: 0,
            context,
        };
        for (start, end) in merged {
            // SAFETY: [start, end) covers pages of live host buffers of `blocks` (rounded out to
            // the pages holding them); they stay allocated until `unregister` runs.
            let status = unsafe {
                sys::cuMemHostRegister_v2(start as *mut std::ffi::c_void, end - start, 0)
            };
            match status.result() {
                Ok(()) => pinned.registered.push(start),
                Err(_) => pinned.failed_bytes += end - start,
            }
        }
        Ok(pinned)
    }

    fn unregister(&mut self) {
        if self.registered.is_empty() {
            return;
        }
        let _ = self.context.bind_to_thread();
        for start in self.registered.drain(..) {
            // SAFETY: registered in `register`, once.
            let _ = unsafe { sys::cuMemHostUnregister(start as *mut std::ffi::c_void) };
        }
    }
}

impl Drop for PinnedHost {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// The map that only looks: the address and length of every host buffer a block's tensors live
/// in (whole storages, so two tensors viewing one buffer give one range), returning each
/// tensor unchanged.
#[derive(Default)]
struct HostRanges {
    ranges: Vec<(usize, usize)>,
}

impl TensorMap for HostRanges {
    fn tensor(&mut self, t: &Tensor) -> Result<Tensor> {
        let (storage, _) = t.storage_and_layout();
        if let Storage::Cpu(cpu) = &*storage {
            let range = match cpu {
                CpuStorage::BF16(v) => range_of(v),
                CpuStorage::F16(v) => range_of(v),
                CpuStorage::F32(v) => range_of(v),
                CpuStorage::F8E4M3(v) => range_of(v),
                CpuStorage::U8(v) => range_of(v),
                CpuStorage::U32(v) => range_of(v),
                CpuStorage::I64(v) => range_of(v),
                _ => (0, 0),
            };
            if range.1 > 0 {
                self.ranges.push(range);
            }
        }
        Ok(t.clone())
    }

    fn quantized(&mut self, q: &Arc<QTensor>) -> Result<Arc<QTensor>> {
        // Not pinned: candle copies GGUF blocks into a padded buffer of its own before the
        // upload (`QStorage::from_data`), so the copy engine never reads these bytes.
        Ok(q.clone())
    }
}

/// (address, length in bytes) of a buffer.
fn range_of<T>(v: &[T]) -> (usize, usize) {
    (v.as_ptr() as usize, std::mem::size_of_val(v))
}
