//! Wan2.2's residual down block: residual blocks and a width-keeping downsampler, plus a shortcut
//! around the whole block that has no parameters: space-time phases are folded into channels and
//! groups of them averaged (diffusers' `AvgDown3D`). The mirror of [`super::residual_up`].

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::blocks::ResidualBlock;
use super::downsample::Downsample;
use super::layers::{stage, FeatureCache, SlotCounter};
use crate::error::{ModelError, Result};
use crate::profile::span;

/// Profiler stage of the parameter-free shortcut.
const AVG_DOWN: &str = "vae encode: average-down shortcut";

/// The parameter-free shortcut: `[B, T, C_in, H, W]` → `[B, ⌈T/f_t⌉, C_out, H/f_s, W/f_s]`.
///
/// Time is first padded with zero frames in front to a multiple of f_t (so a chunk of one frame
/// is averaged with a zero frame). Each input channel then holds `f_t·f_s²` phases, read as
/// channel `k = (c·f_t + i_t)·f_s² + i_y·f_s + i_x`; output channel o is the mean of channels
/// `k = o·g .. (o+1)·g`, g = `C_in·f_t·f_s² / C_out`.
#[derive(Debug, Clone)]
pub struct AvgDown3d {
    out_dim: usize,
    factor_t: usize,
    factor_s: usize,
    group: usize,
}

impl AvgDown3d {
    pub fn new(in_dim: usize, out_dim: usize, factor_t: usize, factor_s: usize) -> Result<Self> {
        let folded = in_dim * factor_t * factor_s * factor_s;
        if out_dim == 0 || !folded.is_multiple_of(out_dim) {
            return Err(ModelError::Config {
                path: "WanVaeConfig".into(),
                reason: format!(
                    "residual down block {in_dim} → {out_dim} channels: {folded} folded channels \
                     are not a multiple of {out_dim}"
                ),
            });
        }
        Ok(Self {
            out_dim,
            factor_t,
            factor_s,
            group: folded / out_dim,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (ft, fs) = (self.factor_t, self.factor_s);
        let (b, t, c, h, w) = x.dims5()?;
        let pad = (ft - t % ft) % ft;
        let x = if pad > 0 {
            x.pad_with_zeros(1, pad, 0)?
        } else {
            x.clone()
        };
        let (t2, h2, w2) = ((t + pad) / ft, h / fs, w / fs);
        // [B·T', f_t, C, H', f_s(y), W', f_s(x)] → [B·T', C, f_t, f_s(y), f_s(x), H', W']
        let folded = x
            .reshape(vec![b * t2, ft, c, h2, fs, w2, fs])?
            .permute([0, 2, 1, 4, 6, 3, 5])?
            .contiguous()?
            .reshape((b * t2, self.out_dim, self.group, h2, w2))?;
        // half precision is averaged in f32 and rounded once, as torch's mean does
        let dtype = folded.dtype();
        let mean = if matches!(dtype, DType::F16 | DType::BF16) {
            folded.to_dtype(DType::F32)?.mean(2)?.to_dtype(dtype)?
        } else {
            folded.mean(2)?
        };
        Ok(mean.reshape((b, t2, self.out_dim, h2, w2))?)
    }
}

/// `num_res_blocks` residual blocks, an optional downsampler, and the [`AvgDown3d`] shortcut
/// around them (an identity average for the last block, which does not downsample).
#[derive(Debug, Clone)]
pub struct ResidualDownBlock {
    resnets: Vec<ResidualBlock>,
    downsampler: Option<Downsample>,
    shortcut: AvgDown3d,
}

impl ResidualDownBlock {
    /// `vb` at `encoder.down_blocks.{i}`. `downsample`: None for the last block, else whether it
    /// halves time too. `level`: resolution level of the input, for profiles.
    pub fn new(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        num_res_blocks: usize,
        downsample: Option<bool>,
        level: usize,
        slots: &mut SlotCounter,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(num_res_blocks);
        let mut dim = in_dim;
        for r in 0..num_res_blocks {
            resnets.push(ResidualBlock::new(
                vb.pp(format!("resnets.{r}")),
                dim,
                out_dim,
                level,
                slots,
            )?);
            dim = out_dim;
        }
        let downsampler = downsample
            .map(|temporal| Downsample::new(vb.pp("downsampler"), out_dim, temporal, slots))
            .transpose()?;
        let (factor_t, factor_s) = match downsample {
            Some(temporal) => (if temporal { 2 } else { 1 }, 2),
            None => (1, 1),
        };
        Ok(Self {
            resnets,
            downsampler,
            shortcut: AvgDown3d::new(in_dim, out_dim, factor_t, factor_s)?,
        })
    }

    /// `[B, T, C_in, H, W]` → `[B, T', C_out, H/2, W/2]` (the same size for the last block).
    pub fn forward(&self, x: &Tensor, cache: &mut FeatureCache) -> Result<Tensor> {
        let mut h = x.clone();
        for resnet in &self.resnets {
            h = resnet.forward(&h, cache)?;
        }
        if let Some(downsampler) = &self.downsampler {
            h = downsampler.forward(&h, cache)?;
        }
        let dev = x.device();
        let skip = span(AVG_DOWN, dev, || self.shortcut.forward(x))?;
        span(stage::RESIDUAL_ADD, dev, || Ok((h + skip)?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::AvgDown3d;

    /// Every output element is the mean of the input phases its channel group names, with a zero
    /// frame in front when the frame count is odd (diffusers' AvgDown3D).
    #[test]
    fn averages_the_named_phases() {
        let (c, o, ft, fs, t, h, w) = (2usize, 4usize, 2usize, 2usize, 3usize, 4usize, 2usize);
        // value = channel·1000 + frame·100 + row·10 + column
        let values: Vec<f32> = (0..t)
            .flat_map(|f| {
                (0..c).flat_map(move |ch| {
                    (0..h).flat_map(move |y| {
                        (0..w).map(move |x| (ch * 1000 + f * 100 + y * 10 + x) as f32)
                    })
                })
            })
            .collect();
        let x = Tensor::from_vec(values.clone(), (1, t, c, h, w), &Device::Cpu).unwrap();
        let avg = AvgDown3d::new(c, o, ft, fs).unwrap();
        let y = avg.forward(&x).unwrap();
        let (t2, h2, w2) = (2, h / fs, w / fs);
        assert_eq!(y.dims(), &[1, t2, o, h2, w2]);
        let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let group = c * ft * fs * fs / o;
        // the input as padded: one zero frame in front
        let input = |f: usize, ch: usize, yy: usize, xx: usize| -> f32 {
            if f == 0 {
                0.0
            } else {
                values[(((f - 1) * c + ch) * h + yy) * w + xx]
            }
        };
        for tt in 0..t2 {
            for oc in 0..o {
                for yy in 0..h2 {
                    for xx in 0..w2 {
                        let mut sum = 0.0;
                        for k in oc * group..(oc + 1) * group {
                            let (ch, rest) = (k / (ft * fs * fs), k % (ft * fs * fs));
                            let (it, iy, ix) = (rest / (fs * fs), (rest / fs) % fs, rest % fs);
                            sum += input(tt * ft + it, ch, yy * fs + iy, xx * fs + ix);
                        }
                        let expected = sum / group as f32;
                        let at = ((tt * o + oc) * h2 + yy) * w2 + xx;
                        assert_eq!(got[at], expected, "t{tt} o{oc} y{yy} x{xx}");
                    }
                }
            }
        }
    }
}
