//! RainFusion on a joint `[video; text]` sequence: sparse video × video blocks, a dense text band.
//!
//! HunyuanVideo 1.5 attends over `[video tokens; text tokens]` in every block, with the text of
//! each sample padded to a common length. Here:
//!
//! - video queries × video keys: RainFusion's block-sparse path. The video tokens alone are
//!   permuted into windows ([`TokenPermutation::for_layout`], first-frame sink moved to the end
//!   of the video part) and one mask per (batch, head) is predicted from their pooled q and k
//!   ([`predict_block_mask`], the sink forced dense). Its density counts video blocks only.
//! - video queries × text keys and text queries × every key: dense (the "text band").
//! - padded text keys (`text_valid == 0`) get exactly zero weight, everywhere.
//!
//! Each query row is one softmax over the union of its video and text keys. It is computed by
//! running the existing block-sparse kernels ([`crate::sparse_cpu`], [`crate::generic`]) once
//! over `[video padded to whole blocks; text padded to whole blocks]`, with the text blocks kept
//! by every row and a per-key validity flag that excludes the padding tokens and the padded
//! text. Why this rather than merging two partial results by log-sum-exp: the kernels already
//! do the online softmax over any set of kept blocks, so appending the text as always-kept
//! blocks needs only the key flags (a few lines in each kernel), while a merge would need both
//! kernels to return their row log-sum-exp and a second pass over the text keys. Padding each
//! part to whole blocks keeps the block mask exact: no block mixes video and text tokens, so
//! the video mask applies to video keys only and the text band is exactly the text columns.
//!
//! On CUDA (bf16/f16, a block size the fused kernel takes) each sample runs without its padding
//! instead: `[permuted video; valid text]` through the fused block-sparse kernel, which needs no
//! key flags when no padding lies inside the sequence (`joint_attention_cuda`).
//!
//! Memory: the CPU kernel holds one score tile per query block, the generic kernel bounded
//! chunks, the CUDA kernel one tile per warp; nothing `L × L` is built.

use candle_core::{DType, Device, Tensor};

use crate::generic::block_sparse_attention_generic_key_masked;
use crate::layout::{dense_tail_tokens, TokenPermutation, Window};
use crate::sparse_cpu::block_sparse_attention_cpu_key_masked;
use crate::{predict_block_mask, BlockMask, Error, Result, VideoLayout};

/// Keys per CPU score tile (as the plain CPU kernel).
const CPU_KEYS_PER_TILE: usize = 512;
/// Bound on gathered K / score elements per generic chunk (as the plain generic kernel).
const GENERIC_CHUNK_ELEMENTS: usize = 1 << 26;

/// How the video × video mask of a joint sequence is predicted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JointSparsity {
    /// Fraction of video key blocks each video query block skips, in `[0, 1)`.
    pub sparsity: f64,
    /// Tokens per block (queries and keys).
    pub block_size: usize,
    /// Window shape of the video token permutation.
    pub window: Window,
    /// Frame 0 attends to every video token and every video token attends to it.
    pub first_frame_sink: bool,
}

impl Default for JointSparsity {
    fn default() -> Self {
        Self {
            sparsity: 0.8,
            block_size: 128,
            window: Window::Tile,
            first_frame_sink: true,
        }
    }
}

/// The video part's token order and block mask of one joint attention call.
#[derive(Debug, Clone)]
pub struct JointVideoMask {
    /// Window order of the video tokens (`layout.video_tokens()` entries; text excluded).
    pub permutation: TokenPermutation,
    /// `B × H × ceil(Lv / block_size)²` over the permuted video tokens.
    pub mask: BlockMask,
}

impl JointVideoMask {
    /// Fraction of video × video block pairs computed.
    pub fn density(&self) -> f64 {
        self.mask.density()
    }
}

/// Predicts the video × video block mask of a joint sequence from its video queries and keys.
///
/// q, k: `[B, H, Lv + Lt, D]`, video first (`layout.video_tokens()` tokens in raster order),
/// then `layout.text_tokens` text tokens, which are ignored here.
pub fn predict_joint_video_mask(
    q: &Tensor,
    k: &Tensor,
    layout: &VideoLayout,
    settings: &JointSparsity,
) -> Result<JointVideoMask> {
    let video = VideoLayout::new(layout.frames, layout.height, layout.width);
    let lv = video.video_tokens();
    let (_, _, l, _) = q.dims4()?;
    if l != layout.total_tokens() || k.dims4()? != q.dims4()? {
        return Err(Error::LayoutMismatch {
            layout_tokens: layout.total_tokens(),
            tensor_tokens: l,
        });
    }
    if settings.block_size == 0 || lv == 0 {
        return Err(Error::InvalidConfig(format!(
            "joint attention needs video tokens ({lv}) and a block size ({})",
            settings.block_size
        )));
    }
    let permutation =
        TokenPermutation::for_layout(&video, settings.window, settings.first_frame_sink)?;
    let qv = permutation.apply(&q.narrow(2, 0, lv)?)?;
    let kv = permutation.apply(&k.narrow(2, 0, lv)?)?;
    // Besides the sink, a partial last video block is forced dense: the CUDA path lays the text
    // right after the video with no padding between (see `joint_attention_cuda`), so that block
    // holds text keys there and every row keeps it. Forced on every device: one semantic.
    let tail = dense_tail_tokens(&video, settings.first_frame_sink).max(lv % settings.block_size);
    let mask = predict_block_mask(&qv, &kv, settings.block_size, settings.sparsity, tail)?;
    Ok(JointVideoMask { permutation, mask })
}

/// Joint attention with a given video mask (predicted by [`predict_joint_video_mask`], perhaps
/// on an earlier step): sparse video × video blocks, dense text band, padded text excluded.
///
/// - q, k, v: `[B, H, Lv + Lt, D]`, video then text, as `layout` says → `[B, H, Lv + Lt, D]`
///   in q's dtype, the original token order.
/// - `text_valid`: `[B, Lt]`, any dtype, non-zero = valid text token; `None` = all valid.
///
/// With a mask that keeps every block this is [`crate::key_masked_attention`] with the key
/// flags `[1…1, text_valid]`, up to float rounding.
pub fn joint_block_sparse_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: &VideoLayout,
    text_valid: Option<&Tensor>,
    video: &JointVideoMask,
    scale: f64,
) -> Result<Tensor> {
    joint_attention_on(q, k, v, layout, text_valid, video, scale, Kernel::ByDevice)
}

#[allow(clippy::too_many_arguments)]
fn joint_attention_on(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: &VideoLayout,
    text_valid: Option<&Tensor>,
    video: &JointVideoMask,
    scale: f64,
    kernel: Kernel,
) -> Result<Tensor> {
    crate::inputs::check_self_attention(q, k, v)?;
    let (b, h, l, d) = q.dims4()?;
    if l != layout.total_tokens() {
        return Err(Error::LayoutMismatch {
            layout_tokens: layout.total_tokens(),
            tensor_tokens: l,
        });
    }
    let (lv, lt) = (layout.video_tokens(), layout.text_tokens);
    let bs = video.mask.block_size;
    let video_blocks = lv.div_ceil(bs.max(1));
    if video.permutation.len() != lv {
        return Err(Error::LayoutMismatch {
            layout_tokens: lv,
            tensor_tokens: video.permutation.len(),
        });
    }
    video.mask.check_covers(b, h, lv)?;
    let text_blocks = lt.div_ceil(bs);
    let (pv, pt) = (video_blocks * bs, text_blocks * bs);
    let padded = pv + pt;

    // Text flags on the host: B × Lt numbers.
    let text_flags: Vec<u8> = match text_valid {
        Some(t) => {
            if t.dims() != [b, lt] {
                return Err(Error::InvalidConfig(format!(
                    "text validity mask is {:?}, expected [{b}, {lt}] (batch, text tokens)",
                    t.dims()
                )));
            }
            t.to_device(&Device::Cpu)?
                .ne(0f64)?
                .flatten_all()?
                .to_vec1::<u8>()?
        }
        None => vec![1; b * lt],
    };
    #[cfg(feature = "cuda")]
    if kernel == Kernel::ByDevice && crate::cuda::is_supported(q, bs) {
        return joint_attention_cuda(q, k, v, lv, &text_flags, video, scale);
    }
    // [B, padded] key flags: real video tokens, then the valid text tokens.
    let mut key_valid = vec![0u8; b * padded];
    for (sample, flags) in key_valid.chunks_exact_mut(padded).enumerate() {
        flags[..lv].fill(1);
        flags[pv..pv + lt].copy_from_slice(&text_flags[sample * lt..(sample + 1) * lt]);
    }

    // [B, H, padded, D]: permuted video, zero padding, text, zero padding.
    let pad = |x: &Tensor, extra: usize| -> Result<Tensor> {
        if extra == 0 {
            return Ok(x.clone());
        }
        let zeros = Tensor::zeros((b, h, extra, d), x.dtype(), x.device())?;
        Ok(Tensor::cat(&[x, &zeros], 2)?)
    };
    let joint = |x: &Tensor| -> Result<Tensor> {
        let video_part = pad(&video.permutation.apply(&x.narrow(2, 0, lv)?)?, pv - lv)?;
        let text_part = pad(&x.narrow(2, lv, lt)?, pt - lt)?;
        Ok(Tensor::cat(&[&video_part, &text_part], 2)?.contiguous()?)
    };
    let (qj, kj, vj) = (joint(q)?, joint(k)?, joint(v)?);

    // Video rows: their predicted video blocks, then every text block; text rows: everything.
    let rows_per_head = video_blocks + text_blocks;
    let all_blocks = rows_per_head as u32;
    let mut offsets = Vec::with_capacity(b * h * rows_per_head + 1);
    let mut indices = Vec::new();
    offsets.push(0u32);
    for bi in 0..b {
        for hi in 0..h {
            for qb in 0..video_blocks {
                indices.extend_from_slice(video.mask.row(bi, hi, qb));
                indices.extend(video_blocks as u32..all_blocks);
                offsets.push(indices.len() as u32);
            }
            for _ in 0..text_blocks {
                indices.extend(0..all_blocks);
                offsets.push(indices.len() as u32);
            }
        }
    }
    let mask = BlockMask::from_csr(b, h, bs, rows_per_head, rows_per_head, offsets, indices)?;

    let out = match q.device() {
        Device::Cpu if kernel == Kernel::ByDevice => block_sparse_attention_cpu_key_masked(
            &qj,
            &kj,
            &vj,
            &mask,
            &key_valid,
            scale,
            CPU_KEYS_PER_TILE,
        )?,
        _ => block_sparse_attention_generic_key_masked(
            &qj,
            &kj,
            &vj,
            &mask,
            Some(&key_valid),
            scale,
            GENERIC_CHUNK_ELEMENTS,
        )?,
    };
    let video_out = video.permutation.restore(&out.narrow(2, 0, lv)?)?;
    let text_out = out.narrow(2, pv, lt)?;
    Ok(Tensor::cat(&[&video_out, &text_out], 2)?)
}

/// The joint attention on CUDA, one sample at a time with its padded text dropped: the sequence
/// `[permuted video; valid text]` has no padding inside, so the fused block-sparse kernel (which
/// masks only keys past the end) runs it as is, with no per-key flags. Its blocks: the whole
/// video blocks first, then the band (the partial last video block, forced dense by
/// [`predict_joint_video_mask`], and the text). Video rows keep their predicted whole blocks and
/// the band; band rows keep everything. The text rows, padded ones included (the reference
/// computes them too), come from the dense cross-attention kernel over the same keys.
///
/// q, k, v: `[B, H, Lv + Lt, D]`; `text_flags`: `B × Lt` → `[B, H, Lv + Lt, D]`.
#[cfg(feature = "cuda")]
fn joint_attention_cuda(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    lv: usize,
    text_flags: &[u8],
    video: &JointVideoMask,
    scale: f64,
) -> Result<Tensor> {
    use crate::cuda::{block_sparse_attention, cross_attention, OutputLayout};
    let (b, h, l, _) = q.dims4()?;
    let lt = l - lv;
    let bs = video.mask.block_size;
    let whole = lv / bs;
    let mut outs = Vec::with_capacity(b);
    for sample in 0..b {
        let one = |x: &Tensor| x.narrow(0, sample, 1);
        let (qs, ks, vs) = (one(q)?, one(k)?, one(v)?);
        let valid: Vec<u32> = (0..lt)
            .filter(|&j| text_flags[sample * lt + j] != 0)
            .map(|j| (lv + j) as u32)
            .collect();
        let text_index = Tensor::new(valid.as_slice(), q.device())?;
        // [1, H, Lv + valid, D]
        let joint = |x: &Tensor| -> Result<Tensor> {
            let video_part = video.permutation.apply(&x.narrow(2, 0, lv)?)?;
            if valid.is_empty() {
                return Ok(video_part.contiguous()?);
            }
            let text_part = x.index_select(&text_index, 2)?;
            Ok(Tensor::cat(&[&video_part, &text_part], 2)?.contiguous()?)
        };
        let (qj, kj, vj) = (joint(&qs)?, joint(&ks)?, joint(&vs)?);
        let blocks = (lv + valid.len()).div_ceil(bs);
        let mut offsets = Vec::with_capacity(h * blocks + 1);
        let mut indices = Vec::new();
        offsets.push(0u32);
        for head in 0..h {
            for qb in 0..blocks {
                if qb < whole {
                    let row = video.mask.row(sample, head, qb);
                    indices.extend(row.iter().copied().filter(|&kb| (kb as usize) < whole));
                    indices.extend(whole as u32..blocks as u32);
                } else {
                    indices.extend(0..blocks as u32);
                }
                offsets.push(indices.len() as u32);
            }
        }
        let mask = BlockMask::from_csr(1, h, bs, blocks, blocks, offsets, indices)?;
        let out = block_sparse_attention(&qj, &kj, &vj, &mask, scale)?;
        let video_out = video.permutation.restore(&out.narrow(2, 0, lv)?)?;
        if lt == 0 {
            outs.push(video_out);
            continue;
        }
        let text_out =
            cross_attention(&qs.narrow(2, lv, lt)?, &kj, &vj, scale, OutputLayout::Bhld)?;
        outs.push(Tensor::cat(&[&video_out, &text_out], 2)?);
    }
    Ok(Tensor::cat(&outs, 0)?)
}

/// Dense joint attention with padded text: every video key and the valid text keys, through
/// [`crate::key_masked_attention`] (on CUDA, each sample's valid keys gathered into the fused
/// kernel). q, k, v: `[B, H, Lv + Lt, D]`; `text_valid`: `[B, Lt]` → `[B, H, Lv + Lt, D]`.
pub fn dense_joint_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: &VideoLayout,
    text_valid: &Tensor,
) -> Result<Tensor> {
    let (b, _, l, d) = q.dims4()?;
    if l != layout.total_tokens() || text_valid.dims() != [b, layout.text_tokens] {
        return Err(Error::InvalidConfig(format!(
            "joint attention: {l} tokens and a text mask {:?} for a layout of {} video and {} \
             text tokens",
            text_valid.dims(),
            layout.video_tokens(),
            layout.text_tokens
        )));
    }
    let video = Tensor::ones((b, layout.video_tokens()), DType::F32, text_valid.device())?;
    let key_valid = Tensor::cat(&[&video, &text_valid.to_dtype(DType::F32)?], 1)?;
    crate::key_masked_attention(q, k, v, Some(&key_valid), 1.0 / (d as f64).sqrt())
}

/// Predicts the video mask ([`predict_joint_video_mask`]) and runs
/// [`joint_block_sparse_attention`] with it; returns the output and the mask used.
pub fn joint_rainfusion_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: &VideoLayout,
    text_valid: Option<&Tensor>,
    settings: &JointSparsity,
    scale: f64,
) -> Result<(Tensor, JointVideoMask)> {
    let video = predict_joint_video_mask(q, k, layout, settings)?;
    let out = joint_block_sparse_attention(q, k, v, layout, text_valid, &video, scale)?;
    Ok((out, video))
}

/// [`joint_block_sparse_attention`] through the candle-ops kernel whatever the device (what
/// CUDA and Metal tensors run); public so the generic path can be checked on the CPU.
pub fn joint_block_sparse_attention_generic(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: &VideoLayout,
    text_valid: Option<&Tensor>,
    video: &JointVideoMask,
    scale: f64,
) -> Result<Tensor> {
    joint_attention_on(q, k, v, layout, text_valid, video, scale, Kernel::Generic)
}

/// The kernel that runs the padded joint sequence.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// The CPU kernel for CPU tensors, the generic one elsewhere.
    ByDevice,
    Generic,
}
