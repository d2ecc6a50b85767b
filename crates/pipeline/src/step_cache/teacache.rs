//! TeaCache's rule (Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video
//! Diffusion Model", TeaCache4Wan2.1): how much the blocks' output changes from one step to the
//! next is predicted from how much their timestep-modulated input changes, through a polynomial
//! fitted per model. Wan's form measures the blocks' time modulation e0 (the "retention steps"
//! variant, whose coefficients are built in).
//!
//! Each step: d = mean|e0 − e0_prev| / mean|e0_prev|, the accumulated distance grows by
//! poly(d); the step is skipped while it stays below the threshold, and otherwise computed with
//! the accumulator reset to 0.

/// TeaCache's decision state for one run of steps on one transformer.
#[derive(Debug, Clone)]
pub struct TeaCacheRule {
    /// Highest degree first.
    coefficients: Vec<f64>,
    threshold: f64,
    accumulated: f64,
}

impl TeaCacheRule {
    pub fn new(coefficients: Vec<f64>, threshold: f64) -> Self {
        Self {
            coefficients,
            threshold,
            accumulated: 0.0,
        }
    }

    /// The polynomial at `x` (Horner).
    pub fn rescale(&self, x: f64) -> f64 {
        self.coefficients.iter().fold(0.0, |acc, c| acc * x + c)
    }

    /// Whether a step whose modulation changed by `relative_l1` since the previous step may
    /// reuse the cached residual. Call once per step the cache may skip. A threshold of 0 never
    /// skips (the polynomial may be negative near 0, so the sum alone would not ensure it).
    pub fn may_skip(&mut self, relative_l1: f64) -> bool {
        self.accumulated += self.rescale(relative_l1);
        let skip = self.threshold > 0.0 && self.accumulated < self.threshold;
        if !skip {
            self.computed();
        }
        skip
    }

    /// The step was computed (or kept): the accumulator starts again.
    pub fn computed(&mut self) {
        self.accumulated = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_polynomial_is_highest_degree_first() {
        let rule = TeaCacheRule::new(vec![2.0, -1.0, 0.5], 0.1);
        assert_eq!(rule.rescale(3.0), 2.0 * 9.0 - 3.0 + 0.5);
    }

    /// The identity polynomial x, threshold 0.1, changes 0.03, 0.03, 0.05, 0.02, 0.2, 0.01:
    /// sums 0.03 skip, 0.06 skip, 0.11 compute (reset), 0.02 skip, 0.22 compute, 0.01 skip.
    #[test]
    fn hand_computed_sequence() {
        let mut rule = TeaCacheRule::new(vec![1.0, 0.0], 0.1);
        let skips: Vec<bool> = [0.03, 0.03, 0.05, 0.02, 0.2, 0.01]
            .into_iter()
            .map(|d| rule.may_skip(d))
            .collect();
        assert_eq!(skips, [true, true, false, true, false, true]);
    }

    /// Wan2.1 1.3B's polynomial is negative near 0, yet threshold 0 computes every step.
    #[test]
    fn threshold_zero_never_skips() {
        let c = super::super::calibration::Calibration::builtin("wan2.1-t2v-1.3b").unwrap();
        let mut rule = TeaCacheRule::new(c.teacache.unwrap(), 0.0);
        assert!(rule.rescale(0.0) < 0.0);
        assert!((0..10).all(|_| !rule.may_skip(0.0)));
    }
}
