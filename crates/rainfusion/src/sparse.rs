//! The one block-sparse attention entry point, dispatching on the tensors' device.

use candle_core::{Device, Tensor};

use crate::generic::block_sparse_attention_generic;
use crate::sparse_cpu::block_sparse_attention_cpu;
use crate::{BlockMask, Result};

/// Block-sparse self-attention: each query attends only to the key blocks `mask` keeps.
///
/// q, k, v: `[B, H, L, D]` → `[B, H, L, D]` in q's dtype. `mask` must cover `B × H` and
/// `ceil(L / mask.block_size)` blocks. CPU tensors run the fast CPU kernel; CUDA tensors the
/// `cuda` kernels where they apply (feature `cuda`: bf16/f16, head_dim 64/128); every other
/// case runs the generic candle-ops kernel.
pub fn block_sparse_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &BlockMask,
    scale: f64,
) -> Result<Tensor> {
    match q.device() {
        Device::Cpu => block_sparse_attention_cpu(q, k, v, mask, scale),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) if crate::cuda::is_supported(q, mask.block_size) => {
            crate::cuda::block_sparse_attention(q, k, v, mask, scale)
        }
        _ => block_sparse_attention_generic(q, k, v, mask, scale),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generic::block_sparse_attention_generic;
    use crate::reference::masked_attention_reference;
    use crate::sparse_cpu::{block_sparse_attention_cpu, dense_attention_cpu};
    use crate::{dense_attention, predict::predict_block_mask};
    use candle_core::DType;
    use rand::{Rng, SeedableRng};

    fn random(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let data: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    /// Random mask with some empty rows, some full rows, and the partial last block kept often.
    fn random_mask(b: usize, h: usize, bs: usize, blocks: usize, seed: u64) -> BlockMask {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let rows: Vec<Vec<u32>> = (0..b * h * blocks)
            .map(|r| match r % 7 {
                0 => vec![],
                1 => (0..blocks as u32).collect(),
                _ => (0..blocks as u32)
                    .filter(|_| rng.random_bool(0.4))
                    .collect(),
            })
            .collect();
        BlockMask::from_rows(b, h, bs, blocks, blocks, &rows).unwrap()
    }

    fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
        crate::reference::relative_error(a, b).unwrap()
    }

    #[test]
    fn kernels_match_the_masked_softmax_reference() {
        // 203 tokens: the last 16-token block is partial (11 tokens).
        for (bs, l, d, seed) in [
            (16, 203, 8, 1),
            (32, 203, 16, 2),
            (64, 64, 4, 3),
            (16, 9, 8, 4),
        ] {
            let (q, k, v) = (
                random((2, 3, l, d), seed),
                random((2, 3, l, d), seed + 10),
                random((2, 3, l, d), seed + 20),
            );
            let mask = random_mask(2, 3, bs, l.div_ceil(bs), seed);
            let scale = 1.0 / (d as f64).sqrt();
            let want = masked_attention_reference(&q, &k, &v, &mask, scale).unwrap();
            let cpu = block_sparse_attention_cpu(&q, &k, &v, &mask, scale).unwrap();
            let generic = block_sparse_attention_generic(&q, &k, &v, &mask, scale).unwrap();
            let (e_cpu, e_generic) = (rel_err(&cpu, &want), rel_err(&generic, &want));
            assert!(e_cpu <= 1e-5, "cpu kernel rel err {e_cpu} (bs {bs}, L {l})");
            assert!(
                e_generic <= 1e-5,
                "generic kernel rel err {e_generic} (bs {bs}, L {l})"
            );
        }
    }

    #[test]
    fn narrow_tiles_and_small_chunks_match_the_reference() {
        // 16-token blocks, 32-key tiles: rows span many tiles (online-softmax rescaling), both
        // adjacent and gathered; a 20k-element chunk bound splits the generic kernel's rows.
        let (l, d) = (203, 8);
        let (q, k, v) = (
            random((2, 2, l, d), 21),
            random((2, 2, l, d), 22),
            random((2, 2, l, d), 23),
        );
        let mask = random_mask(2, 2, 16, 13, 24);
        let want = masked_attention_reference(&q, &k, &v, &mask, 0.3).unwrap();
        let cpu = crate::sparse_cpu::block_sparse_attention_cpu_tiled(&q, &k, &v, &mask, 0.3, 32)
            .unwrap();
        let generic =
            crate::generic::block_sparse_attention_generic_chunked(&q, &k, &v, &mask, 0.3, 20_000)
                .unwrap();
        assert!(rel_err(&cpu, &want) <= 1e-5, "cpu {}", rel_err(&cpu, &want));
        assert!(
            rel_err(&generic, &want) <= 1e-5,
            "generic {}",
            rel_err(&generic, &want)
        );
    }

    #[test]
    fn long_dense_rows_span_several_full_tiles() {
        // 1100 tokens at block 64 = 18 blocks: dense rows cross three 512-key tiles.
        let (q, k, v) = (
            random((1, 1, 1100, 8), 25),
            random((1, 1, 1100, 8), 26),
            random((1, 1, 1100, 8), 27),
        );
        let plain = dense_attention(&q, &k, &v, 0.4).unwrap();
        let mask = BlockMask::dense(1, 1, 64, 18, 18);
        assert!(
            rel_err(
                &block_sparse_attention_cpu(&q, &k, &v, &mask, 0.4).unwrap(),
                &plain
            ) <= 1e-6
        );
        assert!(rel_err(&dense_attention_cpu(&q, &k, &v, 0.4).unwrap(), &plain) <= 1e-6);
    }

    #[test]
    fn empty_rows_give_zeros() {
        let (q, k, v) = (
            random((1, 1, 48, 4), 5),
            random((1, 1, 48, 4), 6),
            random((1, 1, 48, 4), 7),
        );
        let mask = BlockMask::from_rows(1, 1, 16, 3, 3, &[vec![], vec![0, 2], vec![1]]).unwrap();
        for out in [
            block_sparse_attention_cpu(&q, &k, &v, &mask, 0.5).unwrap(),
            block_sparse_attention_generic(&q, &k, &v, &mask, 0.5).unwrap(),
        ] {
            let first = out
                .narrow(2, 0, 16)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap();
            assert_eq!(first.to_scalar::<f32>().unwrap(), 0.0);
            let rest = out
                .narrow(2, 16, 32)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap();
            assert!(rest.to_scalar::<f32>().unwrap() > 0.0);
        }
    }

    #[test]
    fn half_precision_inputs_match_the_reference() {
        let (q, k, v) = (
            random((1, 2, 100, 16), 8),
            random((1, 2, 100, 16), 9),
            random((1, 2, 100, 16), 10),
        );
        let mask = predict_block_mask(&q, &k, 16, 0.5, 20).unwrap();
        for dtype in [DType::BF16, DType::F16] {
            let (qh, kh, vh) = (
                q.to_dtype(dtype).unwrap(),
                k.to_dtype(dtype).unwrap(),
                v.to_dtype(dtype).unwrap(),
            );
            // The reference sees the same rounded inputs, so only accumulation and the output
            // rounding differ.
            let want = masked_attention_reference(&qh, &kh, &vh, &mask, 0.25).unwrap();
            for out in [
                block_sparse_attention_cpu(&qh, &kh, &vh, &mask, 0.25).unwrap(),
                block_sparse_attention_generic(&qh, &kh, &vh, &mask, 0.25).unwrap(),
            ] {
                assert_eq!(out.dtype(), dtype);
                let e = rel_err(&out, &want);
                assert!(e <= 1e-2, "{dtype:?} rel err {e}");
            }
        }
    }

    #[test]
    fn all_kept_kernels_agree_with_plain_attention() {
        let (q, k, v) = (
            random((2, 2, 300, 32), 11),
            random((2, 2, 300, 32), 12),
            random((2, 2, 300, 32), 13),
        );
        let plain = dense_attention(&q, &k, &v, 0.2).unwrap();
        let mask = BlockMask::dense(2, 2, 64, 5, 5);
        for out in [
            block_sparse_attention_cpu(&q, &k, &v, &mask, 0.2).unwrap(),
            block_sparse_attention_generic(&q, &k, &v, &mask, 0.2).unwrap(),
            dense_attention_cpu(&q, &k, &v, 0.2).unwrap(),
        ] {
            let e = rel_err(&out, &plain);
            assert!(e <= 1e-6, "all-kept rel err {e}");
        }
    }

    /// The masked softmax in f64 with both the block mask and per-key flags.
    fn key_masked_reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &BlockMask,
        valid: &[u8],
        scale: f64,
    ) -> Tensor {
        let (h, l) = (q.dim(1).unwrap(), q.dim(2).unwrap());
        let bs = mask.block_size;
        crate::reference::attention_reference_where(q, k, v, scale, |bh, i, j| {
            valid[bh / h * l + j] != 0
                && mask
                    .row(bh / h, bh % h, i / bs)
                    .contains(&((j / bs) as u32))
        })
        .unwrap()
    }

    #[test]
    fn key_flags_exclude_keys_in_both_kernels() {
        // 16-token blocks, 32-key CPU tiles. Sample 0: block 0 entirely invalid (rows whose first
        // tile has no valid key), scattered holes; sample 1: only the first 20 keys valid.
        let (b, h, l, d) = (2, 2, 203, 8);
        let (q, k, v) = (
            random((b, h, l, d), 31),
            random((b, h, l, d), 32),
            random((b, h, l, d), 33),
        );
        let mut valid = vec![1u8; b * l];
        for j in 0..l {
            valid[j] = u8::from(j >= 16 && j % 5 != 2);
            valid[l + j] = u8::from(j < 20);
        }
        let mask = random_mask(b, h, 16, 13, 34);
        let want = key_masked_reference(&q, &k, &v, &mask, &valid, 0.3);
        let cpu = crate::sparse_cpu::block_sparse_attention_cpu_key_masked(
            &q, &k, &v, &mask, &valid, 0.3, 32,
        )
        .unwrap();
        let generic = crate::generic::block_sparse_attention_generic_key_masked(
            &q,
            &k,
            &v,
            &mask,
            Some(&valid),
            0.3,
            20_000,
        )
        .unwrap();
        for (name, out) in [("cpu", &cpu), ("generic", &generic)] {
            let values = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(values.iter().all(|x| x.is_finite()), "{name}: non-finite");
            let e = rel_err(out, &want);
            assert!(e <= 1e-5, "{name} rel err {e}");
        }
        let short = vec![1u8; b * l - 1];
        assert!(crate::sparse_cpu::block_sparse_attention_cpu_key_masked(
            &q, &k, &v, &mask, &short, 0.3, 32
        )
        .is_err());
    }

    #[test]
    fn mismatched_inputs_are_errors_not_panics() {
        let q = random((1, 2, 64, 8), 14);
        let short = random((1, 2, 48, 8), 15);
        let mask = BlockMask::dense(1, 2, 16, 4, 4);
        assert!(block_sparse_attention(&q, &short, &short, &mask, 1.0).is_err());
        assert!(
            block_sparse_attention(&q, &q, &q, &BlockMask::dense(1, 1, 16, 4, 4), 1.0).is_err()
        );
        assert!(
            block_sparse_attention(&q, &q, &q, &BlockMask::dense(1, 2, 16, 3, 3), 1.0).is_err()
        );
        assert!(block_sparse_attention(&q, &q, &q, &mask, 1.0).is_ok());
    }
}
