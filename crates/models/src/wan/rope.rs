//! Wan's 3D rotary position embedding: the head channels are split three ways (frames, height,
//! width), each part rotated by the token's integer grid index along its axis, with interleaved
//! channel pairs (x[2p], x[2p+1]) as in GPT-J.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

/// Per-axis channel split and inverse frequencies for one head_dim.
#[derive(Debug, Clone)]
pub struct WanRope {
    head_dim: usize,
    /// Inverse frequencies per rotated pair, for the frame, height and width axes.
    inv_freq: [Vec<f64>; 3],
}

impl WanRope {
    /// Splits `head_dim` as Wan does: height and width get `2·(head_dim/6)` channels each, frames
    /// the rest (44/42/42 for 128). Axis `a` with `n` channels uses θ^(−2j/n), j < n/2.
    pub fn new(head_dim: usize, theta: f64) -> Self {
        let spatial = 2 * (head_dim / 6);
        let frames = head_dim - 2 * spatial;
        let inv = |channels: usize| -> Vec<f64> {
            (0..channels / 2)
                .map(|j| theta.powf(-((2 * j) as f64) / channels as f64))
                .collect()
        };
        Self {
            head_dim,
            inv_freq: [inv(frames), inv(spatial), inv(spatial)],
        }
    }

    /// Channels rotated with the frame, height and width index.
    pub fn axis_channels(&self) -> [usize; 3] {
        self.inv_freq.clone().map(|f| 2 * f.len())
    }

    /// cos and sin tables, each [frames·height·width, head_dim/2] f32, for tokens in row-major
    /// (f, h, w) order; built in f64 (like both references) and rounded once.
    pub fn tables(
        &self,
        frames: usize,
        height: usize,
        width: usize,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let pairs = self.head_dim / 2;
        let tokens = frames * height * width;
        let mut cos = Vec::with_capacity(tokens * pairs);
        let mut sin = Vec::with_capacity(tokens * pairs);
        for f in 0..frames {
            for h in 0..height {
                for w in 0..width {
                    for (position, inv_freq) in [f, h, w].into_iter().zip(&self.inv_freq) {
                        for freq in inv_freq {
                            let angle = position as f64 * freq;
                            cos.push(angle.cos() as f32);
                            sin.push(angle.sin() as f32);
                        }
                    }
                }
            }
        }
        let cos = Tensor::from_vec(cos, (tokens, pairs), device)?;
        let sin = Tensor::from_vec(sin, (tokens, pairs), device)?;
        Ok((cos, sin))
    }

    /// Rotates x [B, heads, L, head_dim] (any float dtype) by tables from [`WanRope::tables`];
    /// computed in f32, returned in f32.
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        Ok(candle_nn::rotary_emb::rope_i(&x, cos, sin)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_frequencies_match_the_spec_for_head_dim_128() {
        let rope = WanRope::new(128, 10_000.0);
        assert_eq!(rope.axis_channels(), [44, 42, 42]);
        assert!((rope.inv_freq[0][1] - 0.657933).abs() < 1e-6);
        assert!((rope.inv_freq[1][1] - 0.644947).abs() < 1e-6);
        assert_eq!(WanRope::new(32, 1e4).axis_channels(), [12, 10, 10]);
        assert_eq!(WanRope::new(64, 1e4).axis_channels(), [24, 20, 20]);
    }

    #[test]
    fn rotation_pairs_adjacent_channels_by_grid_position() {
        // head_dim 6: one pair per axis with frequency 1. Token (f=0, h=1, w=2) of a 1×2×3 grid
        // rotates pair 0 by 0, pair 1 by 1 rad, pair 2 by 2 rad.
        let rope = WanRope::new(6, 10_000.0);
        let (cos, sin) = rope.tables(1, 2, 3, &Device::Cpu).unwrap();
        let token = 3 + 2; // (h=1, w=2) in a 2×3 frame
        let x = Tensor::new(&[1f32, 0., 1., 0., 0., 1.], &Device::Cpu).unwrap();
        let xs = x.broadcast_as((1, 1, 6, 6)).unwrap().contiguous().unwrap();
        let y = WanRope::apply(&xs, &cos, &sin).unwrap();
        let y: Vec<f32> = y
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .get(token)
            .unwrap()
            .to_vec1()
            .unwrap();
        let (c1, s1, c2, s2) = (1f32.cos(), 1f32.sin(), 2f32.cos(), 2f32.sin());
        let expected = [1., 0., c1, s1, -s2, c2];
        for (a, b) in y.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{y:?} vs {expected:?}");
        }
    }
}
