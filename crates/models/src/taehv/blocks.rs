//! The layers of the TAEHV decoder. Every layer works on frames laid out as `[B·T, C, H, W]`
//! (batch-major), so the 2D convs see all frames of a chunk at once; only [`MemBlock`] looks
//! across time, at the frame before.

use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

use crate::error::Result;

const PAD_1: Conv2dConfig = Conv2dConfig {
    padding: 1,
    stride: 1,
    dilation: 1,
    groups: 1,
    cudnn_fwd_algo: None,
};

/// A 3×3 conv, padding 1, with bias.
pub fn conv3x3(vb: VarBuilder, c_in: usize, c_out: usize) -> Result<Conv2d> {
    Ok(candle_nn::conv2d(c_in, c_out, 3, PAD_1, vb)?)
}

/// A 3×3 conv, padding 1, without bias.
pub fn conv3x3_no_bias(vb: VarBuilder, c_in: usize, c_out: usize) -> Result<Conv2d> {
    Ok(candle_nn::conv2d_no_bias(c_in, c_out, 3, PAD_1, vb)?)
}

/// A residual block that sees each frame with the frame before it (its input at the previous
/// time step; zeros before the first): `relu(conv(relu(conv(relu(conv([x, past]))))) + x)`.
/// The decoder's MemBlocks keep their width, so the skip is the identity.
pub struct MemBlock {
    conv_a: Conv2d,
    conv_b: Conv2d,
    conv_c: Conv2d,
}

impl MemBlock {
    /// `vb` at `decoder.{i}`: `conv.0` (2c → c), `conv.2`, `conv.4` (c → c), all with bias.
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        let vb = vb.pp("conv");
        Ok(Self {
            conv_a: conv3x3(vb.pp("0"), 2 * channels, channels)?,
            conv_b: conv3x3(vb.pp("2"), channels, channels)?,
            conv_c: conv3x3(vb.pp("4"), channels, channels)?,
        })
    }

    /// `x` `[B·T, C, H, W]`; `carried` the last frame of each batch's input from the chunk
    /// before, `[B, C, H, W]` (None at the start of the video: zeros). Returns the output and the
    /// last input frame of each batch, to carry into the next chunk.
    pub fn forward(
        &self,
        x: &Tensor,
        batch: usize,
        carried: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let (bt, c, h, w) = x.dims4()?;
        let frames = bt / batch;
        let x5 = x.reshape((batch, frames, c, h, w))?;
        let first_past = match carried {
            Some(past) => past.unsqueeze(1)?,
            None => Tensor::zeros((batch, 1, c, h, w), x.dtype(), x.device())?,
        };
        // past[t] = x[t − 1]: the carried frame, then every frame but the last.
        let past = if frames > 1 {
            Tensor::cat(&[&first_past, &x5.narrow(1, 0, frames - 1)?], 1)?
        } else {
            first_past
        };
        // a compact copy: a view (or `Tensor::copy`, which clones the buffer) keeps all of x5
        let last = x5
            .narrow(1, frames - 1, 1)?
            .squeeze(1)?
            .force_contiguous()?;
        let joined = Tensor::cat(&[&x5, &past], 2)?.reshape((bt, 2 * c, h, w))?;
        let y = self.conv_a.forward(&joined)?.relu()?;
        let y = self.conv_b.forward(&y)?.relu()?;
        let y = self.conv_c.forward(&y)?;
        Ok(((y + x)?.relu()?, last))
    }
}

/// Temporal upsampling: a 1×1 conv to `stride` frames' channels, then each frame split into
/// `stride` consecutive frames (`[B·T, C, H, W]` → `[B·T·stride, C, H, W]`).
pub struct TimeGrow {
    weight: Tensor,
    stride: usize,
}

impl TimeGrow {
    /// `stored_rows` is the output-channel count of `conv.weight` in the file. A file may hold
    /// more rows than `stride · channels` (a decoder trained with more temporal upsampling
    /// here); as TAEHV's loader does, the last rows (the last time steps) are kept.
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        stride: usize,
        stored_rows: Option<usize>,
    ) -> Result<Self> {
        let rows = stride * channels;
        let stored = stored_rows.unwrap_or(rows).max(rows);
        let weight = vb.get((stored, channels, 1, 1), "conv.weight")?;
        let weight = if stored > rows {
            weight.narrow(0, stored - rows, rows)?.contiguous()?
        } else {
            weight
        };
        Ok(Self { weight, stride })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (bt, c, h, w) = x.dims4()?;
        let y = x.conv2d(&self.weight, 0, 1, 1, 1)?;
        // Channel k·C + c of frame t is channel c of frame t·stride + k: the memory order of
        // [B·T, stride·C, H, W] already is that of [B·T·stride, C, H, W].
        Ok(y.reshape((bt * self.stride, c, h, w))?)
    }
}
