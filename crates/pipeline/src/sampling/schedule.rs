//! Shifted flow-matching sigma schedules, exactly as diffusers builds them for Wan2.1.
//!
//! A flow-matching sample is x_σ = (1 − σ)·x₀ + σ·noise, so σ runs from ≈1 (pure noise) to 0
//! (clean). The shift s bends the grid towards the noisy end: σ' = s·σ / (1 + (s − 1)·σ).

/// Training timesteps of Wan2.1's schedulers: model timestep = σ · 1000.
pub const NUM_TRAIN_TIMESTEPS: f64 = 1000.0;

/// The time shift of flow matching: σ' = s·σ / (1 + (s − 1)·σ).
pub fn shift_sigma(sigma: f64, shift: f64) -> f64 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

/// A sampling schedule: `timesteps[k]` is what the model sees at step k, `sigmas[k]` the noise
/// level of the sample it runs on; `sigmas` has one more entry than steps, the final 0.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowSchedule {
    /// N model timesteps, in 0..=1000 (decreasing).
    pub timesteps: Vec<f32>,
    /// N + 1 noise levels, decreasing, the last one 0. f32 like diffusers stores them.
    pub sigmas: Vec<f32>,
}

impl FlowSchedule {
    pub fn num_steps(&self) -> usize {
        self.timesteps.len()
    }
}

/// `n` points from `start` to `end` inclusive, as numpy's `linspace` computes them.
fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    let mut points: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
    // numpy pins the last point to `end` exactly.
    points[n - 1] = end;
    points
}

/// diffusers' `UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=shift)` grid:
/// σ_k = shift(1 − k·0.999/N) for k < N (σ₀ nudged just below 1 so log σ stays finite),
/// σ_N = 0, and integer timesteps ⌊1000·σ_k⌋.
pub fn unipc_flow_schedule(steps: usize, shift: f64) -> FlowSchedule {
    let grid = linspace(1.0, 1.0 / NUM_TRAIN_TIMESTEPS, steps + 1);
    let mut sigmas: Vec<f64> = grid[..steps]
        .iter()
        .map(|&s| shift_sigma(s, shift))
        .collect();
    if let Some(first) = sigmas.first_mut() {
        if (*first - 1.0).abs() < 1e-6 {
            *first -= 1e-6;
        }
    }
    // diffusers truncates the f64 timesteps to int64 before the model sees them.
    let timesteps = sigmas
        .iter()
        .map(|&s| (s * NUM_TRAIN_TIMESTEPS).trunc() as f32)
        .collect();
    let mut sigmas: Vec<f32> = sigmas.iter().map(|&s| s as f32).collect();
    sigmas.push(0.0);
    FlowSchedule { timesteps, sigmas }
}

/// diffusers' `FlowMatchEulerDiscreteScheduler(shift=shift)` grid: a linspace of N timesteps
/// between the (already shifted, f32) training σ_max and σ_min, shifted a second time; float
/// timesteps 1000·σ_k; σ_N = 0.
pub fn euler_flow_schedule(steps: usize, shift: f64) -> FlowSchedule {
    // diffusers computes its training table in f32 arithmetic: σ_max = shift(1) = 1,
    // σ_min = shift(1/1000); the last f32 bit matters for the grid.
    let shift_f32 = |sigma: f32| {
        let s = shift as f32;
        s * sigma / (1.0 + (s - 1.0) * sigma)
    };
    let sigma_max = shift_f32(1.0) as f64;
    let sigma_min = shift_f32(1.0 / NUM_TRAIN_TIMESTEPS as f32) as f64;
    let train_timesteps = linspace(
        sigma_max * NUM_TRAIN_TIMESTEPS,
        sigma_min * NUM_TRAIN_TIMESTEPS,
        steps,
    );
    let mut sigmas: Vec<f32> = train_timesteps
        .iter()
        .map(|&t| shift_sigma(t / NUM_TRAIN_TIMESTEPS, shift) as f32)
        .collect();
    let timesteps = sigmas
        .iter()
        .map(|&s| s * NUM_TRAIN_TIMESTEPS as f32)
        .collect();
    sigmas.push(0.0);
    FlowSchedule { timesteps, sigmas }
}

/// The schedule of a step-distilled model: its denoising step list (training timesteps, e.g.
/// lightx2v's `[1000, 750, 500, 250]`) taken as sigmas t/1000 and shifted, as lightx2v's
/// `WanStepDistillScheduler` and diffusers' flow-matching schedulers given `sigmas=[t/1000]`
/// compute them (in f32); the model sees 1000·σ'; σ_N = 0.
pub fn distilled_flow_schedule(step_list: &[f64], shift: f64) -> FlowSchedule {
    shifted_schedule(
        step_list.iter().map(|&t| (t / NUM_TRAIN_TIMESTEPS) as f32),
        shift,
    )
}

/// Sigmas (f32, before the shift) shifted in f32 as diffusers' flow-matching schedulers do
/// (`shift·σ / (1 + (shift − 1)·σ)`); the model sees 1000·σ'; σ_N = 0 is appended.
fn shifted_schedule(sigmas: impl Iterator<Item = f32>, shift: f64) -> FlowSchedule {
    let s = shift as f32;
    let mut sigmas: Vec<f32> = sigmas
        .map(|sigma| s * sigma / (1.0 + (s - 1.0) * sigma))
        .collect();
    let timesteps = sigmas
        .iter()
        .map(|&s| s * NUM_TRAIN_TIMESTEPS as f32)
        .collect();
    sigmas.push(0.0);
    FlowSchedule { timesteps, sigmas }
}

/// Which sigmas a flow-matching Euler (or LCM) run steps through before the shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigmaGrid {
    /// diffusers' `FlowMatchEulerDiscreteScheduler` on its own: N values evenly spaced between
    /// the training table's σ_max and σ_min ([`euler_flow_schedule`]; the Wan families).
    TrainingTable,
    /// σ_k = 1 − k/N, k = 0..N, as pipelines that hand the scheduler
    /// `sigmas = np.linspace(1.0, 0.0, N + 1)[:-1]` get it ([`linear_flow_schedule`];
    /// HunyuanVideo 1.5).
    Linear,
}

/// The schedule of a pipeline that gives diffusers' flow-matching scheduler the sigmas
/// `np.linspace(1.0, 0.0, N + 1)[:-1]`: each taken to f32 and shifted in f32 as the scheduler
/// does (`shift·σ / (1 + (shift − 1)·σ)`); the model sees 1000·σ'; σ_N = 0.
pub fn linear_flow_schedule(steps: usize, shift: f64) -> FlowSchedule {
    // numpy's linspace: start + k·step with step = (stop − start)/N, in f64.
    let step = -1.0 / steps.max(1) as f64;
    shifted_schedule((0..steps).map(|k| (1.0 + k as f64 * step) as f32), shift)
}

/// Checks a denoising step list: 1 to 1000 values, each in (0, 1000], strictly decreasing.
pub fn check_step_list(step_list: &[f64]) -> std::result::Result<(), String> {
    if step_list.is_empty() {
        return Err("the step list is empty".into());
    }
    if let Some(t) = step_list
        .iter()
        .find(|t| !t.is_finite() || **t <= 0.0 || **t > NUM_TRAIN_TIMESTEPS)
    {
        return Err(format!("timestep {t} is outside (0, 1000]"));
    }
    if step_list.windows(2).any(|w| w[1] >= w[0]) {
        return Err(format!(
            "timesteps must decrease strictly (got {step_list:?})"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_keeps_the_end_points() {
        for shift in [1.0, 3.0, 5.0, 12.0] {
            assert_eq!(shift_sigma(0.0, shift), 0.0);
            assert!((shift_sigma(1.0, shift) - 1.0).abs() < 1e-15);
        }
    }

    #[test]
    fn unipc_schedule_of_the_tiny_pipeline() {
        // The timesteps diffusers used for tests/fixtures/tiny_pipeline (4 steps, shift 3).
        let schedule = unipc_flow_schedule(4, 3.0);
        assert_eq!(schedule.timesteps, vec![999.0, 900.0, 750.0, 500.0]);
        assert_eq!(schedule.sigmas.len(), 5);
        assert_eq!(*schedule.sigmas.last().unwrap(), 0.0);
    }

    #[test]
    fn linear_grid_of_the_hunyuan_pipeline() {
        // The timesteps diffusers' HunyuanVideo15Pipeline used for tests/fixtures/hunyuan15_pipeline
        // (4 steps, shift 7): σ = 1, 0.75, 0.5, 0.25 shifted by 7σ / (1 + 6σ).
        let schedule = linear_flow_schedule(4, 7.0);
        assert_eq!(schedule.timesteps, vec![1000.0, 954.545_4, 875.0, 700.0]);
        assert_eq!(schedule.sigmas.len(), 5);
        assert_eq!(*schedule.sigmas.last().unwrap(), 0.0);
    }

    #[test]
    fn lightx2v_four_step_list_at_shift_5() {
        // σ = 1, 0.75, 0.5, 0.25 shifted by 5: 5σ / (1 + 4σ).
        let schedule = distilled_flow_schedule(&[1000.0, 750.0, 500.0, 250.0], 5.0);
        let expected = [1.0, 3.75 / 4.0, 2.5 / 3.0, 1.25 / 2.0];
        for (got, want) in schedule.sigmas.iter().zip(expected) {
            assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert_eq!(schedule.sigmas.len(), 5);
        assert!((schedule.timesteps[1] - 937.5).abs() < 1e-3);
        assert!(check_step_list(&[1000.0, 750.0, 500.0, 250.0]).is_ok());
        assert!(check_step_list(&[750.0, 1000.0]).is_err());
        assert!(check_step_list(&[1000.0, 0.0]).is_err());
        assert!(check_step_list(&[]).is_err());
    }
}
