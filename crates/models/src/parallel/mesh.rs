//! N devices as guidance groups × sequence groups: rank = g · sequence + s, where g picks the
//! guidance branch (0: conditional, 1: unconditional; one group when guidance is not split)
//! and s is the rank inside the sequence group. 8 GPUs = 2 (guidance) × 4 (sequence).

use super::split::HeadSplit;
use crate::error::{ModelError, Result};

/// How a run is spread over devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParallelMesh {
    /// 1, or 2: the conditional and unconditional passes on different devices.
    pub guidance: usize,
    /// Devices sharing one pass's tokens (Ulysses).
    pub sequence: usize,
}

impl ParallelMesh {
    /// The mesh for `devices`: guidance-parallel first when `split_guidance` (the run uses
    /// guidance) and the count is even, the rest as sequence parallelism over `heads` heads.
    pub fn new(devices: usize, split_guidance: bool, heads: usize) -> Result<Self> {
        if devices == 0 {
            return Err(ModelError::InvalidInput("--gpus must be at least 1".into()));
        }
        let guidance = if split_guidance && devices.is_multiple_of(2) {
            2
        } else {
            1
        };
        if split_guidance && devices > 1 && guidance == 1 {
            return Err(ModelError::InvalidInput(format!(
                "--gpus {devices}: with guidance the devices pair up (one for each branch), so \
                 give an even number, or 1"
            )));
        }
        let sequence = devices / guidance;
        HeadSplit::new(heads, sequence)?;
        Ok(Self { guidance, sequence })
    }

    pub fn devices(&self) -> usize {
        self.guidance * self.sequence
    }

    /// `(guidance branch, rank in its sequence group)` of `rank`.
    pub fn place(&self, rank: usize) -> (usize, usize) {
        (rank / self.sequence, rank % self.sequence)
    }

    /// The ranks of `rank`'s sequence group, in order.
    pub fn sequence_group(&self, rank: usize) -> Vec<usize> {
        let (g, _) = self.place(rank);
        (0..self.sequence).map(|s| g * self.sequence + s).collect()
    }

    /// The ranks holding the same tokens in each guidance branch (conditional first).
    pub fn guidance_group(&self, rank: usize) -> Vec<usize> {
        let (_, s) = self.place(rank);
        (0..self.guidance).map(|g| g * self.sequence + s).collect()
    }

    /// For the settings line: `8 GPUs = 2 (guidance) × 4 (sequence)`.
    pub fn describe(&self) -> String {
        format!(
            "{} GPU{} = {} (guidance) × {} (sequence)",
            self.devices(),
            if self.devices() == 1 { "" } else { "s" },
            self.guidance,
            self.sequence
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_become_guidance_times_sequence() {
        let mesh = ParallelMesh::new(8, true, 40).unwrap();
        assert_eq!((mesh.guidance, mesh.sequence), (2, 4));
        assert_eq!(mesh.describe(), "8 GPUs = 2 (guidance) × 4 (sequence)");
        assert_eq!(mesh.place(6), (1, 2));
        assert_eq!(mesh.sequence_group(6), vec![4, 5, 6, 7]);
        assert_eq!(mesh.guidance_group(6), vec![2, 6]);
        let no_guidance = ParallelMesh::new(4, false, 12).unwrap();
        assert_eq!((no_guidance.guidance, no_guidance.sequence), (1, 4));
        assert_eq!(
            ParallelMesh::new(1, true, 12).unwrap().describe(),
            "1 GPU = 1 (guidance) × 1 (sequence)"
        );
        assert!(ParallelMesh::new(3, true, 12)
            .unwrap_err()
            .to_string()
            .contains("even number"));
        // 1.3B: 12 heads over 8 sequence ranks do not divide
        assert!(ParallelMesh::new(8, false, 12)
            .unwrap_err()
            .to_string()
            .contains("12 attention heads"));
        assert!(ParallelMesh::new(0, false, 12).is_err());
    }
}
