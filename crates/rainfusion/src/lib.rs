//! RainFusion: mask-predicted block-sparse self-attention for video diffusion transformers.
//!
//! The crate knows nothing of any particular model. It sees q, k, v of shape
//! `[batch, heads, tokens, head_dim]` and a [`VideoLayout`] that says how the tokens tile a
//! video (frames × height × width in tokens, row-major, then text tokens if any).
//!
//! The entry point a model calls is the [`SelfAttention`] trait: one call per layer per step.
//! - [`DenseAttention`]: plain softmax attention (never materialises the L×L scores of all heads).
//! - [`RainFusionAttention`] (RainFusion 2.0): tokens permuted into compact windows
//!   ([`layout`]), one block mask per (batch, head) predicted from pooled q and k ([`predict`]),
//!   block-sparse attention over the kept blocks ([`block_sparse_attention`]), order restored;
//!   dense warm-up steps, dense layers and mask reuse across steps are its step policy ([`policy`]).
//! - [`key_masked_attention`]: dense attention with a per-key validity mask (padded text keys of a
//!   joint video + text sequence), over query chunks.
//! - [`joint_rainfusion_attention`] ([`joint`]): RainFusion on a joint `[video; text]` sequence:
//!   video × video blocks predicted and sparse, the text rows and columns dense (the text band),
//!   padded text keys excluded per sample.
//! - [`RainFusionV1Attention`] (RainFusion 1.0): spatial / temporal / textural head patterns,
//!   picked per head online ([`v1`]).
//!
//! Kernels: [`sparse_cpu`] (flash-style CPU loop over kept blocks), [`generic`] (candle ops, any
//! device), and [`reference`] (slow masked softmax every fast path is tested against).

#[cfg(feature = "cuda")]
pub mod cuda;
mod dense;
mod error;
pub mod generic;
mod inputs;
pub mod joint;
pub mod layout;
pub mod mask;
mod masked;
pub mod policy;
pub mod predict;
pub mod reference;
mod sparse;
pub mod sparse_cpu;
pub mod v1;

pub use dense::{dense_attention, dense_self_attention, DenseAttention};
pub use error::{Error, Result};
pub use joint::{
    joint_block_sparse_attention, joint_rainfusion_attention, predict_joint_video_mask,
    JointSparsity, JointVideoMask,
};
pub use layout::{TokenPermutation, Window};
pub use mask::BlockMask;
pub use masked::key_masked_attention;
pub use policy::{DenseSteps, RainFusionAttention, RainFusionConfig};
pub use predict::predict_block_mask;
pub use sparse::block_sparse_attention;
pub use v1::{HeadPattern, RainFusionV1Attention, RainFusionV1Config};

use candle_core::Tensor;

/// How the video tokens of one sample are arranged: `frames × height × width` tokens in
/// row-major (f, h, w) order, followed by `text_tokens` text tokens (0 for Wan's self-attention).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VideoLayout {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub text_tokens: usize,
}

impl VideoLayout {
    pub fn new(frames: usize, height: usize, width: usize) -> Self {
        Self {
            frames,
            height,
            width,
            text_tokens: 0,
        }
    }

    /// Tokens per frame (height × width).
    pub fn frame_tokens(&self) -> usize {
        self.height * self.width
    }

    /// Video tokens (frames × height × width).
    pub fn video_tokens(&self) -> usize {
        self.frames * self.frame_tokens()
    }

    /// Every token of the sequence: video then text.
    pub fn total_tokens(&self) -> usize {
        self.video_tokens() + self.text_tokens
    }
}

/// The self-attention a transformer delegates to, once per layer per forward pass.
///
/// Implementations may keep state across calls (a mask cache for reuse across steps,
/// statistics of the density actually computed), hence `&mut self`.
pub trait SelfAttention {
    /// q, k, v: `[batch, heads, tokens, head_dim]`, tokens ordered as `layout` says.
    /// Returns `[batch, heads, tokens, head_dim]` in the same token order and dtype as `q`.
    fn attend(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        layout: &VideoLayout,
    ) -> Result<Tensor>;

    /// [`attend`](Self::attend) with the output as contiguous `[batch, tokens, heads, head_dim]`
    /// memory, which an output projection reads as `[batch, tokens, heads·head_dim]` with no
    /// copy. Implementations whose kernels can write that layout directly override this.
    fn attend_tokens(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        layout: &VideoLayout,
    ) -> Result<Tensor> {
        Ok(self
            .attend(layer, q, k, v, layout)?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// Joint attention over `[video; text]` (`layout.text_tokens` text tokens after the video),
    /// with the text of each sample padded: `text_valid` `[B, Lt]` (any dtype, non-zero = a
    /// real token) or `None` when every text token is real. Padded text keys get no weight;
    /// every query row (padded ones too) is computed. `[B, H, Lv + Lt, D]` in, same out.
    ///
    /// Without padding this is [`attend`](Self::attend) (the text is the dense tail of the
    /// sequence). With padding the default is dense ([`key_masked_attention`]); a sparse policy
    /// overrides it ([`joint`]).
    fn attend_joint(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        layout: &VideoLayout,
        text_valid: Option<&Tensor>,
    ) -> Result<Tensor> {
        match text_valid {
            None => self.attend(layer, q, k, v, layout),
            Some(text_valid) => joint::dense_joint_attention(q, k, v, layout, text_valid),
        }
    }

    /// Called by the sampler before each denoising step (0-based, of `num_steps`), so a policy
    /// can switch between dense warm-up and sparse steps and decide when to refresh its masks.
    fn begin_step(&mut self, _step: usize, _num_steps: usize) {}

    /// Fraction of attention blocks actually computed so far (1.0 for dense), averaged over
    /// layers, heads and steps; recorded in the output sidecar.
    fn effective_density(&self) -> f64 {
        1.0
    }
}
