//! RainFusion 2.0 mask prediction on the GPU (`kernels/mask.cu`): the block mask is built and
//! kept on the device, ready for [`super::block_sparse_attention_device`].
//!
//! Same rule as the CPU predictor: pooled (block-mean) q and k, scores `q̂·k̂ᵀ/√d`, each query
//! block keeps its `ceil(key_blocks·(1 − sparsity))` best key blocks with ties kept, and the
//! dense tail (the last `dense_tail_tokens` tokens: first-frame sink, text) is forced on.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorage, WrapErr};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use half::{bf16, f16};

use super::module::{self, MASK};
use super::order::DeviceTokenOrder;
use crate::predict::{forced_from_block, kept_per_row};
use crate::{BlockMask, Error, Result};

/// Most key blocks one row may have (the top-k kernel sorts a row in shared memory).
const MAX_BLOCKS: usize = 4096;
/// Threads of the top-k and scan kernels (`TOPK_THREADS` in mask.cu).
const TOPK_THREADS: u32 = 512;

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
    let q_means = block_means_in_order(q, block_size, order)?; // [B,H,nb,D] f32
    let k_means = block_means_in_order(k, block_size, order)?;
    let scores = (q_means.matmul(&k_means.t()?)? / (d as f64).sqrt())?; // [B,H,nb,nb] (cuBLAS)
    let scores = scores.reshape((b * h * blocks, blocks))?.contiguous()?;
    let op = TopkOp {
        keep: kept_per_row(blocks, sparsity),
        first_forced: forced_from_block(l, block_size, dense_tail_tokens),
    };
    let csr = scores.apply_op1_no_bwd(&op)?; // [rows + 1 + rows·blocks] u32: offsets, then indices
    let rows = b * h * blocks;
    Ok(DeviceBlockMask {
        batch: b,
        heads: h,
        block_size,
        query_blocks: blocks,
        key_blocks: blocks,
        // Own storage for the offsets, so that the attention op never read-locks one tensor twice.
        offsets: csr.narrow(0, 0, rows + 1)?.force_contiguous()?,
        indices: csr.narrow(0, rows + 1, rows * blocks)?,
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
        let (b, h, l, d) = layout.shape().dims4()?;
        let blocks = l.div_ceil(self.block_size);
        let dev = x.device().clone();
        let out = dev.alloc_zeros::<f32>(b * h * blocks * d)?;
        let stride = layout.stride();
        let (sb, sh, sl) = (stride[0] as i64, stride[1] as i64, stride[2] as i64);
        let (heads, seq_len, block_size, nblocks, head_dim) = (
            h as i32,
            l as i32,
            self.block_size as i32,
            blocks as i32,
            d as i32,
        );
        // 16-byte loads where every row starts 16-byte aligned and head_dim splits into a
        // power-of-two count of 8-element lanes that divides the thread count.
        let vec16 = x.dtype().size_in_bytes() == 2
            && d.is_power_of_two()
            && (8..=MEANS_THREADS * 8).contains(&d)
            && [layout.start_offset(), stride[0], stride[1], stride[2]]
                .iter()
                .all(|v| v % 8 == 0);
        let threads = if vec16 { MEANS_THREADS } else { d.min(256) };
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, h as u32, b as u32),
            block_dim: (threads as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let order_guard = self.order.as_ref().map(|o| o.storage_and_layout());
        let order_slice = match &order_guard {
            Some((storage, order_layout)) => {
                let candle_core::Storage::Cuda(order) = &**storage else {
                    candle_core::bail!("block_means: the token order must be on the CUDA device")
                };
                Some(
                    order
                        .as_cuda_slice::<u32>()?
                        .slice(order_layout.start_offset()..),
                )
            }
            None => None,
        };
        let null_ptr: u64 = 0;
        macro_rules! run {
            ($t:ty, $name:expr) => {{
                let func = module::load(&dev, &MASK, $name, 0).map_err(msg)?;
                let src = x.as_cuda_slice::<$t>()?.slice(layout.start_offset()..);
                let stream = dev.cuda_stream();
                let mut builder = stream.launch_builder(&func);
                builder.arg(&src).arg(&out);
                match &order_slice {
                    Some(order) => builder.arg(order),
                    None => builder.arg(&null_ptr),
                };
                builder
                    .arg(&sb)
                    .arg(&sh)
                    .arg(&sl)
                    .arg(&heads)
                    .arg(&seq_len)
                    .arg(&block_size)
                    .arg(&nblocks)
                    .arg(&head_dim);
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
        let counts = dev.alloc_zeros::<u32>(rows)?;
        let padded = dev.alloc_zeros::<u32>(rows * blocks)?;
        let mut csr = dev.alloc_zeros::<u32>(rows + 1 + rows * blocks)?;
        let (nblocks, keep, first_forced, nrows) = (
            blocks as i32,
            self.keep as i32,
            self.first_forced as i32,
            rows as i32,
        );

        let topk = module::load(&dev, &MASK, "rf_block_topk", 0).map_err(msg)?;
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&topk);
        builder
            .arg(&scores)
            .arg(&counts)
            .arg(&padded)
            .arg(&nblocks)
            .arg(&keep)
            .arg(&first_forced);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (TOPK_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match rf_block_topk; blocks <= MAX_BLOCKS was checked by the caller.
        unsafe { builder.launch(cfg) }.w()?;

        {
            let mut offsets = csr.slice_mut(0..rows + 1);
            let scan = module::load(&dev, &MASK, "rf_counts_to_offsets", 0).map_err(msg)?;
            let stream = dev.cuda_stream();
            let mut builder = stream.launch_builder(&scan);
            builder.arg(&counts).arg(&mut offsets).arg(&nrows);
            let cfg = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (TOPK_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: arguments match rf_counts_to_offsets.
            unsafe { builder.launch(cfg) }.w()?;
        }
        {
            let (mut offsets, mut indices) = csr.split_at_mut(rows + 1);
            let compact = module::load(&dev, &MASK, "rf_compact_rows", 0).map_err(msg)?;
            let stream = dev.cuda_stream();
            let mut builder = stream.launch_builder(&compact);
            builder
                .arg(&padded)
                .arg(&mut offsets)
                .arg(&mut indices)
                .arg(&nblocks);
            let cfg = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: arguments match rf_compact_rows; indices has rows·blocks capacity.
            unsafe { builder.launch(cfg) }.w()?;
        }
        let len = rows + 1 + rows * blocks;
        Ok((CudaStorage::wrap_cuda_slice(csr, dev), Shape::from(len)))
    }
}
