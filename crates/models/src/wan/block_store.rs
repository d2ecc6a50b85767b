//! Where a transformer's blocks live, and how the block loop gets each one on the compute device.
//!
//! Resident, every block is on the compute device for the whole run. Streamed (`--offload
//! blocks`), the blocks live on a home device (the host, in the run dtype, so a copy is a plain
//! memcpy with no cast) and the block loop asks [`BlockStore::fetch`] for block `i` just before
//! it runs; the copy on the compute device is dropped as soon as the block has run, so at most
//! one block's weights (two while the next is being fetched) are on the compute device besides
//! the embeddings and the head.
//!
//! ```text
//! home (CPU):      block 0   block 1   block 2  ...
//!                     │ fetch(0)  │ fetch(1)
//! compute (GPU):   [block 0] → run → drop, [block 1] → run → drop, ...
//! ```
//!
//! `fetch` is the one seam between the loop and the copy: today it copies synchronously on the
//! compute device's stream; a copier that keeps the host blocks in pinned memory and copies
//! block i+1 on a second stream while block i runs replaces only the inside of `fetch`.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::Device;

use crate::error::Result;
use crate::wan::block::WanBlock;

/// Where a [`crate::wan::WanTransformer`]'s blocks live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlockPlacement {
    /// Every block on the compute device for the whole run.
    #[default]
    Resident,
    /// Every block on the host (CPU memory, run dtype); each is copied to the compute device
    /// just before it runs and dropped right after. The embeddings, the head and the small
    /// tables stay on the compute device.
    Streamed,
}

impl BlockPlacement {
    pub fn name(self) -> &'static str {
        match self {
            Self::Resident => "resident",
            Self::Streamed => "streamed",
        }
    }

    /// The device the blocks are loaded to, for a model that computes on `compute`.
    pub fn home_device(self, compute: &Device) -> Device {
        match self {
            Self::Resident => compute.clone(),
            Self::Streamed => Device::Cpu,
        }
    }
}

/// The blocks of one transformer, in order, and how they reach the compute device.
pub(crate) struct BlockStore {
    placement: BlockPlacement,
    /// On the compute device (resident) or on the home device (streamed).
    blocks: Vec<WanBlock>,
    compute: Device,
    /// Blocks copied to the compute device so far (streamed only): the proof that streaming
    /// happened, for tests and benchmarks.
    fetches: AtomicU64,
}

/// One block ready to run on the compute device: the resident block itself, or a copy that is
/// freed when this is dropped.
pub(crate) enum FetchedBlock<'a> {
    Resident(&'a WanBlock),
    /// Boxed: a block's handles are large beside a reference.
    Copied(Box<WanBlock>),
}

impl Deref for FetchedBlock<'_> {
    type Target = WanBlock;

    fn deref(&self) -> &WanBlock {
        match self {
            Self::Resident(block) => block,
            Self::Copied(block) => block,
        }
    }
}

impl BlockStore {
    /// `blocks` must already be on `placement.home_device(compute)`.
    pub(crate) fn new(placement: BlockPlacement, blocks: Vec<WanBlock>, compute: &Device) -> Self {
        Self {
            placement,
            blocks,
            compute: compute.clone(),
            fetches: AtomicU64::new(0),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.blocks.len()
    }

    pub(crate) fn placement(&self) -> BlockPlacement {
        self.placement
    }

    /// Block `index` on the compute device. Streamed: a copy of every tensor it holds, made now
    /// (the caller drops it after the block has run).
    pub(crate) fn fetch(&self, index: usize) -> Result<FetchedBlock<'_>> {
        let block = &self.blocks[index];
        match self.placement {
            BlockPlacement::Resident => Ok(FetchedBlock::Resident(block)),
            BlockPlacement::Streamed => {
                let copy = block.to_device(&self.compute)?;
                self.fetches.fetch_add(1, Ordering::Relaxed);
                Ok(FetchedBlock::Copied(Box::new(copy)))
            }
        }
    }

    /// Blocks copied to the compute device since load.
    pub(crate) fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }
}
