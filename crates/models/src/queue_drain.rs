//! The device queue drained between transformer blocks, for every family's block loop.
//!
//! candle allocates from CUDA's stream-ordered pool, which hands freed memory back to the
//! device only at a synchronisation; without one per block the pool's reserved peak stays
//! above what a block needs.

use candle_core::Tensor;

/// Environment variable: `1` drains the device queue after every transformer block, `0` never;
/// unset, each family's default applies (Wan: from a residual stream of
/// [`BLOCK_SYNC_MIN_STREAM_BYTES`]; HunyuanVideo 1.5: off).
/// Wan2.1-14B at 1280×720×81, batch 1, H100, two runs with the same figures
/// (scripts/gpu/NOTES.md, "Compacted masks"): dense 38.18 → 36.30 GiB of device memory in use
/// at +1.3 % time; RainFusion 0.8 37.71 → 37.40 GiB at +3.7 %.
pub const BLOCK_SYNC_ENV: &str = "VDIT_BLOCK_SYNC";

/// The residual stream's size from which Wan's block loop drains the queue after each block by
/// default: 1 GiB, e.g. the 14B at 720p (f32); the 1.3B at 480p, batch 2 (0.4 GB) runs without.
pub const BLOCK_SYNC_MIN_STREAM_BYTES: usize = 1 << 30;

/// When a family's block loop drains the queue unless [`BLOCK_SYNC_ENV`] says otherwise.
#[derive(Clone, Copy, Debug)]
pub(crate) enum DrainDefault {
    /// From a residual stream of this many bytes.
    FromStreamBytes(usize),
    /// Never: only `VDIT_BLOCK_SYNC=1` turns it on.
    Off,
}

/// The [`BLOCK_SYNC_ENV`] setting: `Some(true|false)` when forced, `None` when unset.
fn forced() -> Option<bool> {
    static CHOICE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *CHOICE.get_or_init(|| match std::env::var(BLOCK_SYNC_ENV) {
        Ok(v) if v.trim() == "1" => Some(true),
        Ok(v) if v.trim() == "0" => Some(false),
        _ => None,
    })
}

/// Whether a block loop whose residual stream is `x` drains the queue after each block: on
/// CUDA only, as [`BLOCK_SYNC_ENV`] forces it or else as the family's `default` says.
pub(crate) fn drain_between_blocks(x: &Tensor, default: DrainDefault) -> bool {
    if !x.device().is_cuda() {
        return false;
    }
    forced().unwrap_or(match default {
        DrainDefault::FromStreamBytes(min) => x.elem_count() * x.dtype().size_in_bytes() >= min,
        DrainDefault::Off => false,
    })
}
