//! The device queue drained between transformer blocks, for every family's block loop.
//!
//! candle allocates from CUDA's stream-ordered pool, which hands freed memory back to the
//! device only at a synchronisation; without one per block the pool's reserved peak stays
//! above what a block needs.

use candle_core::Tensor;

/// Environment variable: `1` drains the device queue after every transformer block, `0` never;
/// unset, it is drained when the residual stream is at least [`BLOCK_SYNC_MIN_STREAM_BYTES`].
/// Wan2.1-14B at 1280×720×81, batch 1, H100, two runs with the same figures
/// (scripts/gpu/NOTES.md, "Compacted masks"): dense 38.18 → 36.30 GiB of device memory in use
/// at +1.3 % time; RainFusion 0.8 37.71 → 37.40 GiB at +3.7 %.
pub const BLOCK_SYNC_ENV: &str = "VDIT_BLOCK_SYNC";

/// The residual stream's size from which the queue is drained after each block by default:
/// 1 GiB, e.g. Wan's 14B at 720p (f32); the 1.3B at 480p, batch 2 (0.4 GB) runs without.
pub const BLOCK_SYNC_MIN_STREAM_BYTES: usize = 1 << 30;

/// Whether to drain the queue after each block for a residual stream of `stream_bytes`.
fn drain_for_stream_bytes(stream_bytes: usize) -> bool {
    static CHOICE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    let choice = CHOICE.get_or_init(|| match std::env::var(BLOCK_SYNC_ENV) {
        Ok(v) if v.trim() == "1" => Some(true),
        Ok(v) if v.trim() == "0" => Some(false),
        _ => None,
    });
    choice.unwrap_or(stream_bytes >= BLOCK_SYNC_MIN_STREAM_BYTES)
}

/// Whether a block loop whose residual stream is `x` drains the queue after each block: on
/// CUDA only, by [`BLOCK_SYNC_ENV`] or else the stream's size.
pub(crate) fn drain_between_blocks(x: &Tensor) -> bool {
    x.device().is_cuda() && drain_for_stream_bytes(x.elem_count() * x.dtype().size_in_bytes())
}
