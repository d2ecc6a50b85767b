//! What a run will need before anything is loaded: an estimate of its peak memory and, on a CPU,
//! of its sampling time, so an impossible size is refused in one line instead of aborting in the
//! allocator (or swapping for hours).
//!
//! The stages run one after the other and free their network in between, so the peak is the
//! largest stage plus what lives across stages (the latents):
//!
//! ```text
//! transformer = weights + batch · tokens · (24·dim + 2·ffn_dim) · bytes     (activations of one block)
//!   weights with --offload: none  = experts · one transformer's weights (two-expert models: both)
//!                           experts = one transformer's weights
//!                           blocks  = its non-block weights + 2 blocks' (the rest on the host)
//! VAE decode  = 200 · frames · height · width · bytes                        (whole-frame decode)
//!             = 200 · frames · 256 · 256 · bytes + 12 · frames · height · width  (--vae-tiling)
//! latents     = 8 · channels · F' · H' · W' · 4                             (solver history, f32)
//! ```
//!
//! Calibrated on the H100 measurements in `scripts/gpu/results/vdit_bench_h100_memory/` (bf16,
//! Wan2.1-1.3B at 832×480×81): the transformer forward at batch 2 peaked at 11.8 GB (the formula:
//! 9.8 GB; the rest is the allocator's cache) and the VAE decode at 13.2 GiB (480p) and 27 GiB
//! (720p), about 400 bytes (200 values) per output pixel per frame. It is an estimate: it refuses
//! only what cannot fit, and the numbers it prints are rounded.
//!
//! Sizes are multiplied in `u128` with saturation, so no product overflows whatever the flags.

use serde::Serialize;

use crate::options::OffloadMode;

/// The transformer's shape, as its `config.json` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransformerShape {
    /// Model width (heads × head dim).
    pub dim: u64,
    pub ffn_dim: u64,
    pub layers: u64,
}

impl TransformerShape {
    /// Wan2.1-T2V-1.3B, the shape assumed when a model's config cannot be read (a hub model not
    /// downloaded yet).
    pub const WAN21_1_3B: Self = Self {
        dim: 1536,
        ffn_dim: 8960,
        layers: 30,
    };

    /// The shape in a diffusers `transformer/config.json`, if it names one: Wan's `ffn_dim`, or
    /// HunyuanVideo 1.5's `mlp_ratio` times the width.
    pub fn from_config_json(json: &serde_json::Value) -> Option<Self> {
        let get = |key: &str| json.get(key).and_then(|v| v.as_u64());
        let dim = get("num_attention_heads")?.checked_mul(get("attention_head_dim")?)?;
        let ffn_dim = match get("ffn_dim") {
            Some(ffn) => ffn,
            None => {
                let ratio = json.get("mlp_ratio")?.as_f64()?;
                (ratio.is_finite() && ratio > 0.0).then(|| (ratio * dim as f64).round() as u64)?
            }
        };
        Some(Self {
            dim,
            ffn_dim,
            layers: get("num_layers")?,
        })
    }
}

/// What decides the memory of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunShape {
    /// Video size and frame count.
    pub width: u64,
    pub height: u64,
    pub frames: u64,
    /// Latent channels, latent frames, latent height and width.
    pub latent: [u64; 4],
    /// Transformer tokens of one sample.
    pub tokens: u64,
    /// 2 with classifier-free guidance (conditional and unconditional batched), else 1.
    pub batch: u64,
    pub transformer: TransformerShape,
    /// Bytes of the largest network's weights, as loaded (0 when unknown).
    pub weight_bytes: u64,
    /// Bytes per value of the run dtype (2 for bf16/f16, 4 for f32).
    pub dtype_bytes: u64,
    pub vae_tiling: bool,
    pub steps: u64,
}

/// The estimate, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryEstimate {
    pub latents: u128,
    pub transformer: u128,
    pub vae_decode: u128,
    /// The largest stage plus the latents.
    pub peak: u128,
}

fn mul(factors: &[u64]) -> u128 {
    factors
        .iter()
        .fold(1u128, |acc, &f| acc.saturating_mul(f as u128))
}

/// The tile side `--vae-tiling` decodes (pixels).
const VAE_TILE: u64 = 256;
/// Values the VAE decoder holds per output pixel per frame (see the module docs).
const VAE_VALUES_PER_PIXEL: u64 = 200;

/// Streamed blocks counted on the device: the one running and the next one being copied (the
/// synchronous copy holds one at a time; an overlapped copier holds two).
pub const STREAMED_BLOCKS_ON_DEVICE: u64 = 2;

impl TransformerShape {
    /// Parameters of one block: q, k, v, o of the self- and cross-attention (8·dim²) and the
    /// feed-forward (2·dim·ffn); biases and norms are negligible.
    pub fn block_params(&self) -> u128 {
        mul(&[8, self.dim, self.dim]).saturating_add(mul(&[2, self.dim, self.ffn_dim]))
    }

    /// Parameters outside the blocks: the time MLP and projection (256·dim + 7·dim²), the text
    /// projection (4096·dim + dim², umT5's width), the patch embedding and the head (a few
    /// hundred·dim).
    pub fn non_block_params(&self) -> u128 {
        mul(&[8, self.dim, self.dim]).saturating_add(mul(&[4_500, self.dim]))
    }
}

impl RunShape {
    /// Bytes of the transformer stage on the device under `offload`, for a model of `experts`
    /// transformers of this shape (the weights as in the module docs, plus one block's
    /// activations). Without known weights (`weight_bytes` 0) only the activations.
    pub fn transformer_bytes(&self, offload: OffloadMode, experts: u64) -> u128 {
        let weights = self.weight_bytes as u128;
        let t = &self.transformer;
        let resident_weights = match offload {
            OffloadMode::None => weights.saturating_mul(experts.max(1) as u128),
            OffloadMode::Experts => weights,
            OffloadMode::Blocks => {
                // The file's bytes split between blocks and the rest by parameter count (a GGUF
                // or fp8 file's own bytes per parameter carry over).
                let block = t.block_params();
                let all = block
                    .saturating_mul(t.layers as u128)
                    .saturating_add(t.non_block_params())
                    .max(1);
                let on_device = t.non_block_params().saturating_add(
                    block.saturating_mul(STREAMED_BLOCKS_ON_DEVICE.min(t.layers) as u128),
                );
                // weights · on_device / all without overflowing u128 for any flags.
                ((weights as f64) * (on_device as f64 / all as f64)) as u128
            }
        };
        resident_weights.saturating_add(self.activation_bytes())
    }

    /// One block's activations: batch · tokens · (24·dim + 2·ffn_dim) · bytes.
    fn activation_bytes(&self) -> u128 {
        let t = &self.transformer;
        let per_token = (24u128 * t.dim as u128).saturating_add(2 * t.ffn_dim as u128);
        mul(&[self.batch, self.tokens, self.dtype_bytes]).saturating_mul(per_token)
    }

    pub fn memory(&self) -> MemoryEstimate {
        let [c, f, h, w] = self.latent;
        let latents = mul(&[8, c, f, h, w, 4]);
        let transformer = self.transformer_bytes(OffloadMode::Experts, 1);
        let vae_decode = if self.vae_tiling {
            let tile_w = self.width.min(VAE_TILE);
            let tile_h = self.height.min(VAE_TILE);
            mul(&[
                VAE_VALUES_PER_PIXEL,
                self.frames,
                tile_w,
                tile_h,
                self.dtype_bytes,
            ])
            .saturating_add(mul(&[12, self.frames, self.width, self.height]))
        } else {
            mul(&[
                VAE_VALUES_PER_PIXEL,
                self.frames,
                self.width,
                self.height,
                self.dtype_bytes,
            ])
        };
        MemoryEstimate {
            latents,
            transformer,
            vae_decode,
            peak: transformer.max(vae_decode).saturating_add(latents),
        }
    }

    /// Floating-point operations of the sampling loop: per step, per sample and layer, the
    /// projections (q, k, v, o and the cross-attention's q, o: 6·dim² per token), the feed-forward
    /// (2·dim·ffn per token), each a multiply and an add, and dense self-attention (4·tokens²·dim).
    pub fn sampling_flops(&self) -> f64 {
        let t = &self.transformer;
        let (l, d, ffn) = (self.tokens as f64, t.dim as f64, t.ffn_dim as f64);
        let per_layer = 2.0 * l * (6.0 * d * d + 2.0 * d * ffn) + 4.0 * l * l * d;
        per_layer * t.layers as f64 * self.batch as f64 * self.steps as f64
    }
}

/// Floating-point operations per second of one CPU core in the transformer (f32), measured with
/// vdit-tiny at 256×256×49 on 2 cores (`scripts/gpu/results/cpu_compare_vdit-tiny-v5`: 4.3 s per
/// step for 2.8e11 operations, 33 GFLOP/s per core).
pub const CPU_FLOPS_PER_CORE: f64 = 33e9;

/// A CPU run's sampling time in seconds, from [`RunShape::sampling_flops`] and the cores here.
pub fn cpu_sampling_seconds(shape: &RunShape) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    shape.sampling_flops() / (CPU_FLOPS_PER_CORE * cores)
}

/// Memory a run may use on the CPU: `MemAvailable` of `/proc/meminfo` (Linux); `None` where it
/// cannot be read, and then nothing is refused.
pub fn cpu_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    mem_available(&text)
}

/// `MemAvailable` (in kB in the file) of a `/proc/meminfo` text, in bytes.
pub fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// Memory a run may use on a GPU. Not queried yet (candle does not expose the free memory of a
/// device): `None`, so a GPU run is never refused by the estimate; the hook for a CUDA query.
pub fn device_available_bytes() -> Option<u64> {
    None
}

/// The free memory of `device` now, bytes: CUDA only (see
/// [`vdit_models::profile::device_free_bytes`]); `None` on the CPU, on Metal and in a build
/// without CUDA. `--offload auto` chooses with it; the refusal above does not use it yet, since
/// the activation term of the estimate is calibrated only at Wan2.1-1.3B sizes.
pub fn device_free_bytes(device: &candle_core::Device) -> Option<u64> {
    vdit_models::profile::device_free_bytes(device).map(|(free, _total)| free)
}

/// `bytes` for people: `1.5 GB`, `23 TB` (decimal units).
pub fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 6] = ["bytes", "kB", "MB", "GB", "TB", "PB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else if value >= 1000.0 {
        format!("{:.1e} bytes", bytes as f64)
    } else if value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `seconds` for people: `40 s`, `12 min`, `3.5 h`, `9 days`.
pub fn human_duration(seconds: f64) -> String {
    if seconds < 90.0 {
        format!("{seconds:.0} s")
    } else if seconds < 90.0 * 60.0 {
        format!("{:.0} min", seconds / 60.0)
    } else if seconds < 48.0 * 3600.0 {
        format!("{:.1} h", seconds / 3600.0)
    } else {
        format!("{:.0} days", seconds / 86400.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wan13b_480p() -> RunShape {
        RunShape {
            width: 832,
            height: 480,
            frames: 81,
            latent: [16, 21, 60, 104],
            tokens: 21 * 30 * 52,
            batch: 2,
            transformer: TransformerShape::WAN21_1_3B,
            weight_bytes: 2_840_000_000,
            dtype_bytes: 2,
            vae_tiling: false,
            steps: 50,
        }
    }

    /// HunyuanVideo 1.5's config names `mlp_ratio`, not `ffn_dim`; its activations at
    /// 1280×720×121, batch 1, bf16 were measured on the H100 at 15.94 GiB above what was in use
    /// before the forward (37.27 − 21.33 GiB; scripts/gpu/results/h100-2026-12-07-drain/).
    #[test]
    fn a_hunyuan_config_reads_and_its_activations_are_near_the_measured_ones() {
        let json = serde_json::json!({
            "num_attention_heads": 16, "attention_head_dim": 128, "mlp_ratio": 4.0, "num_layers": 54
        });
        let shape = TransformerShape::from_config_json(&json).unwrap();
        let want = TransformerShape {
            dim: 2048,
            ffn_dim: 8192,
            layers: 54,
        };
        assert_eq!(shape, want);
        let run = RunShape {
            width: 1280,
            height: 720,
            frames: 121,
            latent: [32, 31, 45, 80],
            tokens: 31 * 45 * 80,
            batch: 1,
            transformer: shape,
            weight_bytes: 0,
            dtype_bytes: 2,
            vae_tiling: false,
            steps: 50,
        };
        let estimate = run.transformer_bytes(OffloadMode::Blocks, 1) as f64;
        let measured = 15.94 * (1u64 << 30) as f64;
        let ratio = estimate / measured;
        assert!(
            (0.75..1.25).contains(&ratio),
            "estimate / measured = {ratio:.2}"
        );
        // Neither key: no shape.
        let json = serde_json::json!({"num_attention_heads": 16, "attention_head_dim": 128, "num_layers": 54});
        assert_eq!(TransformerShape::from_config_json(&json), None);
    }

    #[test]
    fn the_estimate_matches_the_measured_h100_peaks() {
        let m = wan13b_480p().memory();
        // Measured: transformer 11.8 GB (allocator cache included), VAE 13.2 GiB = 14.2 GB.
        let gb = |b: u128| b as f64 / 1e9;
        assert!((8.0..12.5).contains(&gb(m.transformer)), "{m:?}");
        assert!((11.0..16.0).contains(&gb(m.vae_decode)), "{m:?}");
        let tiled = RunShape {
            vae_tiling: true,
            ..wan13b_480p()
        }
        .memory();
        assert!(tiled.vae_decode < m.vae_decode / 3, "{tiled:?}");
    }

    #[test]
    fn absurd_sizes_saturate_instead_of_overflowing() {
        let shape = RunShape {
            width: 1 << 20,
            height: 1 << 20,
            frames: 4_000_000_001,
            latent: [16, 1_000_000_001, 1 << 17, 1 << 17],
            tokens: u64::MAX,
            ..wan13b_480p()
        };
        let m = shape.memory();
        assert!(m.peak > 1u128 << 64);
        assert!(!shape.sampling_flops().is_nan());
        assert!(
            human_bytes(m.peak).ends_with("e24 bytes"),
            "{}",
            human_bytes(m.peak)
        );
    }

    #[test]
    fn meminfo_is_read_in_bytes() {
        let text = "MemTotal:       24000000 kB\nMemFree:  1000 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(mem_available(text), Some(20_000_000 * 1024));
        assert_eq!(mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(human_bytes(1_500_000_000), "1.5 GB");
        assert_eq!(human_duration(7200.0), "2.0 h");
    }
}
