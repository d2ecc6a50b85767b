//! The VAE decode split spatially: each rank decodes a band of latent rows plus `halo` rows on
//! each side that it borrows from its neighbours (none beyond the image's border), and keeps
//! the output rows of its own band. The result equals the whole decode exactly when the halo
//! covers the decoder's receptive field in latent rows; with a smaller halo the seams differ
//! (the same trade xDiT and sglang make for the Wan VAE).

use super::split::SequenceSplit;
use crate::error::Result;

/// One rank's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Band {
    /// `(start, len)` of the latent rows this rank owns.
    pub own: (usize, usize),
    /// `(start, len)` of the latent rows it decodes: its own plus the halo, clipped to the image.
    pub input: (usize, usize),
    /// `(offset, len)` of the rows of its decoded band to keep, at `scale` output rows per
    /// latent row.
    pub keep: (usize, usize),
}

/// `rows` latent rows over `parts` ranks with `halo` rows of overlap each side; the decoder
/// makes `scale` output rows of each latent row.
pub fn row_bands(rows: usize, parts: usize, halo: usize, scale: usize) -> Result<Vec<Band>> {
    let split = SequenceSplit::new(rows, parts)?;
    Ok((0..parts)
        .map(|rank| {
            let (start, len) = split.range(rank);
            let first = start.saturating_sub(halo);
            let end = (start + len + halo).min(rows);
            Band {
                own: (start, len),
                input: (first, end - first),
                keep: ((start - first) * scale, len * scale),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    /// `depth` 3×3 convs with zero padding (the same kernel each time), optionally a nearest-2×
    /// upsample after the first: a stand-in for a decoder's spatial receptive field.
    fn decode(x: &Tensor, kernel: &Tensor, depth: usize, upsample: bool) -> Tensor {
        let mut x = x.clone();
        for i in 0..depth {
            x = x.conv2d(kernel, 1, 1, 1, 1).unwrap();
            if upsample && i == 0 {
                let (_, _, h, w) = x.dims4().unwrap();
                x = x.upsample_nearest2d(2 * h, 2 * w).unwrap();
            }
        }
        x
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        rainfusion::reference::max_abs_diff(a, b).unwrap()
    }

    #[test]
    fn bands_with_enough_halo_decode_exactly() {
        let dev = Device::Cpu;
        let kernel = Tensor::randn(0f32, 0.3, (2, 2, 3, 3), &dev).unwrap();
        let latent = Tensor::randn(0f32, 1.0, (1, 2, 13, 9), &dev).unwrap();
        // (depth, upsample, scale, halo): the receptive field is depth rows, or with the
        // upsample 1 latent row + (depth − 1) output rows = 2 latent rows for depth 3
        for (depth, upsample, scale, halo) in [(3, false, 1, 3), (3, true, 2, 2)] {
            let whole = decode(&latent, &kernel, depth, upsample);
            for parts in [2, 3, 4] {
                let bands = row_bands(13, parts, halo, scale).unwrap();
                let kept: Vec<Tensor> = bands
                    .iter()
                    .map(|b| {
                        let input = latent.narrow(2, b.input.0, b.input.1).unwrap();
                        decode(&input, &kernel, depth, upsample)
                            .narrow(2, b.keep.0, b.keep.1)
                            .unwrap()
                    })
                    .collect();
                let joined = Tensor::cat(&kept, 2).unwrap();
                assert_eq!(joined.dims(), whole.dims());
                let diff = max_diff(&joined, &whole);
                assert!(diff < 1e-5, "depth {depth}, {parts} parts: {diff}");
            }
        }
    }

    #[test]
    fn a_short_halo_shows_at_the_seams() {
        let dev = Device::Cpu;
        let kernel = Tensor::randn(0f32, 0.3, (2, 2, 3, 3), &dev).unwrap();
        let latent = Tensor::randn(0f32, 1.0, (1, 2, 12, 8), &dev).unwrap();
        let whole = decode(&latent, &kernel, 3, false);
        let bands = row_bands(12, 2, 1, 1).unwrap();
        let kept: Vec<Tensor> = bands
            .iter()
            .map(|b| {
                decode(
                    &latent.narrow(2, b.input.0, b.input.1).unwrap(),
                    &kernel,
                    3,
                    false,
                )
                .narrow(2, b.keep.0, b.keep.1)
                .unwrap()
            })
            .collect();
        assert!(max_diff(&Tensor::cat(&kept, 2).unwrap(), &whole) > 1e-3);
    }

    #[test]
    fn bands_clip_at_the_borders() {
        let bands = row_bands(10, 3, 2, 8).unwrap();
        assert_eq!(
            bands[0],
            Band {
                own: (0, 4),
                input: (0, 6),
                keep: (0, 32)
            }
        );
        assert_eq!(
            bands[1],
            Band {
                own: (4, 3),
                input: (2, 7),
                keep: (16, 24)
            }
        );
        assert_eq!(
            bands[2],
            Band {
                own: (7, 3),
                input: (5, 5),
                keep: (16, 24)
            }
        );
    }
}
