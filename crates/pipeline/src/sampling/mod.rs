//! Flow-matching sampling: schedules, solvers, guidance.
//!
//! A solver owns its schedule and history. The pipeline asks it for the timestep of the next
//! step, runs the model (cond and uncond batched), guides, and hands the velocity back:
//!
//! ```text
//! for k in 0..N:  v = guide(model(x, t_k));  x = solver.step(v, x)
//! ```

pub mod euler;
pub mod guidance;
pub mod lcm;
pub mod noise;
pub mod schedule;
pub mod unipc;

pub use euler::EulerSolver;
pub use guidance::{guide, guide_batched};
pub use lcm::LcmSolver;
pub use noise::{load_noise, seeded_noise};
pub use schedule::{
    check_step_list, distilled_flow_schedule, euler_flow_schedule, linear_flow_schedule,
    shift_sigma, unipc_flow_schedule, FlowSchedule, SigmaGrid,
};
pub use unipc::UniPcSolver;

use candle_core::Tensor;

use std::fmt;
use std::str::FromStr;

use crate::error::Result;
use crate::options::{choice_text, Choice};

/// A flow-matching ODE solver driven one model evaluation at a time.
pub trait FlowSolver {
    /// The full schedule (N timesteps, N + 1 sigmas).
    fn schedule(&self) -> &FlowSchedule;

    /// The next step to take (0-based); equals N when done.
    fn step_index(&self) -> usize;

    /// Takes step `step_index()`: `sample` is x_k `[B, C, F, H, W]`, `velocity` the (guided) model
    /// output at `timesteps[k]`, same shape. Returns x_{k+1} in f32.
    fn step(&mut self, velocity: &Tensor, sample: &Tensor) -> Result<Tensor>;
}

/// Which solver samples the video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerKind {
    /// UniPC-2 (bh2, flow prediction): Wan2.1's default, 2nd order, one model call per step.
    Unipc,
    /// First-order Euler: simple, needs more steps.
    Euler,
    /// Predict the clean sample, then noise it afresh to the next level: the sampler of
    /// step-distilled models (lightx2v, Lightning) at 4 steps.
    Lcm,
}

impl SamplerKind {
    /// A fresh solver of this kind for `steps` steps and time shift `shift`; with `step_list`
    /// (a distilled model's timesteps, see [`distilled_flow_schedule`]) instead of the evenly
    /// spaced grid. `seed` draws the LCM sampler's fresh noise.
    pub fn solver(
        self,
        steps: usize,
        shift: f64,
        step_list: Option<&[f64]>,
        seed: u64,
    ) -> Result<Box<dyn FlowSolver>> {
        self.solver_on(SigmaGrid::TrainingTable, steps, shift, step_list, seed)
    }

    /// [`Self::solver`] with Euler and LCM stepping through `grid` when no step list is given
    /// (UniPC builds its own grid whatever `grid` says).
    pub fn solver_on(
        self,
        grid: SigmaGrid,
        steps: usize,
        shift: f64,
        step_list: Option<&[f64]>,
        seed: u64,
    ) -> Result<Box<dyn FlowSolver>> {
        let listed = match (step_list, grid) {
            (Some(list), _) => Some(distilled_flow_schedule(list, shift)),
            (None, SigmaGrid::Linear) if self != SamplerKind::Unipc => {
                Some(linear_flow_schedule(steps, shift))
            }
            (None, _) => None,
        };
        Ok(match (self, listed) {
            (SamplerKind::Unipc, None) => Box::new(UniPcSolver::new(steps, shift)),
            (SamplerKind::Unipc, Some(_)) => {
                return Err(crate::error::VditError::InvalidSetting(
                    "--timesteps needs --sampler euler or lcm (UniPC builds its own grid)".into(),
                ))
            }
            (SamplerKind::Euler, None) => Box::new(EulerSolver::new(steps, shift)),
            (SamplerKind::Euler, Some(schedule)) => Box::new(EulerSolver::from_schedule(schedule)),
            (SamplerKind::Lcm, schedule) => Box::new(LcmSolver::from_schedule(
                schedule.unwrap_or_else(|| euler_flow_schedule(steps, shift)),
                seed,
            )),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Unipc => "unipc",
            SamplerKind::Euler => "euler",
            SamplerKind::Lcm => "lcm",
        }
    }
}

impl Choice for SamplerKind {
    const ALL: &'static [Self] = &[SamplerKind::Unipc, SamplerKind::Euler, SamplerKind::Lcm];
    fn name(self) -> &'static str {
        SamplerKind::name(self)
    }
    fn help(self) -> Option<&'static str> {
        Some(match self {
            SamplerKind::Unipc => {
                "UniPC-2 (bh2, flow prediction): Wan2.1's default, 2nd order, one model call per step"
            }
            SamplerKind::Euler => "First-order Euler: simple, needs more steps",
            SamplerKind::Lcm => {
                "Predict the clean video, re-noise to the next level (step-distilled LoRAs, 4 steps)"
            }
        })
    }
}
choice_text!(SamplerKind);
