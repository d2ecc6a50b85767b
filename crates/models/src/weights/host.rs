//! The fast CPU path: a tensor's bytes go from the mmap straight into the buffer the tensor will
//! own (no zero-fill, no intermediate copy), split over rayon's threads; a cast reads the stored
//! values and writes the converted ones in the same single pass, also in parallel.
//!
//! Measured (perf, 2.4 GB of bf16 from the page cache): over half of the time is the kernel
//! faulting in and zeroing the fresh destination pages, which threads share out but cannot
//! avoid. Asking for transparent huge pages (MADV_HUGEPAGE) removed the faults on a warm
//! machine but made a process's first load 3x slower (direct compaction), so it is not done.
//!
//! Casts use the same `half` conversions as candle's CPU `to_dtype`, so the results are
//! bit-identical to the plain path.

use std::mem::MaybeUninit;

use candle_core::{DType, Device, Tensor, WithDType};
use half::{bf16, f16};
use rayon::prelude::*;

use super::{RawTensor, Result};

/// Bytes each parallel task copies or converts: large enough that task overhead vanishes, small
/// enough that a 32 MB matrix keeps several threads busy.
const TASK_BYTES: usize = 2 << 20;

/// `raw` as a CPU tensor of `dtype`; `None` when the cast is one this path does not do (any pair
/// of distinct dtypes that are not both floats).
pub(super) fn load(raw: &RawTensor<'_>, dtype: DType) -> Option<Result<Tensor>> {
    use DType::*;
    let shape = raw.shape;
    let bytes = raw.bytes;
    let tensor = match (raw.dtype, dtype) {
        (from, to) if from == to => match to {
            BF16 => tensor(copy::<bf16>(bytes), shape),
            F16 => tensor(copy::<f16>(bytes), shape),
            F32 => tensor(copy::<f32>(bytes), shape),
            F64 => tensor(copy::<f64>(bytes), shape),
            U8 => tensor(copy::<u8>(bytes), shape),
            U32 => tensor(copy::<u32>(bytes), shape),
            I64 => tensor(copy::<i64>(bytes), shape),
            _ => return None,
        },
        (F16, BF16) => tensor(cast(bytes, |v: f16| bf16::from_f32(v.to_f32())), shape),
        (F32, BF16) => tensor(cast(bytes, bf16::from_f32), shape),
        (F64, BF16) => tensor(cast(bytes, bf16::from_f64), shape),
        (BF16, F16) => tensor(cast(bytes, |v: bf16| f16::from_f32(v.to_f32())), shape),
        (F32, F16) => tensor(cast(bytes, f16::from_f32), shape),
        (F64, F16) => tensor(cast(bytes, f16::from_f64), shape),
        (BF16, F32) => tensor(cast(bytes, |v: bf16| v.to_f32()), shape),
        (F16, F32) => tensor(cast(bytes, |v: f16| v.to_f32()), shape),
        (F64, F32) => tensor(cast(bytes, |v: f64| v as f32), shape),
        (BF16, F64) => tensor(cast(bytes, |v: bf16| v.to_f64()), shape),
        (F16, F64) => tensor(cast(bytes, |v: f16| v.to_f64()), shape),
        (F32, F64) => tensor(cast(bytes, |v: f32| v as f64), shape),
        _ => return None,
    };
    Some(tensor)
}

/// A CPU tensor that owns `data` (candle takes the Vec without copying it).
fn tensor<T: WithDType>(data: Vec<T>, shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
}

/// The little-endian `T`s stored in `bytes`, copied in parallel into a fresh, never zeroed Vec.
pub(super) fn copy<T: Copy + Send>(bytes: &[u8]) -> Vec<T> {
    let size = std::mem::size_of::<T>();
    let len = bytes.len() / size;
    let mut out: Vec<T> = Vec::with_capacity(len);
    let elems_per_task = (TASK_BYTES / size).max(1);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(elems_per_task)
        .zip(bytes.par_chunks(elems_per_task * size))
        .for_each(|(dst, src)| copy_bytes(dst, src));
    // SAFETY: every one of the `len` elements was written above (the chunks of `dst` and `src`
    // pair up one to one and cover both slices).
    unsafe { out.set_len(len) };
    out
}

/// Copies `src` (exactly `dst`'s size in bytes) into `dst`, with no alignment needed of `src`.
pub(super) fn copy_bytes<T>(dst: &mut [MaybeUninit<T>], src: &[u8]) {
    assert_eq!(std::mem::size_of_val(dst), src.len());
    // SAFETY: both ranges are `src.len()` bytes long and distinct (one is borrowed mutably);
    // copying bytes into `MaybeUninit<T>` storage makes no alignment demand on `src`.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast::<u8>(), src.len()) }
}

/// The `S`s stored in `bytes`, each converted by `convert`, in parallel into a fresh Vec.
fn cast<S: Copy, D: Send>(bytes: &[u8], convert: impl Fn(S) -> D + Sync) -> Vec<D> {
    let src_size = std::mem::size_of::<S>();
    let len = bytes.len() / src_size;
    let mut out: Vec<D> = Vec::with_capacity(len);
    let elems_per_task = (TASK_BYTES / src_size).max(1);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(elems_per_task)
        .zip(bytes.par_chunks(elems_per_task * src_size))
        .for_each(|(dst, src)| {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(src_size)) {
                // SAFETY: `s` is `size_of::<S>()` bytes; the stored data need not be aligned.
                let value = unsafe { std::ptr::read_unaligned(s.as_ptr().cast::<S>()) };
                d.write(convert(value));
            }
        });
    // SAFETY: every one of the `len` elements was written above.
    unsafe { out.set_len(len) };
    out
}
