//! Flash attention over block lists on CUDA (`kernels/attention.cu`), as a candle custom op.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorage, WrapErr};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor};
use half::{bf16, f16};

use super::mask::DeviceBlockMask;
use super::module::{self, ATTENTION};
use super::order::DeviceTokenOrder;
use super::tensor_map;
use crate::{BlockMask, Error, Result};

/// Memory order of the attention output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputLayout {
    /// `[B, H, L, D]` contiguous: what [`flash_attention`] and the other functions without a
    /// layout argument return.
    #[default]
    Bhld,
    /// `[B, L, H, D]` contiguous (the returned tensor has that shape): a transformer reshapes
    /// it to `[B, L, H·D]` for the output projection with no copy.
    Blhd,
}

impl OutputLayout {
    /// Shape of the returned tensor for `(batch, heads, query tokens, head_dim)`.
    fn shape(self, b: usize, h: usize, l: usize, d: usize) -> Shape {
        match self {
            OutputLayout::Bhld => Shape::from((b, h, l, d)),
            OutputLayout::Blhd => Shape::from((b, l, h, d)),
        }
    }

    /// Element strides (batch, head, token) of the `[B, H, L, D]` view the kernel writes.
    fn strides(self, h: usize, l: usize, d: usize) -> (i64, i64, i64) {
        let (h, l, d) = (h as i64, l as i64, d as i64);
        match self {
            OutputLayout::Bhld => (h * l * d, l * d, d),
            OutputLayout::Blhd => (l * h * d, d, h * d),
        }
    }
}

/// Dense softmax attention, `softmax(q·kᵀ·scale)·v`, in one fused kernel.
///
/// q, k, v: `[B, H, L, D]` on a CUDA device, bf16 or f16, head_dim 64 or 128 → `[B, H, L, D]`
/// contiguous, same dtype. Any layout whose last dimension is contiguous is read in place
/// (e.g. `[B, L, H, D]` memory transposed to `[B, H, L, D]`); others are copied first.
pub fn flash_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    flash_attention_with_layout(q, k, v, scale, OutputLayout::Bhld)
}

/// [`flash_attention`] writing its output in `layout`: q, k, v `[B, H, L, D]` →
/// `[B, H, L, D]` ([`OutputLayout::Bhld`]) or `[B, L, H, D]` ([`OutputLayout::Blhd`]).
pub fn flash_attention_with_layout(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    layout: OutputLayout,
) -> Result<Tensor> {
    check_inputs(q, k, v)?;
    dense(q, k, v, scale, layout)
}

/// Dense attention of `Lq` queries over `Lk` keys (cross-attention: video tokens attending to
/// text tokens), no mask.
///
/// q: `[B, H, Lq, D]`; k, v: `[B, H, Lk, D]`; any `Lq, Lk ≥ 1` (neither needs to be a multiple
/// of a tile); CUDA, bf16 or f16, head_dim 64 or 128 → `[B, H, Lq, D]`
/// ([`OutputLayout::Bhld`]) or `[B, Lq, H, D]` ([`OutputLayout::Blhd`]), contiguous. q is read
/// in place with its own strides, k and v in place when they share one set of strides (e.g.
/// views of `[B, Lq, H, D]` and `[B, Lk, H, D]` memory); otherwise they are copied first.
pub fn cross_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    layout: OutputLayout,
) -> Result<Tensor> {
    check_cross_inputs(q, k, v)?;
    dense(q, k, v, scale, layout)
}

/// The dense kernel (no CSR) on checked inputs.
fn dense(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, layout: OutputLayout) -> Result<Tensor> {
    let (q, k, v) = kernel_layout(q, k, v)?;
    let op = AttentionOp {
        scale: scale as f32,
        block_size: 128,
        csr: None,
        order: None,
        layout,
    };
    Ok(q.apply_op3_no_bwd(&k, &v, &op)?)
}

/// Block-sparse attention: query block `qb` of (batch `b`, head `h`) attends only to the key
/// blocks `mask.row(b, h, qb)` lists. The mask is copied to the device on every call; masks
/// built on the GPU ([`DeviceBlockMask`]) skip that copy.
pub fn block_sparse_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &BlockMask,
    scale: f64,
) -> Result<Tensor> {
    block_sparse_attention_with_layout(q, k, v, mask, scale, OutputLayout::Bhld)
}

/// [`block_sparse_attention`] writing its output in `layout`: q, k, v `[B, H, L, D]` →
/// `[B, H, L, D]` or `[B, L, H, D]`.
pub fn block_sparse_attention_with_layout(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &BlockMask,
    scale: f64,
    layout: OutputLayout,
) -> Result<Tensor> {
    let device_mask = DeviceBlockMask::upload(mask, q.device())?;
    block_sparse_attention_device_with_layout(q, k, v, &device_mask, scale, layout)
}

/// Block-sparse attention over a mask that already lives on the device.
pub fn block_sparse_attention_device(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &DeviceBlockMask,
    scale: f64,
) -> Result<Tensor> {
    block_sparse_attention_device_with_layout(q, k, v, mask, scale, OutputLayout::Bhld)
}

/// [`block_sparse_attention_device`] writing its output in `layout`: q, k, v `[B, H, L, D]` →
/// `[B, H, L, D]` or `[B, L, H, D]`.
pub fn block_sparse_attention_device_with_layout(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &DeviceBlockMask,
    scale: f64,
    layout: OutputLayout,
) -> Result<Tensor> {
    check_inputs(q, k, v)?;
    sparse(q, k, v, mask, scale, layout, None)
}

/// The kernel over a checked mask; `order`: u32 `[L]` gathered through (Hopper kernel only).
fn sparse(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &DeviceBlockMask,
    scale: f64,
    layout: OutputLayout,
    order: Option<Tensor>,
) -> Result<Tensor> {
    let (b, h, l, _) = q.dims4()?;
    let blocks = l.div_ceil(mask.block_size.max(1));
    if (mask.batch, mask.heads, mask.query_blocks, mask.key_blocks) != (b, h, blocks, blocks) {
        return Err(Error::InvalidConfig(format!(
            "block mask is for batch {} × heads {} × {}×{} blocks of {}, but the attention has \
             batch {b} × heads {h} × {l} tokens ({blocks} blocks)",
            mask.batch, mask.heads, mask.query_blocks, mask.key_blocks, mask.block_size
        )));
    }
    variant(q.dim(3)?, mask.block_size)?;
    let (q, k, v) = kernel_layout(q, k, v)?;
    let op = AttentionOp {
        scale: scale as f32,
        block_size: mask.block_size,
        csr: Some((mask.offsets.contiguous()?, mask.indices.contiguous()?)),
        order,
        layout,
    };
    Ok(q.apply_op3_no_bwd(&k, &v, &op)?)
}

/// Block-sparse attention of the sequence taken in `order`, with q, k, v read where they lie and
/// the output written in natural order: equal to restoring the output of
/// [`block_sparse_attention_device_with_layout`] over the permuted copies of q, k and v, without
/// making those copies (on Hopper the kernel gathers the rows through `order`; elsewhere the
/// copies are made here). `mask` is over the permuted sequence's blocks.
///
/// q, k, v: `[B, H, L, D]` → `[B, H, L, D]` or `[B, L, H, D]` by `layout`.
#[allow(clippy::too_many_arguments)]
pub fn block_sparse_attention_in_order(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &DeviceBlockMask,
    order: &DeviceTokenOrder,
    scale: f64,
    layout: OutputLayout,
) -> Result<Tensor> {
    let (_, _, l, d) = check_inputs(q, k, v)?;
    let gather = order.for_sequence(l, q.device())?.clone();
    let major = module::compute_major(q.device().as_cuda_device()?)?;
    if !use_wgmma(major, d, mask.block_size) {
        let (qp, kp, vp) = (order.apply(q)?, order.apply(k)?, order.apply(v)?);
        let out = block_sparse_attention_device(&qp, &kp, &vp, mask, scale)?;
        drop((qp, kp, vp));
        let out = order.restore(&out)?;
        return Ok(match layout {
            OutputLayout::Bhld => out,
            OutputLayout::Blhd => out.transpose(1, 2)?.contiguous()?,
        });
    }
    sparse(q, k, v, mask, scale, layout, Some(gather))
}

/// Whether the CUDA kernels handle this query tensor with masks of `block_size` tokens: a CUDA
/// tensor, bf16 or f16, head_dim 64 or 128, blocks of 64 or a multiple of 128. Dispatchers call
/// this and fall back to the generic path otherwise.
pub fn is_supported(q: &Tensor, block_size: usize) -> bool {
    q.device().is_cuda()
        && matches!(q.dtype(), DType::BF16 | DType::F16)
        && q.dims4()
            .is_ok_and(|(_, _, _, d)| variant(d, block_size).is_ok())
}

/// `[B, H, L, D]` of q, after checking that k and v have q's shape (self-attention) and the
/// kernel supports the case.
fn check_inputs(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(usize, usize, usize, usize)> {
    let dims = check_cross_inputs(q, k, v)?;
    if k.dims4()? != dims {
        return Err(shape_mismatch(q, k, v));
    }
    Ok(dims)
}

fn shape_mismatch(q: &Tensor, k: &Tensor, v: &Tensor) -> Error {
    Error::ShapeMismatch {
        q: q.shape().clone(),
        k: k.shape().clone(),
        v: v.shape().clone(),
    }
}

/// `[B, H, Lq, D]` of q, after checking that k and v are `[B, H, Lk, D]` with `Lk ≥ 1` and the
/// kernel supports the case.
fn check_cross_inputs(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(usize, usize, usize, usize)> {
    let dims = q.dims4()?;
    let kv_dims = k.dims4()?;
    let (b, h, _, d) = dims;
    let (bk, hk, lk, dk) = kv_dims;
    if (bk, hk, dk) != (b, h, d) || v.dims4()? != kv_dims {
        return Err(shape_mismatch(q, k, v));
    }
    if lk == 0 {
        return Err(Error::InvalidConfig(
            "attention over zero keys is undefined (k and v have no tokens)".into(),
        ));
    }
    if !q.device().is_cuda()
        || !q.device().same_device(k.device())
        || !q.device().same_device(v.device())
    {
        return Err(Error::InvalidConfig(
            "rainfusion::cuda attention needs q, k and v on one CUDA device".into(),
        ));
    }
    let dtype = q.dtype();
    if !matches!(dtype, DType::BF16 | DType::F16) || k.dtype() != dtype || v.dtype() != dtype {
        return Err(Error::InvalidConfig(format!(
            "CUDA flash attention takes bf16 or f16 q, k, v of one dtype; got {:?}, {:?}, {:?}",
            dtype,
            k.dtype(),
            v.dtype()
        )));
    }
    if dims.2 > i32::MAX as usize || lk > i32::MAX as usize || h > 65_535 || b > 65_535 {
        return Err(Error::InvalidConfig(format!(
            "attention shapes q {dims:?}, k/v {kv_dims:?} are too large for the kernel grid"
        )));
    }
    variant(dims.3, 128)?;
    Ok(dims)
}

/// The layout the kernel reads in place: last dimension contiguous, every stride and start a
/// multiple of 8 elements (16-byte copies), k and v with equal strides (q may differ). A q that
/// does not qualify is made contiguous; so are k and v together when either does not.
fn kernel_layout(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let aligned = |t: &Tensor| {
        let layout = t.layout();
        let stride = layout.stride();
        stride[3] == 1
            && stride[..3].iter().all(|s| s.is_multiple_of(8))
            && layout.start_offset().is_multiple_of(8)
    };
    let q = if aligned(q) {
        q.clone()
    } else {
        q.contiguous()?
    };
    if aligned(k) && aligned(v) && k.stride() == v.stride() {
        Ok((q, k.clone(), v.clone()))
    } else {
        Ok((q, k.contiguous()?, v.contiguous()?))
    }
}

/// Kernel tiling for a head_dim and mask block size: (entry suffix, query rows per CTA, keys per
/// inner tile, warps, K/V stages). Numbers from scripts/gpu/NOTES.md (fastest measured on H100).
fn variant(
    head_dim: usize,
    block_size: usize,
) -> Result<(&'static str, usize, usize, usize, usize)> {
    Ok(match (head_dim, block_size) {
        (128, bs) if bs > 0 && bs % 128 == 0 => ("d128_w4m2n64s2", 128, 64, 4, 2),
        (128, 64) => ("d128_w4m1n64qs2", 64, 64, 4, 2),
        (64, bs) if bs > 0 && bs % 128 == 0 => ("d64_w4m2n128s2", 128, 128, 4, 2),
        (64, 64) => ("d64_w4m1n64qs2", 64, 64, 4, 2),
        _ => {
            return Err(Error::InvalidConfig(format!(
                "CUDA attention supports head_dim 64 or 128 with blocks of 64 or a multiple of \
                 128 tokens; got head_dim {head_dim}, block {block_size}"
            )))
        }
    })
}

/// The Hopper kernel (`attention_fwd_ws` in kernels/attention.cu): 128 query rows, 384 threads
/// (one loading warpgroup, two computing ones), 128-key tiles in two K/V stages, one CTA per SM;
/// its dynamic shared memory = Q + the K and V stages + 1 KiB to align the tiles to 1024 bytes.
const HOPPER_BM: usize = 128;
const HOPPER_THREADS: u32 = 384;
const HOPPER_SMEM: u32 = ((128 * 128 + 2 * 2 * 128 * 128) * 2 + 1024) as u32;
/// V's descriptor byte offsets (MN-major operand): between the two 64-wide halves of head_dim
/// (128 keys × 128 bytes), and between 8-key row groups (NOTES.md, v3).
const HOPPER_V_LBO: u32 = 128 * 128;
const HOPPER_V_SBO: u32 = 1024;

/// `0` makes the Hopper kernel load q, k, v with cp.async where it would use TMA (dense,
/// cross-attention, block-sparse rows not gathered through a token order): for comparisons.
pub const TMA_ENV: &str = "RAINFUSION_CUDA_TMA";

fn tma_allowed() -> bool {
    std::env::var_os(TMA_ENV).is_none_or(|v| v != "0")
}

/// Environment variable that turns the Hopper kernel off (the portable mma.sync kernel runs
/// instead): for comparisons, and as a way around a driver that rejects sm_90a PTX.
pub const NO_WGMMA_ENV: &str = "RAINFUSION_CUDA_NO_WGMMA";

/// Whether the wgmma kernel serves this case: compute capability 9.0, head_dim 128, blocks a
/// multiple of 128 tokens, not turned off by [`NO_WGMMA_ENV`].
fn use_wgmma(major: i32, head_dim: usize, block_size: usize) -> bool {
    major == 9
        && head_dim == 128
        && block_size.is_multiple_of(128)
        && std::env::var_os(NO_WGMMA_ENV).is_none()
}

struct AttentionOp {
    scale: f32,
    /// Tokens per mask block (128 for dense).
    block_size: usize,
    /// `(offsets, indices)` u32 on the device; `None` = dense (any key length).
    csr: Option<(Tensor, Tensor)>,
    /// u32 `[L]`: the token at each position of the walked sequence (Hopper kernel only; the
    /// output goes back to natural order); `None` = natural order.
    order: Option<Tensor>,
    /// Memory order of the output.
    layout: OutputLayout,
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "rainfusion-flash-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("rainfusion::cuda attention runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        q_layout: &Layout,
        k: &CudaStorage,
        k_layout: &Layout,
        v: &CudaStorage,
        v_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        match q.dtype() {
            DType::BF16 => self.launch::<bf16>("bf16", q, q_layout, k, k_layout, v, v_layout),
            DType::F16 => self.launch::<f16>("f16", q, q_layout, k, k_layout, v, v_layout),
            other => candle_core::bail!("rainfusion attention: unsupported dtype {other:?}"),
        }
    }
}

impl AttentionOp {
    #[allow(clippy::too_many_arguments)]
    fn launch<T>(
        &self,
        dtype_name: &str,
        q: &CudaStorage,
        q_layout: &Layout,
        k: &CudaStorage,
        k_layout: &Layout,
        v: &CudaStorage,
        v_layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)>
    where
        T: candle_core::cuda_backend::CudaDType
            + candle_core::cuda_backend::cudarc::driver::DeviceRepr,
    {
        // q: [B, H, Lq, D]; k, v: [B, H, Lk, D] (Lk == Lq with a CSR), checked by the callers.
        let (b, h, l, d) = q_layout.shape().dims4()?;
        let (_, _, lk, _) = k_layout.shape().dims4()?;
        if k_layout.stride() != v_layout.stride() || (self.csr.is_some() && lk != l) {
            candle_core::bail!(
                "rainfusion attention: k and v need equal strides (and Lk == Lq with a mask)"
            )
        }
        let dev = q.device().clone();
        let major =
            module::compute_major(&dev).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let wgmma = use_wgmma(major, d, self.block_size);
        if self.order.is_some() && !wgmma {
            candle_core::bail!(
                "rainfusion attention: only the Hopper kernel gathers through an order"
            )
        }
        let gathered = self.order.is_some();
        // The portable kernel's name here; the Hopper kernel's once its loads are chosen.
        let (portable, bm, threads, smem) = if wgmma {
            (None, HOPPER_BM, HOPPER_THREADS, HOPPER_SMEM)
        } else {
            let (suffix, bm, bn, warps, stages) =
                variant(d, self.block_size).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let smem = ((bm + 2 * bn * stages) * d * 2) as u32;
            (
                Some(format!("rf_attention_fwd_{dtype_name}_{suffix}")),
                bm,
                (warps * 32) as u32,
                smem,
            )
        };

        let q_slice = q.as_cuda_slice::<T>()?.slice(q_layout.start_offset()..);
        let k_slice = k.as_cuda_slice::<T>()?.slice(k_layout.start_offset()..);
        let v_slice = v.as_cuda_slice::<T>()?.slice(v_layout.start_offset()..);
        // SAFETY: every element of the output is written by the kernel (all rows < Lq, all of D,
        // every head and batch, through the strides of either layout).
        let out = unsafe { dev.alloc::<T>(b * h * l * d)? };

        let strides = |layout: &Layout| {
            let s = layout.stride();
            (s[0] as i64, s[1] as i64, s[2] as i64)
        };
        let (q_sb, q_sh, q_sl) = strides(q_layout);
        let (kv_sb, kv_sh, kv_sl) = strides(k_layout);
        let (out_sb, out_sh, out_sl) = self.layout.strides(h, l, d);
        let heads = h as i32;
        let q_len = l as i32;
        let kv_len = lk as i32;
        let block_size = self.block_size as i32;
        let query_blocks = l.div_ceil(self.block_size) as i32;
        let scale_log2 = self.scale * std::f32::consts::LOG2_E;
        let null_ptr: u64 = 0;

        let csr_guards = self
            .csr
            .as_ref()
            .map(|(offsets, indices)| (offsets.storage_and_layout(), indices.storage_and_layout()));
        let csr_slices = match &csr_guards {
            Some(((off_st, off_layout), (idx_st, idx_layout))) => {
                let (Storage::Cuda(off), Storage::Cuda(idx)) = (&**off_st, &**idx_st) else {
                    candle_core::bail!("block mask offsets/indices must be on the CUDA device")
                };
                Some((
                    off.as_cuda_slice::<u32>()?
                        .slice(off_layout.start_offset()..),
                    idx.as_cuda_slice::<u32>()?
                        .slice(idx_layout.start_offset()..),
                ))
            }
            None => None,
        };

        let order_guard = self.order.as_ref().map(|o| o.storage_and_layout());
        let order_slice = match &order_guard {
            Some((storage, order_layout)) => {
                let Storage::Cuda(order) = &**storage else {
                    candle_core::bail!("the token order must be on the CUDA device")
                };
                Some(
                    order
                        .as_cuda_slice::<u32>()?
                        .slice(order_layout.start_offset()..),
                )
            }
            None => None,
        };

        let stream = dev.cuda_stream();
        // TMA: the three tensor maps take the place of q, k, v, `order` and their strides.
        let (q_ptr, _q_sync) = q_slice.device_ptr(&stream);
        let (k_ptr, _k_sync) = k_slice.device_ptr(&stream);
        let (v_ptr, _v_sync) = v_slice.device_ptr(&stream);
        let tma = wgmma
            && !gathered
            && tma_allowed()
            && tensor_map::fits_tma(q_ptr, (q_sb, q_sh, q_sl))
            && tensor_map::fits_tma(k_ptr, (kv_sb, kv_sh, kv_sl))
            && tensor_map::fits_tma(v_ptr, (kv_sb, kv_sh, kv_sl));
        // A layout the driver will not encode falls back to cp.async loads (same arithmetic).
        let maps = if tma {
            let bf16 = dtype_name == "bf16";
            let map = |ptr, dims, strides| tensor_map::qkv_tile_map(ptr, bf16, dims, strides);
            match (
                map(q_ptr, (b, h, l, d), (q_sb, q_sh, q_sl)),
                map(k_ptr, (b, h, lk, d), (kv_sb, kv_sh, kv_sl)),
                map(v_ptr, (b, h, lk, d), (kv_sb, kv_sh, kv_sl)),
            ) {
                (Ok(q_map), Ok(k_map), Ok(v_map)) => Some((q_map, k_map, v_map)),
                _ => None,
            }
        } else {
            None
        };
        let name = portable.unwrap_or_else(|| {
            let loads = if maps.is_some() { "wst" } else { "ws" };
            let gather = if gathered { "gather_" } else { "" };
            format!("rf_attention_fwd_{loads}_{gather}{dtype_name}_d128")
        });
        let func = module::load(&dev, &ATTENTION, &name, smem)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut builder = stream.launch_builder(&func);
        match &maps {
            Some((tm_q, tm_k, tm_v)) => builder.arg(tm_q).arg(tm_k).arg(tm_v).arg(&out),
            None => builder.arg(&q_slice).arg(&k_slice).arg(&v_slice).arg(&out),
        };
        match &csr_slices {
            Some((offsets, indices)) => {
                builder.arg(offsets).arg(indices);
            }
            None => {
                builder.arg(&null_ptr).arg(&null_ptr);
            }
        }
        // Without tensor maps: the Hopper kernel's `order`, then q's and k/v's strides.
        if maps.is_none() {
            if wgmma {
                match &order_slice {
                    Some(order) => builder.arg(order),
                    None => builder.arg(&null_ptr),
                };
            }
            builder
                .arg(&q_sb)
                .arg(&q_sh)
                .arg(&q_sl)
                .arg(&kv_sb)
                .arg(&kv_sh)
                .arg(&kv_sl);
        }
        builder
            .arg(&out_sb)
            .arg(&out_sh)
            .arg(&out_sl)
            .arg(&heads)
            .arg(&q_len)
            .arg(&kv_len)
            .arg(&block_size)
            .arg(&query_blocks)
            .arg(&scale_log2);
        let (v_lbo, v_sbo) = (HOPPER_V_LBO, HOPPER_V_SBO);
        if wgmma {
            builder.arg(&v_lbo).arg(&v_sbo);
        }
        let cfg = LaunchConfig {
            grid_dim: (l.div_ceil(bm) as u32, h as u32, b as u32),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: smem,
        };
        // SAFETY: argument list matches the kernel signature in kernels/attention.cu; the grid
        // covers every query tile; the CSR shape was checked against (B, H, L) by the caller.
        unsafe { builder.launch(cfg) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            self.layout.shape(b, h, l, d),
        ))
    }
}
