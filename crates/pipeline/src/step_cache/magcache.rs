//! MagCache's rule (Ma et al., "MagCache: Fast Video Generation with Magnitude-Aware Cache",
//! arXiv 2506.09045): the magnitude of the blocks' residual shrinks by a nearly fixed ratio
//! from step to step, so the error of reusing the last computed residual can be estimated from
//! calibrated ratios alone, before the step runs.
//!
//! Per branch, since the last computed step: the accumulated ratio is the product of the
//! steps' ratios, and the accumulated error the sum over those steps of |1 − accumulated
//! ratio|. A step is skipped while every branch's accumulated error stays below the threshold
//! and at most `max_skips` steps in a row are skipped; otherwise it is computed and the
//! accumulators start again.

/// The accumulators of one guidance branch.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Accumulated {
    ratio: f64,
    error: f64,
}

impl Accumulated {
    const FRESH: Self = Self {
        ratio: 1.0,
        error: 0.0,
    };
}

/// MagCache's decision state for one run of steps on one transformer.
#[derive(Debug, Clone)]
pub struct MagCacheRule {
    /// Per branch, one ratio per step of the run (see `MagRatios::for_run`).
    ratios: Vec<Vec<f64>>,
    threshold: f64,
    max_skips: usize,
    branches: Vec<Accumulated>,
    /// Steps since the last computed one, this one included.
    steps_since_computed: usize,
}

impl MagCacheRule {
    /// `ratios`: per branch, one per step of the run.
    pub fn new(ratios: Vec<Vec<f64>>, threshold: f64, max_skips: usize) -> Self {
        let branches = vec![Accumulated::FRESH; ratios.len()];
        Self {
            ratios,
            threshold,
            max_skips,
            branches,
            steps_since_computed: 0,
        }
    }

    /// Whether step `index` may reuse the cached residual. Call once per step that the cache
    /// may skip (not for kept steps: call [`Self::computed`] for those).
    pub fn may_skip(&mut self, index: usize) -> bool {
        self.steps_since_computed += 1;
        let mut within = true;
        for (branch, ratios) in self.branches.iter_mut().zip(&self.ratios) {
            // A run longer than the calibration reads its last ratio.
            let ratio = ratios.get(index).or(ratios.last()).copied().unwrap_or(1.0);
            branch.ratio *= ratio;
            branch.error += (1.0 - branch.ratio).abs();
            within &= branch.error < self.threshold;
        }
        let skip = within && self.steps_since_computed <= self.max_skips;
        if !skip {
            self.computed();
        }
        skip
    }

    /// The step was computed: the accumulators start again from it.
    pub fn computed(&mut self) {
        self.branches.fill(Accumulated::FRESH);
        self.steps_since_computed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which of the steps `from..ratios.len()` skip.
    fn skips(rule: &mut MagCacheRule, steps: std::ops::Range<usize>) -> Vec<bool> {
        steps.map(|i| rule.may_skip(i)).collect()
    }

    /// One branch, ratios 1, 0.98, 0.98, 0.98, 0.85, 0.98, threshold 0.1, at most 2 in a row:
    /// step 1: ratio 0.98, error 0.02 → skip; step 2: ratio 0.9604, error 0.0596 → skip;
    /// step 3: error 0.1184 and 3 in a row → compute (reset); step 4: ratio 0.85, error 0.15 → compute;
    /// step 5: ratio 0.98, error 0.02 → skip.
    #[test]
    fn hand_computed_sequence() {
        let ratios = vec![vec![1.0, 0.98, 0.98, 0.98, 0.85, 0.98]];
        let mut rule = MagCacheRule::new(ratios, 0.1, 2);
        rule.computed(); // step 0 is always computed
        assert_eq!(skips(&mut rule, 1..6), [true, true, false, false, true]);
    }

    /// With more skips allowed, the accumulated error decides: 0.02, 0.0596, 0.1188 (≥ 0.1).
    #[test]
    fn accumulated_error_ends_a_run_of_skips() {
        let ratios = vec![vec![1.0, 0.98, 0.98, 0.98, 0.98]];
        let mut rule = MagCacheRule::new(ratios, 0.1, 10);
        assert_eq!(skips(&mut rule, 1..5), [true, true, false, true]);
    }

    /// Two branches decide together: the second's larger change stops the skip for both.
    #[test]
    fn every_branch_must_agree() {
        let ratios = vec![vec![1.0, 0.99, 0.99], vec![1.0, 0.8, 0.99]];
        let mut rule = MagCacheRule::new(ratios, 0.1, 2);
        // Step 1: cond error 0.01, uncond 0.2 → compute; step 2: both 0.01 → skip.
        assert_eq!(skips(&mut rule, 1..3), [false, true]);
    }

    /// Unchanging residuals: only the cap on skips in a row makes a step run.
    #[test]
    fn at_most_max_skips_in_a_row() {
        let mut rule = MagCacheRule::new(vec![vec![1.0; 8]], 0.1, 2);
        assert_eq!(
            skips(&mut rule, 1..8),
            [true, true, false, true, true, false, true]
        );
    }

    #[test]
    fn threshold_zero_never_skips() {
        let mut rule = MagCacheRule::new(vec![vec![1.0; 8]], 0.0, 8);
        assert!(skips(&mut rule, 1..8).iter().all(|s| !s));
    }
}
