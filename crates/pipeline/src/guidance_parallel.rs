//! Guidance-parallel sampling: the conditional and the unconditional pass of each step run on
//! two ranks (two devices), each with its own prompt's context, and the two velocities are
//! exchanged every step, so both ranks guide alike and keep identical latents. The step loop
//! ([`crate::denoise::denoise`]) is unchanged: [`GuidanceParallelDenoiser`] is a [`Denoiser`].
//! With one device per rank this halves the batch each device runs; the exchange is one
//! latent-sized tensor per step. The communicator is `vdit_models::parallel`'s (an in-process
//! stand-in in the tests; the NCCL one is not written yet).

use candle_core::{DType, Tensor};
use rainfusion::SelfAttention;
use vdit_models::parallel::Communicator;

use crate::context::TextContext;
use crate::denoise::{Denoiser, Step, VelocityModel};
use crate::error::{Result, VditError};
use crate::sampling::guide;

/// One rank of a guidance pair: rank 0 runs the conditional pass (the prompt), rank 1 the
/// unconditional one (the negative prompt).
pub struct GuidanceParallelDenoiser<'a> {
    model: &'a dyn VelocityModel,
    /// This rank's branch: batch 1.
    context: &'a TextContext,
    guidance_scale: f64,
    attention: &'a mut dyn SelfAttention,
    pair: &'a dyn Communicator,
}

impl<'a> GuidanceParallelDenoiser<'a> {
    /// `context` is the prompt's on rank 0 and the negative prompt's on rank 1 of `pair`.
    pub fn new(
        model: &'a dyn VelocityModel,
        context: &'a TextContext,
        guidance_scale: f64,
        attention: &'a mut dyn SelfAttention,
        pair: &'a dyn Communicator,
    ) -> Result<Self> {
        if pair.size() != 2 {
            return Err(VditError::InvalidSetting(format!(
                "guidance-parallel sampling runs on 2 devices (one per guidance branch), not {}",
                pair.size()
            )));
        }
        Ok(Self {
            model,
            context,
            guidance_scale,
            attention,
            pair,
        })
    }
}

impl Denoiser for GuidanceParallelDenoiser<'_> {
    fn velocity(&mut self, latents: &Tensor, step: Step) -> Result<Tensor> {
        self.attention.begin_step(step.index, step.count);
        let t = Tensor::full(step.timestep, 1, latents.device())?;
        let mine = self
            .model
            .velocity(latents, &t, self.context, &mut *self.attention)?
            .to_dtype(DType::F32)?;
        let both = self.pair.all_gather(&mine)?; // [conditional, unconditional]
        guide(&both[0], &both[1], self.guidance_scale)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use rainfusion::reference::max_abs_diff;
    use rainfusion::DenseAttention;
    use vdit_models::parallel::LocalGroup;

    use super::*;
    use crate::denoise::{denoise, Conditioning, Expert, ExpertDenoiser};
    use crate::family::{TimestepForm, TimestepRange};
    use crate::sampling::EulerSolver;

    /// v = (x − m(context)) · (1 + t/1000): any function of the sample, its context and t.
    struct Toy;

    impl VelocityModel for Toy {
        fn num_layers(&self) -> usize {
            1
        }

        fn velocity(
            &self,
            x: &Tensor,
            t: &Tensor,
            ctx: &TextContext,
            _: &mut dyn SelfAttention,
        ) -> Result<Tensor> {
            let b = x.dim(0)?;
            let m = ctx
                .single_states()?
                .mean_keepdim(1)?
                .mean_keepdim(2)?
                .reshape((b, 1, 1, 1, 1))?;
            let gain = ((t.reshape((b, 1, 1, 1, 1))? / 1000.0)? + 1.0)?;
            Ok(x.broadcast_sub(&m)?.broadcast_mul(&gain)?)
        }
    }

    #[test]
    fn two_ranks_sample_what_one_device_samples() {
        let dev = Device::Cpu;
        let noise = Tensor::randn(0f32, 1.0, (1, 4, 2, 3, 5), &dev).unwrap();
        let cond = TextContext::single(Tensor::randn(0.5f32, 1.0, (1, 6, 8), &dev).unwrap());
        let uncond = TextContext::single(Tensor::randn(-0.5f32, 1.0, (1, 6, 8), &dev).unwrap());
        let (steps, scale, shift) = (6, 5.0, 3.0);

        let one_device = {
            let mut denoiser = ExpertDenoiser::new(
                vec![Expert::shared("toy", &Toy, scale, TimestepRange::ALL)],
                &Conditioning {
                    cond: &cond,
                    uncond: Some(&uncond),
                },
                TimestepForm::PerSample,
                0,
                Box::new(|_| Ok(Box::new(DenseAttention))),
            )
            .unwrap();
            let mut solver = EulerSolver::new(steps, shift);
            denoise(&mut denoiser, &mut solver, &noise, &mut |_| {}).unwrap()
        };

        let ranks = LocalGroup::run(2, |comm| {
            let context = if comm.rank() == 0 { &cond } else { &uncond };
            let mut attention = DenseAttention;
            let mut denoiser =
                GuidanceParallelDenoiser::new(&Toy, context, scale, &mut attention, &comm).unwrap();
            let mut solver = EulerSolver::new(steps, shift);
            denoise(&mut denoiser, &mut solver, &noise, &mut |_| {}).unwrap()
        });
        for (rank, latents) in ranks.iter().enumerate() {
            let diff = max_abs_diff(latents, &one_device).unwrap();
            assert!(diff < 1e-5, "rank {rank}: {diff}");
        }
        // guidance did something: the result is not the conditional-only run's
        let mut cond_only = ExpertDenoiser::new(
            vec![Expert::shared("toy", &Toy, 1.0, TimestepRange::ALL)],
            &Conditioning {
                cond: &cond,
                uncond: None,
            },
            TimestepForm::PerSample,
            0,
            Box::new(|_| Ok(Box::new(DenseAttention))),
        )
        .unwrap();
        let mut solver = EulerSolver::new(steps, shift);
        let unguided = denoise(&mut cond_only, &mut solver, &noise, &mut |_| {}).unwrap();
        let moved = max_abs_diff(&ranks[0], &unguided).unwrap();
        assert!(moved > 1e-3, "guidance changed nothing: {moved}");
    }

    #[test]
    fn a_pair_is_two_ranks() {
        let comms = LocalGroup::members(3);
        let ctx = TextContext::single(Tensor::zeros((1, 2, 2), DType::F32, &Device::Cpu).unwrap());
        let mut attention = DenseAttention;
        let err = GuidanceParallelDenoiser::new(&Toy, &ctx, 5.0, &mut attention, &comms[0])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("2 devices"), "{err}");
    }
}
