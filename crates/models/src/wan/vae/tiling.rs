//! Spatial tiling of the VAE decode: overlapping latent tiles, each decoded through time with its
//! own feature cache, then cross-faded linearly where they overlap.

use crate::error::{ModelError, Result};

/// Spatial tiles for [`super::WanVaeDecoder::decode`], in latent pixels (×8 in the video for
/// Wan2.1, ×16 for Wan2.2: see [`VaeTiling::for_spatial_scale`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaeTiling {
    /// Tile (height, width) in latent pixels.
    pub tile: (usize, usize),
    /// Minimum overlap of neighbouring tiles in latent pixels; the overlap is blended linearly.
    pub overlap: usize,
}

impl Default for VaeTiling {
    /// 256×256-pixel tiles with 64 pixels of overlap (diffusers' AutoencoderKLWan defaults).
    fn default() -> Self {
        Self {
            tile: (32, 32),
            overlap: 8,
        }
    }
}

impl VaeTiling {
    /// 256×256-video-pixel tiles with 64 pixels of overlap for a VAE of `spatial_scale` video
    /// pixels per latent pixel: 32/8 latent pixels for Wan2.1 (the default), 16/4 for Wan2.2.
    pub fn for_spatial_scale(spatial_scale: usize) -> Self {
        let scale = spatial_scale.max(1);
        Self {
            tile: ((256 / scale).max(2), (256 / scale).max(2)),
            overlap: (64 / scale).max(1),
        }
    }

    pub fn validate(&self) -> Result<()> {
        let (th, tw) = self.tile;
        if th == 0 || tw == 0 || self.overlap >= th.min(tw) {
            return Err(ModelError::InvalidInput(format!(
                "VAE tiling needs non-empty tiles larger than the overlap, got tile {th}x{tw}, overlap {}",
                self.overlap
            )));
        }
        Ok(())
    }
}

/// The tiles along one axis and their blend weights in output pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct AxisTiles {
    /// (start, length) of each tile in latent pixels.
    pub spans: Vec<(usize, usize)>,
    /// Per tile, one weight per output pixel; at every output pixel the weights of the tiles
    /// covering it sum to 1.
    pub weights: Vec<Vec<f32>>,
}

/// Splits `size` latent pixels into evenly spaced tiles of `tile` that overlap by at least
/// `overlap`; `scale` is the latent → video pixel factor.
pub fn axis_tiles(size: usize, tile: usize, overlap: usize, scale: usize) -> AxisTiles {
    if tile >= size {
        return AxisTiles {
            spans: vec![(0, size)],
            weights: vec![vec![1.0; size * scale]],
        };
    }
    let stride = tile - overlap;
    let count = (size - tile).div_ceil(stride) + 1;
    // spread the tiles evenly so every overlap is about the same (and at least `overlap`)
    let starts: Vec<usize> = (0..count)
        .map(|k| ((k * (size - tile)) as f64 / (count - 1) as f64).round() as usize)
        .collect();
    let mut weights = Vec::with_capacity(count);
    for (k, &start) in starts.iter().enumerate() {
        let ramp_in = if k > 0 {
            (starts[k - 1] + tile - start) * scale
        } else {
            0
        };
        let ramp_out = if k + 1 < count {
            (start + tile - starts[k + 1]) * scale
        } else {
            0
        };
        let len = tile * scale;
        let w: Vec<f32> = (0..len)
            .map(|i| {
                // linear cross-fade: (i+1)/(L+1) rising over the overlap with the previous tile,
                // mirrored over the overlap with the next; the two sum to 1 in a shared overlap
                let rise = if i < ramp_in {
                    (i + 1) as f32 / (ramp_in + 1) as f32
                } else {
                    1.0
                };
                let from_end = len - i;
                let fall = if from_end <= ramp_out {
                    from_end as f32 / (ramp_out + 1) as f32
                } else {
                    1.0
                };
                rise * fall
            })
            .collect();
        weights.push(w);
    }
    // normalise so the weights at every pixel sum to exactly 1, whatever the overlaps
    let mut total = vec![0f32; size * scale];
    for (&start, w) in starts.iter().zip(&weights) {
        for (i, v) in w.iter().enumerate() {
            total[start * scale + i] += v;
        }
    }
    for (&start, w) in starts.iter().zip(weights.iter_mut()) {
        for (i, v) in w.iter_mut().enumerate() {
            *v /= total[start * scale + i];
        }
    }
    AxisTiles {
        spans: starts.into_iter().map(|s| (s, tile)).collect(),
        weights,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tiles_are_256_pixels_at_either_scale() {
        assert_eq!(VaeTiling::for_spatial_scale(8), VaeTiling::default());
        let wan22 = VaeTiling::for_spatial_scale(16);
        assert_eq!((wan22.tile, wan22.overlap), ((16, 16), 4));
        assert!(wan22.validate().is_ok());
    }

    #[test]
    fn tiles_cover_the_axis_and_weights_sum_to_one() {
        for (size, tile, overlap) in [
            (5, 4, 2),
            (7, 4, 2),
            (60, 32, 8),
            (104, 32, 8),
            (90, 16, 4),
            (3, 8, 2),
        ] {
            let tiles = axis_tiles(size, tile, overlap, 8);
            let mut total = vec![0f32; size * 8];
            for (&(start, len), w) in tiles.spans.iter().zip(&tiles.weights) {
                assert!(start + len <= size && w.len() == len * 8);
                assert!(w.iter().all(|v| *v > 0.0));
                for (i, v) in w.iter().enumerate() {
                    total[start * 8 + i] += v;
                }
            }
            assert!(
                total.iter().all(|t| (t - 1.0).abs() < 1e-6),
                "{size} {tile} {overlap}"
            );
            for pair in tiles.spans.windows(2) {
                assert!(
                    pair[0].0 + pair[0].1 >= pair[1].0 + overlap.min(tile),
                    "overlap too small: {pair:?}"
                );
            }
        }
    }
}
