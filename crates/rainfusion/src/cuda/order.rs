//! A token order on the device, for the kernels that walk a permuted sequence in place.

use candle_core::{Device, Tensor};

use crate::layout::select_tokens;
use crate::{Error, Result, TokenPermutation};

/// The positions of a [`TokenPermutation`] on a CUDA device: u32 `[L]`, position `p` holding
/// token `forward[p]`. Built only from a permutation, so every entry is a token of the sequence
/// and the kernels that read through it stay in bounds.
#[derive(Debug, Clone)]
pub struct DeviceTokenOrder {
    forward: Tensor,
    /// `inverse[t]`: the position of token t (for the kernels that cannot gather).
    inverse: Tensor,
}

impl DeviceTokenOrder {
    /// Copies `permutation.forward` to `device`.
    pub fn upload(permutation: &TokenPermutation, device: &Device) -> Result<Self> {
        let upload = |v: &[u32]| Tensor::from_slice(v, v.len(), device);
        Ok(Self {
            forward: upload(&permutation.forward)?,
            inverse: upload(&permutation.inverse)?,
        })
    }

    /// Number of tokens ordered.
    pub fn len(&self) -> usize {
        self.forward.dim(0).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether it lives on `device`.
    pub fn is_on(&self, device: &Device) -> bool {
        self.forward.device().same_device(device)
    }

    /// The u32 `[L]` tensor, after checking that it orders `tokens` tokens on `device`.
    pub(crate) fn for_sequence(&self, tokens: usize, device: &Device) -> Result<&Tensor> {
        if self.len() != tokens || !self.forward.device().same_device(device) {
            return Err(Error::InvalidConfig(format!(
                "the token order covers {} tokens on {:?}, but the sequence has {tokens} tokens on \
                 {:?}",
                self.len(),
                self.forward.device().location(),
                device.location()
            )));
        }
        Ok(&self.forward)
    }

    /// Dimension 2 of `x` (`[B, H, L, D]`) in this order: a permuted copy.
    pub(crate) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        select_tokens(x, &self.forward)
    }

    /// Undoes [`apply`](Self::apply).
    pub(crate) fn restore(&self, x: &Tensor) -> Result<Tensor> {
        select_tokens(x, &self.inverse)
    }
}
