//! The text a transformer attends to, as the step loop hands it over: one or more streams, each
//! `[B, L, D]` with an optional `[B, L]` mask.
//!
//! Wan has one stream (umT5, every prompt padded to 512 tokens with zero rows, no mask);
//! HunyuanVideo 1.5 has two (Qwen2.5-VL prompt states and ByT5 glyph states, each with a mask of
//! its valid tokens). The denoiser never looks inside: it batches the prompt's context with the
//! negative prompt's once per run ([`TextContext::cat_batch`]) and passes the result to the
//! [`VelocityModel`](crate::denoise::VelocityModel), which reads the streams it expects.

use candle_core::{DType, Device, Tensor};

use crate::error::{Result, VditError};

/// One text stream.
#[derive(Debug, Clone)]
pub struct TextStream {
    /// `[B, L, D]`
    pub states: Tensor,
    /// `[B, L]`, 1 on valid tokens and 0 on padding; `None`: every token is valid.
    pub mask: Option<Tensor>,
}

/// The text of one pass: the family's streams, in the order its transformer takes them.
#[derive(Debug, Clone)]
pub struct TextContext {
    streams: Vec<TextStream>,
}

impl TextContext {
    /// One unmasked stream `[B, L, D]` (Wan's umT5 context).
    pub fn single(states: Tensor) -> Self {
        Self {
            streams: vec![TextStream { states, mask: None }],
        }
    }

    /// Several streams, each with its batch first.
    pub fn new(streams: Vec<TextStream>) -> Self {
        Self { streams }
    }

    pub fn streams(&self) -> &[TextStream] {
        &self.streams
    }

    /// Stream `index`, or an error naming what the model expected (`what`).
    pub fn stream(&self, index: usize, what: &str) -> Result<&TextStream> {
        self.streams.get(index).ok_or_else(|| {
            VditError::InvalidSetting(format!(
                "the transformer expects {what} as text stream {index}, but the context has {} stream(s)",
                self.streams.len()
            ))
        })
    }

    /// The states of a one-stream context without a mask (Wan), or an error.
    pub fn single_states(&self) -> Result<&Tensor> {
        match self.streams.as_slice() {
            [TextStream { states, mask: None }] => Ok(states),
            streams => Err(VditError::InvalidSetting(format!(
                "this transformer takes one unmasked text stream, got {} stream(s){}",
                streams.len(),
                if streams.iter().any(|s| s.mask.is_some()) {
                    " with masks"
                } else {
                    ""
                }
            ))),
        }
    }

    /// Samples in the batch (of the first stream).
    pub fn batch_size(&self) -> Result<usize> {
        match self.streams.first() {
            Some(stream) => Ok(stream.states.dim(0)?),
            None => Ok(0),
        }
    }

    /// Every tensor moved to `device`.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        let streams = self
            .streams
            .iter()
            .map(|s| {
                Ok(TextStream {
                    states: s.states.to_device(device)?,
                    mask: s.mask.as_ref().map(|m| m.to_device(device)).transpose()?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { streams })
    }

    /// `first` then `second` along the batch, stream by stream (the prompt's and the negative
    /// prompt's contexts as one batch of 2). Streams of equal length are concatenated as they
    /// are, so an unmasked context stays unmasked (Wan: exactly `Tensor::cat`). Otherwise the
    /// shorter is padded with zero rows to the longer, and the stream gets a mask (a missing
    /// mask counts as all valid; the padding is 0).
    pub fn cat_batch(first: &Self, second: &Self) -> Result<Self> {
        if first.streams.len() != second.streams.len() {
            return Err(VditError::InvalidSetting(format!(
                "cannot batch text contexts of {} and {} streams",
                first.streams.len(),
                second.streams.len()
            )));
        }
        let streams = first
            .streams
            .iter()
            .zip(&second.streams)
            .map(|(a, b)| cat_streams(a, b))
            .collect::<Result<_>>()?;
        Ok(Self { streams })
    }
}

/// Two streams of the same width as one batch (see [`TextContext::cat_batch`]).
fn cat_streams(a: &TextStream, b: &TextStream) -> Result<TextStream> {
    let (la, lb) = (a.states.dim(1)?, b.states.dim(1)?);
    if la == lb && a.mask.is_none() && b.mask.is_none() {
        return Ok(TextStream {
            states: Tensor::cat(&[&a.states, &b.states], 0)?,
            mask: None,
        });
    }
    let length = la.max(lb);
    let states = Tensor::cat(
        &[pad_rows(&a.states, length)?, pad_rows(&b.states, length)?],
        0,
    )?;
    let mask = Tensor::cat(&[padded_mask(a, length)?, padded_mask(b, length)?], 0)?;
    Ok(TextStream {
        states,
        mask: Some(mask),
    })
}

/// `[B, L, D]` → `[B, length, D]` with zero rows after the first L.
fn pad_rows(states: &Tensor, length: usize) -> Result<Tensor> {
    let (b, l, d) = states.dims3()?;
    if l == length {
        return Ok(states.clone());
    }
    let zeros = Tensor::zeros((b, length - l, d), states.dtype(), states.device())?;
    Ok(Tensor::cat(&[states, &zeros], 1)?)
}

/// The stream's mask (all ones without one) as f32 `[B, length]`, 0 on the added padding.
fn padded_mask(stream: &TextStream, length: usize) -> Result<Tensor> {
    let (b, l, _) = stream.states.dims3()?;
    let device = stream.states.device();
    let mask = match &stream.mask {
        Some(mask) => mask.to_dtype(DType::F32)?,
        None => Tensor::ones((b, l), DType::F32, device)?,
    };
    if l == length {
        return Ok(mask);
    }
    let zeros = Tensor::zeros((b, length - l), DType::F32, device)?;
    Ok(Tensor::cat(&[&mask, &zeros], 1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn unmasked_streams_of_one_length_are_concatenated_as_they_are() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::full(2f32, (1, 3, 2), &dev)?;
        let b = Tensor::full(-1f32, (1, 3, 2), &dev)?;
        let batched = TextContext::cat_batch(&TextContext::single(a), &TextContext::single(b))?;
        let states = batched.single_states()?;
        assert_eq!(states.dims(), &[2, 3, 2]);
        assert_eq!(values(states), [vec![2f32; 6], vec![-1f32; 6]].concat());
        Ok(())
    }

    #[test]
    fn streams_of_different_lengths_are_padded_and_masked() -> Result<()> {
        let dev = Device::Cpu;
        let stream = |len: usize, value: f32, mask: Option<Vec<f32>>| -> Result<TextStream> {
            Ok(TextStream {
                states: Tensor::full(value, (1, len, 1), &dev)?,
                mask: mask
                    .map(|m| Tensor::from_vec(m, (1, len), &dev))
                    .transpose()?,
            })
        };
        let first = TextContext::new(vec![
            stream(2, 1.0, Some(vec![1.0, 0.0]))?,
            stream(1, 3.0, None)?,
        ]);
        let second = TextContext::new(vec![
            stream(3, 2.0, Some(vec![1.0, 1.0, 1.0]))?,
            stream(1, 4.0, None)?,
        ]);
        let batched = TextContext::cat_batch(&first, &second)?;
        let prompt = batched.stream(0, "the prompt")?;
        assert_eq!(values(&prompt.states), [1.0, 1.0, 0.0, 2.0, 2.0, 2.0]);
        assert_eq!(
            values(prompt.mask.as_ref().unwrap()),
            [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
        );
        // Equal lengths without masks stay unmasked.
        let glyph = batched.stream(1, "the glyph text")?;
        assert!(glyph.mask.is_none());
        assert_eq!(values(&glyph.states), [3.0, 4.0]);
        assert!(batched.stream(2, "images").is_err());
        assert!(batched.single_states().is_err());
        Ok(())
    }
}
