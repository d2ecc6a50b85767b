//! Block-sparse attention from candle tensor ops only, so it runs unchanged on every backend
//! (CPU, CUDA, Metal).
//!
//! Rows (batch, head, query block) are sorted by how many key blocks they keep and processed in
//! chunks. A chunk gathers, for each of its rows, the row's kept key/value blocks (padding rows
//! with fewer blocks up to the chunk's largest count, padded slots masked with −∞), then does
//! matmul, softmax and matmul as batched ops. Chunks are bounded so neither the gathered K/V nor
//! the scores exceed [`MAX_CHUNK_ELEMENTS`].

use candle_core::{DType, Tensor, D};

use crate::{BlockMask, Result};

/// Largest number of gathered K (or score) elements per chunk: 2^26 f32 = 256 MiB.
const MAX_CHUNK_ELEMENTS: usize = 1 << 26;

/// Block-sparse self-attention built from candle ops.
///
/// q, k, v: `[B, H, L, D]` → `[B, H, L, D]` in q's dtype; scores and softmax in f32.
/// Query rows that keep no block produce zeros.
pub fn block_sparse_attention_generic(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &BlockMask,
    scale: f64,
) -> Result<Tensor> {
    block_sparse_attention_generic_chunked(q, k, v, mask, scale, MAX_CHUNK_ELEMENTS)
}

/// [`block_sparse_attention_generic`] with a chosen chunk bound (tests use small bounds to run
/// many chunks on small inputs).
pub(crate) fn block_sparse_attention_generic_chunked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &BlockMask,
    scale: f64,
    max_chunk_elements: usize,
) -> Result<Tensor> {
    block_sparse_attention_generic_key_masked(q, k, v, mask, None, scale, max_chunk_elements)
}

/// [`block_sparse_attention_generic`] where, on top of the block mask, key `j` of sample `b`
/// takes part only if `key_valid[b·L + j] != 0` (`[B, L]` flags, row-major; `None` = all valid).
/// Query rows whose kept keys are all invalid produce zeros.
pub(crate) fn block_sparse_attention_generic_key_masked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &BlockMask,
    key_valid: Option<&[u8]>,
    scale: f64,
    max_chunk_elements: usize,
) -> Result<Tensor> {
    let (b, h, l, d) = q.dims4()?;
    crate::inputs::check_self_attention(q, k, v)?;
    mask.check_covers(b, h, l)?;
    if key_valid.is_some_and(|flags| flags.len() != b * l) {
        return Err(crate::Error::InvalidConfig(format!(
            "key validity has {} flags, expected batch {b} × tokens {l}",
            key_valid.map_or(0, |f| f.len())
        )));
    }
    let device = q.device();
    let out_dtype = q.dtype();
    let bs = mask.block_size;
    let blocks = mask.query_blocks;
    let padded = blocks * bs;
    let rows = mask.num_rows();
    if rows == 0 || d == 0 {
        return Ok(q.zeros_like()?);
    }

    // [B·H·blocks, bs, D] tables of blocks, zero-padded past the last real token.
    let block_table = |x: &Tensor, factor: f64| -> Result<Tensor> {
        let mut x = (x.to_dtype(DType::F32)? * factor)?;
        if padded > l {
            let pad = Tensor::zeros((b, h, padded - l, d), DType::F32, device)?;
            x = Tensor::cat(&[&x, &pad], 2)?;
        }
        Ok(x.reshape((rows, bs, d))?.contiguous()?)
    };
    let queries = block_table(q, scale)?;
    let keys = block_table(k, 1.0)?;
    let values = block_table(v, 1.0)?;
    // [blocks, bs] (or [B·blocks, bs] with per-sample key flags) additive bias per key block:
    // 0 on real valid tokens, −∞ on the padding past the last one and on invalid keys. Built
    // once on the device; chunks gather rows of it by block index, so only O(rows · slots)
    // numbers cross from the host per chunk.
    let bias_samples = if key_valid.is_some() { b } else { 1 };
    let token_bias: Vec<f32> = (0..bias_samples * padded)
        .map(|i| {
            let (sample, t) = (i / padded, i % padded);
            let valid = t < l && key_valid.is_none_or(|flags| flags[sample * l + t] != 0);
            if valid {
                0.0
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    let token_bias = Tensor::from_vec(token_bias, (bias_samples * blocks, bs), device)?;
    let per_sample_bias = key_valid.is_some();

    let mut order: Vec<usize> = (0..rows).collect();
    order.sort_by_key(|&r| mask.row_at(r).len());
    let empty = order
        .iter()
        .take_while(|&&r| mask.row_at(r).is_empty())
        .count();

    let mut pieces = Vec::new();
    if empty > 0 {
        pieces.push(Tensor::zeros((empty, bs, d), DType::F32, device)?);
    }
    let mut start = empty;
    while start < rows {
        // Rows are sorted by count: a chunk's largest count is its last row's.
        let mut end = start + 1;
        while end < rows {
            let widest = mask.row_at(order[end]).len();
            if (end + 1 - start) * widest * bs * bs.max(d) > max_chunk_elements {
                break;
            }
            end += 1;
        }
        let chunk = &order[start..end];
        let slots = mask.row_at(chunk[chunk.len() - 1]).len();
        pieces.push(attend_chunk(
            chunk,
            slots,
            mask,
            &queries,
            &keys,
            &values,
            &token_bias,
            per_sample_bias,
        )?);
        start = end;
    }
    let sorted = Tensor::cat(&pieces, 0)?; // [rows, bs, D], rows in `order`
    let mut position = vec![0u32; rows];
    for (pos, &r) in order.iter().enumerate() {
        position[r] = pos as u32;
    }
    let position = Tensor::from_vec(position, rows, device)?;
    let out = sorted
        .index_select(&position, 0)?
        .reshape((b, h, padded, d))?;
    Ok(out.narrow(2, 0, l)?.to_dtype(out_dtype)?)
}

/// Attention of the query blocks `chunk` (row ids) over their kept blocks, each padded to
/// `slots` key blocks → `[chunk.len(), bs, D]` f32.
// The kernel inputs travel separately: bundling them would only rename them at each use.
#[allow(clippy::too_many_arguments)]
fn attend_chunk(
    chunk: &[usize],
    slots: usize,
    mask: &BlockMask,
    queries: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    token_bias: &Tensor,
    per_sample_bias: bool,
) -> Result<Tensor> {
    let (bs, d) = (mask.block_size, queries.dim(2)?);
    let blocks = mask.key_blocks;
    let device = queries.device();
    let rows = chunk.len();
    // Per slot: the block in the K/V tables (global), its block index (for the token bias),
    // and 0 or −∞ (padded slot).
    let mut key_ids = Vec::with_capacity(rows * slots);
    let mut local_ids = Vec::with_capacity(rows * slots);
    let mut slot_bias = Vec::with_capacity(rows * slots);
    for &r in chunk {
        let head_base = (r / mask.query_blocks * blocks) as u32;
        // Rows of `token_bias` start at this sample's blocks when the flags are per sample.
        let bias_base = if per_sample_bias {
            (r / (mask.heads * mask.query_blocks) * blocks) as u32
        } else {
            0
        };
        let kept = mask.row_at(r);
        for slot in 0..slots {
            let (kb, bias) = match kept.get(slot) {
                Some(&kb) => (kb, 0f32),
                None => (0, f32::NEG_INFINITY), // any valid block, fully masked
            };
            key_ids.push(head_base + kb);
            local_ids.push(bias_base + kb);
            slot_bias.push(bias);
        }
    }
    let local_ids = Tensor::from_vec(local_ids, rows * slots, device)?;
    let slot_bias = Tensor::from_vec(slot_bias, (rows, slots, 1), device)?;
    let bias = token_bias
        .index_select(&local_ids, 0)?
        .reshape((rows, slots, bs))?
        .broadcast_add(&slot_bias)?
        .reshape((rows, 1, slots * bs))?;
    let row_ids: Vec<u32> = chunk.iter().map(|&r| r as u32).collect();
    let row_ids = Tensor::from_vec(row_ids, rows, device)?;
    let key_ids = Tensor::from_vec(key_ids, rows * slots, device)?;

    let q = queries.index_select(&row_ids, 0)?; // [rows, bs, D]
    let k = keys
        .index_select(&key_ids, 0)?
        .reshape((rows, slots * bs, d))?;
    let v = values
        .index_select(&key_ids, 0)?
        .reshape((rows, slots * bs, d))?;
    let scores = q.matmul(&k.t()?.contiguous()?)?.broadcast_add(&bias)?; // [rows, bs, slots·bs]
    let max = scores.max_keepdim(D::Minus1)?;
    if !per_sample_bias {
        let exp = scores.broadcast_sub(&max)?.exp()?;
        let sum = exp.sum_keepdim(D::Minus1)?;
        return Ok(exp.matmul(&v)?.broadcast_div(&sum)?);
    }
    // With key flags a row can keep only invalid keys (max −∞): a finite stand-in makes every
    // exp 0 (not NaN) and the floor on the sum turns 0/0 into 0.
    let max = max.maximum(f32::MIN as f64)?;
    let exp = scores.broadcast_sub(&max)?.exp()?;
    let sum = exp
        .sum_keepdim(D::Minus1)?
        .maximum(f32::MIN_POSITIVE as f64)?;
    Ok(exp.matmul(&v)?.broadcast_div(&sum)?)
}
