//! Several devices on one run: the parts of guidance-parallel and sequence-parallel (Ulysses)
//! sampling, and of the spatially split VAE decode, that need no GPU to get right.
//!
//! - [`Communicator`]: what the parallel code asks of a process group (all-to-all and
//!   all-gather of tensors). The NCCL communicator (through cudarc) is not written yet: the
//!   machines with several GPUs have not been lent. [`LocalGroup`] is an in-process stand-in
//!   with the same interface (one thread per rank), for tests on the CPU.
//! - [`split`]: which tokens and which heads each rank owns.
//! - [`ulysses`]: the two all-to-alls around attention that switch a rank from its share of the
//!   sequence (all heads) to the whole sequence (its share of the heads) and back.
//! - [`mesh`]: N devices as guidance × sequence groups.
//! - [`halo`]: the rows of the latent each rank decodes when the VAE is split spatially, with
//!   the halo rows it needs from its neighbours, and the rows of its output it keeps.

pub mod halo;
mod local;
pub mod mesh;
pub mod split;
pub mod ulysses;

use candle_core::Tensor;

use crate::error::Result;
pub use local::{LocalComm, LocalGroup};

/// A process group of `size()` ranks exchanging candle tensors. Every rank calls each
/// collective in the same order (as with NCCL); a rank that does not blocks the others.
pub trait Communicator: Send + Sync {
    /// This rank, `0..size()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Rank r gives `parts[j]` to rank j (`parts.len() == size()`), and receives from every
    /// rank i the part i gave it, in rank order. Parts may differ in shape between pairs.
    fn all_to_all(&self, parts: Vec<Tensor>) -> Result<Vec<Tensor>>;
    /// Every rank's `t`, in rank order (shapes may differ between ranks).
    fn all_gather(&self, t: &Tensor) -> Result<Vec<Tensor>>;
}
