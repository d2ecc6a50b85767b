//! RainFusion 2.0 mask prediction on the GPU (`kernels/mask.cu`): the block mask is built and
//! kept on the device, ready for [`super::block_sparse_attention_device`].
//!
//! Same rule as the CPU predictor: pooled (block-mean) q and k, scores `q̂·k̂ᵀ/√d`, each query
//! block keeps its `ceil(key_blocks·(1 − sparsity))` best key blocks with ties kept, and the
//! dense tail (the last `dense_tail_tokens` tokens: first-frame sink, text) is forced on.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, LaunchArgs, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaStorage, WrapErr};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Shape, Tensor};
use half::{bf16, f16};

use super::module::{self, MASK};
use super::order::DeviceTokenOrder;
use crate::predict::{forced_from_block, kept_per_row};
use crate::{BlockMask, Error, Result};

/// Most key blocks one row may have (the selection keeps a row's scores in shared memory).
const MAX_BLOCKS: usize = 4096;
/// Threads of the scan kernel (`SCAN_THREADS` in mask.cu).
const SCAN_THREADS: u32 = 512;
/// Rows (one warp each) per CTA of the selection kernel (`SELECT_WARPS` in mask.cu).
const SELECT_WARPS: usize = 4;

/// A [`BlockMask`] whose CSR lives on a CUDA device.
///
/// `offsets`: u32 `[batch·heads·query_blocks + 1]`; `indices`: u32, at least `offsets[rows]`
/// long (masks predicted on the device keep the upper bound `rows·key_blocks`, so that no host
/// read is needed to size them; entries past `offsets[rows]` are unused).
#[derive(Debug, Clone)]
pub struct DeviceBlockMask {
    pub batch: usize,
    pub heads: usize,
    pub block_size: usize,
    pub query_blocks: usize,
    pub key_blocks: usize,
    pub offsets: Tensor,
    pub indices: Tensor,
}

impl DeviceBlockMask {
    /// Copies a host mask to `device`.
    pub fn upload(mask: &BlockMask, device: &Device) -> Result<Self> {
        let rows = mask.batch * mask.heads * mask.query_blocks;
        if mask.offsets.len() != rows + 1 || mask.offsets[rows] as usize != mask.indices.len() {
            return Err(Error::InvalidConfig(format!(
                "block mask CSR is inconsistent: {} offsets for {rows} rows, last offset {:?}, {} indices",
                mask.offsets.len(),
                mask.offsets.last(),
                mask.indices.len()
            )));
        }
        // A zero-length device buffer cannot be allocated; an all-empty mask gets one unused entry.
        let indices: &[u32] = if mask.indices.is_empty() {
            &[0]
        } else {
            &mask.indices
        };
        Ok(Self {
            batch: mask.batch,
            heads: mask.heads,
            block_size: mask.block_size,
            query_blocks: mask.query_blocks,
            key_blocks: mask.key_blocks,
            offsets: Tensor::from_slice(&mask.offsets, mask.offsets.len(), device)?,
            indices: Tensor::from_slice(indices, indices.len(), device)?,
        })
    }

    /// Copies the mask back to the host (for tests and inspection).
    pub fn to_host(&self) -> Result<BlockMask> {
        let offsets = self.offsets.to_vec1::<u32>()?;
        let used = *offsets.last().unwrap_or(&0) as usize;
        let indices = self.indices.narrow(0, 0, used)?.to_vec1::<u32>()?;
        Ok(BlockMask {
            batch: self.batch,
            heads: self.heads,
            block_size: self.block_size,
            query_blocks: self.query_blocks,
            key_blocks: self.key_blocks,
            offsets,
            indices,
        })
    }

    /// The same mask with `indices` cut to the entries in use, in a buffer of their own (one
    /// number read back from the device, then one small copy). A predicted mask keeps room for
    /// every block pair: at 1280×720×81 on Wan2.1-14B (40 heads, 591 blocks a row) that is
    /// 56 MB a layer, ≈ 2.2 GB for the 40 masks a run caches, of which RainFusion 0.8 uses a
    /// quarter.
    pub fn compacted(self) -> Result<Self> {
        let rows = self.batch * self.heads * self.query_blocks;
        let used = self.offsets.narrow(0, rows, 1)?.to_vec1::<u32>()?[0] as usize;
        if used == 0 || used == self.indices.dim(0)? {
            return Ok(self);
        }
        let indices = self.indices.narrow(0, 0, used)?.force_contiguous()?;
        Ok(Self { indices, ..self })
    }

    /// Fraction of block pairs kept (reads one number back from the device).
    pub fn density(&self) -> Result<f64> {
        let rows = self.batch * self.heads * self.query_blocks;
        let kept = self.offsets.narrow(0, rows, 1)?.to_vec1::<u32>()?[0] as f64;
        Ok(kept / (rows * self.key_blocks).max(1) as f64)
    }
}

/// Block means on the device: x `[B, H, L, D]` (bf16, f16 or f32, any layout with a contiguous
/// last dimension) → `[B, H, ceil(L / block_size), D]` f32; a trailing partial block is averaged
/// over its real tokens.
pub fn block_means(x: &Tensor, block_size: usize) -> Result<Tensor> {
    block_means_in_order(x, block_size, None)
}

/// [`block_means`] of the tokens taken in `order` (position p is token `forward[p]` of the
/// permutation), read from x in place: equal to the block means of the permuted copy, without
/// making it.
pub fn block_means_in_order(
    x: &Tensor,
    block_size: usize,
    order: Option<&DeviceTokenOrder>,
) -> Result<Tensor> {
    let (_, _, l, _) = x.dims4()?;
    if block_size == 0 || l == 0 {
        return Err(Error::InvalidConfig(format!(
            "cannot pool {l} tokens into blocks of {block_size}"
        )));
    }
    let order = order
        .map(|o| o.for_sequence(l, x.device()).cloned())
        .transpose()?;
    let x = if x.stride()[3] == 1 {
        x.clone()
    } else {
        x.contiguous()?
    };
    Ok(x.apply_op1_no_bwd(&BlockMeansOp { block_size, order })?)
}

/// The block means of q and of k (`[B, H, L, D]` each, taken in `order`), as
/// [`block_means_in_order`] computes them: in one launch where both fit the 16-byte-load kernel
/// with the same dtype and shape, else one launch each.
pub fn block_means_pair(
    q: &Tensor,
    k: &Tensor,
    block_size: usize,
    order: Option<&DeviceTokenOrder>,
) -> Result<(Tensor, Tensor)> {
    let (_, _, l, _) = q.dims4()?;
    let together = q.dims() == k.dims()
        && q.dtype() == k.dtype()
        && block_size > 0
        && l > 0
        && vec16_fits(q.dtype(), q.layout())
        && vec16_fits(k.dtype(), k.layout());
    if !together {
        return Ok((
            block_means_in_order(q, block_size, order)?,
            block_means_in_order(k, block_size, order)?,
        ));
    }
    let order = order
        .map(|o| o.for_sequence(l, q.device()).cloned())
        .transpose()?;
    let both = q.apply_op2_no_bwd(k, &BlockMeansPairOp { block_size, order })?; // [2,B,H,nb,D]
    Ok((both.get(0)?, both.get(1)?))
}

/// Predicts the RainFusion block mask of self-attention over (permuted) q and k on the GPU.
///
/// q, k: `[B, H, L, D]` on a CUDA device. `sparsity` in [0, 1); the last `dense_tail_tokens`
/// tokens are forced dense (rows and columns of every block they touch).
pub fn predict_block_mask(
    q: &Tensor,
    k: &Tensor,
    block_size: usize,
    sparsity: f64,
    dense_tail_tokens: usize,
) -> Result<DeviceBlockMask> {
    predict_block_mask_in_order(q, k, None, block_size, sparsity, dense_tail_tokens)
}

/// [`predict_block_mask`] over the tokens of q and k taken in `order` (see
/// [`block_means_in_order`]): the mask of the permuted sequence, with q and k read in place.
pub fn predict_block_mask_in_order(
    q: &Tensor,
    k: &Tensor,
    order: Option<&DeviceTokenOrder>,
    block_size: usize,
    sparsity: f64,
    dense_tail_tokens: usize,
) -> Result<DeviceBlockMask> {
    let (b, h, l, d) = q.dims4()?;
    if k.dims4()? != (b, h, l, d) {
        return Err(Error::ShapeMismatch {
            q: q.shape().clone(),
            k: k.shape().clone(),
            v: k.shape().clone(),
        });
    }
    if !(0.0..1.0).contains(&sparsity) {
        return Err(Error::InvalidConfig(format!(
            "sparsity {sparsity} is outside [0, 1)"
        )));
    }
    if !q.device().is_cuda() {
        return Err(Error::InvalidConfig(
            "rainfusion::cuda::predict_block_mask needs CUDA tensors".into(),
        ));
    }
    let blocks = l.div_ceil(block_size.max(1));
    if blocks > MAX_BLOCKS {
        return Err(Error::InvalidConfig(format!(
            "{blocks} blocks per row exceed the GPU top-k limit of {MAX_BLOCKS}; use a larger block"
        )));
    }
    let (q_means, k_means) = block_means_pair(q, k, block_size, order)?; // [B,H,nb,D] f32 each
                                                                         // [B,H,nb,nb] (cuBLAS). Not divided by √d: the selection compares the scores of a row, and
                                                                         // a positive factor keeps their order (the CPU predictor scales; its ties are the same
                                                                         // unless the division rounds two scores onto one value).
    let scores = q_means.matmul(&k_means.t()?)?;
    let scores = scores.reshape((b * h * blocks, blocks))?.contiguous()?;
    let op = TopkOp {
        keep: kept_per_row(blocks, sparsity),
        first_forced: forced_from_block(l, block_size, dense_tail_tokens),
    };
    let csr = scores.apply_op1_no_bwd(&op)?; // [rows + 1 + rows·blocks] u32: offsets, then indices
    let (offsets, indices) = split_csr(&csr, b * h * blocks)?;
    Ok(DeviceBlockMask {
        batch: b,
        heads: h,
        block_size,
        query_blocks: blocks,
        key_blocks: blocks,
        offsets,
        indices,
    })
}

fn msg(e: Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

struct BlockMeansOp {
    block_size: usize,
    /// u32 `[L]`: the token at each position, or `None` for the natural order.
    order: Option<Tensor>,
}

/// Threads of the 16-byte-load block-means kernel (`MEANS_THREADS` in mask.cu).
const MEANS_THREADS: usize = 256;

/// Whether x `[B, H, L, D]` fits the 16-byte-load kernel: a 16-bit dtype, every row starting
/// 16-byte aligned, and a head_dim that splits into a power-of-two count of 8-element lanes that
/// divides the thread count.
fn vec16_fits(dtype: DType, layout: &Layout) -> bool {
    let (d, stride) = (layout.dims()[3], layout.stride());
    dtype.size_in_bytes() == 2
        && stride[3] == 1
        && d.is_power_of_two()
        && (8..=MEANS_THREADS * 8).contains(&d)
        && [layout.start_offset(), stride[0], stride[1], stride[2]]
            .iter()
            .all(|v| v % 8 == 0)
}

/// The u32 token order's device view, when there is one.
fn order_view<'a, G: std::ops::Deref<Target = candle_core::Storage>>(
    guard: &'a Option<(G, &Layout)>,
) -> candle_core::Result<Option<CudaView<'a, u32>>> {
    match guard {
        Some((storage, layout)) => {
            let candle_core::Storage::Cuda(order) = &**storage else {
                candle_core::bail!("block_means: the token order must be on the CUDA device")
            };
            Ok(Some(
                order.as_cuda_slice::<u32>()?.slice(layout.start_offset()..),
            ))
        }
        None => Ok(None),
    }
}

/// The (sb, sh, sl) element strides of x `[B, H, L, D]`.
fn strides3(layout: &Layout) -> (i64, i64, i64) {
    let s = layout.stride();
    (s[0] as i64, s[1] as i64, s[2] as i64)
}

/// The trailing scalar arguments of both block-means kernels: `heads, seq_len, block_size,
/// nblocks, head_dim` (i32, in that order).
struct MeansGeometry([i32; 5]);

impl MeansGeometry {
    /// For x `[B, H, L, D]` in blocks of `block_size`: the geometry and the block count.
    fn new(layout: &Layout, block_size: usize) -> candle_core::Result<(Self, usize)> {
        let (_, h, l, d) = layout.shape().dims4()?;
        let blocks = l.div_ceil(block_size);
        let args = [h, l, block_size, blocks, d].map(|v| v as i32);
        Ok((Self(args), blocks))
    }

    /// Appends the token order (or a null pointer for the natural order), the strides of each
    /// input, then the geometry to a launch's arguments.
    fn push<'a>(
        &'a self,
        builder: &mut LaunchArgs<'a>,
        order: &'a Option<CudaView<'a, u32>>,
        null: &'a u64,
        strides: &'a [(i64, i64, i64)],
    ) {
        match order {
            Some(order) => builder.arg(order),
            None => builder.arg(null),
        };
        for (sb, sh, sl) in strides {
            builder.arg(sb).arg(sh).arg(sl);
        }
        for value in &self.0 {
            builder.arg(value);
        }
    }
}

impl CustomOp1 for BlockMeansOp {
    fn name(&self) -> &'static str {
        "rainfusion-block-means"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("rainfusion::cuda::block_means runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (b, h, _, d) = layout.shape().dims4()?;
        let (geometry, blocks) = MeansGeometry::new(layout, self.block_size)?;
        let dev = x.device().clone();
        // SAFETY: the kernel writes every element (each block's every column).
        let out = unsafe { dev.alloc::<f32>(b * h * blocks * d)? };
        let strides = [strides3(layout)];
        let vec16 = vec16_fits(x.dtype(), layout);
        let threads = if vec16 { MEANS_THREADS } else { d.min(256) };
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, h as u32, b as u32),
            block_dim: (threads as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let order_guard = self.order.as_ref().map(|o| o.storage_and_layout());
        let order_slice = order_view(&order_guard)?;
        let null_ptr: u64 = 0;
        macro_rules! run {
            ($t:ty, $name:expr) => {{
                let func = module::load(&dev, &MASK, $name, 0).map_err(msg)?;
                let src = x.as_cuda_slice::<$t>()?.slice(layout.start_offset()..);
                let stream = dev.cuda_stream();
                let mut builder = stream.launch_builder(&func);
                builder.arg(&src).arg(&out);
                geometry.push(&mut builder, &order_slice, &null_ptr, &strides);
                // SAFETY: arguments match rf_block_means_* in kernels/mask.cu; the order (when
                // given) was checked to hold L entries, each a token of x (a permutation).
                unsafe { builder.launch(cfg) }.w()?;
            }};
        }
        match (x.dtype(), vec16) {
            (DType::BF16, true) => run!(bf16, "rf_block_means_vec16_bf16"),
            (DType::F16, true) => run!(f16, "rf_block_means_vec16_f16"),
            (DType::BF16, false) => run!(bf16, "rf_block_means_bf16"),
            (DType::F16, false) => run!(f16, "rf_block_means_f16"),
            (DType::F32, _) => run!(f32, "rf_block_means_f32"),
            (other, _) => candle_core::bail!("block_means: unsupported dtype {other:?}"),
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((b, h, blocks, d)),
        ))
    }
}

/// q and k (same shape and 16-bit dtype, both fitting [`vec16_fits`]) → their block means
/// `[2, B, H, blocks, D]` f32 in one launch, q's first.
struct BlockMeansPairOp {
    block_size: usize,
    /// u32 `[L]`: the token at each position, or `None` for the natural order.
    order: Option<Tensor>,
}

impl CustomOp2 for BlockMeansPairOp {
    fn name(&self) -> &'static str {
        "rainfusion-block-means-pair"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("rainfusion::cuda::block_means_pair runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        q_layout: &Layout,
        k: &CudaStorage,
        k_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (b, h, l, d) = q_layout.shape().dims4()?;
        if k_layout.shape().dims4()? != (b, h, l, d)
            || !vec16_fits(q.dtype(), q_layout)
            || !vec16_fits(k.dtype(), k_layout)
            || q.dtype() != k.dtype()
        {
            candle_core::bail!("block_means_pair: q and k must match and fit 16-byte loads");
        }
        let (geometry, blocks) = MeansGeometry::new(q_layout, self.block_size)?;
        let dev = q.device().clone();
        // SAFETY: the kernel writes every element (each tensor's every block and column).
        let out = unsafe { dev.alloc::<f32>(2 * b * h * blocks * d)? };
        let strides = [strides3(q_layout), strides3(k_layout)];
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, h as u32, 2 * b as u32),
            block_dim: (MEANS_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let order_guard = self.order.as_ref().map(|o| o.storage_and_layout());
        let order_slice = order_view(&order_guard)?;
        let null_ptr: u64 = 0;
        macro_rules! run {
            ($t:ty, $name:expr) => {{
                let func = module::load(&dev, &MASK, $name, 0).map_err(msg)?;
                let q_src = q.as_cuda_slice::<$t>()?.slice(q_layout.start_offset()..);
                let k_src = k.as_cuda_slice::<$t>()?.slice(k_layout.start_offset()..);
                let stream = dev.cuda_stream();
                let mut builder = stream.launch_builder(&func);
                builder.arg(&q_src).arg(&k_src).arg(&out);
                geometry.push(&mut builder, &order_slice, &null_ptr, &strides);
                // SAFETY: arguments match rf_block_means_pair_vec16_* in kernels/mask.cu (both
                // inputs checked against vec16_fits above); the order (when given) holds L
                // entries, each a token (a permutation).
                unsafe { builder.launch(cfg) }.w()?;
            }};
        }
        match q.dtype() {
            DType::BF16 => run!(bf16, "rf_block_means_pair_vec16_bf16"),
            DType::F16 => run!(f16, "rf_block_means_pair_vec16_f16"),
            other => candle_core::bail!("block_means_pair: unsupported dtype {other:?}"),
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((2, b, h, blocks, d)),
        ))
    }
}

/// Scores `[rows, blocks]` f32 → one u32 buffer: offsets `[rows + 1]` then indices
/// `[rows·blocks]` (CSR with upper-bound capacity).
struct TopkOp {
    keep: usize,
    first_forced: usize,
}

impl CustomOp1 for TopkOp {
    fn name(&self) -> &'static str {
        "rainfusion-block-topk"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("rainfusion::cuda top-k runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        s: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (rows, blocks) = layout.shape().dims2()?;
        if !layout.is_contiguous() || s.dtype() != DType::F32 {
            candle_core::bail!("top-k expects contiguous f32 scores");
        }
        let dev = s.device().clone();
        let scores = s.as_cuda_slice::<f32>()?.slice(layout.start_offset()..);
        // SAFETY (both): the select kernel writes every count and each row's first `count`
        // padded entries, which are all the compaction reads.
        let counts = unsafe { dev.alloc::<u32>(rows)? };
        let padded = unsafe { dev.alloc::<u32>(rows * blocks)? };
        let (nblocks, keep, first_forced, nrows) = (
            blocks as i32,
            self.keep as i32,
            self.first_forced as i32,
            rows as i32,
        );

        let smem = (SELECT_WARPS * blocks * 4) as u32;
        let select = module::load(&dev, &MASK, "rf_block_select", smem).map_err(msg)?;
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&select);
        builder
            .arg(&scores)
            .arg(&counts)
            .arg(&padded)
            .arg(&nrows)
            .arg(&nblocks)
            .arg(&keep)
            .arg(&first_forced);
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(SELECT_WARPS) as u32, 1, 1),
            block_dim: (SELECT_WARPS as u32 * 32, 1, 1),
            shared_mem_bytes: smem,
        };
        // SAFETY: arguments match rf_block_select; blocks <= MAX_BLOCKS was checked by the
        // caller, so the shared memory (SELECT_WARPS rows of keys) is at most 64 KiB.
        unsafe { builder.launch(cfg) }.w()?;

        assemble_csr(&dev, &counts, rows, blocks, |offsets, indices| {
            let compact = module::load(&dev, &MASK, "rf_compact_rows", 0).map_err(msg)?;
            let mut builder = stream.launch_builder(&compact);
            builder.arg(&padded).arg(offsets).arg(indices).arg(&nblocks);
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: arguments match rf_compact_rows; indices has rows·blocks capacity.
            unsafe { builder.launch(cfg) }.w()?;
            Ok(())
        })
    }
}

/// One u32 buffer, the CSR of a mask: `rows + 1` offsets (the running sums of `counts`, u32
/// `[rows]`), then room for `rows·row_capacity` indices, which `fill(offsets, indices)` writes.
/// Returned as a custom op's storage and shape.
fn assemble_csr(
    dev: &candle_core::cuda_backend::CudaDevice,
    counts: &CudaSlice<u32>,
    rows: usize,
    row_capacity: usize,
    fill: impl FnOnce(&mut CudaViewMut<'_, u32>, &mut CudaViewMut<'_, u32>) -> candle_core::Result<()>,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let len = rows + 1 + rows * row_capacity;
    // SAFETY: the scan writes every offset and `fill` the first offsets[rows] indices, all that a
    // reader takes.
    let mut csr = unsafe { dev.alloc::<u32>(len)? };
    scan_counts(dev, counts, &mut csr, rows)?;
    {
        let (mut offsets, mut indices) = csr.split_at_mut(rows + 1);
        fill(&mut offsets, &mut indices)?;
    }
    Ok((
        CudaStorage::wrap_cuda_slice(csr, dev.clone()),
        Shape::from(len),
    ))
}

/// `csr[0..=rows]` = the offsets of `counts` (u32 `[rows]`): 0, then the running sums.
fn scan_counts(
    dev: &candle_core::cuda_backend::CudaDevice,
    counts: &CudaSlice<u32>,
    csr: &mut CudaSlice<u32>,
    rows: usize,
) -> candle_core::Result<()> {
    let mut offsets = csr.slice_mut(0..rows + 1);
    let nrows = rows as i32;
    let scan = module::load(dev, &MASK, "rf_counts_to_offsets", 0).map_err(msg)?;
    let stream = dev.cuda_stream();
    let mut builder = stream.launch_builder(&scan);
    builder.arg(counts).arg(&mut offsets).arg(&nrows);
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (SCAN_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: arguments match rf_counts_to_offsets: rows counts in, rows + 1 offsets out.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(())
}

/// Splits one u32 buffer of `rows + 1` offsets then indices into the mask's two tensors.
fn split_csr(csr: &Tensor, rows: usize) -> Result<(Tensor, Tensor)> {
    let capacity = csr.dim(0)? - (rows + 1);
    Ok((
        // Own storage for the offsets, so that the attention op never read-locks one tensor twice.
        csr.narrow(0, 0, rows + 1)?.force_contiguous()?,
        csr.narrow(0, rows + 1, capacity)?,
    ))
}

/// A [`DeviceBlockMask`] kept as one bit per block pair, the form RainFusion caches between the
/// steps that reuse a mask. At 1280×720×81 on Wan2.1-14B (40 heads, 591 blocks a row) that is
/// 1.7 MB a layer, against 15.6 MB of u32 indices for the 28 % of pairs RainFusion 0.8 keeps:
/// the 40 cached masks of a run took 0.6 GB as indices.
#[derive(Debug, Clone)]
pub struct PackedDeviceMask {
    pub batch: usize,
    pub heads: usize,
    pub block_size: usize,
    pub query_blocks: usize,
    pub key_blocks: usize,
    /// u32 `[batch·heads·query_blocks, ceil(key_blocks / 32)]`: key block j of row r is bit
    /// j % 32 of word j / 32.
    pub bits: Tensor,
}

impl DeviceBlockMask {
    /// The mask as one bit per block pair (no host round trip).
    pub fn packed(&self) -> Result<PackedDeviceMask> {
        let rows = self.batch * self.heads * self.query_blocks;
        let op = PackOp {
            rows,
            words: self.key_blocks.div_ceil(32),
        };
        let bits = self.offsets.apply_op2_no_bwd(&self.indices, &op)?;
        Ok(PackedDeviceMask {
            batch: self.batch,
            heads: self.heads,
            block_size: self.block_size,
            query_blocks: self.query_blocks,
            key_blocks: self.key_blocks,
            bits,
        })
    }
}

impl PackedDeviceMask {
    /// The CSR mask again (no host round trip; its indices keep room for every block pair, as a
    /// freshly predicted mask's do).
    pub fn unpacked(&self) -> Result<DeviceBlockMask> {
        let rows = self.batch * self.heads * self.query_blocks;
        let op = UnpackOp {
            key_blocks: self.key_blocks,
        };
        let csr = self.bits.apply_op1_no_bwd(&op)?;
        let (offsets, indices) = split_csr(&csr, rows)?;
        Ok(DeviceBlockMask {
            batch: self.batch,
            heads: self.heads,
            block_size: self.block_size,
            query_blocks: self.query_blocks,
            key_blocks: self.key_blocks,
            offsets,
            indices,
        })
    }
}

/// CSR offsets `[rows + 1]` and indices (u32) → bits `[rows, words]` u32.
struct PackOp {
    rows: usize,
    words: usize,
}

impl CustomOp2 for PackOp {
    fn name(&self) -> &'static str {
        "rainfusion-mask-pack"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("rainfusion::cuda mask packing runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        offsets: &CudaStorage,
        offsets_layout: &Layout,
        indices: &CudaStorage,
        indices_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        if offsets_layout.shape().dims1()? != self.rows + 1
            || !offsets_layout.is_contiguous()
            || !indices_layout.is_contiguous()
        {
            candle_core::bail!("mask packing: contiguous offsets [rows + 1] and indices wanted");
        }
        let dev = offsets.device().clone();
        let bits = dev.alloc_zeros::<u32>(self.rows * self.words)?;
        let offsets = offsets
            .as_cuda_slice::<u32>()?
            .slice(offsets_layout.start_offset()..);
        let indices = indices
            .as_cuda_slice::<u32>()?
            .slice(indices_layout.start_offset()..);
        let words = self.words as i32;
        let func = module::load(&dev, &MASK, "rf_csr_to_bits", 0).map_err(msg)?;
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder.arg(&offsets).arg(&indices).arg(&bits).arg(&words);
        let cfg = LaunchConfig {
            grid_dim: (self.rows as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match rf_csr_to_bits; every index is a key block (< words·32) of a
        // well-formed mask, and bits holds rows·words zeroed words.
        unsafe { builder.launch(cfg) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(bits, dev),
            Shape::from((self.rows, self.words)),
        ))
    }
}

/// Bits `[rows, words]` u32 → one u32 buffer: offsets `[rows + 1]`, then indices
/// `[rows·key_blocks]` (CSR with upper-bound capacity).
struct UnpackOp {
    key_blocks: usize,
}

impl CustomOp1 for UnpackOp {
    fn name(&self) -> &'static str {
        "rainfusion-mask-unpack"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("rainfusion::cuda mask unpacking runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        bits: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (rows, words) = layout.shape().dims2()?;
        if !layout.is_contiguous() {
            candle_core::bail!("mask unpacking: contiguous bits wanted");
        }
        let dev = bits.device().clone();
        let bits = bits.as_cuda_slice::<u32>()?.slice(layout.start_offset()..);
        // SAFETY: rf_bits_count writes every count.
        let counts = unsafe { dev.alloc::<u32>(rows)? };
        let (nrows, nwords) = (rows as i32, words as i32);
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(SELECT_WARPS) as u32, 1, 1),
            block_dim: (SELECT_WARPS as u32 * 32, 1, 1),
            shared_mem_bytes: 0,
        };
        let count = module::load(&dev, &MASK, "rf_bits_count", 0).map_err(msg)?;
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&count);
        builder.arg(&bits).arg(&counts).arg(&nrows).arg(&nwords);
        // SAFETY: arguments match rf_bits_count: rows·words words in, rows counts out.
        unsafe { builder.launch(cfg) }.w()?;
        assemble_csr(&dev, &counts, rows, self.key_blocks, |offsets, indices| {
            let unpack = module::load(&dev, &MASK, "rf_bits_to_indices", 0).map_err(msg)?;
            let mut builder = stream.launch_builder(&unpack);
            builder
                .arg(&bits)
                .arg(offsets)
                .arg(indices)
                .arg(&nrows)
                .arg(&nwords);
            // SAFETY: arguments match rf_bits_to_indices; each row writes its count of indices
            // from its offset, within the rows·key_blocks capacity.
            unsafe { builder.launch(cfg) }.w()?;
            Ok(())
        })
    }
}
