//! `--offload`: how much of the transformer stays on the compute device, and the automatic
//! choice of it from the device's free memory and the estimate of [`crate::memory`].
//!
//! ```text
//! none     every transformer resident (two-expert models: both experts, no reload at the switch)
//! experts  only the active expert resident; the other loads at the switch (two-expert models)
//! blocks   the active expert's embeddings, head and tables resident; its blocks on the host,
//!          each copied to the device just before it runs and freed after
//! auto     CPU: no streaming (none; two-expert models: experts, as before --offload).
//!          GPU: the first of none, experts, blocks whose transformer stage fits
//! ```

use serde::Serialize;

use crate::memory::{human_bytes, RunShape};
pub use crate::options::{OffloadChoice, OffloadMode};

/// The resolved offload of a run, as the settings print it and the sidecar records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OffloadSettings {
    pub mode: OffloadMode,
    /// True when `--offload auto` chose `mode`.
    pub auto: bool,
    /// Why auto chose it (free memory against the estimate), for the printed settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl OffloadSettings {
    /// The `offload` line of the printed settings.
    pub fn summary(&self) -> String {
        match (&self.reason, self.auto) {
            (Some(reason), true) => format!("offload      {} (auto: {reason})", self.mode),
            (None, true) => format!("offload      {} (auto)", self.mode),
            _ => format!("offload      {}", self.mode),
        }
    }
}

/// Peak device bytes of the transformer stage under each offload mode (the latents included):
/// what `auto` compares with the free memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffloadNeeds {
    pub none: u128,
    pub experts: u128,
    pub blocks: u128,
}

impl OffloadNeeds {
    /// The needs of `shape` with `experts` transformers of its size (1, or 2 for Wan2.2 A14B).
    pub fn of(shape: &RunShape, experts: u64) -> Self {
        let latents = shape.memory().latents;
        let need = |mode| {
            shape
                .transformer_bytes(mode, experts)
                .saturating_add(latents)
        };
        Self {
            none: need(OffloadMode::None),
            experts: need(OffloadMode::Experts),
            blocks: need(OffloadMode::Blocks),
        }
    }

    fn of_mode(&self, mode: OffloadMode) -> u128 {
        match mode {
            OffloadMode::None => self.none,
            OffloadMode::Experts => self.experts,
            OffloadMode::Blocks => self.blocks,
        }
    }
}

/// Share of the free device memory a choice may plan to use: the rest is headroom for the
/// allocator's cache and the libraries' workspaces, which the estimate does not count.
pub const AUTO_HEADROOM: f64 = 0.9;

/// `--offload auto`: on the CPU no streaming (host memory is all there is): `none`, and for
/// two-expert models `experts`, which frees the first expert at the switch instead of holding
/// both in RAM (the behaviour before `--offload`); on a GPU the first of
/// none, experts (two-expert models only), blocks whose need fits in [`AUTO_HEADROOM`] of
/// `free_bytes`; `blocks` when none fits. With the free memory unknown (no CUDA query: a Metal
/// device, a build without CUDA) the behaviour before `--offload`: `experts` for two-expert
/// models, `none` otherwise. Returns the mode and why, in words.
pub fn choose_offload(
    on_cpu: bool,
    free_bytes: Option<u64>,
    two_experts: bool,
    needs: &OffloadNeeds,
) -> (OffloadMode, String) {
    let lightest_resident = if two_experts {
        OffloadMode::Experts
    } else {
        OffloadMode::None
    };
    if on_cpu {
        return (
            lightest_resident,
            "the CPU computes where the weights are: nothing to stream".into(),
        );
    }
    let Some(free) = free_bytes else {
        return (
            lightest_resident,
            "the device's free memory is unknown".into(),
        );
    };
    let budget = (free as f64 * AUTO_HEADROOM) as u128;
    let candidates: &[OffloadMode] = if two_experts {
        &[OffloadMode::None, OffloadMode::Experts, OffloadMode::Blocks]
    } else {
        &[OffloadMode::None, OffloadMode::Blocks]
    };
    for &mode in candidates {
        let need = needs.of_mode(mode);
        if need <= budget {
            return (
                mode,
                format!(
                    "needs about {} of the {} free",
                    human_bytes(need),
                    human_bytes(free as u128)
                ),
            );
        }
    }
    (
        OffloadMode::Blocks,
        format!(
            "even streaming blocks needs about {} and {} is free; it may not fit",
            human_bytes(needs.blocks),
            human_bytes(free as u128)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::TransformerShape;

    const GB: u64 = 1_000_000_000;

    fn needs(none: u64, experts: u64, blocks: u64) -> OffloadNeeds {
        OffloadNeeds {
            none: (none * GB) as u128,
            experts: (experts * GB) as u128,
            blocks: (blocks * GB) as u128,
        }
    }

    #[test]
    fn the_cpu_never_streams_blocks() {
        let n = needs(900, 500, 100);
        let (mode, _) = choose_offload(true, Some(GB), false, &n);
        assert_eq!(mode, OffloadMode::None);
        let (mode, _) = choose_offload(true, Some(GB), true, &n);
        assert_eq!(mode, OffloadMode::Experts);
    }

    #[test]
    fn the_least_offload_that_fits_is_chosen() {
        let n = needs(60, 35, 12);
        // 80 GB free: everything resident fits (60 ≤ 72).
        assert_eq!(
            choose_offload(false, Some(80 * GB), true, &n).0,
            OffloadMode::None
        );
        // 48 GB free: both experts do not (60 > 43.2), one does.
        assert_eq!(
            choose_offload(false, Some(48 * GB), true, &n).0,
            OffloadMode::Experts
        );
        // 24 GB free: only streaming blocks fits.
        assert_eq!(
            choose_offload(false, Some(24 * GB), true, &n).0,
            OffloadMode::Blocks
        );
        // One transformer: experts is never chosen (it means none there).
        let one = needs(35, 35, 12);
        assert_eq!(
            choose_offload(false, Some(48 * GB), false, &one).0,
            OffloadMode::None
        );
        assert_eq!(
            choose_offload(false, Some(24 * GB), false, &one).0,
            OffloadMode::Blocks
        );
        // Nothing fits: the most offload, and the reason says so.
        let (mode, why) = choose_offload(false, Some(8 * GB), false, &one);
        assert_eq!(mode, OffloadMode::Blocks);
        assert!(why.contains("may not fit"), "{why}");
    }

    #[test]
    fn the_headroom_is_kept() {
        let n = needs(60, 60, 12);
        // 60 GB needed, 64 GB free: 90 % of it is 57.6 GB, so blocks.
        let (mode, why) = choose_offload(false, Some(64 * GB), false, &n);
        assert_eq!(mode, OffloadMode::Blocks, "{why}");
        let (mode, _) = choose_offload(false, Some(67 * GB), false, &n);
        assert_eq!(mode, OffloadMode::None);
    }

    #[test]
    fn unknown_free_memory_keeps_the_old_default() {
        let n = needs(60, 35, 12);
        assert_eq!(
            choose_offload(false, None, true, &n).0,
            OffloadMode::Experts
        );
        assert_eq!(choose_offload(false, None, false, &n).0, OffloadMode::None);
    }

    /// Wan2.1-14B at 1280x720x81, batch 2, bf16: streaming blocks keeps only the non-block
    /// weights and two blocks of the 28.6 GB resident, and a 24 GB card gets blocks.
    #[test]
    fn the_estimate_of_a_14b_model_drops_its_weights_when_blocks_stream() {
        let shape = RunShape {
            width: 1280,
            height: 720,
            frames: 81,
            latent: [16, 21, 90, 160],
            tokens: 21 * 45 * 80,
            batch: 2,
            transformer: TransformerShape {
                dim: 5120,
                ffn_dim: 13824,
                layers: 40,
            },
            weight_bytes: 28_600_000_000,
            dtype_bytes: 2,
            vae_tiling: false,
            steps: 50,
        };
        let one = OffloadNeeds::of(&shape, 1);
        let two = OffloadNeeds::of(&shape, 2);
        assert_eq!(one.none, one.experts);
        assert_eq!(two.experts, one.none);
        assert_eq!(two.none - two.experts, 28_600_000_000);
        // Resident weights with blocks streamed: non-block ≈ 0.5 GB + two 0.7 GB blocks.
        let weights_saved = one.none - one.blocks;
        let gb = |b: u128| b as f64 / 1e9;
        assert!(
            (26.0..27.5).contains(&gb(weights_saved)),
            "{}",
            gb(weights_saved)
        );
        let (mode, _) = choose_offload(false, Some(24 * GB), false, &one);
        assert_eq!(mode, OffloadMode::Blocks);
    }
}
