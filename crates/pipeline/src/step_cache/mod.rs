//! Step caching: skip the transformer's blocks on a step whose result is predictable from the
//! last computed one, reusing that step's residual (blocks' output − input), as MagCache and
//! TeaCache do. The step loop never learns which model runs: the per-model knowledge is the
//! [`Calibration`] data, and the transformer lets a [`StepCache`] in through its
//! [`BlockCache`] seam.
//!
//! ```text
//! step i ─► StepCache::begin_step ─► transformer: embed ─► before_blocks(e0, x)
//!             ├─ kept step, or the rule says compute ─► blocks ─► after_blocks(residual) ─► head
//!             └─ the rule says skip ─────────────────► x + cached residual ─────────────► head
//! ```
//!
//! One decision per step for the guidance branches together (they run as one batch; each
//! keeps its own row of the residual). Each transformer (Wan2.2 A14B's two experts) gets its
//! own cache, fresh at the switch.

pub mod calibration;
pub mod magcache;
pub mod teacache;

use candle_core::{DType, Tensor};
use serde::Serialize;
use vdit_models::wan::transformer::BlockCache;

pub use calibration::{Calibration, CalibrationFile, MagRatios};
use magcache::MagCacheRule;
use teacache::TeaCacheRule;

use crate::options::{Choice, StepCacheMode};

/// MagCache's published default threshold on the accumulated error (its Wan2.1 script).
pub const MAGCACHE_THRESHOLD: f64 = 0.12;
/// MagCache's published default for the most steps skipped in a row (K).
pub const MAGCACHE_MAX_SKIPS: usize = 2;
/// MagCache's published retention ratio: the first 20% of the steps always run.
pub const MAGCACHE_KEEP_FIRST_FRACTION: f64 = 0.2;
/// TeaCache4Wan2.1's threshold between its "slow" and "fast" settings for the modulation form
/// (1.3B: 0.05 / 0.10; 14B: 0.10 / 0.20).
pub const TEACACHE_THRESHOLD: f64 = 0.1;
/// TeaCache4Wan2.1's retention steps for the modulation form.
pub const TEACACHE_KEEP_FIRST: usize = 5;
/// The last step always runs.
pub const KEEP_LAST: usize = 1;

/// The step-cache settings of a run, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepCacheSettings {
    pub mode: StepCacheMode,
    /// MagCache: bound on the accumulated error; TeaCache: on the accumulated rescaled
    /// distance. 0 never skips.
    pub threshold: f64,
    /// The first steps, never skipped.
    pub keep_first: usize,
    /// The last steps, never skipped.
    pub keep_last: usize,
    /// MagCache: the most steps skipped in a row.
    pub max_skips: usize,
    /// The model's calibration (`null` with `none` and without one).
    pub calibration: Option<Calibration>,
    /// `--cache-calibrate`: the run computes every step and writes the magnitude ratios here.
    pub calibrate: Option<std::path::PathBuf>,
}

impl StepCacheSettings {
    /// No caching.
    pub fn none() -> Self {
        Self {
            mode: StepCacheMode::None,
            threshold: 0.0,
            keep_first: 0,
            keep_last: KEEP_LAST,
            max_skips: MAGCACHE_MAX_SKIPS,
            calibration: None,
            calibrate: None,
        }
    }

    /// Whether a step may be skipped at all (or the residuals recorded).
    pub fn is_active(&self) -> bool {
        self.mode != StepCacheMode::None || self.calibrate.is_some()
    }

    /// The first steps kept by default for `mode` in a run of `steps` steps.
    pub fn default_keep_first(mode: StepCacheMode, steps: usize) -> usize {
        match mode {
            StepCacheMode::None => 0,
            StepCacheMode::MagCache => {
                (MAGCACHE_KEEP_FIRST_FRACTION * steps as f64).ceil() as usize
            }
            StepCacheMode::TeaCache => TEACACHE_KEEP_FIRST,
        }
    }

    /// The default threshold of `mode`.
    pub fn default_threshold(mode: StepCacheMode) -> f64 {
        match mode {
            StepCacheMode::None => 0.0,
            StepCacheMode::MagCache => MAGCACHE_THRESHOLD,
            StepCacheMode::TeaCache => TEACACHE_THRESHOLD,
        }
    }

    /// One line for the settings summary.
    pub fn summary(&self) -> String {
        if let Some(path) = &self.calibrate {
            return format!(
                "step cache   calibrating: every step runs, magnitude ratios → {}",
                path.display()
            );
        }
        match self.mode {
            StepCacheMode::None => "step cache   none".into(),
            mode => format!(
                "step cache   {}: threshold {}, first {} and last {} steps kept{}, calibration {}",
                mode.name(),
                self.threshold,
                self.keep_first,
                self.keep_last,
                if mode == StepCacheMode::MagCache {
                    format!(", at most {} skipped in a row", self.max_skips)
                } else {
                    String::new()
                },
                self.calibration
                    .as_ref()
                    .map_or("none", |c| c.source.as_str())
            ),
        }
    }
}

/// How many transformer passes a run made and skipped (a guided step is two passes, one per
/// branch, run as one batch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// Passes the run asked for (steps × branches).
    pub passes: usize,
    /// Of those, passes whose blocks were skipped.
    pub skipped: usize,
}

impl CacheStats {
    pub fn add(&mut self, other: CacheStats) {
        self.passes += other.passes;
        self.skipped += other.skipped;
    }
}

impl std::fmt::Display for CacheStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} transformer passes skipped",
            self.skipped, self.passes
        )
    }
}

/// The rule deciding the skippable steps.
#[derive(Debug, Clone)]
enum Rule {
    MagCache(MagCacheRule),
    TeaCache {
        rule: TeaCacheRule,
        /// The previous step's modulation e0.
        previous: Option<Tensor>,
    },
    /// Calibration: every step runs; the magnitude ratios are recorded.
    Record,
}

/// The step cache of one transformer over its run of steps: the rule, the cached residual and
/// what it did. Build one per transformer with [`StepCache::new`]; call [`StepCache::begin_step`]
/// before each step's pass, then hand it to the transformer.
#[derive(Debug, Clone)]
pub struct StepCache {
    rule: Rule,
    keep_first: usize,
    keep_last: usize,
    /// Branches per pass (1 unguided, 2 guided).
    branches: usize,
    step: usize,
    count: usize,
    /// The last computed residual, `[B, L, dim]` f32.
    residual: Option<Tensor>,
    stats: CacheStats,
    /// Calibration: (step, per-branch ratio) for each step after the first.
    recorded: Vec<(usize, Vec<f64>)>,
}

impl StepCache {
    /// The cache of `settings` for a transformer run with `branches` guidance branches per pass
    /// over a schedule of `steps` steps; `None` when nothing is cached or recorded. The
    /// settings were checked when resolved, so a missing calibration here means no caching.
    pub fn new(settings: &StepCacheSettings, steps: usize, branches: usize) -> Option<Self> {
        let calibration = settings.calibration.as_ref();
        let rule = if settings.calibrate.is_some() {
            Rule::Record
        } else {
            match settings.mode {
                StepCacheMode::None => return None,
                StepCacheMode::MagCache => Rule::MagCache(MagCacheRule::new(
                    calibration?.mag_ratios.as_ref()?.for_run(steps, branches),
                    settings.threshold,
                    settings.max_skips,
                )),
                StepCacheMode::TeaCache => Rule::TeaCache {
                    rule: TeaCacheRule::new(calibration?.teacache.clone()?, settings.threshold),
                    previous: None,
                },
            }
        };
        Some(Self {
            rule,
            keep_first: settings.keep_first,
            keep_last: settings.keep_last,
            branches,
            step: 0,
            count: steps,
            residual: None,
            stats: CacheStats::default(),
            recorded: Vec::new(),
        })
    }

    /// The step the next pass is for (0-based, of `count`).
    pub fn begin_step(&mut self, index: usize, count: usize) {
        self.step = index;
        self.count = count;
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Calibration: the recorded (step, per-branch ratio) pairs.
    pub fn recorded(&self) -> &[(usize, Vec<f64>)] {
        &self.recorded
    }

    /// Whether the step is one of the first or last ones that always run.
    fn is_kept(&self) -> bool {
        self.step < self.keep_first || self.step + self.keep_last >= self.count
    }
}

/// mean |a − b| / mean |b| over all elements.
fn relative_l1(current: &Tensor, previous: &Tensor) -> candle_core::Result<f64> {
    let diff = (current - previous)?
        .abs()?
        .mean_all()?
        .to_dtype(DType::F64)?;
    let base = previous.abs()?.mean_all()?.to_dtype(DType::F64)?;
    Ok(diff.to_scalar::<f64>()? / base.to_scalar::<f64>()?.max(f64::MIN_POSITIVE))
}

/// Per batch row (branch): the mean over tokens of ‖current‖ / ‖previous‖ (norms over the
/// channels), `[B, L, dim]` each.
fn magnitude_ratios(current: &Tensor, previous: &Tensor) -> candle_core::Result<Vec<f64>> {
    let norm = |t: &Tensor| -> candle_core::Result<Tensor> { t.sqr()?.sum(2)?.sqrt() }; // [B, L]
    let ratio = (norm(current)? / norm(previous)?)?.mean(1)?; // [B]
    ratio.to_dtype(DType::F64)?.to_vec1::<f64>()
}

impl BlockCache for StepCache {
    fn before_blocks(
        &mut self,
        modulation: &Tensor,
        input: &Tensor,
    ) -> vdit_models::Result<Option<Tensor>> {
        self.stats.passes += self.branches;
        let kept = self.is_kept();
        // Skipping needs a residual of this pass's shape (a first step, or another batch).
        let cached = self
            .residual
            .as_ref()
            .filter(|r| r.dims() == input.dims())
            .cloned();
        let skip = match &mut self.rule {
            Rule::Record => false,
            Rule::MagCache(rule) => {
                if kept || cached.is_none() {
                    rule.computed();
                    false
                } else {
                    rule.may_skip(self.step)
                }
            }
            Rule::TeaCache { rule, previous } => {
                let change = match previous.as_ref() {
                    Some(p) if p.dims() == modulation.dims() => Some(relative_l1(modulation, p)?),
                    _ => None,
                };
                *previous = Some(modulation.clone());
                match change {
                    Some(change) if !kept && cached.is_some() => rule.may_skip(change),
                    _ => {
                        rule.computed();
                        false
                    }
                }
            }
        };
        if skip {
            self.stats.skipped += self.branches;
            return Ok(cached);
        }
        Ok(None)
    }

    fn after_blocks(&mut self, residual: &Tensor) -> vdit_models::Result<()> {
        if let Rule::Record = self.rule {
            match &self.residual {
                Some(previous) if previous.dims() == residual.dims() => {
                    let ratios = magnitude_ratios(residual, previous)?;
                    self.recorded.push((self.step, ratios));
                }
                // The first step of a transformer has nothing to compare with: ratio 1.
                _ => self
                    .recorded
                    .push((self.step, vec![1.0; residual.dim(0).unwrap_or(1)])),
            }
        }
        self.residual = Some(residual.clone());
        Ok(())
    }
}

/// What the recorded steps of a calibration run give: per-branch ratios per step (steps
/// without a record read 1).
pub fn recorded_ratios(records: &[(usize, Vec<f64>)], steps: usize) -> MagRatios {
    let branches = records.iter().map(|(_, r)| r.len()).max().unwrap_or(1);
    let mut lists = vec![vec![1.0; steps]; branches];
    for (step, ratios) in records {
        for (branch, &ratio) in ratios.iter().enumerate() {
            if *step < steps {
                lists[branch][*step] = ratio;
            }
        }
    }
    let mut lists = lists.into_iter();
    MagRatios {
        cond: lists.next().unwrap_or_default(),
        uncond: lists.next(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn settings(mode: StepCacheMode, threshold: f64) -> StepCacheSettings {
        StepCacheSettings {
            mode,
            threshold,
            keep_first: 1,
            keep_last: 1,
            max_skips: 2,
            calibration: Some(Calibration {
                source: "test".into(),
                mag_ratios: Some(MagRatios {
                    cond: vec![1.0, 0.99, 0.99, 0.99, 0.99, 0.99],
                    uncond: None,
                }),
                teacache: Some(vec![1.0, 0.0]),
            }),
            calibrate: None,
        }
    }

    /// Drives a cache through `steps` steps with a residual that grows by `growth` per step and
    /// a modulation that changes by 1% per step; returns which steps skipped.
    fn run(cache: &mut StepCache, steps: usize) -> Vec<bool> {
        let dev = Device::Cpu;
        let input = Tensor::ones((2, 3, 4), DType::F32, &dev).unwrap();
        (0..steps)
            .map(|i| {
                cache.begin_step(i, steps);
                let e0 = Tensor::full(1.0f32 + 0.01 * i as f32, (2, 6, 4), &dev).unwrap();
                match cache.before_blocks(&e0, &input).unwrap() {
                    Some(residual) => {
                        assert_eq!(residual.dims(), input.dims());
                        true
                    }
                    None => {
                        let residual = (&input * (0.9f64).powi(i as i32)).unwrap();
                        cache.after_blocks(&residual).unwrap();
                        false
                    }
                }
            })
            .collect()
    }

    /// MagCache with ratios 0.99 and at most 2 in a row, first and last steps kept:
    /// step 0 kept, 1 and 2 skip (errors 0.01, 0.0299), 3 computes (3 in a row), 4 skips, 5 kept.
    #[test]
    fn magcache_cache_skips_between_kept_steps() {
        let mut cache = StepCache::new(&settings(StepCacheMode::MagCache, 0.1), 6, 2).unwrap();
        assert_eq!(run(&mut cache, 6), [false, true, true, false, true, false]);
        assert_eq!(
            cache.stats(),
            CacheStats {
                passes: 12,
                skipped: 6
            }
        );
    }

    /// TeaCache with the identity polynomial: the modulation changes by 1/(1 + 0.01(i−1)) ≈
    /// 1%, 0.99%, ... per step; threshold 0.025 lets two steps accumulate, not three.
    #[test]
    fn teacache_cache_accumulates_the_modulation_change() {
        let mut cache = StepCache::new(&settings(StepCacheMode::TeaCache, 0.025), 6, 1).unwrap();
        assert_eq!(run(&mut cache, 6), [false, true, true, false, true, false]);
    }

    #[test]
    fn threshold_zero_computes_every_step() {
        for mode in [StepCacheMode::MagCache, StepCacheMode::TeaCache] {
            let mut cache = StepCache::new(&settings(mode, 0.0), 6, 2).unwrap();
            assert!(run(&mut cache, 6).iter().all(|s| !s), "{mode:?}");
        }
    }

    /// Calibration records ‖r_i‖/‖r_{i−1}‖ = 0.9 per branch after the first step.
    #[test]
    fn calibration_records_the_magnitude_ratios() {
        let mut s = settings(StepCacheMode::None, 0.0);
        s.calibrate = Some("out.json".into());
        let mut cache = StepCache::new(&s, 4, 2).unwrap();
        assert!(run(&mut cache, 4).iter().all(|s| !s));
        let ratios = recorded_ratios(cache.recorded(), 4);
        assert_eq!(ratios.cond[0], 1.0);
        for list in [&ratios.cond, ratios.uncond.as_ref().unwrap()] {
            for r in &list[1..] {
                assert!((r - 0.9).abs() < 1e-6, "{list:?}");
            }
        }
    }
}
