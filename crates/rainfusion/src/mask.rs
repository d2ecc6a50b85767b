//! `BlockMask`: which key blocks each query block attends to.
//!
//! Stored in CSR form so it maps one-to-one onto what a GPU kernel reads:
//! row `r = (b·heads + h)·query_blocks + qb` keeps the key blocks
//! `indices[offsets[r]..offsets[r + 1]]`, sorted ascending, no duplicates.

use crate::{Error, Result};

/// For each (batch, head, query block) the sorted list of kept key blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMask {
    pub batch: usize,
    pub heads: usize,
    /// Tokens per block (64 or 128 in practice; queries and keys use the same size).
    pub block_size: usize,
    pub query_blocks: usize,
    pub key_blocks: usize,
    /// `batch·heads·query_blocks + 1` row starts into `indices`.
    pub offsets: Vec<u32>,
    /// Kept key block indices, row after row.
    pub indices: Vec<u32>,
}

impl BlockMask {
    /// Every query block keeps every key block: the dense mask.
    pub fn dense(
        batch: usize,
        heads: usize,
        block_size: usize,
        query_blocks: usize,
        key_blocks: usize,
    ) -> Self {
        let rows = batch * heads * query_blocks;
        let offsets = (0..=rows).map(|r| (r * key_blocks) as u32).collect();
        let indices = (0..rows).flat_map(|_| 0..key_blocks as u32).collect();
        Self {
            batch,
            heads,
            block_size,
            query_blocks,
            key_blocks,
            offsets,
            indices,
        }
    }

    /// Builds a mask from one kept-list per row, checking sortedness and range.
    pub fn from_rows(
        batch: usize,
        heads: usize,
        block_size: usize,
        query_blocks: usize,
        key_blocks: usize,
        rows: &[Vec<u32>],
    ) -> Result<Self> {
        if rows.len() != batch * heads * query_blocks {
            return Err(Error::InvalidConfig(format!(
                "block mask has {} rows, expected batch {batch} × heads {heads} × query blocks {query_blocks}",
                rows.len()
            )));
        }
        let mut offsets = Vec::with_capacity(rows.len() + 1);
        let mut indices = Vec::new();
        offsets.push(0u32);
        for row in rows {
            if row.windows(2).any(|w| w[0] >= w[1]) || row.iter().any(|&k| k as usize >= key_blocks)
            {
                return Err(Error::InvalidConfig(format!(
                    "block mask row {row:?} is not a sorted set of key blocks below {key_blocks}"
                )));
            }
            indices.extend_from_slice(row);
            offsets.push(indices.len() as u32);
        }
        Ok(Self {
            batch,
            heads,
            block_size,
            query_blocks,
            key_blocks,
            offsets,
            indices,
        })
    }

    /// Builds a mask from CSR arrays, checking their lengths, sortedness and range.
    pub fn from_csr(
        batch: usize,
        heads: usize,
        block_size: usize,
        query_blocks: usize,
        key_blocks: usize,
        offsets: Vec<u32>,
        indices: Vec<u32>,
    ) -> Result<Self> {
        let rows = batch * heads * query_blocks;
        if offsets.len() != rows + 1
            || offsets[0] != 0
            || *offsets.last().unwrap_or(&0) as usize != indices.len()
        {
            return Err(Error::InvalidConfig(format!(
                "block mask offsets ({} entries, last {:?}) do not describe {rows} rows over {} indices",
                offsets.len(),
                offsets.last(),
                indices.len()
            )));
        }
        let mask = Self {
            batch,
            heads,
            block_size,
            query_blocks,
            key_blocks,
            offsets,
            indices,
        };
        for r in 0..rows {
            let (start, end) = (mask.offsets[r] as usize, mask.offsets[r + 1] as usize);
            if start > end {
                return Err(Error::InvalidConfig(format!(
                    "block mask offsets decrease at row {r}"
                )));
            }
            let row = &mask.indices[start..end];
            if row.windows(2).any(|w| w[0] >= w[1]) || row.iter().any(|&k| k as usize >= key_blocks)
            {
                return Err(Error::InvalidConfig(format!(
                    "block mask row {r} ({row:?}) is not a sorted set of key blocks below {key_blocks}"
                )));
            }
        }
        Ok(mask)
    }

    /// Number of (batch, head, query block) rows.
    pub fn num_rows(&self) -> usize {
        self.batch * self.heads * self.query_blocks
    }

    /// Kept key blocks of row `r = (b·heads + h)·query_blocks + qb`.
    pub fn row_at(&self, r: usize) -> &[u32] {
        &self.indices[self.offsets[r] as usize..self.offsets[r + 1] as usize]
    }

    /// True when every query block keeps every key block.
    pub fn is_dense(&self) -> bool {
        self.indices.len() == self.num_rows() * self.key_blocks
    }

    /// Checks that this mask covers self-attention over `tokens` tokens for `batch` × `heads`:
    /// `ceil(tokens / block_size)` query and key blocks.
    pub fn check_covers(&self, batch: usize, heads: usize, tokens: usize) -> Result<()> {
        let blocks = tokens.div_ceil(self.block_size.max(1));
        if self.block_size == 0
            || (self.batch, self.heads, self.query_blocks, self.key_blocks)
                != (batch, heads, blocks, blocks)
        {
            return Err(Error::InvalidConfig(format!(
                "block mask is batch {} × heads {} × {} query blocks × {} key blocks of {} tokens, \
                 but attention has batch {batch} × heads {heads} × {tokens} tokens",
                self.batch, self.heads, self.query_blocks, self.key_blocks, self.block_size
            )));
        }
        Ok(())
    }

    /// Kept key blocks of (batch `b`, head `h`, query block `qb`).
    pub fn row(&self, b: usize, h: usize, qb: usize) -> &[u32] {
        let r = (b * self.heads + h) * self.query_blocks + qb;
        &self.indices[self.offsets[r] as usize..self.offsets[r + 1] as usize]
    }

    /// Fraction of (query block, key block) pairs kept.
    pub fn density(&self) -> f64 {
        let total = self.batch * self.heads * self.query_blocks * self.key_blocks;
        if total == 0 {
            return 1.0;
        }
        self.indices.len() as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_mask_keeps_everything_and_rows_index_correctly() {
        let m = BlockMask::dense(2, 3, 128, 4, 5);
        assert_eq!(m.density(), 1.0);
        assert_eq!(m.row(1, 2, 3), &[0, 1, 2, 3, 4]);
    }

    #[test]
    fn from_rows_rejects_unsorted_or_out_of_range_rows() {
        assert!(BlockMask::from_rows(1, 1, 128, 2, 3, &[vec![0, 2], vec![1]]).is_ok());
        assert!(BlockMask::from_rows(1, 1, 128, 2, 3, &[vec![2, 0], vec![1]]).is_err());
        assert!(BlockMask::from_rows(1, 1, 128, 2, 3, &[vec![0, 3], vec![1]]).is_err());
        assert!(BlockMask::from_rows(1, 1, 128, 1, 3, &[vec![0], vec![1]]).is_err());
    }

    #[test]
    fn from_csr_checks_structure() {
        let m = BlockMask::from_csr(1, 1, 64, 2, 3, vec![0, 2, 3], vec![0, 2, 1]).unwrap();
        assert_eq!(m.row_at(0), &[0, 2]);
        assert_eq!(m.row(0, 0, 1), &[1]);
        assert!(!m.is_dense());
        assert!(BlockMask::from_csr(1, 1, 64, 2, 3, vec![0, 2], vec![0, 2]).is_err());
        assert!(BlockMask::from_csr(1, 1, 64, 2, 3, vec![0, 2, 4], vec![0, 2, 1]).is_err());
        assert!(BlockMask::from_csr(1, 1, 64, 2, 3, vec![0, 2, 3], vec![2, 0, 1]).is_err());
        assert!(BlockMask::from_csr(1, 1, 64, 2, 3, vec![0, 2, 3], vec![0, 3, 1]).is_err());
    }

    #[test]
    fn check_covers_compares_block_counts() {
        let m = BlockMask::dense(2, 3, 64, 3, 3);
        assert!(m.is_dense());
        assert!(m.check_covers(2, 3, 129).is_ok());
        assert!(m.check_covers(2, 3, 192).is_ok());
        assert!(m.check_covers(2, 3, 193).is_err());
        assert!(m.check_covers(1, 3, 150).is_err());
    }

    #[test]
    fn density_counts_kept_pairs() {
        let m = BlockMask::from_rows(1, 1, 128, 2, 4, &[vec![0], vec![1, 2, 3]]).unwrap();
        assert!((m.density() - 0.5).abs() < 1e-12);
    }
}
