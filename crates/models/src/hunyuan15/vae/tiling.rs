//! Spatial tiling of the HunyuanVideo 1.5 decode, as diffusers' `enable_tiling` does it: latent
//! tiles at a fixed stride, each decoded on its own; then, in row-major order, each tile's top
//! rows are cross-faded with the (already blended) tile above and its left columns with the tile
//! to its left, and every tile is cropped to the stride before the tiles are joined.
//!
//! vdit decodes each tile through time in chunks (the same as diffusers' whole-clip decode of
//! the tile) and, blending being per frame, joins the tiles chunk by chunk. diffusers 0.42.1
//! tiles this VAE in space only (its `blend_t` is never called): no temporal tiles; vdit's chunked
//! decode bounds the activations in time instead.

use candle_core::{DType, Tensor};

use crate::error::{ModelError, Result};

/// Spatial tiles for [`super::HunyuanVideo15VaeDecoder::decode`], in latent pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HunyuanVaeTiling {
    /// Tile (height, width) in latent pixels (diffusers' `tile_latent_min_height/width`); the
    /// video tile is this × the spatial scale (`tile_sample_min_height/width`). A latent larger
    /// than the tile along either axis is tiled.
    pub tile: (usize, usize),
    /// diffusers' `tile_overlap_factor`: tiles start every ⌊tile·(1 − f)⌋ latent pixels and
    /// blend over ⌊tile·scale·f⌋ video pixels.
    pub overlap_factor: f64,
}

impl HunyuanVaeTiling {
    /// diffusers' defaults: 256×256-video-pixel tiles (16×16 latent pixels at ×16), overlap
    /// factor 0.25 (tiles every 12 latent pixels, blended over 64 video pixels).
    pub fn for_spatial_scale(spatial_scale: usize) -> Self {
        let tile = (256 / spatial_scale.max(1)).max(1);
        Self {
            tile: (tile, tile),
            overlap_factor: 0.25,
        }
    }

    /// Whether a latent of `h × w` is tiled (diffusers: larger than the tile along either axis).
    pub fn applies_to(&self, h: usize, w: usize) -> bool {
        h > self.tile.0 || w > self.tile.1
    }

    /// Why these tiles cannot decode at `scale` video pixels per latent pixel, if they cannot:
    /// a tile stride of zero, or one whose video size is not the kept (cropped) part of a tile,
    /// which would leave the joined video a different size from the latent × scale.
    pub fn validate(&self, scale: usize) -> Result<()> {
        let f = self.overlap_factor;
        let bad = |reason: String| ModelError::InvalidInput(format!("VAE tiling: {reason}"));
        if !(0.0..1.0).contains(&f) {
            return Err(bad(format!("overlap factor must be in [0, 1), got {f}")));
        }
        for tile in [self.tile.0, self.tile.1] {
            let axis = AxisPlan::new(tile, f, scale);
            if axis.stride == 0 || axis.stride * scale != axis.keep {
                return Err(bad(format!(
                    "a {tile}-pixel latent tile with overlap factor {f} has stride {} \
                     (×{scale} = {} video pixels) but keeps {} video pixels of each tile; \
                     choose a tile whose stride ×{scale} is what it keeps (e.g. a multiple \
                     of 4 at factor 0.25)",
                    axis.stride,
                    axis.stride * scale,
                    axis.keep
                )));
            }
        }
        Ok(())
    }
}

/// The tiling along one axis, as diffusers computes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AxisPlan {
    /// Latent pixels per tile.
    pub tile: usize,
    /// Latent pixels between tile starts: ⌊tile·(1 − f)⌋.
    pub stride: usize,
    /// Video pixels cross-faded with the previous tile: ⌊tile·scale·f⌋.
    pub blend: usize,
    /// Video pixels of each tile kept after blending: tile·scale − blend.
    pub keep: usize,
}

impl AxisPlan {
    pub fn new(tile: usize, overlap_factor: f64, scale: usize) -> Self {
        let stride = (tile as f64 * (1.0 - overlap_factor)) as usize;
        let blend = ((tile * scale) as f64 * overlap_factor) as usize;
        Self {
            tile,
            stride,
            blend,
            keep: tile * scale - blend,
        }
    }

    /// (start, length) of each tile over `size` latent pixels: a tile at every multiple of the
    /// stride below `size`, cut at the edge.
    pub fn spans(&self, size: usize) -> Vec<(usize, usize)> {
        (0..size)
            .step_by(self.stride.max(1))
            .map(|start| (start, self.tile.min(size - start)))
            .collect()
    }
}

/// The tiles of one latent frame: rows × columns of (start, length) spans, and how they blend.
#[derive(Debug, Clone, PartialEq)]
pub struct TileGrid {
    pub rows: Vec<(usize, usize)>,
    pub cols: Vec<(usize, usize)>,
    /// Video pixels blended with the tile above / to the left (0 for an untiled grid).
    blend: (usize, usize),
    /// Video pixels kept of each tile (at least its size for an untiled grid).
    keep: (usize, usize),
}

impl TileGrid {
    /// One tile covering an `h × w` latent.
    pub fn whole(h: usize, w: usize) -> Self {
        Self {
            rows: vec![(0, h)],
            cols: vec![(0, w)],
            blend: (0, 0),
            keep: (usize::MAX, usize::MAX),
        }
    }

    /// The tiles of `tiling` over an `h × w` latent at `scale` video pixels per latent pixel
    /// (validated), or one whole tile when the latent is not larger than a tile.
    pub fn new(tiling: Option<&HunyuanVaeTiling>, h: usize, w: usize, scale: usize) -> Self {
        match tiling {
            Some(t) if t.applies_to(h, w) => {
                let rows = AxisPlan::new(t.tile.0, t.overlap_factor, scale);
                let cols = AxisPlan::new(t.tile.1, t.overlap_factor, scale);
                Self {
                    rows: rows.spans(h),
                    cols: cols.spans(w),
                    blend: (rows.blend, cols.blend),
                    keep: (rows.keep, cols.keep),
                }
            }
            _ => Self::whole(h, w),
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len() * self.cols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Joins one chunk of decoded tiles, row-major, each `[B, C, T, H_tile, W_tile]` f32, into
    /// `[B, C, T, H, W]`: each tile's first rows are cross-faded with the blended tile above and
    /// its first columns with the blended tile to its left, then it is cropped to the kept size.
    pub fn join(&self, tiles: Vec<Tensor>) -> Result<Tensor> {
        let cols = self.cols.len();
        if tiles.len() == 1 {
            return Ok(tiles.into_iter().next().expect("one tile"));
        }
        let mut blended: Vec<Tensor> = Vec::with_capacity(tiles.len());
        for (index, tile) in tiles.into_iter().enumerate() {
            let (i, j) = (index / cols, index % cols);
            let mut tile = tile;
            if i > 0 {
                tile = blend(&blended[index - cols], &tile, self.blend.0, 3)?;
            }
            if j > 0 {
                tile = blend(&blended[index - 1], &tile, self.blend.1, 4)?;
            }
            blended.push(tile);
        }
        let mut rows = Vec::with_capacity(self.rows.len());
        for row in blended.chunks(cols) {
            let cropped = row
                .iter()
                .map(|tile| {
                    let (h, w) = (tile.dim(3)?, tile.dim(4)?);
                    Ok(tile
                        .narrow(3, 0, h.min(self.keep.0))?
                        .narrow(4, 0, w.min(self.keep.1))?)
                })
                .collect::<Result<Vec<_>>>()?;
            rows.push(Tensor::cat(&cropped, 4)?);
        }
        Ok(Tensor::cat(&rows, 3)?)
    }
}

/// `next` with its first e pixels along `axis` (3: rows, 4: columns) cross-faded from the last e
/// of `previous`: weight k/e on `next` at its pixel k, 1 − k/e on `previous`; e = the smaller of
/// `extent` and both tiles' sizes (diffusers' `blend_v` / `blend_h`).
fn blend(previous: &Tensor, next: &Tensor, extent: usize, axis: usize) -> Result<Tensor> {
    let (prev_len, next_len) = (previous.dim(axis)?, next.dim(axis)?);
    let e = extent.min(prev_len).min(next_len);
    if e == 0 {
        return Ok(next.clone());
    }
    let ramp: Vec<f32> = (0..e).map(|k| (k as f64 / e as f64) as f32).collect();
    let mut shape = [1usize; 5];
    shape[axis] = e;
    let ramp = Tensor::from_vec(ramp, &shape[..], next.device())?.to_dtype(DType::F32)?;
    let head = (previous
        .narrow(axis, prev_len - e, e)?
        .broadcast_mul(&(1.0 - &ramp)?)?
        + next.narrow(axis, 0, e)?.broadcast_mul(&ramp)?)?;
    if e == next_len {
        return Ok(head);
    }
    Ok(Tensor::cat(
        &[&head, &next.narrow(axis, e, next_len - e)?],
        axis,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tiles_follow_diffusers() {
        let t = HunyuanVaeTiling::for_spatial_scale(16);
        assert_eq!(t.tile, (16, 16));
        t.validate(16).unwrap();
        let axis = AxisPlan::new(16, 0.25, 16);
        assert_eq!((axis.stride, axis.blend, axis.keep), (12, 64, 192));
        // 720p: 45 latent rows -> tiles at 0, 12, 24, 36; kept 192 + 192 + 192 + 144 = 720
        let spans = axis.spans(45);
        assert_eq!(spans, vec![(0, 16), (12, 16), (24, 16), (36, 9)]);
        let kept: usize = spans.iter().map(|&(_, l)| (l * 16).min(axis.keep)).sum();
        assert_eq!(kept, 720);
        assert!(!t.applies_to(16, 16) && t.applies_to(17, 16));
    }

    #[test]
    fn inconsistent_tiles_are_refused() {
        let t = HunyuanVaeTiling {
            tile: (6, 6),
            overlap_factor: 0.25,
        };
        // stride 4 (×8 = 32) but keeps 48 − 12 = 36 video pixels
        assert!(t.validate(8).is_err());
        let t = HunyuanVaeTiling {
            tile: (1, 8),
            overlap_factor: 0.25,
        };
        assert!(t.validate(8).is_err()); // stride 0
    }

    /// Blending with equal tiles is the identity; the ramp starts on the previous tile.
    #[test]
    fn blend_ramps_from_previous_tile() {
        let dev = candle_core::Device::Cpu;
        let ones = Tensor::ones((1, 1, 1, 2, 5), DType::F32, &dev).unwrap();
        let zeros = Tensor::zeros((1, 1, 1, 2, 3), DType::F32, &dev).unwrap();
        let out = blend(&ones, &zeros, 4, 4).unwrap();
        let row: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        // e = min(4, 5, 3) = 3: weights on `next` 0, 1/3, 2/3
        let expected = [1.0, 2.0 / 3.0, 1.0 / 3.0];
        for (a, b) in row[..3].iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{row:?}");
        }
    }
}
