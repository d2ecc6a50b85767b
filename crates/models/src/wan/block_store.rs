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
//! `fetch` is the one seam between the loop and the copy. Two copiers sit behind it:
//! - overlapped (CUDA compute device): the host blocks are page-locked at load and block i+1 is
//!   copied on a second stream while block i runs (`block_stream`); at most two blocks' copies
//!   are on the GPU, the running one and the next;
//! - synchronous (the CPU, other devices, and CUDA with `VDIT_OFFLOAD_SYNC=1`): block i is
//!   copied with candle's copies on the compute device's stream when it is fetched.
//!
//! [`OFFLOAD_SYNC_ENV`] keeps the synchronous copy on a GPU so that both can be measured.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::Device;

use crate::error::Result;
use crate::wan::block::WanBlock;
#[cfg(feature = "cuda")]
use crate::wan::block_stream::BlockStreamer;
use crate::wan::layers::WeightSource;
use crate::wan::tensor_map::{StreamedBlock, ToDevice};

/// Environment variable: `1` keeps the synchronous block copy of `--offload blocks` on a CUDA
/// device (each block copied on candle's stream just before it runs, from pageable memory)
/// instead of the overlapped one (pinned host blocks, block i+1 copied on a second stream while
/// block i runs). Read once, when a streamed transformer is loaded. For measuring one against
/// the other (scripts/gpu/NOTES.md, "Streaming, overlapped"), and a fallback.
pub const OFFLOAD_SYNC_ENV: &str = "VDIT_OFFLOAD_SYNC";

/// Environment variable: `0` casts fp8 block weights to the run dtype at load when they are
/// streamed onto a CUDA device (`--offload blocks`), instead of streaming them as fp8 and casting
/// each layer just before its matmul (the default since the H100 run of 2026-12-07, in which
/// `cuda_block_stream` passed with the fp8 case after the GGUF one, the order that had failed
/// before the pinning fix). Casting at load doubles the host memory and the bytes copied per
/// block.
pub const STREAM_FP8_ENV: &str = "VDIT_STREAM_FP8";

/// Where a transformer's blocks are read from for `placement`: `src` on the blocks' home
/// device (the host when streamed, so a 14B model's blocks never pass through the compute
/// device), with fp8 weights cast at load when [`STREAM_FP8_ENV`] is `0` and they stream onto
/// CUDA (see [`WeightSource::casting_fp8`]).
pub(crate) fn block_source(
    src: &WeightSource,
    placement: BlockPlacement,
    compute: &Device,
) -> WeightSource {
    let block_src = src.on_device(&placement.home_device(compute));
    let cast_fp8 = std::env::var(STREAM_FP8_ENV).is_ok_and(|v| v.trim() == "0");
    if placement == BlockPlacement::Streamed && compute.is_cuda() && cast_fp8 {
        block_src.casting_fp8()
    } else {
        block_src
    }
}

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
pub(crate) struct BlockStore<B: StreamedBlock = WanBlock> {
    placement: BlockPlacement,
    /// On the compute device (resident) or on the home device (streamed).
    blocks: Vec<B>,
    compute: Device,
    /// Blocks copied to the compute device so far (streamed only): the proof that streaming
    /// happened, for tests and benchmarks.
    fetches: AtomicU64,
    /// The overlapped copier (streamed onto a CUDA device, unless [`OFFLOAD_SYNC_ENV`] is `1`).
    /// It holds the host blocks' pinning and reads them until dropped: `Drop` drops it before
    /// `blocks`.
    #[cfg(feature = "cuda")]
    streamer: Option<BlockStreamer<B>>,
}

/// One block ready to run on the compute device: the resident block itself, or a copy that is
/// freed when this is dropped.
pub(crate) enum FetchedBlock<'a, B = WanBlock> {
    Resident(&'a B),
    /// Boxed: a block's handles are large beside a reference.
    Copied(Box<B>),
}

impl<B> Deref for FetchedBlock<'_, B> {
    type Target = B;

    fn deref(&self) -> &B {
        match self {
            Self::Resident(block) => block,
            Self::Copied(block) => block,
        }
    }
}

impl<B: StreamedBlock> BlockStore<B> {
    /// `blocks` must already be on `placement.home_device(compute)`. Streamed onto a CUDA
    /// device (and unless [`OFFLOAD_SYNC_ENV`] is `1`), this page-locks the host blocks and
    /// creates the copy stream; if that fails the store says so and copies synchronously.
    pub(crate) fn new(placement: BlockPlacement, blocks: Vec<B>, compute: &Device) -> Self {
        #[cfg(feature = "cuda")]
        let streamer = match (placement, compute) {
            (BlockPlacement::Streamed, Device::Cuda(cuda)) if !sync_copy_asked() => {
                match BlockStreamer::new(&blocks, cuda) {
                    Ok(streamer) => {
                        if streamer.unpinned_bytes() > 0 {
                            eprintln!(
                                "vdit: {} MiB of the streamed blocks could not be page-locked; \
                                 their copies are not overlapped",
                                streamer.unpinned_bytes() >> 20
                            );
                        }
                        Some(streamer)
                    }
                    Err(e) => {
                        eprintln!(
                            "vdit: overlapped block streaming is off ({e}); copying synchronously"
                        );
                        None
                    }
                }
            }
            _ => None,
        };
        Self {
            placement,
            blocks,
            compute: compute.clone(),
            fetches: AtomicU64::new(0),
            #[cfg(feature = "cuda")]
            streamer,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.blocks.len()
    }

    pub(crate) fn placement(&self) -> BlockPlacement {
        self.placement
    }

    /// Block `index` on the compute device. Streamed: a copy of every tensor it holds (the
    /// caller drops it after the block has run), made now (synchronous) or earlier on the copy
    /// stream and ordered before the block's kernels (overlapped, which then starts the copy of
    /// block `index + 1`). The block loop must drop block i-1's copy before fetching block i:
    /// that keeps two blocks' copies on the device at most.
    pub(crate) fn fetch(&self, index: usize) -> Result<FetchedBlock<'_, B>> {
        let block = &self.blocks[index];
        match self.placement {
            BlockPlacement::Resident => Ok(FetchedBlock::Resident(block)),
            BlockPlacement::Streamed => {
                #[cfg(feature = "cuda")]
                let copy = match &self.streamer {
                    Some(streamer) => streamer.fetch(&self.blocks, index)?,
                    None => block.map_block(&mut ToDevice(&self.compute))?,
                };
                #[cfg(not(feature = "cuda"))]
                let copy = block.map_block(&mut ToDevice(&self.compute))?;
                self.fetches.fetch_add(1, Ordering::Relaxed);
                Ok(FetchedBlock::Copied(Box::new(copy)))
            }
        }
    }

    /// Whether the streamed blocks are copied overlapped, on a second stream (see the module
    /// docs); false when resident or synchronous.
    #[cfg(feature = "cuda")]
    pub(crate) fn overlapped(&self) -> bool {
        self.streamer.is_some()
    }

    /// Whether the streamed blocks are copied overlapped: never without the `cuda` feature.
    #[cfg(not(feature = "cuda"))]
    pub(crate) fn overlapped(&self) -> bool {
        false
    }

    /// Blocks copied to the compute device since load.
    pub(crate) fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }
}

#[cfg(feature = "cuda")]
impl<B: StreamedBlock> Drop for BlockStore<B> {
    /// The streamer first: it waits for the copies reading the host blocks and unpins them
    /// while they are still allocated.
    fn drop(&mut self) {
        self.streamer.take();
    }
}

/// Whether [`OFFLOAD_SYNC_ENV`] is `1`.
#[cfg(feature = "cuda")]
fn sync_copy_asked() -> bool {
    std::env::var(OFFLOAD_SYNC_ENV).is_ok_and(|v| v == "1")
}
