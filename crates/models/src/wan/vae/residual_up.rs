//! Wan2.2's residual up block: the Wan2.1 up block (residual blocks, then an upsampler that keeps
//! the width) plus a shortcut around the whole block that has no parameters: every input channel
//! is duplicated into output channels and space-time phases (diffusers' `DupUp3D`).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::blocks::{ResidualBlock, Upsample};
use super::layers::{stage, FeatureCache, SlotCounter};
use crate::error::{ModelError, Result};
use crate::profile::span;

/// The parameter-free shortcut: `[B, T, C_in, H, W]` → `[B, T·f_t, C_out, H·f_s, W·f_s]`.
///
/// Each input channel is repeated `r = C_out·f_t·f_s² / C_in` times; the repeated channels, read
/// as (output channel, time phase, row phase, column phase), are moved to those positions. On the
/// first latent frame of a stream the first `f_t − 1` frames are dropped, as the upsampler keeps
/// the first frame single.
#[derive(Debug, Clone)]
pub struct DupUp3d {
    out_dim: usize,
    factor_t: usize,
    factor_s: usize,
    repeats: usize,
}

impl DupUp3d {
    pub fn new(in_dim: usize, out_dim: usize, factor_t: usize, factor_s: usize) -> Result<Self> {
        let expanded = out_dim * factor_t * factor_s * factor_s;
        if in_dim == 0 || !expanded.is_multiple_of(in_dim) {
            return Err(ModelError::Config {
                path: "WanVaeConfig".into(),
                reason: format!(
                    "residual up block {in_dim} → {out_dim} channels: {expanded} duplicated \
                     channels are not a multiple of {in_dim}"
                ),
            });
        }
        Ok(Self {
            out_dim,
            factor_t,
            factor_s,
            repeats: expanded / in_dim,
        })
    }

    pub fn forward(&self, x: &Tensor, first_chunk: bool) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        let (o, ft, fs, r) = (self.out_dim, self.factor_t, self.factor_s, self.repeats);
        // channel k of the repeated stack is input channel k / r; k = ((o·f_t + i_t)·f_s + i_y)·f_s + i_x
        let repeated = x
            .unsqueeze(3)?
            .broadcast_as((b, t, c, r, h, w))?
            .contiguous()?
            .reshape(vec![b * t, o, ft, fs, fs, h, w])?;
        // → [B·T, f_t, O, H, f_s(y), W, f_s(x)]
        let y = repeated
            .permute([0, 2, 1, 5, 3, 6, 4])?
            .contiguous()?
            .reshape((b, t * ft, o, h * fs, w * fs))?;
        Ok(if first_chunk && ft > 1 {
            y.narrow(1, ft - 1, t * ft - (ft - 1))?
        } else {
            y
        })
    }
}

/// Residual blocks, an optional width-keeping upsampler, and the [`DupUp3d`] shortcut around them
/// (present exactly when the block upsamples).
#[derive(Debug, Clone)]
pub struct ResidualUpBlock {
    resnets: Vec<ResidualBlock>,
    upsampler: Option<Upsample>,
    shortcut: Option<DupUp3d>,
}

impl ResidualUpBlock {
    /// `vb` at `decoder.up_blocks.{i}`. `upsample`: None for the last block, else whether it
    /// doubles time too. `level`: resolution level of the input, for profiles.
    pub fn new(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        num_res_blocks: usize,
        upsample: Option<bool>,
        level: usize,
        slots: &mut SlotCounter,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(num_res_blocks + 1);
        let mut dim = in_dim;
        for r in 0..=num_res_blocks {
            resnets.push(ResidualBlock::new(
                vb.pp(format!("resnets.{r}")),
                dim,
                out_dim,
                level,
                slots,
            )?);
            dim = out_dim;
        }
        let (upsampler, shortcut) = match upsample {
            Some(temporal) => (
                Some(Upsample::new(
                    vb.pp("upsampler"),
                    out_dim,
                    out_dim,
                    temporal,
                    level,
                    slots,
                )?),
                Some(DupUp3d::new(
                    in_dim,
                    out_dim,
                    if temporal { 2 } else { 1 },
                    2,
                )?),
            ),
            None => (None, None),
        };
        Ok(Self {
            resnets,
            upsampler,
            shortcut,
        })
    }

    /// `[B, T, C_in, H, W]` → `[B, T', C_out, 2H, 2W]` (or the same size for the last block).
    /// `first_chunk`: x holds the first latent frame of the stream.
    pub fn forward(
        &self,
        x: &Tensor,
        cache: &mut FeatureCache,
        first_chunk: bool,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for resnet in &self.resnets {
            h = resnet.forward(&h, cache)?;
        }
        if let Some(upsampler) = &self.upsampler {
            h = upsampler.forward(&h, cache)?;
        }
        match &self.shortcut {
            Some(shortcut) => {
                let dev = x.device();
                let skip = span(stage::UPSAMPLE_SPATIAL, dev, || {
                    shortcut.forward(x, first_chunk)
                })?;
                span(stage::RESIDUAL_ADD, dev, || Ok((h + skip)?))
            }
            None => Ok(h),
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::DupUp3d;

    /// Every output element is the input channel its repeated index names (diffusers' DupUp3D).
    #[test]
    fn duplicates_into_the_named_phases() {
        let (c, o, ft, fs, t, h, w) = (4usize, 2usize, 2usize, 2usize, 2usize, 1usize, 2usize);
        // value = channel·100 + frame·10 + column
        let values: Vec<f32> = (0..t)
            .flat_map(|f| {
                (0..c).flat_map(move |ch| (0..h * w).map(move |x| (ch * 100 + f * 10 + x) as f32))
            })
            .collect();
        let x = Tensor::from_vec(values, (1, t, c, h, w), &Device::Cpu).unwrap();
        let dup = DupUp3d::new(c, o, ft, fs).unwrap();
        let repeats = o * ft * fs * fs / c;
        let y = dup.forward(&x, false).unwrap();
        assert_eq!(y.dims(), &[1, t * ft, o, h * fs, w * fs]);
        let flat = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for frame in 0..t * ft {
            for oc in 0..o {
                for row in 0..h * fs {
                    for col in 0..w * fs {
                        let k = ((oc * ft + frame % ft) * fs + row % fs) * fs + col % fs;
                        let source = k / repeats;
                        let expected = (source * 100 + (frame / ft) * 10 + col / fs) as f32;
                        let index = ((frame * o + oc) * h * fs + row) * w * fs + col;
                        assert_eq!(flat[index], expected, "f{frame} o{oc} y{row} x{col}");
                    }
                }
            }
        }
        // first chunk: the first f_t − 1 frames are dropped
        let first = dup.forward(&x.narrow(1, 0, 1).unwrap(), true).unwrap();
        assert_eq!(first.dims(), &[1, 1, o, h * fs, w * fs]);
        let second_phase = y.narrow(1, 1, 1).unwrap();
        let diff = (first - second_phase)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);
    }
}
