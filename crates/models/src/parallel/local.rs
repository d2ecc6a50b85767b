//! [`LocalGroup`]: an in-process [`Communicator`] for tests, one thread per rank, exchanging
//! tensors through shared slots and a barrier.

use std::sync::{Arc, Barrier, Mutex};

use candle_core::Tensor;

use super::Communicator;
use crate::error::{ModelError, Result};

/// The shared state of a group: `slots[src][dst]` holds what `src` sends `dst` in the current
/// collective.
struct Shared {
    size: usize,
    slots: Mutex<Vec<Vec<Option<Tensor>>>>,
    barrier: Barrier,
}

/// Creates the members of an in-process group.
pub struct LocalGroup;

impl LocalGroup {
    /// `size` members, one per rank (hand each to its own thread).
    pub fn members(size: usize) -> Vec<LocalComm> {
        let shared = Arc::new(Shared {
            size,
            slots: Mutex::new(vec![vec![None; size]; size]),
            barrier: Barrier::new(size),
        });
        (0..size)
            .map(|rank| LocalComm {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }
}

impl LocalGroup {
    /// Runs `work` once per rank of a new group of `size`, each on its own thread, and returns
    /// the results in rank order (a panicking rank panics the caller).
    pub fn run<T: Send>(size: usize, work: impl Fn(LocalComm) -> T + Sync) -> Vec<T> {
        std::thread::scope(|scope| {
            let work = &work;
            let handles: Vec<_> = Self::members(size)
                .into_iter()
                .map(|comm| scope.spawn(move || work(comm)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    }
}

/// One rank of a [`LocalGroup`].
pub struct LocalComm {
    rank: usize,
    shared: Arc<Shared>,
}

impl LocalComm {
    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Vec<Option<Tensor>>>> {
        self.shared.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Communicator for LocalComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn all_to_all(&self, parts: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let size = self.shared.size;
        if parts.len() != size {
            // Still take part in both barriers, or the other ranks wait forever.
            self.shared.barrier.wait();
            self.shared.barrier.wait();
            return Err(ModelError::InvalidInput(format!(
                "all-to-all: rank {} gave {} parts for a group of {size}",
                self.rank,
                parts.len()
            )));
        }
        {
            let mut slots = self.slots();
            for (dst, part) in parts.into_iter().enumerate() {
                slots[self.rank][dst] = Some(part);
            }
        }
        self.shared.barrier.wait(); // every rank has written
        let received: Vec<Option<Tensor>> = {
            let mut slots = self.slots();
            (0..size).map(|src| slots[src][self.rank].take()).collect()
        };
        self.shared.barrier.wait(); // every rank has read: the slots may be reused
        received
            .into_iter()
            .enumerate()
            .map(|(src, t)| {
                t.ok_or_else(|| {
                    ModelError::InvalidInput(format!(
                        "all-to-all: rank {src} sent nothing to rank {}",
                        self.rank
                    ))
                })
            })
            .collect()
    }

    fn all_gather(&self, t: &Tensor) -> Result<Vec<Tensor>> {
        self.all_to_all(vec![t.clone(); self.shared.size])
    }
}
