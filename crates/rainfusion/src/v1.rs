//! RainFusion 1.0: three static head patterns and an online recogniser that picks one per head.
//!
//! Video attention heads tend to fall into a few shapes:
//! - **spatial**: a query looks at its own frame (and the nearest frames), all positions;
//! - **temporal**: a query looks at the same spatial neighbourhood across all frames
//!   (a striped map in raster order);
//! - **textural**: a query looks at a sparse, evenly strided set of key blocks spread over the
//!   whole video (the same global set for every query) plus its own block.
//!
//! Each pattern is a block mask over the window-permuted sequence (see [`crate::layout`]) that
//! keeps about `ceil(blocks · (1 − sparsity))` key blocks per query block, plus the forced dense
//! tail (first-frame sink and text). The Adaptive Recognition Module (ARM) computes exact
//! attention for a few sampled queries per head, measures how much of their attention mass each
//! pattern keeps, and gives the head the pattern that keeps the most.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Tensor, D};

use crate::layout::{dense_tail_tokens, TokenPermutation};
use crate::policy::{check_inputs, DenseSteps, MaskCache, Plan, StepSchedule};
use crate::predict::{forced_from_block, kept_per_row};
use crate::{
    block_sparse_attention, BlockMask, DenseAttention, Error, Result, SelfAttention, VideoLayout,
    Window,
};

/// Attention shape assumed for one head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeadPattern {
    Spatial,
    Temporal,
    Textural,
}

impl HeadPattern {
    pub const ALL: [HeadPattern; 3] = [
        HeadPattern::Spatial,
        HeadPattern::Temporal,
        HeadPattern::Textural,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// The three patterns' kept key blocks for every query block of one layout (shared by all heads).
#[derive(Debug, Clone)]
pub struct PatternMasks {
    pub block_size: usize,
    pub blocks: usize,
    /// First block of the forced dense tail (`blocks` if none).
    pub first_forced: usize,
    /// `rows[pattern][query_block]`: sorted kept key blocks.
    rows: [Vec<Vec<u32>>; 3],
}

/// Mean (frame, row, column) of the video tokens in each block; None for text-only blocks.
fn block_centroids(
    layout: &VideoLayout,
    permutation: &TokenPermutation,
    block_size: usize,
) -> Vec<Option<[f64; 3]>> {
    let video = layout.video_tokens();
    permutation
        .forward
        .chunks(block_size)
        .map(|block| {
            let (mut sum, mut count) = ([0f64; 3], 0usize);
            for &t in block.iter().filter(|&&t| (t as usize) < video) {
                let t = t as usize;
                let within = t % layout.frame_tokens();
                let coords = [
                    (t / layout.frame_tokens()) as f64,
                    (within / layout.width) as f64,
                    (within % layout.width) as f64,
                ];
                sum.iter_mut().zip(coords).for_each(|(s, c)| *s += c);
                count += 1;
            }
            (count > 0).then(|| sum.map(|s| s / count as f64))
        })
        .collect()
}

impl PatternMasks {
    /// Builds the three patterns for `layout` permuted by `permutation` (tile windows).
    pub fn new(
        layout: &VideoLayout,
        permutation: &TokenPermutation,
        block_size: usize,
        sparsity: f64,
        dense_tail_tokens: usize,
    ) -> Result<Self> {
        if permutation.len() != layout.total_tokens() {
            return Err(Error::LayoutMismatch {
                layout_tokens: layout.total_tokens(),
                tensor_tokens: permutation.len(),
            });
        }
        let tokens = layout.total_tokens();
        let blocks = tokens.div_ceil(block_size);
        let first_forced = forced_from_block(tokens, block_size, dense_tail_tokens);
        let keep = kept_per_row(blocks, sparsity);
        let centroids = block_centroids(layout, permutation, block_size);
        // Candidate key blocks: everything before the forced tail that holds video tokens.
        let candidates: Vec<usize> = (0..first_forced)
            .filter(|&kb| centroids[kb].is_some())
            .collect();
        let stride = (blocks as f64 / keep as f64).round().max(1.0) as usize;

        let mut rows: [Vec<Vec<u32>>; 3] = Default::default();
        for qb in 0..blocks {
            let forced_row = qb >= first_forced || centroids[qb].is_none();
            for pattern in HeadPattern::ALL {
                let mut kept: Vec<u32> = if forced_row {
                    (0..blocks as u32).collect()
                } else {
                    let here = centroids[qb].expect("checked above");
                    let distance = |kb: usize| {
                        let there = centroids[kb].expect("candidates hold video");
                        let frames = (here[0] - there[0]).abs();
                        let space = (here[1] - there[1]).powi(2) + (here[2] - there[2]).powi(2);
                        (frames, space)
                    };
                    let mut chosen: Vec<usize> = match pattern {
                        HeadPattern::Spatial | HeadPattern::Temporal => {
                            let mut ranked = candidates.clone();
                            ranked.sort_by(|&a, &b| {
                                let ((fa, sa), (fb, sb)) = (distance(a), distance(b));
                                let order = if pattern == HeadPattern::Spatial {
                                    fa.total_cmp(&fb).then(sa.total_cmp(&sb))
                                } else {
                                    sa.total_cmp(&sb).then(fa.total_cmp(&fb))
                                };
                                order.then(a.cmp(&b))
                            });
                            ranked.truncate(keep);
                            ranked
                        }
                        HeadPattern::Textural => candidates
                            .iter()
                            .copied()
                            .filter(|kb| kb % stride == 0 || *kb == qb)
                            .collect(),
                    };
                    chosen.extend(first_forced..blocks);
                    chosen.into_iter().map(|kb| kb as u32).collect()
                };
                kept.sort_unstable();
                kept.dedup();
                rows[pattern.index()].push(kept);
            }
        }
        Ok(Self {
            block_size,
            blocks,
            first_forced,
            rows,
        })
    }

    /// Kept key blocks of query block `qb` under `pattern`.
    pub fn row(&self, pattern: HeadPattern, qb: usize) -> &[u32] {
        &self.rows[pattern.index()][qb]
    }

    /// The block mask that gives head `(b, h)` the pattern `choices[b·heads + h]`.
    pub fn assemble(
        &self,
        choices: &[HeadPattern],
        batch: usize,
        heads: usize,
    ) -> Result<BlockMask> {
        if choices.len() != batch * heads {
            return Err(Error::InvalidConfig(format!(
                "{} head patterns given for batch {batch} × heads {heads}",
                choices.len()
            )));
        }
        let mut offsets = vec![0u32];
        let mut indices = Vec::new();
        for &pattern in choices {
            for qb in 0..self.blocks {
                indices.extend_from_slice(self.row(pattern, qb));
                offsets.push(indices.len() as u32);
            }
        }
        BlockMask::from_csr(
            batch,
            heads,
            self.block_size,
            self.blocks,
            self.blocks,
            offsets,
            indices,
        )
    }
}

/// Largest number of sampled score elements materialised at once by the recogniser.
const MAX_SAMPLE_SCORES: usize = 1 << 24;

/// The Adaptive Recognition Module: picks a pattern per (batch, head).
///
/// q, k: `[B, H, L, D]` in permuted order. `samples` query tokens, evenly spaced over the rows
/// that are not forced dense, get their exact attention rows; each pattern's score is the mean
/// attention mass its kept blocks capture for those queries. Returns `B·H` patterns, ties
/// resolved in the order spatial, temporal, textural.
pub fn recognise_head_patterns(
    q: &Tensor,
    k: &Tensor,
    patterns: &PatternMasks,
    samples: usize,
    scale: f64,
) -> Result<Vec<HeadPattern>> {
    let (b, h, l, _) = q.dims4()?;
    let sparse_rows = (patterns.first_forced * patterns.block_size).min(l);
    if sparse_rows == 0 || samples == 0 {
        return Ok(vec![HeadPattern::Spatial; b * h]);
    }
    let samples = samples.min(sparse_rows);
    let positions: Vec<u32> = (0..samples)
        .map(|i| ((2 * i + 1) * sparse_rows / (2 * samples)) as u32)
        .collect();
    // Attention mass per key block of each sampled query: [B·H][S][blocks].
    let mass = if q.device().is_cpu() {
        sampled_block_mass_cpu(q, k, &positions, patterns, scale)?
    } else {
        sampled_block_mass_candle(q, k, &positions, patterns, scale)?
    };
    Ok(mass
        .iter()
        .map(|head_mass| {
            let mut recall = [0f64; 3];
            for (s, row_mass) in head_mass.iter().enumerate() {
                let qb = positions[s] as usize / patterns.block_size;
                for pattern in HeadPattern::ALL {
                    recall[pattern.index()] += patterns
                        .row(pattern, qb)
                        .iter()
                        .map(|&kb| row_mass[kb as usize] as f64)
                        .sum::<f64>();
                }
            }
            HeadPattern::ALL
                .into_iter()
                .fold(HeadPattern::Spatial, |best, p| {
                    if recall[p.index()] > recall[best.index()] {
                        p
                    } else {
                        best
                    }
                })
        })
        .collect())
}

/// Exact attention rows of the sampled queries, summed per key block, with candle ops.
fn sampled_block_mass_candle(
    q: &Tensor,
    k: &Tensor,
    positions: &[u32],
    patterns: &PatternMasks,
    scale: f64,
) -> Result<Vec<Vec<Vec<f32>>>> {
    let (b, h, l, _) = q.dims4()?;
    let samples = positions.len();
    let index = Tensor::from_slice(positions, samples, q.device())?;
    let queries = (q
        .contiguous()?
        .index_select(&index, 2)?
        .to_dtype(DType::F32)?
        * scale)?; // [B,H,S,D]
    let keys_t = k.to_dtype(DType::F32)?.transpose(2, 3)?.contiguous()?; // [B,H,D,L]
    let padded = patterns.blocks * patterns.block_size;
    let heads_per_chunk = (MAX_SAMPLE_SCORES / (samples * padded).max(1)).clamp(1, h);
    let mut mass = Vec::with_capacity(b * h);
    for batch in 0..b {
        let mut start = 0;
        while start < h {
            let n = heads_per_chunk.min(h - start);
            let qs = queries.narrow(0, batch, 1)?.narrow(1, start, n)?;
            let ks = keys_t.narrow(0, batch, 1)?.narrow(1, start, n)?;
            let scores = qs.contiguous()?.matmul(&ks)?; // [1,n,S,L]
            let max = scores.max_keepdim(D::Minus1)?;
            let exp = scores.broadcast_sub(&max)?.exp()?;
            let mut probs = exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)?;
            if padded > l {
                let pad = Tensor::zeros((1, n, samples, padded - l), DType::F32, q.device())?;
                probs = Tensor::cat(&[&probs, &pad], 3)?;
            }
            let blocks = (n, samples, patterns.blocks, patterns.block_size);
            mass.extend(probs.reshape(blocks)?.sum(3)?.to_vec3::<f32>()?);
            start += n;
        }
    }
    Ok(mass)
}

/// The same on the CPU: one gemm per (batch, head) for the sampled score rows, then softmax
/// and block sums in place, rayon across heads.
fn sampled_block_mass_cpu(
    q: &Tensor,
    k: &Tensor,
    positions: &[u32],
    patterns: &PatternMasks,
    scale: f64,
) -> Result<Vec<Vec<Vec<f32>>>> {
    use crate::sparse_cpu::{cpu_f32, exp_shifted_in_place, max_of};
    use rayon::prelude::*;
    let (b, h, l, d) = q.dims4()?;
    let (q, k) = (
        q.to_dtype(DType::F32)?.contiguous()?,
        k.to_dtype(DType::F32)?.contiguous()?,
    );
    let (q_guard, q_layout) = q.storage_and_layout();
    let (k_guard, k_layout) = k.storage_and_layout();
    let (qs, ks) = (cpu_f32(&q_guard, q_layout)?, cpu_f32(&k_guard, k_layout)?);
    let samples = positions.len();
    let bs = patterns.block_size;
    let mass = (0..b * h)
        .into_par_iter()
        .map(|bh| {
            let head = bh * l * d..(bh + 1) * l * d;
            let (q_head, k_head) = (&qs[head.clone()], &ks[head]);
            let sampled: Vec<f32> = positions
                .iter()
                .flat_map(|&p| &q_head[p as usize * d..(p as usize + 1) * d])
                .copied()
                .collect();
            let mut scores = vec![0f32; samples * l];
            // scores[s, j] = scale · q_s · k_j
            // SAFETY: lhs is `samples × d` row-major (`sampled`); rhs reads `k_head` (`l × d`
            // row-major) as `d × l` with column stride d; dst is `samples × l` row-major.
            unsafe {
                gemm::gemm(
                    samples,
                    l,
                    d,
                    scores.as_mut_ptr(),
                    1,
                    l as isize,
                    false,
                    sampled.as_ptr(),
                    1,
                    d as isize,
                    k_head.as_ptr(),
                    d as isize,
                    1,
                    0.0f32,
                    scale as f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            scores
                .chunks_exact_mut(l.max(1))
                .map(|row| {
                    let total = exp_shifted_in_place(row, max_of(row));
                    row.chunks(bs)
                        .map(|block| block.iter().sum::<f32>() / total)
                        .collect()
                })
                .collect()
        })
        .collect();
    Ok(mass)
}

/// Settings of RainFusion 1.0 attention.
#[derive(Debug, Clone, PartialEq)]
pub struct RainFusionV1Config {
    /// Fraction of key blocks each pattern skips, in `[0, 1)` (forced bands come on top).
    pub sparsity: f64,
    /// Tokens per block: a power of two ≥ 16.
    pub block_size: usize,
    pub dense_steps: DenseSteps,
    /// Re-run the recogniser every this many sparse steps (≥ 1); reuse the head patterns between.
    pub mask_refresh: usize,
    pub dense_layers: usize,
    pub first_frame_sink: bool,
    /// Query tokens per head the recogniser samples.
    pub samples: usize,
}

impl Default for RainFusionV1Config {
    fn default() -> Self {
        Self {
            sparsity: 0.8,
            block_size: 128,
            dense_steps: DenseSteps::default(),
            mask_refresh: 1,
            dense_layers: 0,
            first_frame_sink: true,
            samples: 64,
        }
    }
}

impl RainFusionV1Config {
    /// Checks the settings against a run of `num_steps` steps on a model of `num_layers` layers
    /// (dense steps and dense layers in range), on top of [`validate`](Self::validate).
    pub fn validate_for_run(&self, num_steps: usize, num_layers: usize) -> Result<()> {
        self.validate()?;
        self.as_v2().validate_for_run(num_steps, num_layers)
    }

    /// Checks every field is in range.
    pub fn validate(&self) -> Result<()> {
        self.as_v2().validate()?;
        if self.samples == 0 {
            return Err(Error::InvalidConfig(
                "the pattern recogniser needs at least 1 sampled query".into(),
            ));
        }
        Ok(())
    }

    /// The shared settings, in RainFusion 2.0's config (whose checks they share).
    fn as_v2(&self) -> crate::RainFusionConfig {
        crate::RainFusionConfig {
            sparsity: self.sparsity,
            block_size: self.block_size,
            window: Window::Tile,
            dense_steps: self.dense_steps,
            mask_refresh: self.mask_refresh,
            dense_layers: self.dense_layers,
            first_frame_sink: self.first_frame_sink,
        }
    }
}

/// RainFusion 1.0 self-attention: per head, the pattern the recogniser picks, run block-sparse.
#[derive(Debug, Clone)]
pub struct RainFusionV1Attention {
    config: RainFusionV1Config,
    schedule: StepSchedule,
    cache: MaskCache,
    patterns: HashMap<VideoLayout, Arc<PatternMasks>>,
    pattern_counts: [u64; 3],
}

impl RainFusionV1Attention {
    /// A policy for a model of `num_layers` self-attention layers.
    pub fn new(config: RainFusionV1Config, num_layers: usize) -> Result<Self> {
        config.validate()?;
        let schedule = StepSchedule::for_model(&config.as_v2(), num_layers)?;
        Ok(Self {
            config,
            schedule,
            cache: MaskCache::default(),
            patterns: HashMap::new(),
            pattern_counts: [0; 3],
        })
    }

    /// How many heads got each pattern so far: (spatial, temporal, textural).
    pub fn pattern_counts(&self) -> (u64, u64, u64) {
        let [s, t, x] = self.pattern_counts;
        (s, t, x)
    }

    fn patterns_for(
        &mut self,
        layout: &VideoLayout,
        permutation: &TokenPermutation,
    ) -> Result<Arc<PatternMasks>> {
        if let Some(p) = self.patterns.get(layout) {
            return Ok(p.clone());
        }
        let tail = dense_tail_tokens(layout, self.config.first_frame_sink);
        let p = Arc::new(PatternMasks::new(
            layout,
            permutation,
            self.config.block_size,
            self.config.sparsity,
            tail,
        )?);
        self.patterns.insert(*layout, p.clone());
        Ok(p)
    }
}

impl SelfAttention for RainFusionV1Attention {
    fn attend(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        layout: &VideoLayout,
    ) -> Result<Tensor> {
        let (batch, heads, _, head_dim) = check_inputs(q, k, v, layout)?;
        let Plan::Sparse { slot, refresh } = self.schedule.plan(layer)? else {
            self.schedule.record(1.0);
            return DenseAttention.attend(layer, q, k, v, layout);
        };
        if self.config.sparsity == 0.0 {
            self.schedule.record(1.0);
            return DenseAttention.attend(layer, q, k, v, layout);
        }
        let scale = 1.0 / (head_dim as f64).sqrt();
        let permutation =
            self.cache
                .permutation(layout, Window::Tile, self.config.first_frame_sink)?;
        let (qp, kp) = (permutation.apply(q)?, permutation.apply(k)?);
        let mask = match self
            .cache
            .get(slot, layout, batch, heads)
            .filter(|_| !refresh)
        {
            Some(mask) => mask,
            None => {
                let patterns = self.patterns_for(layout, &permutation)?;
                let choices =
                    recognise_head_patterns(&qp, &kp, &patterns, self.config.samples, scale)?;
                for c in &choices {
                    self.pattern_counts[c.index()] += 1;
                }
                let mask = Arc::new(patterns.assemble(&choices, batch, heads)?);
                self.cache.insert(slot, *layout, mask.clone());
                self.schedule.mark_predicted(slot);
                mask
            }
        };
        self.schedule.record(mask.density());
        if mask.is_dense() {
            return DenseAttention.attend(layer, q, k, v, layout);
        }
        let vp = permutation.apply(v)?;
        let out = block_sparse_attention(&qp, &kp, &vp, &mask, scale)?;
        permutation.restore(&out)
    }

    fn begin_step(&mut self, step: usize, num_steps: usize) {
        self.schedule.begin_step(step, num_steps);
    }

    fn effective_density(&self) -> f64 {
        self.schedule.effective_density()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    const LAYOUT: VideoLayout = VideoLayout {
        frames: 5,
        height: 16,
        width: 16,
        text_tokens: 0,
    };
    const BLOCK: usize = 64;

    fn patterns() -> (TokenPermutation, PatternMasks) {
        let perm = TokenPermutation::for_layout(&LAYOUT, Window::Tile, true).unwrap();
        let masks = PatternMasks::new(&LAYOUT, &perm, BLOCK, 0.75, LAYOUT.frame_tokens()).unwrap();
        (perm, masks)
    }

    /// q = k = `strength` · one-hot(feature(token)) + noise, in original token order, `[1, 2, L, 16]`.
    fn featured(
        feature: impl Fn(usize, usize, usize) -> usize,
        strength: f32,
        seed: u64,
    ) -> Tensor {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let l = LAYOUT.total_tokens();
        let mut data = vec![0f32; 2 * l * 16];
        for h in 0..2 {
            for t in 0..l {
                let (f, y, x) = (t / 256, t % 256 / 16, t % 16);
                let row = &mut data[(h * l + t) * 16..(h * l + t + 1) * 16];
                row.iter_mut()
                    .for_each(|v| *v = rng.random_range(-0.1f32..0.1));
                row[feature(f, y, x)] += strength;
            }
        }
        Tensor::from_vec(data, (1, 2, l, 16), &Device::Cpu).unwrap()
    }

    #[test]
    fn patterns_keep_the_budget_and_the_forced_tail() {
        let (_, masks) = patterns();
        // 5 frames × 4 tiles of 64 tokens = 20 blocks; frame 0 (4 blocks) is the forced tail.
        assert_eq!((masks.blocks, masks.first_forced), (20, 16));
        for qb in 0..16 {
            for pattern in [HeadPattern::Spatial, HeadPattern::Temporal] {
                let row = masks.row(pattern, qb);
                assert_eq!(
                    row.len(),
                    kept_per_row(20, 0.75) + 4,
                    "{pattern:?} row {qb}"
                );
                assert!(row.contains(&(qb as u32)) && (16..20).all(|kb| row.contains(&kb)));
            }
            assert!(masks.row(HeadPattern::Textural, qb).contains(&(qb as u32)));
        }
        for qb in 16..20 {
            assert_eq!(masks.row(HeadPattern::Textural, qb).len(), 20);
        }
        // Spatial: query block 5 (frame 2, tile 1) keeps all of frame 2 (blocks 4..8).
        assert!((4..8).all(|kb| masks.row(HeadPattern::Spatial, 5).contains(&kb)));
        // Temporal: it keeps tile 1 of every body frame (blocks 1, 5, 9, 13).
        assert!([1, 5, 9, 13]
            .iter()
            .all(|kb| masks.row(HeadPattern::Temporal, 5).contains(kb)));
    }

    #[test]
    fn recogniser_tells_spatial_from_temporal_heads() {
        let (perm, masks) = patterns();
        // Frame-local attention: features by frame.
        let frame_local = featured(|f, _, _| f, 4.0, 1);
        // Position-tied attention: features by 8×8 tile, shared by all frames.
        let position_tied = featured(|_, y, x| 8 + (y / 8) * 2 + x / 8, 4.0, 2);
        for (x, want) in [
            (frame_local, HeadPattern::Spatial),
            (position_tied, HeadPattern::Temporal),
        ] {
            let xp = perm.apply(&x).unwrap();
            let got = recognise_head_patterns(&xp, &xp, &masks, 32, 0.25).unwrap();
            assert_eq!(got, vec![want; 2]);
        }
    }

    #[test]
    fn v1_attention_matches_reference_on_its_mask_and_is_dense_at_sparsity_zero() {
        let q = featured(|f, _, _| f, 3.0, 3);
        let k = featured(|f, _, _| f, 3.0, 4);
        let v = featured(|_, y, _| y % 16, 1.0, 5);
        let cfg = RainFusionV1Config {
            sparsity: 0.75,
            block_size: BLOCK,
            dense_steps: DenseSteps::Count(0),
            samples: 16,
            ..Default::default()
        };
        let mut rf = RainFusionV1Attention::new(cfg.clone(), 1).unwrap();
        let out = rf.attend(0, &q, &k, &v, &LAYOUT).unwrap();
        assert_eq!(rf.pattern_counts(), (2, 0, 0));
        let (perm, masks) = patterns();
        let mask = masks.assemble(&[HeadPattern::Spatial; 2], 1, 2).unwrap();
        let (qp, kp, vp) = (
            perm.apply(&q).unwrap(),
            perm.apply(&k).unwrap(),
            perm.apply(&v).unwrap(),
        );
        let want = perm
            .restore(
                &crate::reference::masked_attention_reference(&qp, &kp, &vp, &mask, 0.25).unwrap(),
            )
            .unwrap();
        let diff = (out - &want)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let norm = want
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((diff / norm).sqrt() < 1e-5);
        assert!((rf.effective_density() - mask.density()).abs() < 1e-12);

        let mut dense = RainFusionV1Attention::new(
            RainFusionV1Config {
                sparsity: 0.0,
                ..cfg
            },
            1,
        )
        .unwrap();
        let a = dense
            .attend(0, &q, &k, &v, &LAYOUT)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = DenseAttention
            .attend(0, &q, &k, &v, &LAYOUT)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn recogniser_picks_textural_for_heads_that_attend_to_global_anchors() {
        // Built directly in permuted order: every query matches the keys of the textural
        // pattern's anchor blocks (every 4th block before the sink), wherever the query is.
        let (_, masks) = patterns();
        let anchors: Vec<u32> = (0..16)
            .filter(|kb| masks.row(HeadPattern::Textural, 1).contains(kb))
            .collect();
        assert_eq!(
            anchors,
            [0, 1, 4, 8, 12],
            "anchors every 4th block, plus the query's own"
        );
        let l = LAYOUT.total_tokens();
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let mut noise = || rng.random_range(-0.1f32..0.1);
        let (mut q, mut k) = (vec![0f32; l * 16], vec![0f32; l * 16]);
        for t in 0..l {
            for c in 0..16 {
                q[t * 16 + c] = noise();
                k[t * 16 + c] = noise();
            }
            q[t * 16 + 15] += 3.0;
            let block = t / BLOCK;
            if block < 16 && block.is_multiple_of(4) {
                k[t * 16 + 15] += 3.0;
            }
        }
        let q = Tensor::from_vec(q, (1, 1, l, 16), &Device::Cpu).unwrap();
        let k = Tensor::from_vec(k, (1, 1, l, 16), &Device::Cpu).unwrap();
        let got = recognise_head_patterns(&q, &k, &masks, 32, 0.25).unwrap();
        assert_eq!(got, vec![HeadPattern::Textural]);
    }

    #[test]
    fn cpu_and_candle_sampled_mass_agree() {
        let (perm, masks) = patterns();
        let q = perm.apply(&featured(|f, _, _| f, 1.0, 6)).unwrap();
        let k = perm.apply(&featured(|_, y, _| y % 16, 1.0, 7)).unwrap();
        let positions = [3u32, 100, 517, 1000];
        let cpu = sampled_block_mass_cpu(&q, &k, &positions, &masks, 0.25).unwrap();
        let candle = sampled_block_mass_candle(&q, &k, &positions, &masks, 0.25).unwrap();
        assert_eq!((cpu.len(), cpu[0].len(), cpu[0][0].len()), (2, 4, 20));
        for (a, b) in cpu
            .iter()
            .flatten()
            .flatten()
            .zip(candle.iter().flatten().flatten())
        {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let total: f32 = cpu[1][2].iter().sum();
        assert!((total - 1.0).abs() < 1e-5);
    }

    #[test]
    fn v1_config_is_validated_against_the_run() {
        let cfg = RainFusionV1Config {
            dense_steps: DenseSteps::Count(11),
            ..Default::default()
        };
        assert!(cfg.validate().is_ok());
        assert!(cfg
            .validate_for_run(10, 4)
            .unwrap_err()
            .to_string()
            .contains("11 dense steps"));
        assert!(cfg.validate_for_run(20, 4).is_ok());
    }

    #[test]
    fn v1_config_is_validated() {
        assert!(RainFusionV1Attention::new(
            RainFusionV1Config {
                samples: 0,
                ..Default::default()
            },
            4
        )
        .is_err());
        assert!(RainFusionV1Attention::new(
            RainFusionV1Config {
                sparsity: 1.0,
                ..Default::default()
            },
            4
        )
        .is_err());
        assert!(RainFusionV1Attention::new(
            RainFusionV1Config {
                dense_layers: 5,
                ..Default::default()
            },
            4
        )
        .is_err());
    }
}
