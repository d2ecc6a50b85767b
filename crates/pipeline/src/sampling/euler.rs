//! Euler for flow matching: x_{k+1} = x_k + (σ_{k+1} − σ_k)·v_k, on diffusers'
//! `FlowMatchEulerDiscreteScheduler` grid. One model call per step, no history.

use candle_core::{DType, Tensor};

use super::schedule::{euler_flow_schedule, FlowSchedule};
use super::FlowSolver;
use crate::error::{Result, VditError};

pub struct EulerSolver {
    schedule: FlowSchedule,
    step_index: usize,
}

impl EulerSolver {
    pub fn new(steps: usize, shift: f64) -> Self {
        Self::from_schedule(euler_flow_schedule(steps, shift))
    }

    pub fn from_schedule(schedule: FlowSchedule) -> Self {
        Self {
            schedule,
            step_index: 0,
        }
    }
}

impl FlowSolver for EulerSolver {
    fn schedule(&self) -> &FlowSchedule {
        &self.schedule
    }

    fn step_index(&self) -> usize {
        self.step_index
    }

    fn step(&mut self, velocity: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let k = self.step_index;
        let steps = self.schedule.num_steps();
        if k >= steps {
            return Err(VditError::Sampling(format!(
                "Euler: all {steps} steps already taken"
            )));
        }
        // dt in f32 like diffusers, which subtracts its f32 sigmas.
        let dt = self.schedule.sigmas[k + 1] - self.schedule.sigmas[k];
        let next = (sample.to_dtype(DType::F32)?
            + velocity.to_dtype(DType::F32)?.affine(dt as f64, 0.0)?)?;
        self.step_index += 1;
        Ok(next)
    }
}
