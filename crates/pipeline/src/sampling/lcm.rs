//! The few-step sampler of step-distilled models (lightx2v's `WanStepDistillScheduler` for
//! Wan2.1, diffusers' `FlowMatchLCMScheduler`): each step predicts the clean sample
//! x̂₀ = x_k − σ_k·v_k and noises it afresh to the next level,
//! x_{k+1} = (1 − σ_{k+1})·x̂₀ + σ_{k+1}·ε_k, with new noise ε_k every step; the last step
//! returns x̂₀. The distilled LoRAs were trained for exactly this walk.
//!
//! ε_k is drawn from the run's seed and the step index (see [`step_noise_seed`]), so a seed
//! gives the same video every time; it is not torch's noise, so it does not reproduce a
//! Python run bit for bit (the Euler sampler does, with `--noise`).

use candle_core::{DType, Tensor};

use super::noise::seeded_noise;
use super::schedule::FlowSchedule;
use super::FlowSolver;
use crate::error::{Result, VditError};

pub struct LcmSolver {
    schedule: FlowSchedule,
    step_index: usize,
    seed: u64,
}

/// The seed of step k's fresh noise: distinct from the initial noise's (`seed` itself) and
/// from every other step's.
pub fn step_noise_seed(seed: u64, step: usize) -> u64 {
    // splitmix64 of (seed, step): neighbouring seeds and steps give unrelated streams.
    let mut z = seed ^ (step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl LcmSolver {
    pub fn from_schedule(schedule: FlowSchedule, seed: u64) -> Self {
        Self {
            schedule,
            step_index: 0,
            seed,
        }
    }

    /// One step with the given fresh noise (the noise is unused on the last step).
    pub fn step_with_noise(
        &mut self,
        velocity: &Tensor,
        sample: &Tensor,
        noise: &Tensor,
    ) -> Result<Tensor> {
        let k = self.step_index;
        let steps = self.schedule.num_steps();
        if k >= steps {
            return Err(VditError::Sampling(format!(
                "LCM: all {steps} steps already taken"
            )));
        }
        let (sigma, next) = (self.schedule.sigmas[k], self.schedule.sigmas[k + 1]);
        let x0 = (sample.to_dtype(DType::F32)?
            - velocity.to_dtype(DType::F32)?.affine(sigma as f64, 0.0)?)?;
        let out = if next == 0.0 {
            x0
        } else {
            (x0.affine(1.0 - next as f64, 0.0)? + noise.affine(next as f64, 0.0)?)?
        };
        self.step_index += 1;
        Ok(out)
    }
}

impl FlowSolver for LcmSolver {
    fn schedule(&self) -> &FlowSchedule {
        &self.schedule
    }

    fn step_index(&self) -> usize {
        self.step_index
    }

    fn step(&mut self, velocity: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let noise = seeded_noise(
            step_noise_seed(self.seed, self.step_index),
            sample.dims(),
            sample.device(),
        )?;
        self.step_with_noise(velocity, sample, &noise)
    }
}
