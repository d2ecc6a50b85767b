//! Fast CPU block-sparse attention: a flash-style online softmax over the kept key blocks only.
//!
//! Work is split over (batch·head, query block) with rayon. For one query block the kernel
//! walks its kept key blocks (consecutive kept blocks are merged into tiles of up to
//! [`MAX_KEYS_PER_TILE`] keys), computes the tile's scores with a single-threaded gemm, folds them
//! into a running row max / row sum (online softmax) and accumulates `P·V` in f32. Skipped
//! blocks cost nothing, so time scales with the number of kept blocks. Dense attention is the
//! same kernel with every block kept.

use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

use crate::{BlockMask, Error, Result};

/// Keys scored at once. 512 keys × 128 query rows of f32 scores = 256 KiB: stays in L2.
const MAX_KEYS_PER_TILE: usize = 512;

/// Query rows per dense-kernel tile (the block size used when no mask is given).
const DENSE_QUERY_ROWS: usize = 128;

/// Block-sparse self-attention on the CPU.
///
/// q, k, v: `[B, H, L, D]` CPU tensors of f32, bf16 or f16 → `[B, H, L, D]` in q's dtype.
/// Accumulation is f32. Query rows that keep no block produce zeros.
pub fn block_sparse_attention_cpu(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &BlockMask,
    scale: f64,
) -> Result<Tensor> {
    let (b, h, l, _) = q.dims4()?;
    crate::inputs::check_self_attention(q, k, v)?;
    mask.check_covers(b, h, l)?;
    block_sparse_attention_cpu_tiled(q, k, v, mask, scale, MAX_KEYS_PER_TILE)
}

/// [`block_sparse_attention_cpu`] with a chosen tile width (tests use narrow tiles to exercise
/// the online-softmax rescaling across tiles on small inputs).
pub(crate) fn block_sparse_attention_cpu_tiled(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &BlockMask,
    scale: f64,
    keys_per_tile: usize,
) -> Result<Tensor> {
    let (b, h, l, _) = q.dims4()?;
    crate::inputs::check_self_attention(q, k, v)?;
    mask.check_covers(b, h, l)?;
    let query_blocks = mask.query_blocks;
    run(
        q,
        k,
        v,
        mask.block_size,
        scale,
        keys_per_tile,
        None,
        |bh, qb| mask.row_at(bh * query_blocks + qb),
    )
}

/// [`block_sparse_attention_cpu`] where, on top of the block mask, key `j` of sample `b` takes
/// part only if `key_valid[b·L + j] != 0` (padded text of a joint sequence, padding tokens that
/// round a part up to whole blocks). `key_valid`: `[B, L]` flags, row-major.
///
/// Query rows whose kept keys are all invalid produce zeros.
pub(crate) fn block_sparse_attention_cpu_key_masked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &BlockMask,
    key_valid: &[u8],
    scale: f64,
    keys_per_tile: usize,
) -> Result<Tensor> {
    let (b, h, l, _) = q.dims4()?;
    crate::inputs::check_self_attention(q, k, v)?;
    mask.check_covers(b, h, l)?;
    if key_valid.len() != b * l {
        return Err(Error::InvalidConfig(format!(
            "key validity has {} flags, expected batch {b} × tokens {l}",
            key_valid.len()
        )));
    }
    let query_blocks = mask.query_blocks;
    run(
        q,
        k,
        v,
        mask.block_size,
        scale,
        keys_per_tile,
        Some(key_valid),
        |bh, qb| mask.row_at(bh * query_blocks + qb),
    )
}

/// Dense self-attention with the same kernel (every key block kept).
///
/// q, k, v: `[B, H, L, D]` CPU tensors → `[B, H, L, D]` in q's dtype.
pub fn dense_attention_cpu(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    crate::inputs::check_self_attention(q, k, v)?;
    let blocks = q.dim(2)?.div_ceil(DENSE_QUERY_ROWS);
    let all: Vec<u32> = (0..blocks as u32).collect();
    run(
        q,
        k,
        v,
        DENSE_QUERY_ROWS,
        scale,
        MAX_KEYS_PER_TILE,
        None,
        |_, _| &all[..],
    )
}

/// Shared driver: borrows f32 views of q, k, v and runs one task per (batch·head, query block).
// The kernel inputs travel separately: bundling them would only rename them at each use.
#[allow(clippy::too_many_arguments)]
fn run<'m>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    block_size: usize,
    scale: f64,
    keys_per_tile: usize,
    key_valid: Option<&[u8]>,
    kept_blocks: impl Fn(usize, usize) -> &'m [u32] + Sync,
) -> Result<Tensor> {
    let (b, h, l, d) = q.dims4()?;
    for t in [q, k, v] {
        if !matches!(t.device(), Device::Cpu) {
            return Err(Error::InvalidConfig(
                "the CPU attention kernel needs CPU tensors".into(),
            ));
        }
        if !matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16) {
            return Err(Error::InvalidConfig(format!(
                "the CPU attention kernel takes f32, bf16 or f16 inputs, not {:?}",
                t.dtype()
            )));
        }
    }
    let out_dtype = q.dtype();
    let mut out = vec![0f32; b * h * l * d];
    if !out.is_empty() {
        // Converting to f32 up front is O(L·D), negligible next to the O(L²·D) attention.
        let (q, k, v) = (as_f32(q)?, as_f32(k)?, as_f32(v)?);
        let (q_guard, q_layout) = q.storage_and_layout();
        let (k_guard, k_layout) = k.storage_and_layout();
        let (v_guard, v_layout) = v.storage_and_layout();
        let qs = cpu_f32(&q_guard, q_layout)?;
        let ks = cpu_f32(&k_guard, k_layout)?;
        let vs = cpu_f32(&v_guard, v_layout)?;
        let head_len = l * d;
        let scale = scale as f32;
        out.par_chunks_mut(head_len)
            .enumerate()
            .for_each(|(bh, out_head)| {
                let head = bh * head_len..(bh + 1) * head_len;
                let (q_head, k_head, v_head) = (&qs[head.clone()], &ks[head.clone()], &vs[head]);
                let sample = bh / h;
                let valid = key_valid.map(|flags| &flags[sample * l..(sample + 1) * l]);
                out_head
                    .par_chunks_mut(block_size * d)
                    .enumerate()
                    .for_each(|(qb, out_tile)| {
                        let start = qb * block_size * d;
                        let q_tile = &q_head[start..start + out_tile.len()];
                        let tile = KeyValues {
                            keys: k_head,
                            values: v_head,
                            head_dim: d,
                            block_size,
                            keys_per_tile,
                            valid,
                        };
                        attend_tile(q_tile, &tile, kept_blocks(bh, qb), scale, out_tile);
                    });
            });
    }
    Ok(Tensor::from_vec(out, (b, h, l, d), &Device::Cpu)?.to_dtype(out_dtype)?)
}

fn as_f32(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::F32)?.contiguous()?)
}

pub(crate) fn cpu_f32<'a>(storage: &'a Storage, layout: &candle_core::Layout) -> Result<&'a [f32]> {
    let Storage::Cpu(cpu) = storage else {
        return Err(Error::InvalidConfig(
            "the CPU attention kernel needs CPU tensors".into(),
        ));
    };
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| Error::InvalidConfig("CPU attention input is not contiguous".into()))?;
    Ok(&cpu.as_slice::<f32>()?[start..end])
}

/// One (batch, head)'s keys and values, `[L, D]` row-major each.
struct KeyValues<'a> {
    keys: &'a [f32],
    values: &'a [f32],
    head_dim: usize,
    block_size: usize,
    /// Keys scored at once (whole blocks; at least one block).
    keys_per_tile: usize,
    /// Per-key flags (`[L]`, 0 = excluded); `None` = every key takes part.
    valid: Option<&'a [u8]>,
}

/// Attention of one query tile (`rows × D`, row-major) over the kept key blocks → `out` (`rows × D`).
fn attend_tile(queries: &[f32], kv: &KeyValues<'_>, kept: &[u32], scale: f32, out: &mut [f32]) {
    let d = kv.head_dim;
    let rows = queries.len() / d;
    let tokens = kv.keys.len() / d;
    let mut scores = vec![0f32; rows * kv.keys_per_tile.max(kv.block_size)];
    let mut row_max = vec![f32::NEG_INFINITY; rows];
    let mut row_sum = vec![0f32; rows];
    out.fill(0.0);
    let blocks_per_tile = (kv.keys_per_tile / kv.block_size).max(1);
    // Kept blocks that are not adjacent are copied side by side here, so every tile has up to
    // MAX_KEYS_PER_TILE keys whatever the mask looks like (sparse rows cost the same per kept
    // block as dense ones).
    let mut gathered_keys = Vec::new();
    let mut gathered_values = Vec::new();
    let mut excluded = Vec::new();
    for group in kept.chunks(blocks_per_tile) {
        let first = group[0] as usize;
        let adjacent = group.windows(2).all(|w| w[1] == w[0] + 1);
        let block_rows =
            |kb: u32| kb as usize * kv.block_size..((kb as usize + 1) * kv.block_size).min(tokens);
        let (keys_tile, values_tile) = if adjacent {
            let rows_range = first * kv.block_size * d..block_rows(group[group.len() - 1]).end * d;
            (&kv.keys[rows_range.clone()], &kv.values[rows_range])
        } else {
            gathered_keys.clear();
            gathered_values.clear();
            for &kb in group {
                let range = block_rows(kb);
                gathered_keys.extend_from_slice(&kv.keys[range.start * d..range.end * d]);
                gathered_values.extend_from_slice(&kv.values[range.start * d..range.end * d]);
            }
            (&gathered_keys[..], &gathered_values[..])
        };
        let keys = keys_tile.len() / d;
        let tile_scores = &mut scores[..rows * keys];
        // tile_scores[r, j] = scale · q_r · k_j   ([rows, keys], row stride `keys`)
        // SAFETY: lhs is `rows × d` row-major inside `queries`; rhs reads `keys_tile`
        // (`keys × d` row-major) as a `d × keys` matrix with column stride `d`; dst is
        // `rows × keys` row-major inside `tile_scores`. All in bounds.
        unsafe {
            gemm::gemm(
                rows,
                keys,
                d,
                tile_scores.as_mut_ptr(),
                1,
                keys as isize,
                false,
                queries.as_ptr(),
                1,
                d as isize,
                keys_tile.as_ptr(),
                d as isize,
                1,
                0.0f32,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        if let Some(valid) = kv.valid {
            // Tile column of every excluded key (the tile holds the group's blocks in order).
            excluded.clear();
            let mut column = 0;
            for &kb in group {
                for token in block_rows(kb) {
                    if valid[token] == 0 {
                        excluded.push(column);
                    }
                    column += 1;
                }
            }
            if !excluded.is_empty() {
                for row in tile_scores.chunks_exact_mut(keys) {
                    excluded.iter().for_each(|&j| row[j] = f32::NEG_INFINITY);
                }
            }
        }
        for r in 0..rows {
            let row = &mut tile_scores[r * keys..(r + 1) * keys];
            let new_max = row_max[r].max(max_of(row));
            if new_max == f32::NEG_INFINITY {
                // No valid key for this row yet: nothing to add (and −∞ − −∞ would be NaN).
                row.fill(0.0);
                continue;
            }
            // exp(−∞) = 0 on the first tile: the empty accumulator is scaled by 0.
            let correction = (row_max[r] - new_max).exp();
            let tile_sum = exp_shifted_in_place(row, new_max);
            row_sum[r] = row_sum[r] * correction + tile_sum;
            row_max[r] = new_max;
            if correction != 1.0 {
                out[r * d..(r + 1) * d]
                    .iter_mut()
                    .for_each(|o| *o *= correction);
            }
        }
        // out += P · V_tile   ([rows, keys] · [keys, d])
        // SAFETY: lhs is the `rows × keys` probabilities just written; rhs is `values_tile`
        // (`keys × d` row-major); dst is `out`, `rows × d`.
        unsafe {
            gemm::gemm(
                rows,
                d,
                keys,
                out.as_mut_ptr(),
                1,
                d as isize,
                true,
                tile_scores.as_ptr(),
                1,
                keys as isize,
                values_tile.as_ptr(),
                1,
                d as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
    for (r, out_row) in out.chunks_exact_mut(d).enumerate() {
        let inv = if row_sum[r] > 0.0 {
            1.0 / row_sum[r]
        } else {
            0.0
        };
        out_row.iter_mut().for_each(|o| *o *= inv);
    }
}

/// Largest element (8 independent lanes so the loop vectorises).
pub(crate) fn max_of(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = m.max(x);
        }
    }
    rest.iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

/// `x ← exp(x − shift)` for every element; returns the sum of the results.
pub(crate) fn exp_shifted_in_place(xs: &mut [f32], shift: f32) -> f32 {
    for x in xs.iter_mut() {
        *x = exp_nonpositive(*x - shift);
    }
    let mut lanes = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (s, &x) in lanes.iter_mut().zip(c) {
            *s += x;
        }
    }
    rest.iter().sum::<f32>() + lanes.iter().sum::<f32>()
}

/// `exp(x)` for `x ≤ 0` (shifted scores), branch-free so it vectorises; within ~2 ulp of the
/// true value, and exactly 0 below −87 where f32 would go subnormal.
///
/// Cephes-style: `exp(x) = 2ⁿ · exp(r)` with `n = round(x·log₂e)`, `r = x − n·ln2` in
/// `[−ln2/2, ln2/2]`, and a degree-6 polynomial for `exp(r)`.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding then subtracting 1.5·2²³ rounds to the nearest integer in f32 arithmetic.
    const ROUND: f32 = 12_582_912.0;
    let clamped = if x < -87.0 { -87.0 } else { x };
    let n = (clamped * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let exp_r = p * r * r + r + 1.0;
    let two_to_n = f32::from_bits(((n as i32 + 127) << 23) as u32);
    if x < -87.0 {
        0.0
    } else {
        exp_r * two_to_n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_f64_exp() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -90.0 * i as f32 / 200_000.0;
            let want = (x as f64).exp();
            let got = exp_nonpositive(x) as f64;
            if x >= -87.0 {
                worst = worst.max((got - want).abs() / want);
            } else {
                assert_eq!(got, 0.0);
            }
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }

    #[test]
    fn lane_reductions_match_plain_folds() {
        let xs: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 101) as f32 / 10.0 - 5.0)
            .collect();
        assert_eq!(
            max_of(&xs),
            xs.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
        );
        let mut ys = xs.clone();
        let sum = exp_shifted_in_place(&mut ys, 5.0);
        let want: f64 = xs.iter().map(|&x| ((x - 5.0) as f64).exp()).sum();
        assert!((sum as f64 - want).abs() / want < 1e-6);
    }
}
