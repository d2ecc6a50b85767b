//! Packing the valid text-side tokens of each sample to the front, as the reference does before
//! the blocks ("valid image, valid ByT5, valid prompt, then the padding").
//!
//! No position embedding reaches the text tokens, and a padded key gets zero attention weight, so
//! dropping the padding changes nothing that a valid token sees. vdit therefore keeps only the
//! columns some sample needs: each sample's valid rows first, zero rows after, to the longest
//! sample's count, with a validity mask only when the counts differ. A batch of one (or of equal
//! counts) then needs no mask at all, and the blocks attend over `Lv + valid` tokens instead of
//! `Lv + 1000 + 256 + 729` at the real padding.

use candle_core::{DType, Tensor};

use crate::error::{ModelError, Result};

/// For each sample of a `[B, L]` mask (any dtype, non-zero = valid), the indices of its valid
/// positions, in order.
pub(crate) fn valid_positions(mask: &Tensor) -> Result<Vec<Vec<u32>>> {
    let rows: Vec<Vec<f32>> = mask.to_dtype(DType::F32)?.to_vec2()?;
    Ok(rows
        .iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .filter(|(_, &v)| v != 0.0)
                .map(|(i, _)| i as u32)
                .collect()
        })
        .collect())
}

/// Which rows of one stream `[B, L, C]` each sample keeps.
pub(crate) struct Rows<'a> {
    pub tokens: &'a Tensor,
    /// Per sample, the row indices to keep, in order.
    pub keep: &'a [Vec<u32>],
}

/// Tokens of several streams packed per sample: `[B, W, C]` with sample b's kept rows of every
/// stream first (in stream order) and zero rows after, W the largest count.
pub(crate) struct Packed {
    pub tokens: Tensor,
    /// `[B, W]` f32, 1 on kept rows and 0 on padding; `None` when no sample has padding.
    pub valid: Option<Tensor>,
    /// Kept rows per sample.
    pub counts: Vec<usize>,
}

/// Packs `streams` (each `[B, L_s, C]`, same B and C) per sample; see [`Packed`].
pub(crate) fn pack(streams: &[Rows]) -> Result<Packed> {
    let first = streams
        .first()
        .ok_or_else(|| ModelError::InvalidInput("no token stream to pack".into()))?;
    let (batch, _, channels) = first.tokens.dims3()?;
    let device = first.tokens.device();
    let dtype = first.tokens.dtype();
    let counts: Vec<usize> = (0..batch)
        .map(|b| streams.iter().map(|s| s.keep[b].len()).sum())
        .collect();
    let width = counts.iter().copied().max().unwrap_or(0);
    let mut samples = Vec::with_capacity(batch);
    for (b, &count) in counts.iter().enumerate() {
        let mut pieces = Vec::with_capacity(streams.len() + 1);
        for stream in streams {
            let keep = &stream.keep[b];
            if keep.is_empty() {
                continue;
            }
            let ids = Tensor::from_vec(keep.clone(), keep.len(), device)?;
            pieces.push(stream.tokens.get(b)?.index_select(&ids, 0)?);
        }
        if count < width {
            pieces.push(Tensor::zeros((width - count, channels), dtype, device)?);
        }
        samples.push(Tensor::cat(&pieces, 0)?);
    }
    let tokens = Tensor::stack(&samples, 0)?;
    let valid = if counts.iter().all(|&c| c == width) {
        None
    } else {
        let flags: Vec<f32> = counts
            .iter()
            .flat_map(|&c| (0..width).map(move |i| if i < c { 1.0 } else { 0.0 }))
            .collect();
        Some(Tensor::from_vec(flags, (batch, width), device)?)
    };
    Ok(Packed {
        tokens,
        valid,
        counts,
    })
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn valid_rows_go_first_in_stream_order_and_padding_is_masked() {
        let dev = Device::Cpu;
        // Stream a: [2, 3, 1] = values 0..6; stream b: [2, 2, 1] = 10..14.
        let a = Tensor::arange(0f32, 6.0, &dev)
            .unwrap()
            .reshape((2, 3, 1))
            .unwrap();
        let b = Tensor::arange(10f32, 14.0, &dev)
            .unwrap()
            .reshape((2, 2, 1))
            .unwrap();
        let mask_a = Tensor::new(&[[1f32, 0., 1.], [0., 1., 0.]], &dev).unwrap();
        let keep_a = valid_positions(&mask_a).unwrap();
        assert_eq!(keep_a, vec![vec![0, 2], vec![1]]);
        let keep_b = vec![vec![1], vec![]];
        let packed = pack(&[
            Rows {
                tokens: &a,
                keep: &keep_a,
            },
            Rows {
                tokens: &b,
                keep: &keep_b,
            },
        ])
        .unwrap();
        assert_eq!(packed.counts, vec![3, 1]);
        let tokens: Vec<Vec<f32>> = packed.tokens.squeeze(2).unwrap().to_vec2().unwrap();
        assert_eq!(tokens, vec![vec![0., 2., 11.], vec![4., 0., 0.]]);
        let valid: Vec<Vec<f32>> = packed.valid.unwrap().to_vec2().unwrap();
        assert_eq!(valid, vec![vec![1., 1., 1.], vec![1., 0., 0.]]);

        let full = vec![vec![0, 1, 2], vec![0, 1, 2]];
        let unmasked = pack(&[Rows {
            tokens: &a,
            keep: &full,
        }])
        .unwrap();
        assert!(unmasked.valid.is_none());
    }
}
