//! Who owns what under sequence parallelism: contiguous token ranges (as even as the count
//! allows; the first `total % size` ranks take one more) and equal groups of heads.

use crate::error::{ModelError, Result};

/// `total` tokens over `size` ranks, each a contiguous range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceSplit {
    pub total: usize,
    pub size: usize,
}

impl SequenceSplit {
    /// An error when there are more ranks than tokens, or no ranks.
    pub fn new(total: usize, size: usize) -> Result<Self> {
        if size == 0 || total < size {
            return Err(ModelError::InvalidInput(format!(
                "cannot split {total} tokens over {size} devices: each needs at least one"
            )));
        }
        Ok(Self { total, size })
    }

    /// `(start, len)` of rank `rank`'s tokens.
    pub fn range(&self, rank: usize) -> (usize, usize) {
        let (base, extra) = (self.total / self.size, self.total % self.size);
        let len = base + usize::from(rank < extra);
        let start = rank * base + rank.min(extra);
        (start, len)
    }
}

/// `heads` attention heads over `size` ranks, `heads / size` each, in rank order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadSplit {
    pub heads: usize,
    pub size: usize,
}

impl HeadSplit {
    /// Ulysses gives each rank whole heads: an error unless `size` divides `heads`.
    pub fn new(heads: usize, size: usize) -> Result<Self> {
        if size == 0 || !heads.is_multiple_of(size) {
            let fits: Vec<String> = (1..=heads)
                .filter(|d| heads.is_multiple_of(*d))
                .map(|d| d.to_string())
                .collect();
            return Err(ModelError::InvalidInput(format!(
                "sequence parallelism over {size} devices needs the {heads} attention heads to \
                 divide evenly; use {} devices per sequence group",
                fits.join(", ")
            )));
        }
        Ok(Self { heads, size })
    }

    /// Heads per rank.
    pub fn per_rank(&self) -> usize {
        self.heads / self.size
    }

    /// `(first, count)` of rank `rank`'s heads.
    pub fn range(&self, rank: usize) -> (usize, usize) {
        (rank * self.per_rank(), self.per_rank())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ranges_tile_the_sequence() {
        for (total, size) in [(10, 3), (12, 4), (5, 5), (32_760, 8), (7, 1)] {
            let split = SequenceSplit::new(total, size).unwrap();
            let mut next = 0;
            for rank in 0..size {
                let (start, len) = split.range(rank);
                assert_eq!(start, next, "{total}/{size} rank {rank}");
                assert!(len == total / size || len == total / size + 1);
                next = start + len;
            }
            assert_eq!(next, total);
        }
        assert_eq!(SequenceSplit::new(10, 3).unwrap().range(0), (0, 4));
        assert_eq!(SequenceSplit::new(10, 3).unwrap().range(2), (7, 3));
        assert!(SequenceSplit::new(2, 3).is_err());
        assert!(SequenceSplit::new(2, 0).is_err());
    }

    #[test]
    fn heads_split_evenly_or_say_why() {
        let split = HeadSplit::new(40, 8).unwrap();
        assert_eq!((split.per_rank(), split.range(3)), (5, (15, 5)));
        let err = HeadSplit::new(12, 8).unwrap_err().to_string();
        assert!(
            err.contains("12 attention heads") && err.contains("1, 2, 3, 4, 6, 12"),
            "{err}"
        );
        let err = HeadSplit::new(40, 3).unwrap_err().to_string();
        assert!(err.contains("over 3 devices"), "{err}");
    }
}
