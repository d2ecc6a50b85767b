//! Wan2.2's pixel patch: the decoder's last conv gives 3·p² channels per latent-grid pixel at 1/p
//! of the video resolution; unpatchifying spreads them over p×p pixels. The encoder starts with
//! the inverse: every p×p block of pixels becomes 3·p² channels of one pixel.

use candle_core::Tensor;

use crate::error::Result;

/// `[B, C·p·p, T, H, W]` → `[B, C, T, H·p, W·p]` with diffusers' channel order: channel
/// `c·p² + a·p + b` lands on video pixel `(h·p + b, w·p + a)` (the first patch index runs along
/// the width). `p = 1` is the identity.
pub fn unpatchify(x: &Tensor, p: usize) -> Result<Tensor> {
    if p == 1 {
        return Ok(x.clone());
    }
    let (b, cpp, t, h, w) = x.dims5()?;
    let c = cpp / (p * p);
    // [B·C, a, b, T, H, W] → [B·C, T, H, b, W, a]
    let y = x
        .reshape(vec![b * c, p, p, t, h, w])?
        .permute([0, 3, 4, 2, 5, 1])?
        .contiguous()?
        .reshape((b, c, t, h * p, w * p))?;
    Ok(y)
}

/// `[B, C, T, H·p, W·p]` → `[B, C·p·p, T, H, W]`, the inverse of [`unpatchify`] (diffusers'
/// `patchify`): video pixel `(h·p + b, w·p + a)` of channel c becomes channel `c·p² + a·p + b`.
/// H·p and W·p must be multiples of p; `p = 1` is the identity.
pub fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    if p == 1 {
        return Ok(x.clone());
    }
    let (b, c, t, hp, wp) = x.dims5()?;
    let (h, w) = (hp / p, wp / p);
    // [B·C, T, H, b, W, a] → [B·C, a, b, T, H, W]
    let y = x
        .reshape(vec![b * c, t, h, p, w, p])?
        .permute([0, 5, 3, 1, 2, 4])?
        .contiguous()?
        .reshape((b, c * p * p, t, h, w))?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::{patchify, unpatchify};

    #[test]
    fn patchify_inverts_unpatchify() {
        let x = Tensor::randn(0f32, 1.0, (2, 12, 3, 4, 5), &Device::Cpu).unwrap();
        let video = unpatchify(&x, 2).unwrap();
        assert_eq!(video.dims(), &[2, 3, 3, 8, 10]);
        let back = patchify(&video, 2).unwrap();
        let diff = (back - &x).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn channel_order_matches_diffusers() {
        // B 1, C 2, p 2, T 1, H 1, W 2: value = channel index·10 + w
        let (c, p, w) = (2usize, 2usize, 2usize);
        let values: Vec<f32> = (0..c * p * p)
            .flat_map(|ch| (0..w).map(move |x| (ch * 10 + x) as f32))
            .collect();
        let x = Tensor::from_vec(values, (1, c * p * p, 1, 1, w), &Device::Cpu).unwrap();
        let y = unpatchify(&x, p).unwrap();
        assert_eq!(y.dims(), &[1, c, 1, p, w * p]);
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for out_c in 0..c {
            for row in 0..p {
                for col in 0..w * p {
                    let (wx, a) = (col / p, col % p);
                    let source = out_c * p * p + a * p + row;
                    let got = y[(out_c * p + row) * w * p + col];
                    assert_eq!(got, (source * 10 + wx) as f32, "c{out_c} y{row} x{col}");
                }
            }
        }
    }
}
