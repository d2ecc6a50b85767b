//! The step policy and the RainFusion 2.0 [`SelfAttention`].
//!
//! Per denoising step the sampler calls [`SelfAttention::begin_step`]; per layer the transformer
//! calls [`SelfAttention::attend`]. The policy runs dense attention for the first `dense_steps`
//! steps (and on the first/last `dense_layers` layers), sparse attention afterwards, and predicts
//! a fresh mask every `mask_refresh` steps, reusing each layer's cached mask in between.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use candle_core::Tensor;

use crate::joint::{
    dense_joint_attention, joint_block_sparse_attention, predict_joint_video_mask, JointSparsity,
    JointVideoMask,
};
use crate::layout::{dense_tail_tokens, TokenPermutation, Window};
use crate::predict::predict_block_mask;
use crate::{
    block_sparse_attention, BlockMask, DenseAttention, Error, Result, SelfAttention, VideoLayout,
};

/// How many of the first steps run dense: a count, or a fraction of the step count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DenseSteps {
    Count(usize),
    /// In `[0, 1]`; resolved as `ceil(fraction · num_steps)`.
    Fraction(f64),
}

impl DenseSteps {
    /// Number of dense warm-up steps out of `num_steps`.
    pub fn resolve(&self, num_steps: usize) -> usize {
        match *self {
            Self::Count(n) => n,
            Self::Fraction(f) => ((f * num_steps as f64) - 1e-9).ceil().max(0.0) as usize,
        }
    }
}

impl Default for DenseSteps {
    /// A quarter of the steps (the public recipe's advice: at least 1/4 of steps dense).
    fn default() -> Self {
        Self::Fraction(0.25)
    }
}

impl FromStr for DenseSteps {
    type Err = Error;

    /// `"12"` is a count; `"0.25"` (anything with a '.') is a fraction in `[0, 1]`.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if let Ok(n) = s.parse::<usize>() {
            return Ok(Self::Count(n));
        }
        match s.parse::<f64>() {
            Ok(f) if (0.0..=1.0).contains(&f) => Ok(Self::Fraction(f)),
            _ => Err(Error::InvalidConfig(format!(
                "dense steps '{s}' is neither a step count nor a fraction in [0, 1]"
            ))),
        }
    }
}

/// Settings of RainFusion 2.0 attention.
#[derive(Debug, Clone, PartialEq)]
pub struct RainFusionConfig {
    /// Fraction of key blocks each query block skips, in `[0, 1)` (forced bands come on top).
    pub sparsity: f64,
    /// Tokens per block: a power of two ≥ 16 (64 or 128 in practice).
    pub block_size: usize,
    /// Window shape of the token permutation.
    pub window: Window,
    /// Dense warm-up steps.
    pub dense_steps: DenseSteps,
    /// Predict a new mask every this many sparse steps (≥ 1); reuse it in between.
    pub mask_refresh: usize,
    /// This many first and last layers always run dense.
    pub dense_layers: usize,
    /// Frame 0 attends to everything and everything attends to it (moved next to the text).
    pub first_frame_sink: bool,
}

impl Default for RainFusionConfig {
    fn default() -> Self {
        Self {
            sparsity: 0.8,
            block_size: 128,
            window: Window::Tile,
            dense_steps: DenseSteps::default(),
            mask_refresh: 1,
            dense_layers: 0,
            first_frame_sink: true,
        }
    }
}

impl RainFusionConfig {
    /// Checks every field is in range.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidConfig(msg));
        if !(0.0..1.0).contains(&self.sparsity) {
            return bad(format!("sparsity {} is outside [0, 1)", self.sparsity));
        }
        if self.block_size < 16 || !self.block_size.is_power_of_two() {
            return bad(format!(
                "block size {} is not a power of two ≥ 16",
                self.block_size
            ));
        }
        if self.mask_refresh == 0 {
            return bad("mask refresh must be at least 1 step".into());
        }
        if let DenseSteps::Fraction(f) = self.dense_steps {
            if !(0.0..=1.0).contains(&f) {
                return bad(format!("dense steps fraction {f} is outside [0, 1]"));
            }
        }
        Ok(())
    }

    /// Checks the settings against a run of `num_steps` steps on a model of `num_layers` layers.
    pub fn validate_for_run(&self, num_steps: usize, num_layers: usize) -> Result<()> {
        self.validate()?;
        let schedule = StepSchedule::new(
            self.dense_steps,
            self.dense_layers,
            self.mask_refresh,
            num_layers,
        );
        schedule.validate_for_run(num_steps)
    }
}

/// What one `attend` call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    Dense,
    /// Sparse with the mask cached under `slot`; `refresh` says the mask must be re-predicted.
    Sparse {
        slot: (usize, usize),
        refresh: bool,
    },
}

/// Step bookkeeping shared by RainFusion 2.0 and 1.0: dense steps and layers, mask refresh,
/// and the density actually computed.
#[derive(Debug, Clone)]
pub(crate) struct StepSchedule {
    dense_steps: DenseSteps,
    dense_layers: usize,
    mask_refresh: usize,
    num_layers: usize,
    /// (step, num_steps) of the current step; None until `begin_step` is first called.
    step: Option<(usize, usize)>,
    /// Calls per layer within the current step: a sampler that runs the conditional and
    /// unconditional passes separately calls each layer twice, and each pass needs its own mask.
    calls_this_step: HashMap<usize, usize>,
    /// Step at which each slot's cached mask was predicted.
    predicted_at: HashMap<(usize, usize), usize>,
    density_sum: f64,
    calls: u64,
    predictions: u64,
}

impl StepSchedule {
    pub(crate) fn new(
        dense_steps: DenseSteps,
        dense_layers: usize,
        mask_refresh: usize,
        num_layers: usize,
    ) -> Self {
        Self {
            dense_steps,
            dense_layers,
            mask_refresh: mask_refresh.max(1),
            num_layers,
            step: None,
            calls_this_step: HashMap::new(),
            predicted_at: HashMap::new(),
            density_sum: 0.0,
            calls: 0,
            predictions: 0,
        }
    }

    /// The schedule of `config` for a model of `num_layers` layers, refused when it asks for more
    /// dense layers than the model has (both RainFusion versions build theirs here).
    pub(crate) fn for_model(config: &RainFusionConfig, num_layers: usize) -> Result<Self> {
        let schedule = Self::new(
            config.dense_steps,
            config.dense_layers,
            config.mask_refresh,
            num_layers,
        );
        schedule.check_dense_layers()?;
        Ok(schedule)
    }

    fn check_dense_layers(&self) -> Result<()> {
        if self.dense_layers > self.num_layers {
            return Err(Error::InvalidConfig(format!(
                "{} dense layers exceed the model's {} layers",
                self.dense_layers, self.num_layers
            )));
        }
        Ok(())
    }

    pub(crate) fn validate_for_run(&self, num_steps: usize) -> Result<()> {
        let dense = self.dense_steps.resolve(num_steps);
        if dense > num_steps {
            return Err(Error::InvalidConfig(format!(
                "{dense} dense steps exceed the {num_steps} sampling steps"
            )));
        }
        self.check_dense_layers()
    }

    pub(crate) fn begin_step(&mut self, step: usize, num_steps: usize) {
        self.step = Some((step, num_steps));
        self.calls_this_step.clear();
    }

    /// Decides how layer `layer` runs now. Without any `begin_step` every call is sparse and
    /// predicts its own mask.
    pub(crate) fn plan(&mut self, layer: usize) -> Result<Plan> {
        if layer >= self.num_layers {
            return Err(Error::InvalidConfig(format!(
                "layer {layer} is out of range for a policy built for {} layers",
                self.num_layers
            )));
        }
        let occurrence = {
            let calls = self.calls_this_step.entry(layer).or_insert(0);
            *calls += 1;
            *calls - 1
        };
        let dense_layer = layer < self.dense_layers || layer + self.dense_layers >= self.num_layers;
        let Some((step, num_steps)) = self.step else {
            return Ok(if dense_layer {
                Plan::Dense
            } else {
                Plan::Sparse {
                    slot: (layer, occurrence),
                    refresh: true,
                }
            });
        };
        if dense_layer || step < self.dense_steps.resolve(num_steps) {
            return Ok(Plan::Dense);
        }
        let slot = (layer, occurrence);
        let refresh = match self.predicted_at.get(&slot) {
            Some(&at) => step < at || step - at >= self.mask_refresh,
            None => true,
        };
        Ok(Plan::Sparse { slot, refresh })
    }

    pub(crate) fn mark_predicted(&mut self, slot: (usize, usize)) {
        let step = self.step.map_or(0, |(s, _)| s);
        self.predicted_at.insert(slot, step);
        self.predictions += 1;
    }

    pub(crate) fn record(&mut self, density: f64) {
        self.density_sum += density;
        self.calls += 1;
    }

    pub(crate) fn effective_density(&self) -> f64 {
        if self.calls == 0 {
            1.0
        } else {
            self.density_sum / self.calls as f64
        }
    }
}

/// A joint call's video mask with the layout, batch and heads it was predicted for.
type CachedJointMask = (VideoLayout, usize, usize, Arc<JointVideoMask>);

/// Masks cached per (layer, pass) slot, with the shape they were predicted for.
#[derive(Debug, Default, Clone)]
pub(crate) struct MaskCache {
    masks: HashMap<(usize, usize), (VideoLayout, Arc<BlockMask>)>,
    permutations: HashMap<VideoLayout, Arc<TokenPermutation>>,
    /// Video masks of joint `[video; padded text]` calls ([`SelfAttention::attend_joint`]),
    /// with the layout, batch and heads they were predicted for.
    joint: HashMap<(usize, usize), CachedJointMask>,
    /// Masks predicted and kept on the GPU, one bit per block pair, with their density.
    #[cfg(feature = "cuda")]
    device_masks: HashMap<(usize, usize), (VideoLayout, crate::cuda::PackedDeviceMask, f64)>,
    /// The permutations on the GPU, per layout.
    #[cfg(feature = "cuda")]
    device_orders: HashMap<VideoLayout, Arc<crate::cuda::DeviceTokenOrder>>,
}

impl MaskCache {
    /// The cached mask of `slot` if it fits `layout`, `batch` and `heads`.
    pub(crate) fn get(
        &self,
        slot: (usize, usize),
        layout: &VideoLayout,
        batch: usize,
        heads: usize,
    ) -> Option<Arc<BlockMask>> {
        self.masks
            .get(&slot)
            .filter(|(l, m)| l == layout && m.batch == batch && m.heads == heads)
            .map(|(_, m)| m.clone())
    }

    pub(crate) fn insert(
        &mut self,
        slot: (usize, usize),
        layout: VideoLayout,
        mask: Arc<BlockMask>,
    ) {
        self.masks.insert(slot, (layout, mask));
    }

    /// The permutation of `layout` (built once per layout).
    pub(crate) fn permutation(
        &mut self,
        layout: &VideoLayout,
        window: Window,
        sink: bool,
    ) -> Result<Arc<TokenPermutation>> {
        if let Some(p) = self.permutations.get(layout) {
            return Ok(p.clone());
        }
        let p = Arc::new(TokenPermutation::for_layout(layout, window, sink)?);
        self.permutations.insert(*layout, p.clone());
        Ok(p)
    }

    /// `permutation` (the one of `layout`) on `device`, uploaded once per layout.
    #[cfg(feature = "cuda")]
    pub(crate) fn device_order(
        &mut self,
        layout: &VideoLayout,
        permutation: &TokenPermutation,
        device: &candle_core::Device,
    ) -> Result<Arc<crate::cuda::DeviceTokenOrder>> {
        if let Some(order) = self
            .device_orders
            .get(layout)
            .filter(|o| o.len() == permutation.len() && o.is_on(device))
        {
            return Ok(order.clone());
        }
        let order = Arc::new(crate::cuda::DeviceTokenOrder::upload(permutation, device)?);
        self.device_orders.insert(*layout, order.clone());
        Ok(order)
    }
}

/// Checks q, k, v against `layout` and returns (batch, heads, tokens, head_dim).
pub(crate) fn check_inputs(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    layout: &VideoLayout,
) -> Result<(usize, usize, usize, usize)> {
    crate::inputs::check_self_attention(q, k, v)?;
    let dims = q.dims4()?;
    if dims.2 != layout.total_tokens() {
        return Err(Error::LayoutMismatch {
            layout_tokens: layout.total_tokens(),
            tensor_tokens: dims.2,
        });
    }
    Ok(dims)
}

/// RainFusion 2.0: permuted, mask-predicted block-sparse self-attention.
///
/// Each sparse call permutes q, k, v into window order, predicts (or reuses) one mask per
/// (batch, head), runs [`block_sparse_attention`], and restores the original token order.
/// When the mask keeps every block (sparsity 0, or grids too small to skip anything) it runs
/// exactly what [`DenseAttention`] runs, on the unpermuted tensors, so the output is identical.
#[derive(Debug, Clone)]
pub struct RainFusionAttention {
    config: RainFusionConfig,
    schedule: StepSchedule,
    cache: MaskCache,
}

impl RainFusionAttention {
    /// A policy for a model of `num_layers` self-attention layers.
    pub fn new(config: RainFusionConfig, num_layers: usize) -> Result<Self> {
        config.validate()?;
        let schedule = StepSchedule::for_model(&config, num_layers)?;
        Ok(Self {
            config,
            schedule,
            cache: MaskCache::default(),
        })
    }

    pub fn config(&self) -> &RainFusionConfig {
        &self.config
    }

    /// Masks predicted so far (the rest of the sparse calls reused a cached mask).
    pub fn mask_predictions(&self) -> u64 {
        self.schedule.predictions
    }
}

impl SelfAttention for RainFusionAttention {
    fn attend(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        layout: &VideoLayout,
    ) -> Result<Tensor> {
        self.attend_in(layer, q, k, v, layout, false)
    }

    fn attend_tokens(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        layout: &VideoLayout,
    ) -> Result<Tensor> {
        self.attend_in(layer, q, k, v, layout, true)
    }

    /// Without padding, the text is the dense tail of [`attend`](SelfAttention::attend). With
    /// padding: the same schedule (dense warm-up, refresh, dense layers) over
    /// [`crate::joint`]: video × video blocks predicted (one mask per layer and pass, reused
    /// like the others), the text band dense, padded text keys excluded.
    fn attend_joint(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        layout: &VideoLayout,
        text_valid: Option<&Tensor>,
    ) -> Result<Tensor> {
        let Some(text_valid) = text_valid else {
            return self.attend_in(layer, q, k, v, layout, false);
        };
        let (batch, heads, _, head_dim) = check_inputs(q, k, v, layout)?;
        let plan = self.schedule.plan(layer)?;
        let (slot, refresh) = match plan {
            Plan::Sparse { slot, refresh } if self.config.sparsity > 0.0 => (slot, refresh),
            _ => {
                self.schedule.record(1.0);
                return dense_joint_attention(q, k, v, layout, text_valid);
            }
        };
        let cfg = &self.config;
        let cached = self
            .cache
            .joint
            .get(&slot)
            .filter(|(l, b, h, _)| !refresh && l == layout && *b == batch && *h == heads)
            .map(|(.., mask)| mask.clone());
        let video = match cached {
            Some(mask) => mask,
            None => {
                let settings = JointSparsity {
                    sparsity: cfg.sparsity,
                    block_size: cfg.block_size,
                    window: cfg.window,
                    first_frame_sink: cfg.first_frame_sink,
                };
                let mask = Arc::new(predict_joint_video_mask(q, k, layout, &settings)?);
                self.cache
                    .joint
                    .insert(slot, (*layout, batch, heads, mask.clone()));
                self.schedule.mark_predicted(slot);
                mask
            }
        };
        let density = video.density();
        self.schedule.record(density);
        if density >= 1.0 {
            return dense_joint_attention(q, k, v, layout, text_valid);
        }
        let scale = 1.0 / (head_dim as f64).sqrt();
        joint_block_sparse_attention(q, k, v, layout, Some(text_valid), &video, scale)
    }

    fn begin_step(&mut self, step: usize, num_steps: usize) {
        self.schedule.begin_step(step, num_steps);
    }

    fn effective_density(&self) -> f64 {
        self.schedule.effective_density()
    }
}

impl RainFusionAttention {
    /// The device mask of `slot`: the cached one (unpacked from its bits) when it was predicted
    /// for this layout, batch and heads and no refresh is due; otherwise
    /// `predict(dense_tail_tokens)`'s, cached as bits for later steps. With its density.
    #[cfg(feature = "cuda")]
    fn device_mask(
        &mut self,
        slot: (usize, usize),
        layout: &VideoLayout,
        (batch, heads): (usize, usize),
        refresh: bool,
        predict: impl FnOnce(usize) -> Result<crate::cuda::DeviceBlockMask>,
    ) -> Result<(crate::cuda::DeviceBlockMask, f64)> {
        let cached = self
            .cache
            .device_masks
            .get(&slot)
            .filter(|(l, m, _)| !refresh && l == layout && m.batch == batch && m.heads == heads)
            .map(|(_, m, density)| (m, *density));
        if let Some((packed, density)) = cached {
            return Ok((packed.unpacked()?, density));
        }
        let tail = dense_tail_tokens(layout, self.config.first_frame_sink);
        let mask = predict(tail)?;
        let density = mask.density()?;
        self.cache
            .device_masks
            .insert(slot, (*layout, mask.packed()?, density));
        self.schedule.mark_predicted(slot);
        Ok((mask, density))
    }

    /// The sparse (or, by plan, dense) attention; the output is `[B, H, L, D]`, or contiguous
    /// `[B, L, H, D]` when `tokens_major` (see [`SelfAttention::attend_tokens`]).
    fn attend_in(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        layout: &VideoLayout,
        tokens_major: bool,
    ) -> Result<Tensor> {
        let dense = |q: &Tensor, k: &Tensor, v: &Tensor| {
            if tokens_major {
                DenseAttention.attend_tokens(layer, q, k, v, layout)
            } else {
                DenseAttention.attend(layer, q, k, v, layout)
            }
        };
        let (batch, heads, _, head_dim) = check_inputs(q, k, v, layout)?;
        let plan = self.schedule.plan(layer)?;
        let Plan::Sparse { slot, refresh } = plan else {
            self.schedule.record(1.0);
            return dense(q, k, v);
        };
        if self.config.sparsity == 0.0 {
            // Nothing can be skipped: skip the permutation and prediction too.
            self.schedule.record(1.0);
            return dense(q, k, v);
        }
        let cfg = self.config.clone();
        let permutation = self
            .cache
            .permutation(layout, cfg.window, cfg.first_frame_sink)?;
        #[cfg(feature = "cuda")]
        if crate::cuda::is_supported(q, cfg.block_size) && gather_in_place() {
            // The kernels walk q, k, v in window order where they lie and write the output
            // in natural order: no permuted copies (NOTES.md, "Gathered window order").
            let order = self.cache.device_order(layout, &permutation, q.device())?;
            let (mask, density) =
                self.device_mask(slot, layout, (batch, heads), refresh, |tail| {
                    crate::cuda::predict_block_mask_in_order(
                        q,
                        k,
                        Some(&order),
                        cfg.block_size,
                        cfg.sparsity,
                        tail,
                    )
                })?;
            self.schedule.record(density);
            if density >= 1.0 {
                return dense(q, k, v);
            }
            let scale = 1.0 / (head_dim as f64).sqrt();
            let out_layout = if tokens_major {
                crate::cuda::OutputLayout::Blhd
            } else {
                crate::cuda::OutputLayout::Bhld
            };
            // [B, L, H, D] contiguous when tokens_major, else [B, H, L, D].
            return crate::cuda::block_sparse_attention_in_order(
                q, k, v, &mask, &order, scale, out_layout,
            );
        }
        let (qp, kp) = (permutation.apply(q)?, permutation.apply(k)?);
        #[cfg(feature = "cuda")]
        if crate::cuda::is_supported(&qp, cfg.block_size) {
            // Mask predicted and kept on the GPU: no block-score matrix crosses to the host.
            let (mask, density) =
                self.device_mask(slot, layout, (batch, heads), refresh, |tail| {
                    crate::cuda::predict_block_mask(&qp, &kp, cfg.block_size, cfg.sparsity, tail)
                })?;
            self.schedule.record(density);
            if density >= 1.0 {
                return dense(q, k, v);
            }
            let vp = permutation.apply(v)?;
            let scale = 1.0 / (head_dim as f64).sqrt();
            if tokens_major {
                // [B, L, H, D] in window order → gather whole tokens back: one copy.
                let out = crate::cuda::block_sparse_attention_device_with_layout(
                    &qp,
                    &kp,
                    &vp,
                    &mask,
                    scale,
                    crate::cuda::OutputLayout::Blhd,
                )?;
                // Each permuted copy is freed once read, so that the restore does not stack two
                // more [B, L, H, D] tensors on top of them.
                drop((qp, kp, vp));
                let restored = permutation.restore(&out.transpose(1, 2)?)?;
                drop(out);
                return Ok(restored.transpose(1, 2)?.contiguous()?);
            }
            let out = crate::cuda::block_sparse_attention_device(&qp, &kp, &vp, &mask, scale)?;
            drop((qp, kp, vp));
            return permutation.restore(&out);
        }
        let mask = match self
            .cache
            .get(slot, layout, batch, heads)
            .filter(|_| !refresh)
        {
            Some(mask) => mask,
            None => {
                let tail = dense_tail_tokens(layout, cfg.first_frame_sink);
                let mask = Arc::new(predict_block_mask(
                    &qp,
                    &kp,
                    cfg.block_size,
                    cfg.sparsity,
                    tail,
                )?);
                self.cache.insert(slot, *layout, mask.clone());
                self.schedule.mark_predicted(slot);
                mask
            }
        };
        self.schedule.record(mask.density());
        if mask.is_dense() {
            return dense(q, k, v);
        }
        let vp = permutation.apply(v)?;
        let out = block_sparse_attention(&qp, &kp, &vp, &mask, 1.0 / (head_dim as f64).sqrt())?;
        drop((qp, kp, vp));
        let out = permutation.restore(&out)?;
        if tokens_major {
            return Ok(out.transpose(1, 2)?.contiguous()?);
        }
        Ok(out)
    }
}

/// Environment variable that turns the in-place window order off on CUDA
/// (`RAINFUSION_CUDA_NO_GATHER=1`): q, k and v are then permuted into copies and the output
/// restored, as on the CPU. For comparisons.
#[cfg(feature = "cuda")]
pub const NO_GATHER_ENV: &str = "RAINFUSION_CUDA_NO_GATHER";

#[cfg(feature = "cuda")]
fn gather_in_place() -> bool {
    std::env::var_os(NO_GATHER_ENV).is_none_or(|v| v.is_empty() || v == "0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use rand::{Rng, SeedableRng};

    fn random(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = shape.0 * shape.1 * shape.2 * shape.3;
        let data: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }

    fn qkv(layout: &VideoLayout, seed: u64) -> (Tensor, Tensor, Tensor) {
        let shape = (2, 2, layout.total_tokens(), 16);
        (
            random(shape, seed),
            random(shape, seed + 1),
            random(shape, seed + 2),
        )
    }

    fn config(sparsity: f64) -> RainFusionConfig {
        RainFusionConfig {
            sparsity,
            block_size: 16,
            dense_steps: DenseSteps::Count(0),
            ..Default::default()
        }
    }

    #[test]
    fn config_validation_names_the_bad_value() {
        let err = |c: RainFusionConfig| c.validate().unwrap_err().to_string();
        assert!(err(RainFusionConfig {
            sparsity: 1.0,
            ..Default::default()
        })
        .contains("sparsity 1"));
        assert!(err(RainFusionConfig {
            sparsity: -0.5,
            ..Default::default()
        })
        .contains("sparsity"));
        assert!(err(RainFusionConfig {
            block_size: 96,
            ..Default::default()
        })
        .contains("block size 96"));
        assert!(err(RainFusionConfig {
            block_size: 8,
            ..Default::default()
        })
        .contains("block size 8"));
        assert!(err(RainFusionConfig {
            mask_refresh: 0,
            ..Default::default()
        })
        .contains("refresh"));
        assert!(err(RainFusionConfig {
            dense_steps: DenseSteps::Fraction(1.5),
            ..Default::default()
        })
        .contains("1.5"));
        assert!(RainFusionConfig::default().validate().is_ok());
        let steps = RainFusionConfig {
            dense_steps: DenseSteps::Count(60),
            ..Default::default()
        };
        assert!(steps
            .validate_for_run(50, 30)
            .unwrap_err()
            .to_string()
            .contains("60 dense steps"));
        let layers = RainFusionConfig {
            dense_layers: 31,
            ..Default::default()
        };
        assert!(layers.validate_for_run(50, 30).is_err());
        assert!(RainFusionAttention::new(layers, 30).is_err());
    }

    #[test]
    fn dense_steps_parse_counts_and_fractions() {
        assert_eq!("12".parse::<DenseSteps>().unwrap(), DenseSteps::Count(12));
        assert_eq!(
            "0.25".parse::<DenseSteps>().unwrap(),
            DenseSteps::Fraction(0.25)
        );
        assert!("1.5".parse::<DenseSteps>().is_err());
        assert!("many".parse::<DenseSteps>().is_err());
        assert_eq!(DenseSteps::Fraction(0.25).resolve(50), 13);
        assert_eq!(DenseSteps::Fraction(0.25).resolve(40), 10);
        assert_eq!(DenseSteps::default().resolve(4), 1);
    }

    #[test]
    fn sparsity_zero_is_bitwise_dense() {
        let layout = VideoLayout {
            frames: 3,
            height: 10,
            width: 12,
            text_tokens: 0,
        };
        let (q, k, v) = qkv(&layout, 1);
        let mut rf = RainFusionAttention::new(config(0.0), 1).unwrap();
        rf.begin_step(0, 1);
        let sparse = rf.attend(0, &q, &k, &v, &layout).unwrap();
        let dense = DenseAttention.attend(0, &q, &k, &v, &layout).unwrap();
        let (a, b) = (
            sparse.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            dense.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a, b);
        assert_eq!(rf.effective_density(), 1.0);
    }

    #[test]
    fn masks_that_keep_everything_are_bitwise_dense() {
        // One frame: the whole video is the first-frame sink, so every block is forced dense.
        let layout = VideoLayout {
            frames: 1,
            height: 12,
            width: 12,
            text_tokens: 0,
        };
        let (q, k, v) = qkv(&layout, 3);
        let mut rf = RainFusionAttention::new(config(0.9), 1).unwrap();
        let sparse = rf.attend(0, &q, &k, &v, &layout).unwrap();
        let dense = DenseAttention.attend(0, &q, &k, &v, &layout).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&sparse), flat(&dense));
        assert_eq!(rf.mask_predictions(), 1);
        assert_eq!(rf.effective_density(), 1.0);
    }

    #[test]
    fn token_major_output_is_the_head_major_output_transposed() {
        let layout = VideoLayout {
            frames: 3,
            height: 10,
            width: 12,
            text_tokens: 5,
        };
        let (q, k, v) = qkv(&layout, 4);
        let transposed = |t: Tensor| t.transpose(1, 2).unwrap().contiguous().unwrap();
        let mut a = RainFusionAttention::new(config(0.7), 2).unwrap();
        let mut b = RainFusionAttention::new(config(0.7), 2).unwrap();
        let heads = a.attend(1, &q, &k, &v, &layout).unwrap();
        let tokens = b.attend_tokens(1, &q, &k, &v, &layout).unwrap();
        assert_eq!(tokens.dims(), transposed(heads.clone()).dims());
        let same = |x: &Tensor, y: &Tensor| {
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                == y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert!(same(&tokens, &transposed(heads)));
        assert!((a.effective_density() - b.effective_density()).abs() < 1e-12);
        assert!(a.effective_density() < 0.9, "the sparse path must run");
        let dense = DenseAttention.attend(0, &q, &k, &v, &layout).unwrap();
        let dense_tokens = DenseAttention
            .attend_tokens(0, &q, &k, &v, &layout)
            .unwrap();
        assert!(same(&dense_tokens, &transposed(dense)));
    }

    #[test]
    fn sparse_call_matches_reference_in_original_order() {
        // The permutation must be undone: compare with masked attention on permuted tensors,
        // mapped back by hand.
        let layout = VideoLayout {
            frames: 3,
            height: 10,
            width: 12,
            text_tokens: 5,
        };
        let (q, k, v) = qkv(&layout, 4);
        let mut rf = RainFusionAttention::new(config(0.7), 2).unwrap();
        let out = rf.attend(1, &q, &k, &v, &layout).unwrap();
        let perm = TokenPermutation::for_layout(&layout, Window::Tile, true).unwrap();
        let (qp, kp, vp) = (
            perm.apply(&q).unwrap(),
            perm.apply(&k).unwrap(),
            perm.apply(&v).unwrap(),
        );
        let mask = predict_block_mask(&qp, &kp, 16, 0.7, 120 + 5).unwrap();
        assert!(mask.density() < 0.9, "test must exercise skipping");
        let want =
            crate::reference::masked_attention_reference(&qp, &kp, &vp, &mask, 0.25).unwrap();
        let want = perm.restore(&want).unwrap();
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
    }

    #[test]
    fn schedule_runs_dense_warm_up_then_refreshes_every_n_steps() {
        let layout = VideoLayout {
            frames: 3,
            height: 8,
            width: 16,
            text_tokens: 0,
        };
        let (q, k, v) = qkv(&layout, 7);
        let cfg = RainFusionConfig {
            dense_steps: DenseSteps::Count(2),
            mask_refresh: 3,
            dense_layers: 1,
            ..config(0.75)
        };
        let layers = 4;
        let mut rf = RainFusionAttention::new(cfg, layers).unwrap();
        let mut sparse_density = None;
        for step in 0..8 {
            rf.begin_step(step, 8);
            for layer in 0..layers {
                // Two passes per layer per step, like separate conditional / unconditional calls.
                for _ in 0..2 {
                    rf.attend(layer, &q, &k, &v, &layout).unwrap();
                }
            }
            if step == 2 {
                sparse_density = Some(rf.schedule.density_sum);
            }
        }
        // Sparse steps 2..8 with refresh 3 predict at steps 2 and 5; two middle layers, two passes.
        assert_eq!(rf.mask_predictions(), 2 * 2 * 2);
        // Dense calls: steps 0,1 (all 8 calls each) and the first/last layer of steps 2..8.
        let calls = 8 * layers * 2;
        let dense_calls = 2 * layers * 2 + 6 * 2 * 2;
        let sparse_calls = calls - dense_calls;
        let step2_sparse = sparse_density.unwrap() - (2 * layers * 2 + 2 * 2) as f64; // minus dense calls so far
        let per_sparse_call = step2_sparse / 4.0;
        assert!(per_sparse_call < 1.0);
        let want = (dense_calls as f64 + sparse_calls as f64 * per_sparse_call) / calls as f64;
        assert!(
            (rf.effective_density() - want).abs() < 1e-9,
            "{} vs {want}",
            rf.effective_density()
        );
    }

    #[test]
    fn errors_for_bad_layer_or_layout() {
        let layout = VideoLayout {
            frames: 2,
            height: 4,
            width: 4,
            text_tokens: 0,
        };
        let (q, k, v) = qkv(&layout, 9);
        let mut rf = RainFusionAttention::new(config(0.5), 2).unwrap();
        assert!(rf.attend(2, &q, &k, &v, &layout).is_err());
        let wrong = VideoLayout {
            frames: 3,
            ..layout
        };
        assert!(matches!(
            rf.attend(0, &q, &k, &v, &wrong),
            Err(Error::LayoutMismatch { .. })
        ));
        let half = q.to_dtype(DType::BF16).unwrap();
        assert!(rf
            .attend(
                0,
                &half,
                &k.to_dtype(DType::BF16).unwrap(),
                &v.to_dtype(DType::BF16).unwrap(),
                &layout
            )
            .is_ok());
    }
}
