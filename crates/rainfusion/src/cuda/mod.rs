//! CUDA kernels of rainfusion (feature `cuda`): flash attention over block lists, and RainFusion
//! mask prediction on the device.
//!
//! The kernels live in `kernels/*.cu`; build.rs compiles them to PTX for compute 8.0 and 9.0 and
//! they are loaded into candle's CUDA context on first use. Every entry point takes and returns
//! candle tensors on a CUDA device and runs on candle's stream.
//!
//! - [`flash_attention`]: dense softmax attention, no mask, bf16/f16, head_dim 64 or 128.
//! - [`cross_attention`]: dense attention of `Lq` queries over `Lk` keys of any length.
//! - [`block_sparse_attention`]: the same kernel over a host [`BlockMask`](crate::BlockMask).
//! - `*_with_layout` and [`cross_attention`] take an [`OutputLayout`]: `[B, H, L, D]`, or
//!   `[B, L, H, D]` ready to reshape to `[B, L, H·D]` without a copy.
//! - [`DeviceBlockMask`] + [`predict_block_mask`]: the mask built on the GPU (pooling, block
//!   scores, top-k, CSR) with no host round trip, consumed by
//!   [`block_sparse_attention_device`].
//! - [`DeviceTokenOrder`]: RainFusion's window order on the device; [`predict_block_mask_in_order`]
//!   and [`block_sparse_attention_in_order`] walk q, k, v in that order where they lie, and write
//!   the output in natural order, so no permuted copies are made.
//! - [`linear`] and [`linear_fp8`]: cuBLASLt GEMMs (bias + gelu epilogue; fp8 operands).
//! - [`fused`]: the elementwise work around attention in a DiT block (LayerNorm + modulation,
//!   q/k RMSNorm + RoPE, gated residual, bias + gelu), one kernel each, and the gated residual
//!   with the next LayerNorm in one.

mod attention;
mod checks;
pub mod fused;
mod launch;
mod linear;
mod linear_fp8;
mod mask;
mod module;
mod order;
mod row_args;
mod rows;
mod rows_cta;
mod tensor_map;

pub use attention::{
    block_sparse_attention, block_sparse_attention_device,
    block_sparse_attention_device_with_layout, block_sparse_attention_in_order,
    block_sparse_attention_with_layout, cross_attention, flash_attention,
    flash_attention_with_layout, is_supported, OutputLayout, NO_WGMMA_ENV, TMA_ENV,
};
pub use linear::linear;
pub use linear_fp8::{fp8_gemm_available, linear_fp8};
pub use mask::{
    block_means, block_means_in_order, block_means_pair, predict_block_mask,
    predict_block_mask_in_order, DeviceBlockMask, PackedDeviceMask,
};
pub use order::DeviceTokenOrder;
pub use rows::ROW_KERNELS_ENV;
