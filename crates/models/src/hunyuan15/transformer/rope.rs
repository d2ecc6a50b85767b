//! HunyuanVideo 1.5's 3D rotary position embedding on the video tokens: the head channels are
//! split into three parts of the widths the config names (`rope_axes_dim`, (16, 56, 56) at the
//! real size), rotated by the token's frame, row and column index, with interleaved channel
//! pairs (x[2p], x[2p+1]). Text tokens are not rotated.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

/// Inverse frequencies per rotated pair, for the frame, row and column axes.
#[derive(Debug, Clone)]
pub struct HunyuanRope {
    inv_freq: [Vec<f64>; 3],
}

impl HunyuanRope {
    /// Axis `a` of width `n` uses θ^(−2j/n) for its pairs j < n/2. `axes` sum to the head width
    /// (checked by the config).
    pub fn new(axes: [usize; 3], theta: f64) -> Self {
        let inv = |width: usize| -> Vec<f64> {
            (0..width / 2)
                .map(|j| theta.powf(-((2 * j) as f64) / width as f64))
                .collect()
        };
        Self {
            inv_freq: axes.map(inv),
        }
    }

    /// cos and sin tables, each `[frames·height·width, head_dim/2]` f32, for tokens in row-major
    /// (frame, row, column) order; angles in f64, rounded once.
    pub fn tables(
        &self,
        [frames, height, width]: [usize; 3],
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let pairs: usize = self.inv_freq.iter().map(Vec::len).sum();
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
        Ok((
            Tensor::from_vec(cos, (tokens, pairs), device)?,
            Tensor::from_vec(sin, (tokens, pairs), device)?,
        ))
    }

    /// Rotates x `[B, heads, L, head_dim]` (any float dtype) by tables of [`Self::tables`] →
    /// `[B, heads, L, head_dim]` f32.
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        Ok(candle_nn::rotary_emb::rope_i(&x, cos, sin)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_take_their_own_channels_and_frequencies() {
        // Axes (2, 2, 4): pair 0 by the frame, pair 1 by the row, pairs 2-3 by the column with
        // frequencies 1 and θ^(−1/2).
        let rope = HunyuanRope::new([2, 2, 4], 256.0);
        let (cos, sin) = rope.tables([2, 2, 3], &Device::Cpu).unwrap();
        assert_eq!(cos.dims(), &[12, 4]);
        let token = 6 + 3 + 2; // (f=1, h=1, w=2) in a 2×2×3 grid
        let angles = [1.0f64, 1.0, 2.0, 2.0 / 16.0];
        let cos: Vec<f32> = cos.get(token).unwrap().to_vec1().unwrap();
        let sin: Vec<f32> = sin.get(token).unwrap().to_vec1().unwrap();
        for (p, angle) in angles.iter().enumerate() {
            assert!((cos[p] as f64 - angle.cos()).abs() < 1e-6);
            assert!((sin[p] as f64 - angle.sin()).abs() < 1e-6);
        }
    }
}
