//! RainFusion 2.0 mask prediction: which key blocks each query block keeps.
//!
//! Each block is represented by the mean of its queries (or keys); the pooled dot product,
//! scaled by 1/√d, scores every block pair; each query block keeps its top
//! `ceil(key_blocks · (1 − sparsity))` key blocks, ties included. The dense tail (first-frame
//! sink and text, see [`crate::layout`]) is forced: its rows keep everything and every row keeps
//! its columns. One mask per (batch, head): the public code's shortcut of reusing batch element
//! 0's mask for the whole batch (both classifier-free-guidance halves) is deliberately not copied.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use crate::{BlockMask, Error, Result};

/// Mean of every run of `block_size` consecutive tokens.
///
/// x: `[B, H, L, D]` → `[B, H, ceil(L / block_size), D]` f32. A trailing partial block is
/// averaged over its real tokens only (no zero padding in the mean).
pub fn block_means(x: &Tensor, block_size: usize) -> Result<Tensor> {
    let (_, _, l, _) = x.dims4()?;
    if block_size == 0 || l == 0 {
        return Err(Error::InvalidConfig(format!(
            "cannot pool {l} tokens into blocks of {block_size}"
        )));
    }
    if x.device().is_cpu() {
        block_means_cpu(x, block_size)
    } else {
        block_means_candle(x, block_size)
    }
}

/// One pass over the data with rayon across (batch, head): candle's strided reduction over the
/// block axis costs several times more on the CPU, and mask prediction must stay a few percent
/// of the sparse attention it saves.
fn block_means_cpu(x: &Tensor, block_size: usize) -> Result<Tensor> {
    let (b, h, l, d) = x.dims4()?;
    let blocks = l.div_ceil(block_size);
    let mut out = vec![0f32; b * h * blocks * d];
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let (guard, layout) = x.storage_and_layout();
    let data = crate::sparse_cpu::cpu_f32(&guard, layout)?;
    if d > 0 {
        out.par_chunks_mut(blocks * d)
            .enumerate()
            .for_each(|(bh, out_head)| {
                let head = &data[bh * l * d..(bh + 1) * l * d];
                for (blk, mean) in out_head.chunks_mut(d).enumerate() {
                    let tokens = &head[blk * block_size * d..((blk + 1) * block_size).min(l) * d];
                    for token in tokens.chunks_exact(d) {
                        mean.iter_mut().zip(token).for_each(|(m, &t)| *m += t);
                    }
                    let inv = 1.0 / (tokens.len() / d) as f32;
                    mean.iter_mut().for_each(|m| *m *= inv);
                }
            });
    }
    drop(guard);
    Ok(Tensor::from_vec(
        out,
        (b, h, blocks, d),
        &candle_core::Device::Cpu,
    )?)
}

/// Candle-ops pooling for every other device.
pub(crate) fn block_means_candle(x: &Tensor, block_size: usize) -> Result<Tensor> {
    let (b, h, l, d) = x.dims4()?;
    let x = x.to_dtype(DType::F32)?;
    let full = l / block_size;
    let rest = l - full * block_size;
    let mut parts = Vec::with_capacity(2);
    if full > 0 {
        let body = x
            .narrow(2, 0, full * block_size)?
            .reshape((b, h, full, block_size, d))?;
        parts.push((body.sum(3)? / block_size as f64)?);
    }
    if rest > 0 {
        let tail = x.narrow(2, full * block_size, rest)?.sum_keepdim(2)?;
        parts.push((tail / rest as f64)?);
    }
    Ok(Tensor::cat(&parts, 2)?)
}

/// Key blocks a query row keeps at `sparsity`: `ceil(key_blocks · (1 − sparsity))`, at least 1.
///
/// A tiny tolerance keeps float noise from rounding up (`10 · (1 − 0.7)` is `3.0000000000000004`).
pub fn kept_per_row(key_blocks: usize, sparsity: f64) -> usize {
    let exact = key_blocks as f64 * (1.0 - sparsity);
    ((exact - 1e-9).ceil().max(1.0) as usize).min(key_blocks)
}

/// Predicts one block mask per (batch, head) for self-attention over permuted q and k.
///
/// q, k: `[B, H, L, D]` in permuted token order; the last `dense_tail_tokens` tokens are forced
/// dense (every block touching them keeps, and is kept by, every block).
pub fn predict_block_mask(
    q: &Tensor,
    k: &Tensor,
    block_size: usize,
    sparsity: f64,
    dense_tail_tokens: usize,
) -> Result<BlockMask> {
    let (b, h, l, d) = q.dims4()?;
    if k.dims4()? != (b, h, l, d) {
        return Err(Error::ShapeMismatch {
            q: q.shape().clone(),
            k: k.shape().clone(),
            v: k.shape().clone(),
        });
    }
    if !(0.0..1.0).contains(&sparsity) {
        return Err(Error::InvalidConfig(format!(
            "sparsity {sparsity} is outside [0, 1)"
        )));
    }
    let blocks = l.div_ceil(block_size.max(1));
    let q_means = block_means(q, block_size)?; // [B,H,nb,D]
    let k_means = block_means(k, block_size)?;
    let scores = (q_means.matmul(&k_means.t()?.contiguous()?)? / (d as f64).sqrt())?; // [B,H,nb,nb]
    let scores = scores.reshape((b * h * blocks, blocks))?.to_vec2::<f32>()?;
    let first_forced = forced_from_block(l, block_size, dense_tail_tokens);
    let keep = kept_per_row(blocks, sparsity);

    // Selection per (batch, head) in parallel: at 720p with 40 heads and CFG that is ~47k rows
    // of ~600 scores each.
    let per_head: Vec<(Vec<u32>, Vec<u32>)> = scores
        .par_chunks(blocks)
        .map(|head_rows| {
            let mut scratch = Vec::with_capacity(blocks);
            let mut indices = Vec::with_capacity(blocks * keep);
            let mut row_lengths = Vec::with_capacity(blocks);
            for (query_block, row) in head_rows.iter().enumerate() {
                let start = indices.len();
                if query_block >= first_forced {
                    indices.extend(0..blocks as u32);
                } else {
                    let threshold = kth_largest(row, keep, &mut scratch);
                    indices.extend(
                        (0..blocks)
                            .filter(|&kb| {
                                kb >= first_forced || row[kb].total_cmp(&threshold).is_ge()
                            })
                            .map(|kb| kb as u32),
                    );
                }
                row_lengths.push((indices.len() - start) as u32);
            }
            (indices, row_lengths)
        })
        .collect();
    let mut offsets = Vec::with_capacity(scores.len() + 1);
    let mut indices = Vec::with_capacity(per_head.iter().map(|(i, _)| i.len()).sum());
    offsets.push(0u32);
    for (head_indices, row_lengths) in per_head {
        for len in row_lengths {
            offsets.push(offsets[offsets.len() - 1] + len);
        }
        indices.extend(head_indices);
    }
    BlockMask::from_csr(b, h, block_size, blocks, blocks, offsets, indices)
}

/// First block that overlaps the dense tail of the sequence (`blocks` when there is none).
pub fn forced_from_block(tokens: usize, block_size: usize, dense_tail_tokens: usize) -> usize {
    let blocks = tokens.div_ceil(block_size.max(1));
    if dense_tail_tokens == 0 {
        blocks
    } else {
        tokens.saturating_sub(dense_tail_tokens) / block_size.max(1)
    }
}

/// The `keep`-th largest value of `row` (1-based), under f32's total order.
fn kth_largest(row: &[f32], keep: usize, scratch: &mut Vec<f32>) -> f32 {
    scratch.clear();
    scratch.extend_from_slice(row);
    let (_, kth, _) = scratch.select_nth_unstable_by(keep - 1, |a, b| b.total_cmp(a));
    *kth
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn random(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let data: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn block_means_average_partial_blocks_over_their_real_length() {
        let x = random((2, 3, 37, 5), 1);
        let means = block_means(&x, 16).unwrap();
        assert_eq!(means.dims4().unwrap(), (2, 3, 3, 5));
        let flat = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = means.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for bh in 0..6 {
            for blk in 0..3 {
                let (start, end) = (blk * 16, ((blk + 1) * 16).min(37));
                for c in 0..5 {
                    let sum: f32 = (start..end).map(|t| flat[(bh * 37 + t) * 5 + c]).sum();
                    let want = sum / (end - start) as f32;
                    let have = got[(bh * 3 + blk) * 5 + c];
                    assert!((want - have).abs() < 1e-6, "{want} vs {have}");
                }
            }
        }
    }

    #[test]
    fn candle_pooling_matches_cpu_pooling() {
        let x = random((2, 3, 37, 5), 11);
        let cpu = block_means(&x, 16)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let candle = block_means_candle(&x, 16)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(cpu.iter().zip(&candle).all(|(a, b)| (a - b).abs() < 1e-6));
    }

    #[test]
    fn kept_per_row_rounds_up_without_float_noise() {
        assert_eq!(kept_per_row(10, 0.7), 3);
        assert_eq!(kept_per_row(10, 0.75), 3);
        assert_eq!(kept_per_row(42, 0.8), 9);
        assert_eq!(kept_per_row(42, 0.0), 42);
        assert_eq!(kept_per_row(5, 0.99), 1);
    }

    /// Scores computed the slow way, for checking selection.
    fn pooled_scores(q: &Tensor, k: &Tensor, bs: usize) -> Vec<Vec<f32>> {
        let d = q.dim(3).unwrap();
        let qm = block_means(q, bs).unwrap();
        let km = block_means(k, bs).unwrap();
        let s = (qm.matmul(&km.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
        let nb = s.dim(2).unwrap();
        s.reshape(((), nb)).unwrap().to_vec2().unwrap()
    }

    #[test]
    fn each_row_keeps_its_top_scoring_blocks() {
        let (q, k) = (random((2, 2, 300, 8), 2), random((2, 2, 300, 8), 3));
        let mask = predict_block_mask(&q, &k, 16, 0.7, 0).unwrap();
        let scores = pooled_scores(&q, &k, 16);
        let nb = 19;
        assert_eq!(mask.query_blocks, nb);
        assert_eq!(scores[0].len(), nb);
        let keep = kept_per_row(nb, 0.7);
        for (r, row_scores) in scores.iter().enumerate() {
            let kept = mask.row_at(r);
            assert_eq!(kept.len(), keep, "random scores have no ties");
            let weakest_kept = kept
                .iter()
                .map(|&j| row_scores[j as usize])
                .fold(f32::INFINITY, f32::min);
            for (j, &score) in row_scores.iter().enumerate() {
                if !kept.contains(&(j as u32)) {
                    assert!(score < weakest_kept);
                }
            }
        }
    }

    #[test]
    fn ties_at_the_threshold_are_all_kept() {
        // Every key block has the same mean, so every score ties: all blocks are kept.
        let q = random((1, 1, 64, 4), 4);
        let k = Tensor::ones((1, 1, 64, 4), DType::F32, &Device::Cpu).unwrap();
        let mask = predict_block_mask(&q, &k, 16, 0.75, 0).unwrap();
        assert!(mask.is_dense());
    }

    #[test]
    fn dense_tail_forces_rows_and_columns() {
        let (q, k) = (random((1, 2, 200, 8), 5), random((1, 2, 200, 8), 6));
        // Tail of 40 tokens starts at token 160 = block 10 of 13 (16-token blocks).
        let mask = predict_block_mask(&q, &k, 16, 0.9, 40).unwrap();
        assert_eq!(forced_from_block(200, 16, 40), 10);
        for h in 0..2 {
            for qb in 0..13 {
                let row = mask.row(0, h, qb);
                if qb >= 10 {
                    assert_eq!(row.len(), 13);
                } else {
                    assert!([10, 11, 12].iter().all(|kb| row.contains(kb)));
                    assert!(row.len() <= kept_per_row(13, 0.9) + 3);
                }
            }
        }
    }

    #[test]
    fn every_batch_element_and_head_gets_its_own_mask() {
        let (q, k) = (random((2, 3, 256, 8), 7), random((2, 3, 256, 8), 8));
        let mask = predict_block_mask(&q, &k, 32, 0.75, 0).unwrap();
        for b in 0..2 {
            for h in 0..3 {
                let qs = q.narrow(0, b, 1).unwrap().narrow(1, h, 1).unwrap();
                let ks = k.narrow(0, b, 1).unwrap().narrow(1, h, 1).unwrap();
                let alone = predict_block_mask(&qs, &ks, 32, 0.75, 0).unwrap();
                for qb in 0..8 {
                    assert_eq!(mask.row(b, h, qb), alone.row(0, 0, qb));
                }
            }
        }
        let differs = (0..8).any(|qb| mask.row(0, 0, qb) != mask.row(1, 0, qb));
        assert!(
            differs,
            "different data must be able to give different masks"
        );
    }

    #[test]
    fn bad_sparsity_is_an_error() {
        let q = random((1, 1, 32, 4), 9);
        assert!(predict_block_mask(&q, &q, 16, 1.0, 0).is_err());
        assert!(predict_block_mask(&q, &q, 16, -0.1, 0).is_err());
        assert!(predict_block_mask(&q, &q, 16, f64::NAN, 0).is_err());
    }
}
