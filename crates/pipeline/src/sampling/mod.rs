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
pub mod noise;
pub mod schedule;
pub mod unipc;

pub use euler::EulerSolver;
pub use guidance::{guide, guide_batched};
pub use noise::{load_noise, seeded_noise};
pub use schedule::{euler_flow_schedule, shift_sigma, unipc_flow_schedule, FlowSchedule};
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
}

impl SamplerKind {
    /// A fresh solver of this kind for `steps` steps and time shift `shift`.
    pub fn solver(self, steps: usize, shift: f64) -> Box<dyn FlowSolver> {
        match self {
            SamplerKind::Unipc => Box::new(UniPcSolver::new(steps, shift)),
            SamplerKind::Euler => Box::new(EulerSolver::new(steps, shift)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Unipc => "unipc",
            SamplerKind::Euler => "euler",
        }
    }
}

impl Choice for SamplerKind {
    const ALL: &'static [Self] = &[SamplerKind::Unipc, SamplerKind::Euler];
    fn name(self) -> &'static str {
        SamplerKind::name(self)
    }
    fn help(self) -> Option<&'static str> {
        Some(match self {
            SamplerKind::Unipc => {
                "UniPC-2 (bh2, flow prediction): Wan2.1's default, 2nd order, one model call per step"
            }
            SamplerKind::Euler => "First-order Euler: simple, needs more steps",
        })
    }
}
choice_text!(SamplerKind);
