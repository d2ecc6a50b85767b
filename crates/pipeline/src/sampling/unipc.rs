//! UniPC-2 multistep solver (bh2 variant, x0-prediction) for flow-matching models, step for step
//! what diffusers' `UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True)`
//! does with its Wan2.1 settings: solver order 2, `lower_order_final`, final σ = 0, corrector on.
//!
//! Notation (spec wan2.1.md §5.4): α = 1 − σ, λ = ln α − ln σ, m_k = x_k − σ_k·v_k the clean-sample
//! estimate. Each call runs the corrector UniC on the sample the model just saw (from step 1 on),
//! then the predictor UniP to the next noise level.

use candle_core::{DType, Tensor};

use super::schedule::{unipc_flow_schedule, FlowSchedule};
use super::FlowSolver;
use crate::error::{Result, VditError};

/// Highest order of the multistep solver (Wan2.1 and diffusers use 2).
const SOLVER_ORDER: usize = 2;

/// UniPC-2 state across steps: the last two clean-sample estimates and the sample the last
/// predictor started from (which the corrector revisits).
pub struct UniPcSolver {
    schedule: FlowSchedule,
    /// Next step to take (0-based).
    step_index: usize,
    /// m_{k−1} (older) then m_k, once known.
    clean_estimates: Vec<Tensor>,
    /// The corrected sample the previous predictor started from.
    last_sample: Option<Tensor>,
    /// Order used by the previous predictor; the corrector uses the same.
    last_order: usize,
}

/// α and λ of a noise level σ in (0, 1).
fn log_snr(sigma: f64) -> f64 {
    (1.0 - sigma).ln() - sigma.ln()
}

impl UniPcSolver {
    pub fn new(steps: usize, shift: f64) -> Self {
        Self::from_schedule(unipc_flow_schedule(steps, shift))
    }

    pub fn from_schedule(schedule: FlowSchedule) -> Self {
        Self {
            schedule,
            step_index: 0,
            clean_estimates: Vec::with_capacity(SOLVER_ORDER),
            last_sample: None,
            last_order: 0,
        }
    }

    fn sigma(&self, index: usize) -> f64 {
        self.schedule.sigmas[index] as f64
    }

    /// UniC: corrects x_k (the predictor's output, just evaluated by the model) with the new
    /// estimate m_k. Uses σ_k, σ_{k−1} and, at order 2, m_{k−2}.
    fn correct(&self, clean: &Tensor, sample_before: &Tensor, order: usize) -> Result<Tensor> {
        let k = self.step_index;
        let (sigma_t, sigma_s0) = (self.sigma(k), self.sigma(k - 1));
        let alpha_t = 1.0 - sigma_t;
        let m0 = &self.clean_estimates[self.clean_estimates.len() - 1];
        let h = log_snr(sigma_t) - log_snr(sigma_s0);
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        let b_h = h_phi_1; // bh2
        let base = (sample_before.affine(sigma_t / sigma_s0, 0.0)?
            - m0.affine(alpha_t * h_phi_1, 0.0)?)?;
        let d1_t = (clean - m0)?;
        let correction = if order == 1 {
            d1_t.affine(0.5, 0.0)?
        } else {
            let m1 = &self.clean_estimates[self.clean_estimates.len() - 2];
            let r = (log_snr(self.sigma(k - 2)) - log_snr(sigma_s0)) / h;
            let d1 = ((m1 - m0)? / r)?;
            let g1 = h_phi_1 / hh - 1.0;
            let b1 = g1 / b_h;
            let g2 = g1 / hh - 0.5;
            let b2 = 2.0 * g2 / b_h;
            // Solve [[1, 1], [r, 1]]·(ρ₀, ρ₁) = (b₁, b₂).
            let rho0 = (b1 - b2) / (1.0 - r);
            let rho1 = b1 - rho0;
            (d1.affine(rho0, 0.0)? + d1_t.affine(rho1, 0.0)?)?
        };
        Ok((base - correction.affine(alpha_t * b_h, 0.0)?)?)
    }

    /// UniP: from the corrected sample x̂_k and m_k (last of `clean_estimates`) to x_{k+1}.
    fn predict(&self, sample: &Tensor, order: usize) -> Result<Tensor> {
        let k = self.step_index;
        let m0 = &self.clean_estimates[self.clean_estimates.len() - 1];
        let (sigma_t, sigma_s0) = (self.sigma(k + 1), self.sigma(k));
        if sigma_t == 0.0 {
            // Final step to σ = 0 (always order 1 with lower_order_final): the limit of the
            // update is exactly the clean estimate; computing it would take log 0.
            return Ok(m0.clone());
        }
        let alpha_t = 1.0 - sigma_t;
        let h = log_snr(sigma_t) - log_snr(sigma_s0);
        let h_phi_1 = (-h).exp_m1();
        let b_h = h_phi_1;
        let mut next =
            (sample.affine(sigma_t / sigma_s0, 0.0)? - m0.affine(alpha_t * h_phi_1, 0.0)?)?;
        if order == 2 {
            let m1 = &self.clean_estimates[self.clean_estimates.len() - 2];
            let r = (log_snr(self.sigma(k - 1)) - log_snr(sigma_s0)) / h;
            let d1 = ((m1 - m0)? / r)?;
            // At order 2 the predictor's coefficient is a fixed 1/2 (no linear solve).
            next = (next - d1.affine(alpha_t * b_h * 0.5, 0.0)?)?;
        }
        Ok(next)
    }
}

impl FlowSolver for UniPcSolver {
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
                "UniPC: all {steps} steps already taken"
            )));
        }
        let velocity = velocity.to_dtype(DType::F32)?;
        let sample = sample.to_dtype(DType::F32)?;
        // Flow prediction → clean-sample estimate m_k = x_k − σ_k·v_k.
        let clean = (&sample - velocity.affine(self.sigma(k), 0.0)?)?;
        let sample = match (&self.last_sample, k) {
            (Some(before), k) if k > 0 => self.correct(&clean, before, self.last_order)?,
            _ => sample,
        };
        if self.clean_estimates.len() == SOLVER_ORDER {
            self.clean_estimates.remove(0);
        }
        self.clean_estimates.push(clean);
        // Warm up from order 1, and drop back to order 1 for the last step (lower_order_final).
        let order = SOLVER_ORDER.min(steps - k).min(k + 1);
        let next = self.predict(&sample, order)?;
        self.last_sample = Some(sample);
        self.last_order = order;
        self.step_index += 1;
        Ok(next)
    }
}
