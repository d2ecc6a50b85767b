//! The encoder's downsampler (Wan's Resample in `downsample2d` / `downsample3d` mode): halve space
//! with a stride-2 3×3 conv, then, for `downsample3d`, halve time with a stride-2 temporal conv
//! whose history is the last frame of the previous chunk. Frames-major video `[B, T, C, H, W]`.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::layers::{stage, Conv2d, FeatureCache, SlotCounter};
use crate::error::{ModelError, Result};
use crate::profile::span;

/// Profiler stages of the encoder's downsamplers.
const DOWNSAMPLE_SPATIAL: &str = "vae encode: downsample (conv2d 3x3 stride 2)";
const DOWNSAMPLE_TEMPORAL: &str = "vae encode: downsample (temporal conv 3x1x1 stride 2)";

/// The `downsample3d` time conv: a (3, 1, 1) kernel at stride 2 in time, no padding. Laid out as
/// one 1×1 conv over the three frames of each window stacked along channels (oldest first).
#[derive(Debug, Clone)]
struct StridedTimeConv {
    /// `[C, 3·C, 1, 1]`
    conv: Conv2d,
    dim: usize,
}

/// Temporal taps of the time conv.
const TIME_TAPS: usize = 3;

impl StridedTimeConv {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let weight = vb.get((dim, dim, TIME_TAPS, 1, 1), "weight")?;
        // [O, C, k_t, 1, 1] → [O, k_t, C, 1, 1] → [O, k_t·C, 1, 1]
        let stacked =
            weight
                .permute((0, 2, 1, 3, 4))?
                .contiguous()?
                .reshape((dim, TIME_TAPS * dim, 1, 1))?;
        let bias = vb.get(dim, "bias")?;
        Ok(Self {
            conv: Conv2d::from_parts(stacked, bias, 0, 1)?,
            dim,
        })
    }

    /// `[B, T, C, H, W]` (T ≥ 3) → `[B, (T − 3)/2 + 1, C, H, W]`: output j sees frames 2j..2j+2.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        if t < TIME_TAPS {
            return Err(ModelError::InvalidInput(format!(
                "the encoder's temporal downsampler needs at least {TIME_TAPS} frames, got {t}"
            )));
        }
        let out_t = (t - TIME_TAPS) / 2 + 1;
        let windows = (0..out_t)
            .map(|j| {
                let taps = (0..TIME_TAPS)
                    .map(|k| x.narrow(1, 2 * j + k, 1))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&taps, 2) // [B, 1, 3C, H, W]
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let windows = Tensor::cat(&windows, 1)?.reshape((b * out_t, TIME_TAPS * c, h, w))?;
        Ok(self
            .conv
            .forward(&windows)?
            .reshape((b, out_t, self.dim, h, w))?)
    }
}

/// Halves height and width (zero padding of one pixel on the right and bottom, then a stride-2
/// 3×3 conv that keeps the channels); with a time conv, also halves the frames of every chunk
/// after the first.
#[derive(Debug, Clone)]
pub struct Downsample {
    conv: Conv2d,
    time_conv: Option<(StridedTimeConv, usize)>,
}

impl Downsample {
    /// `vb` at the resample (`…downsampler` in Wan2.2, a `down_blocks` entry in Wan2.1);
    /// `temporal`: `downsample3d` (true) or `downsample2d`.
    pub fn new(
        vb: VarBuilder,
        dim: usize,
        temporal: bool,
        slots: &mut SlotCounter,
    ) -> Result<Self> {
        let conv = Conv2d::from_parts(
            vb.pp("resample.1").get((dim, dim, 3, 3), "weight")?,
            vb.pp("resample.1").get(dim, "bias")?,
            0,
            2,
        )?;
        let time_conv = if temporal {
            Some((StridedTimeConv::new(vb.pp("time_conv"), dim)?, slots.next()))
        } else {
            None
        };
        Ok(Self { conv, time_conv })
    }

    /// `[B, T, C, H, W]` → `[B, T', C, ⌈H/2⌉, ⌈W/2⌉]`; T' = T for `downsample2d` and for the first
    /// chunk of a stream, else (T + 1 − 3)/2 + 1 (2 for a 4-frame chunk, 1 for 2 frames).
    pub fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        let dev = x.device();
        let y = span(DOWNSAMPLE_SPATIAL, dev, || {
            let frames = x
                .reshape((b * t, c, h, w))?
                .pad_with_zeros(2, 0, 1)?
                .pad_with_zeros(3, 0, 1)?;
            self.conv.forward(&frames)
        })?; // [B·T, C, H', W']
        let (_, _, h2, w2) = y.dims4()?;
        let y = y.reshape((b, t, c, h2, w2))?;
        let Some((time_conv, slot)) = &self.time_conv else {
            return Ok(y);
        };
        // A compact copy: a contiguous view (or `Tensor::copy`, which clones the whole buffer)
        // would keep all of y alive as this slot's history.
        let last = y.narrow(1, t - 1, 1)?.force_contiguous()?;
        let out = match cache.previous_frames(*slot) {
            // the first chunk passes through whole (its single frame stays one latent frame);
            // its last frame is the next chunk's history
            None => y,
            Some(previous) => {
                let stream = span(stage::FEATURE_CACHE, dev, || {
                    Ok(Tensor::cat(&[previous, &y], 1)?)
                })?;
                span(DOWNSAMPLE_TEMPORAL, dev, || time_conv.forward(&stream))?
            }
        };
        cache.store_frames(*slot, last);
        Ok(out)
    }
}
