//! The step loop and what it asks each step: [`denoise`] runs a solver's schedule and asks a
//! [`Denoiser`] for the (guided) velocity at each step; it never learns which model, family or
//! expert answers. [`ExpertDenoiser`] is the denoiser every family uses: a list of experts
//! (model slot, guidance scale, timestep range), the one serving the step's timestep loaded on
//! the device, classifier-free guidance through [`guided_velocity`]. An image-conditioned run
//! hands it an [`ImageCondition`]: the model input, per-token timesteps and image features come
//! from it, whatever the family.

use std::time::Instant;

use candle_core::{DType, Tensor};
use rainfusion::SelfAttention;
use vdit_models::wan::transformer::BlockCache;

use crate::context::TextContext;
use crate::error::{Result, VditError};
use crate::family::{TimestepForm, TimestepRange};
use crate::image_cond::ImageCondition;
use crate::sampling::{guide_batched, FlowSolver};
use crate::step_cache::{CacheStats, StepCache, StepCacheSettings};

/// A flow-matching network: predicts the velocity (noise − clean) of a sample.
pub trait VelocityModel {
    /// Transformer layers, so an attention policy can keep per-layer state.
    fn num_layers(&self) -> usize;

    /// Channels of the velocity (and of the noise a run starts from), when the model knows
    /// them; `None` leaves it to the family's latent channels.
    fn out_channels(&self) -> Option<usize> {
        None
    }

    /// latents `[B, C, F, H, W]` f32, timesteps `[B]` (or `[B, L]` per token) f32 in 0..1000,
    /// the text `context` (each stream `[B, L, D]`) → velocity `[B, C, F, H, W]`. Self-attention
    /// goes through `attention`.
    fn velocity(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        context: &TextContext,
        attention: &mut dyn SelfAttention,
    ) -> Result<Tensor>;

    /// As [`Self::velocity`], with image features `[1, Li, Di]` (shared by every sample of the
    /// batch) for the transformer's image cross-attention (Wan2.1 I2V's CLIP tokens). A model
    /// without one refuses them.
    fn velocity_with_image(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        context: &TextContext,
        image: &Tensor,
        attention: &mut dyn SelfAttention,
    ) -> Result<Tensor> {
        let _ = (latents, timesteps, context, attention);
        Err(VditError::InvalidSetting(format!(
            "image features {:?} were given to a transformer without image cross-attention",
            image.dims()
        )))
    }

    /// [`Self::velocity`] (with `image`: [`Self::velocity_with_image`]) with a step cache at the
    /// transformer's blocks, which may skip them (see [`BlockCache`]). A model without that seam
    /// runs every pass in full.
    fn velocity_cached(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        context: &TextContext,
        image: Option<&Tensor>,
        attention: &mut dyn SelfAttention,
        cache: &mut dyn BlockCache,
    ) -> Result<Tensor> {
        let _ = cache;
        match image {
            None => self.velocity(latents, timesteps, context, attention),
            Some(image) => self.velocity_with_image(latents, timesteps, context, image, attention),
        }
    }
}

/// A boxed model is the model (`vdit compare` and `vdit eval` hold the family's transformers
/// as `Box<dyn VelocityModel>`).
impl<T: VelocityModel + ?Sized> VelocityModel for Box<T> {
    fn num_layers(&self) -> usize {
        (**self).num_layers()
    }

    fn out_channels(&self) -> Option<usize> {
        (**self).out_channels()
    }

    fn velocity(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        context: &TextContext,
        attention: &mut dyn SelfAttention,
    ) -> Result<Tensor> {
        (**self).velocity(latents, timesteps, context, attention)
    }

    fn velocity_with_image(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        context: &TextContext,
        image: &Tensor,
        attention: &mut dyn SelfAttention,
    ) -> Result<Tensor> {
        (**self).velocity_with_image(latents, timesteps, context, image, attention)
    }

    fn velocity_cached(
        &self,
        latents: &Tensor,
        timesteps: &Tensor,
        context: &TextContext,
        image: Option<&Tensor>,
        attention: &mut dyn SelfAttention,
        cache: &mut dyn BlockCache,
    ) -> Result<Tensor> {
        (**self).velocity_cached(latents, timesteps, context, image, attention, cache)
    }
}

/// One step of the schedule, as the loop hands it to the denoiser.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// 0-based.
    pub index: usize,
    pub count: usize,
    /// In 0..1000.
    pub timestep: f32,
}

/// What the step loop asks each step.
pub trait Denoiser {
    /// The guided velocity for `latents` `[1, C, F, H, W]` f32 at `step`, f32, same shape.
    fn velocity(&mut self, latents: &Tensor, step: Step) -> Result<Tensor>;

    /// The latents after the last step, from the solver's (an image-conditioned run puts its
    /// conditioning frame back); the same by default.
    fn finish(&self, latents: Tensor) -> Result<Tensor> {
        Ok(latents)
    }
}

/// What the step loop reports after each step (for the progress bar).
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    /// 0-based step just taken.
    pub step: usize,
    pub steps: usize,
    pub timestep: f32,
    /// Wall time of this step (model passes + solver), seconds.
    pub seconds: f64,
}

/// Runs the solver's whole schedule from `noise` `[1, C, F', H', W']` and returns the final
/// latents (f32, same shape).
pub fn denoise(
    denoiser: &mut dyn Denoiser,
    solver: &mut dyn FlowSolver,
    noise: &Tensor,
    on_step: &mut dyn FnMut(StepReport),
) -> Result<Tensor> {
    let timesteps = solver.schedule().timesteps.clone();
    let count = timesteps.len();
    let mut latents = noise.to_dtype(DType::F32)?;
    for (index, &timestep) in timesteps.iter().enumerate() {
        let start = Instant::now();
        let step = Step {
            index,
            count,
            timestep,
        };
        let velocity = denoiser.velocity(&latents, step)?;
        latents = solver.step(&velocity, &latents)?;
        if !all_finite(&latents)? {
            return Err(VditError::NonFinite {
                step: index + 1,
                steps: count,
                timestep,
            });
        }
        on_step(StepReport {
            step: index,
            steps: count,
            timestep,
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    denoiser.finish(latents)
}

/// Whether every element of `t` is finite (one scalar leaves the device).
fn all_finite(t: &Tensor) -> Result<bool> {
    let sum = t
        .to_dtype(DType::F32)?
        .abs()?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(sum.is_finite())
}

/// The prompt's context and, when guiding, the negative prompt's.
pub struct Conditioning<'a> {
    /// Batch 1.
    pub cond: &'a TextContext,
    /// Batch 1; `None` runs without classifier-free guidance (one pass per step).
    pub uncond: Option<&'a TextContext>,
}

/// One model evaluation with classifier-free guidance: with `batched` (cond then uncond, batch 2,
/// built once per run) and a scale ≠ 1, both passes run as one batch of 2 and are combined in
/// f32; otherwise one pass on `cond` (batch 1). `timesteps` maps a batch size to
/// the model's timestep tensor. `image` `[1, Li, Di]`, when given, reaches both passes (the
/// negative prompt changes the text only). With `cache`, the pass goes through the model's
/// step-cache seam (one decision for both branches of the batch).
#[allow(clippy::too_many_arguments)]
pub fn guided_velocity(
    model: &dyn VelocityModel,
    latents: &Tensor,
    timesteps: &dyn Fn(usize) -> Result<Tensor>,
    cond: &TextContext,
    batched: Option<&TextContext>,
    image: Option<&Tensor>,
    guidance_scale: f64,
    attention: &mut dyn SelfAttention,
    cache: Option<&mut dyn BlockCache>,
) -> Result<Tensor> {
    let mut cache = cache;
    let mut pass =
        |input: &Tensor, t: &Tensor, context: &TextContext| match (cache.as_deref_mut(), image) {
            (Some(cache), image) => {
                model.velocity_cached(input, t, context, image, attention, cache)
            }
            (None, None) => model.velocity(input, t, context, attention),
            (None, Some(image)) => model.velocity_with_image(input, t, context, image, attention),
        };
    match batched {
        Some(context) if guidance_scale != 1.0 => {
            let input = Tensor::cat(&[latents, latents], 0)?;
            let velocity = pass(&input, &timesteps(2)?, context)?;
            guide_batched(&velocity, guidance_scale)
        }
        _ => Ok(pass(latents, &timesteps(1)?, cond)?.to_dtype(DType::F32)?),
    }
}

/// Guidance branches of a pass: 2 when guiding (cond and uncond batched), else 1.
fn branches(batched: Option<&TextContext>, guidance_scale: f64) -> usize {
    if batched.is_some() && guidance_scale != 1.0 {
        2
    } else {
        1
    }
}

/// Builds a model when its expert first runs.
pub type LoadModel<'a> = Box<dyn FnMut() -> Result<Box<dyn VelocityModel + 'a>> + 'a>;

/// Where an expert's model comes from.
enum ModelSlot<'a> {
    /// Loaded by the caller, kept for the whole run (`vdit compare` reuses one for many runs).
    Shared(&'a dyn VelocityModel),
    /// Loaded when its steps begin, freed when they end (unless all are kept).
    Deferred {
        load: LoadModel<'a>,
        loaded: Option<Box<dyn VelocityModel + 'a>>,
    },
}

/// One transformer of a run: which model, its guidance scale and the timesteps it serves.
pub struct Expert<'a> {
    /// For messages (`transformer`, `transformer_2`).
    pub name: String,
    pub guidance_scale: f64,
    pub timesteps: TimestepRange,
    slot: ModelSlot<'a>,
}

impl<'a> Expert<'a> {
    /// An expert on a model the caller holds.
    pub fn shared(
        name: impl Into<String>,
        model: &'a dyn VelocityModel,
        guidance_scale: f64,
        timesteps: TimestepRange,
    ) -> Self {
        Self {
            name: name.into(),
            guidance_scale,
            timesteps,
            slot: ModelSlot::Shared(model),
        }
    }

    /// An expert whose model `load` builds when its first step comes.
    pub fn deferred(
        name: impl Into<String>,
        load: LoadModel<'a>,
        guidance_scale: f64,
        timesteps: TimestepRange,
    ) -> Self {
        Self {
            name: name.into(),
            guidance_scale,
            timesteps,
            slot: ModelSlot::Deferred { load, loaded: None },
        }
    }

    fn model(&mut self) -> Result<&dyn VelocityModel> {
        match &mut self.slot {
            ModelSlot::Shared(model) => Ok(*model),
            ModelSlot::Deferred { load, loaded } => {
                if loaded.is_none() {
                    *loaded = Some(load()?);
                }
                Ok(loaded.as_deref().expect("just loaded"))
            }
        }
    }

    /// Frees a deferred model (a shared one stays with its owner).
    fn release(&mut self) {
        if let ModelSlot::Deferred { loaded, .. } = &mut self.slot {
            *loaded = None;
        }
    }
}

/// Builds a fresh self-attention policy: one per expert's run of steps, so masks cached on one
/// expert's activations are never reused on another's.
/// It is given the model's layer count.
pub type BuildAttention<'a> = Box<dyn FnMut(usize) -> Result<Box<dyn SelfAttention>> + 'a>;

/// The denoiser of every family: the expert whose timestep range holds the step's timestep
/// answers, with its guidance scale. At a switch the previous expert's model is freed (unless
/// `keep_loaded`) and the attention policy starts afresh.
pub struct ExpertDenoiser<'a> {
    experts: Vec<Expert<'a>>,
    active: Option<usize>,
    /// Keep every expert's model on the device after its steps (more memory, no reloads).
    pub keep_loaded: bool,
    /// Batch 1.
    cond: TextContext,
    /// Cond then uncond (batch 2), when guiding.
    batched: Option<TextContext>,
    timestep_form: TimestepForm,
    /// Tokens per sample, for per-token timesteps.
    tokens: usize,
    /// The run's image conditioning, if any.
    image: Option<ImageCondition>,
    build_attention: BuildAttention<'a>,
    attention: Option<Box<dyn SelfAttention>>,
    /// (density, steps) of the policies of earlier experts.
    finished_policies: Vec<(f64, usize)>,
    steps_on_policy: usize,
    /// Step caching for every expert (none by default), and the schedule's step count.
    step_cache: Option<(StepCacheSettings, usize)>,
    /// The active expert's step cache, fresh at each switch.
    cache: Option<StepCache>,
    /// What the caches of earlier experts did.
    finished_caches: CacheStats,
    /// Calibration records of earlier experts: (step, per-branch ratio).
    finished_records: Vec<(usize, Vec<f64>)>,
}

impl<'a> ExpertDenoiser<'a> {
    /// `experts` in any order, their ranges covering every timestep of the schedule;
    /// `tokens` is the transformer's tokens per sample (used with per-token timesteps).
    pub fn new(
        experts: Vec<Expert<'a>>,
        conditioning: &Conditioning,
        timestep_form: TimestepForm,
        tokens: usize,
        build_attention: BuildAttention<'a>,
    ) -> Result<Self> {
        let batched = match conditioning.uncond {
            Some(uncond) => Some(TextContext::cat_batch(conditioning.cond, uncond)?),
            None => None,
        };
        Ok(Self {
            experts,
            active: None,
            keep_loaded: false,
            cond: conditioning.cond.clone(),
            batched,
            timestep_form,
            tokens,
            image: None,
            build_attention,
            attention: None,
            finished_policies: Vec::new(),
            steps_on_policy: 0,
            step_cache: None,
            cache: None,
            finished_caches: CacheStats::default(),
            finished_records: Vec::new(),
        })
    }

    /// Conditions every step on `image`: the model input, the per-token timesteps and the
    /// image features come from it (see [`crate::image_cond::latent`]).
    pub fn with_image(mut self, image: Option<ImageCondition>) -> Self {
        self.image = image;
        self
    }

    /// Caches steps as `settings` say, for a schedule of `steps` steps: each expert gets its own
    /// [`StepCache`] when its first step comes.
    pub fn with_step_cache(mut self, settings: &StepCacheSettings, steps: usize) -> Self {
        self.step_cache = settings.is_active().then(|| (settings.clone(), steps));
        self
    }

    /// Transformer passes asked for and skipped so far, every expert's.
    pub fn cache_stats(&self) -> CacheStats {
        let mut stats = self.finished_caches;
        if let Some(cache) = &self.cache {
            stats.add(cache.stats());
        }
        stats
    }

    /// A calibration run's records so far, every expert's: (step, per-branch magnitude ratio).
    pub fn calibration_records(&self) -> Vec<(usize, Vec<f64>)> {
        let mut records = self.finished_records.clone();
        if let Some(cache) = &self.cache {
            records.extend_from_slice(cache.recorded());
        }
        records
    }

    /// Fraction of attention blocks computed, averaged over layers, heads and steps (1 = dense).
    pub fn effective_density(&self) -> f64 {
        let mut weighted = 0.0;
        let mut steps = 0;
        let current = self
            .attention
            .as_ref()
            .map(|a| (a.effective_density(), self.steps_on_policy));
        for (density, n) in self.finished_policies.iter().copied().chain(current) {
            weighted += density * n as f64;
            steps += n;
        }
        match (steps, current) {
            (0, Some((density, _))) => density,
            (0, None) => 1.0,
            _ => weighted / steps as f64,
        }
    }

    /// Makes the expert serving `t` the active one: frees the previous one's model and starts a
    /// fresh attention policy at a switch.
    fn activate(&mut self, t: f32) -> Result<usize> {
        let index = self
            .experts
            .iter()
            .position(|e| e.timesteps.contains(t))
            .ok_or_else(|| VditError::Sampling(format!("no transformer serves timestep {t}")))?;
        if self.active != Some(index) {
            if let Some(previous) = self.active {
                if !self.keep_loaded {
                    self.experts[previous].release();
                }
            }
            if let Some(policy) = self.attention.take() {
                self.finished_policies
                    .push((policy.effective_density(), self.steps_on_policy));
            }
            let num_layers = self.experts[index].model()?.num_layers();
            self.attention = Some((self.build_attention)(num_layers)?);
            self.steps_on_policy = 0;
            if let Some(cache) = self.cache.take() {
                self.finished_caches.add(cache.stats());
                self.finished_records.extend_from_slice(cache.recorded());
            }
            if let Some((settings, steps)) = &self.step_cache {
                let expert = &self.experts[index];
                let branches = branches(self.batched.as_ref(), expert.guidance_scale);
                self.cache = StepCache::new(settings, *steps, branches);
            }
            self.active = Some(index);
        }
        Ok(index)
    }
}

impl Denoiser for ExpertDenoiser<'_> {
    fn velocity(&mut self, latents: &Tensor, step: Step) -> Result<Tensor> {
        let index = self.activate(step.timestep)?;
        let attention = self.attention.as_mut().expect("activated");
        attention.begin_step(step.index, step.count);
        self.steps_on_policy += 1;
        let device = latents.device().clone();
        let (form, tokens) = (self.timestep_form, self.tokens);
        let latent_condition = self.image.as_ref().map(|i| &i.latent);
        let timesteps = move |batch: usize| -> Result<Tensor> {
            if let Some(per_token) = latent_condition
                .map(|c| c.token_timesteps(step.timestep, batch))
                .transpose()?
                .flatten()
            {
                return Ok(per_token);
            }
            Ok(match form {
                TimestepForm::PerSample => Tensor::full(step.timestep, batch, &device)?,
                TimestepForm::PerToken => Tensor::full(step.timestep, (batch, tokens), &device)?,
            })
        };
        let input = match latent_condition {
            Some(condition) => condition.model_input(latents)?,
            None => latents.clone(),
        };
        let features = self.image.as_ref().and_then(|i| i.features.as_ref());
        let expert = &mut self.experts[index];
        let guidance_scale = expert.guidance_scale;
        let model = expert.model()?;
        let cache = self.cache.as_mut().map(|cache| {
            cache.begin_step(step.index, step.count);
            cache as &mut dyn BlockCache
        });
        guided_velocity(
            model,
            &input,
            &timesteps,
            &self.cond,
            self.batched.as_ref(),
            features,
            guidance_scale,
            attention.as_mut(),
            cache,
        )
    }

    fn finish(&self, latents: Tensor) -> Result<Tensor> {
        match self.image.as_ref().map(|i| &i.latent) {
            Some(condition) => condition.finish(&latents),
            None => Ok(latents),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::{EulerSolver, UniPcSolver};
    use candle_core::Device;
    use rainfusion::DenseAttention;
    use std::cell::Cell;

    /// v = (x − target(context)) / σ with σ = t/1000: the exact flow-matching velocity towards a
    /// clean image `target`, so Euler's last step lands on it.
    struct ToyModel {
        /// Step at which it starts returning NaN, if any.
        nan_from_call: Option<usize>,
        calls: Cell<usize>,
    }

    impl VelocityModel for ToyModel {
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
            let ctx = ctx.single_states()?;
            let call = self.calls.get();
            self.calls.set(call + 1);
            assert_eq!(t.dims(), &[x.dim(0)?]);
            assert_eq!(ctx.dim(0)?, x.dim(0)?);
            // One scalar per sample from its context.
            let target = ctx
                .mean_keepdim(1)?
                .mean_keepdim(2)?
                .reshape((x.dim(0)?, 1, 1, 1, 1))?;
            let sigma = (t.reshape((x.dim(0)?, 1, 1, 1, 1))? / 1000.0)?;
            let v = x.broadcast_sub(&target)?.broadcast_div(&sigma)?;
            match self.nan_from_call {
                Some(n) if call >= n => Ok((v * f64::NAN)?),
                _ => Ok(v),
            }
        }
    }

    /// The loop on one shared toy expert serving every timestep, dense attention.
    fn run(
        model: &ToyModel,
        solver: &mut dyn FlowSolver,
        noise: &Tensor,
        cond: &TextContext,
        uncond: Option<&TextContext>,
        guidance_scale: f64,
        on_step: &mut dyn FnMut(StepReport),
    ) -> Result<Tensor> {
        let mut denoiser = ExpertDenoiser::new(
            vec![Expert::shared(
                "toy",
                model,
                guidance_scale,
                TimestepRange::ALL,
            )],
            &Conditioning { cond, uncond },
            TimestepForm::PerSample,
            0,
            Box::new(|_| Ok(Box::new(DenseAttention))),
        )?;
        denoise(&mut denoiser, solver, noise, on_step)
    }

    fn toy_inputs() -> (Tensor, TextContext, TextContext) {
        let dev = Device::Cpu;
        let noise = crate::sampling::seeded_noise(3, &[1, 4, 2, 3, 3], &dev).unwrap();
        let cond = Tensor::full(2.0f32, (1, 5, 8), &dev).unwrap();
        let uncond = Tensor::full(-1.0f32, (1, 5, 8), &dev).unwrap();
        (
            noise,
            TextContext::single(cond),
            TextContext::single(uncond),
        )
    }

    #[test]
    fn guided_loop_matches_a_hand_written_one() -> Result<()> {
        let (noise, cond, uncond) = toy_inputs();
        let model = ToyModel {
            nan_from_call: None,
            calls: Cell::new(0),
        };
        let mut solver = UniPcSolver::new(6, 3.0);
        let mut steps_seen = Vec::new();
        let latents = run(
            &model,
            &mut solver,
            &noise,
            &cond,
            Some(&uncond),
            4.0,
            &mut |r| steps_seen.push(r.step),
        )?;
        assert_eq!(steps_seen, (0..6).collect::<Vec<_>>());
        assert_eq!(model.calls.get(), 6, "one batched call per step");
        // By hand: v = (x − (u + g(c − u)))/σ with c = 2, u = −1 (guidance is linear in the target).
        let mut reference = UniPcSolver::new(6, 3.0);
        let mut x = noise.clone();
        for k in 0..6 {
            let sigma = reference.schedule().timesteps[k] as f64 / 1000.0;
            let v = ((&x - (-1.0 + 4.0 * 3.0))? / sigma)?;
            x = reference.step(&v, &x)?;
        }
        let diff = (latents - x)?.abs()?.max_all()?.to_scalar::<f32>()?;
        // Values are ≈ 11: f32 rounding of a differently ordered sum only.
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }

    #[test]
    fn unguided_loop_runs_one_pass_per_step() -> Result<()> {
        let (noise, cond, _) = toy_inputs();
        let model = ToyModel {
            nan_from_call: None,
            calls: Cell::new(0),
        };
        let mut solver = EulerSolver::new(5, 5.0);
        let latents = run(&model, &mut solver, &noise, &cond, None, 1.0, &mut |_| {})?;
        // Euler's last step to σ = 0 lands on the target 2 (up to f32 rounding).
        let err = (latents - 2.0)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-4, "{err}");
        Ok(())
    }

    #[test]
    fn a_nan_stops_the_run_naming_the_step() {
        let (noise, cond, uncond) = toy_inputs();
        let model = ToyModel {
            nan_from_call: Some(2),
            calls: Cell::new(0),
        };
        let mut solver = UniPcSolver::new(6, 3.0);
        let err = run(
            &model,
            &mut solver,
            &noise,
            &cond,
            Some(&uncond),
            5.0,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                VditError::NonFinite {
                    step: 3,
                    steps: 6,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("step 3 of 6"), "{err}");
    }

    /// (batch, timestep shape) of each call of a model.
    type Calls = std::rc::Rc<std::cell::RefCell<Vec<(usize, Vec<usize>)>>>;

    /// Records the batch and timestep shape of each call; counts its drops.
    struct RecordingModel {
        calls: Calls,
        drops: std::rc::Rc<Cell<usize>>,
    }

    impl VelocityModel for RecordingModel {
        fn num_layers(&self) -> usize {
            1
        }

        fn velocity(
            &self,
            x: &Tensor,
            t: &Tensor,
            _: &TextContext,
            _: &mut dyn SelfAttention,
        ) -> Result<Tensor> {
            self.calls.borrow_mut().push((x.dim(0)?, t.dims().to_vec()));
            Ok(x.zeros_like()?)
        }
    }

    impl Drop for RecordingModel {
        fn drop(&mut self) {
            self.drops.set(self.drops.get() + 1);
        }
    }

    /// A deferred expert over a fresh `RecordingModel`: its calls, loads and drops.
    fn recording_expert<'a>(
        name: &str,
        guidance_scale: f64,
        timesteps: TimestepRange,
    ) -> (
        Expert<'a>,
        Calls,
        std::rc::Rc<Cell<usize>>,
        std::rc::Rc<Cell<usize>>,
    ) {
        let calls: Calls = Default::default();
        let (loads, drops) = (
            std::rc::Rc::new(Cell::new(0)),
            std::rc::Rc::new(Cell::new(0)),
        );
        let (c, l, d) = (calls.clone(), loads.clone(), drops.clone());
        let load: LoadModel<'a> = Box::new(move || {
            l.set(l.get() + 1);
            Ok(Box::new(RecordingModel {
                calls: c.clone(),
                drops: d.clone(),
            }))
        });
        (
            Expert::deferred(name, load, guidance_scale, timesteps),
            calls,
            loads,
            drops,
        )
    }

    /// Wan2.2 A14B's shape: a high-noise expert for t ≥ 500 guided at 4, a low-noise one below
    /// unguided; the first is freed when the second loads, each policy built once.
    #[test]
    fn two_experts_split_the_schedule_at_the_boundary() -> Result<()> {
        let (noise, cond, uncond) = toy_inputs();
        let boundary = 500.0;
        let (high, high_calls, high_loads, high_drops) = recording_expert(
            "transformer",
            4.0,
            TimestepRange {
                from: boundary,
                below: f32::INFINITY,
            },
        );
        let (low, low_calls, low_loads, low_drops) = recording_expert(
            "transformer_2",
            1.0,
            TimestepRange {
                from: f32::NEG_INFINITY,
                below: boundary,
            },
        );
        let policies = Cell::new(0);
        let mut denoiser = ExpertDenoiser::new(
            vec![low, high],
            &Conditioning {
                cond: &cond,
                uncond: Some(&uncond),
            },
            TimestepForm::PerSample,
            0,
            Box::new(|_| {
                policies.set(policies.get() + 1);
                Ok(Box::new(DenseAttention))
            }),
        )?;
        let mut solver = EulerSolver::new(8, 3.0);
        let timesteps = solver.schedule().timesteps.clone();
        let mut switched_with_high_dropped = None;
        denoise(&mut denoiser, &mut solver, &noise, &mut |r| {
            if r.timestep < boundary && switched_with_high_dropped.is_none() {
                switched_with_high_dropped = Some(high_drops.get());
            }
        })?;
        let high_steps = timesteps.iter().filter(|&&t| t >= boundary).count();
        assert!(0 < high_steps && high_steps < 8, "{timesteps:?}");
        assert_eq!(high_calls.borrow().len(), high_steps);
        assert_eq!(low_calls.borrow().len(), 8 - high_steps);
        // Guided expert: batch of 2 (cond + uncond); the unguided one a single pass.
        assert!(high_calls
            .borrow()
            .iter()
            .all(|(b, t)| *b == 2 && t == &[2]));
        assert!(low_calls.borrow().iter().all(|(b, t)| *b == 1 && t == &[1]));
        assert_eq!((high_loads.get(), low_loads.get()), (1, 1));
        assert_eq!(
            switched_with_high_dropped,
            Some(1),
            "high-noise expert freed at the switch"
        );
        assert_eq!(low_drops.get(), 0, "the active expert stays loaded");
        assert_eq!(policies.get(), 2, "a fresh attention policy per expert");
        Ok(())
    }

    /// With `keep_loaded` the high-noise expert stays loaded past the switch (both in memory);
    /// each still loads once and the attention policy is still rebuilt at the switch.
    #[test]
    fn keep_loaded_keeps_the_first_expert_after_the_switch() -> Result<()> {
        let (noise, cond, uncond) = toy_inputs();
        let boundary = 500.0;
        let (high, _, high_loads, high_drops) =
            recording_expert("transformer", 4.0, TimestepRange::at_or_above(boundary));
        let (low, low_calls, low_loads, _) =
            recording_expert("transformer_2", 3.0, TimestepRange::below(boundary));
        let policies = Cell::new(0);
        let mut denoiser = ExpertDenoiser::new(
            vec![high, low],
            &Conditioning {
                cond: &cond,
                uncond: Some(&uncond),
            },
            TimestepForm::PerSample,
            0,
            Box::new(|_| {
                policies.set(policies.get() + 1);
                Ok(Box::new(DenseAttention))
            }),
        )?;
        denoiser.keep_loaded = true;
        denoise(
            &mut denoiser,
            &mut EulerSolver::new(8, 3.0),
            &noise,
            &mut |_| {},
        )?;
        assert!(!low_calls.borrow().is_empty());
        assert_eq!((high_loads.get(), low_loads.get()), (1, 1));
        assert_eq!(high_drops.get(), 0, "kept loaded after the switch");
        assert_eq!(policies.get(), 2, "a fresh attention policy per expert");
        drop(denoiser);
        assert_eq!(high_drops.get(), 1);
        Ok(())
    }

    /// Goes through the step-cache seam like the transformer: input ones `[B, 2, 3]`, residual
    /// ½; records per call whether the blocks ran.
    struct CachingModel {
        computed: std::rc::Rc<std::cell::RefCell<Vec<bool>>>,
    }

    impl VelocityModel for CachingModel {
        fn num_layers(&self) -> usize {
            1
        }

        fn velocity(
            &self,
            x: &Tensor,
            _: &Tensor,
            _: &TextContext,
            _: &mut dyn SelfAttention,
        ) -> Result<Tensor> {
            Ok(x.zeros_like()?)
        }

        fn velocity_cached(
            &self,
            x: &Tensor,
            _: &Tensor,
            _: &TextContext,
            _: Option<&Tensor>,
            _: &mut dyn SelfAttention,
            cache: &mut dyn BlockCache,
        ) -> Result<Tensor> {
            let input = Tensor::ones((x.dim(0)?, 2, 3), DType::F32, x.device())?;
            let e0 = Tensor::ones((x.dim(0)?, 6, 3), DType::F32, x.device())?;
            let skipped = cache.before_blocks(&e0, &input)?.is_some();
            if !skipped {
                cache.after_blocks(&(&input * 0.5)?)?;
            }
            self.computed.borrow_mut().push(!skipped);
            Ok(x.zeros_like()?)
        }
    }

    /// Two experts, each with its own step cache: residuals that never change let every step
    /// skip, except each expert's first (nothing cached yet: the high-noise expert's residual
    /// is not reused by the low-noise one).
    #[test]
    fn each_expert_gets_a_fresh_step_cache() -> Result<()> {
        use crate::options::StepCacheMode;
        use crate::step_cache::{Calibration, MagRatios};
        let (noise, cond, uncond) = toy_inputs();
        let computed: std::rc::Rc<std::cell::RefCell<Vec<bool>>> = Default::default();
        let high = CachingModel {
            computed: computed.clone(),
        };
        let low = CachingModel {
            computed: computed.clone(),
        };
        let boundary = 500.0;
        let settings = StepCacheSettings {
            mode: StepCacheMode::MagCache,
            threshold: 0.5,
            keep_first: 0,
            keep_last: 0,
            max_skips: 100,
            calibration: Some(Calibration {
                source: "test".into(),
                mag_ratios: Some(MagRatios {
                    cond: vec![1.0; 8],
                    uncond: None,
                }),
                teacache: None,
            }),
            calibrate: None,
        };
        let mut denoiser = ExpertDenoiser::new(
            vec![
                Expert::shared(
                    "transformer",
                    &high,
                    4.0,
                    TimestepRange::at_or_above(boundary),
                ),
                Expert::shared("transformer_2", &low, 1.0, TimestepRange::below(boundary)),
            ],
            &Conditioning {
                cond: &cond,
                uncond: Some(&uncond),
            },
            TimestepForm::PerSample,
            0,
            Box::new(|_| Ok(Box::new(DenseAttention))),
        )?
        .with_step_cache(&settings, 8);
        let mut solver = EulerSolver::new(8, 3.0);
        let timesteps = solver.schedule().timesteps.clone();
        denoise(&mut denoiser, &mut solver, &noise, &mut |_| {})?;
        let high_steps = timesteps.iter().filter(|&&t| t >= boundary).count();
        assert!(0 < high_steps && high_steps < 8, "{timesteps:?}");
        let expected: Vec<bool> = (0..8).map(|i| i == 0 || i == high_steps).collect();
        assert_eq!(*computed.borrow(), expected);
        // Passes per branch: the guided expert's steps count twice.
        let stats = denoiser.cache_stats();
        assert_eq!(stats.passes, 2 * high_steps + (8 - high_steps));
        assert_eq!(stats.skipped, 2 * (high_steps - 1) + (8 - high_steps - 1));
        Ok(())
    }

    /// TI2V's shape: timesteps `[B, L]`, one per latent token.
    #[test]
    fn per_token_timesteps_reach_the_model_as_batch_by_tokens() -> Result<()> {
        let (noise, cond, _) = toy_inputs();
        let (expert, calls, _, _) = recording_expert("transformer", 1.0, TimestepRange::ALL);
        let tokens = 2 * 3 * 3;
        let mut denoiser = ExpertDenoiser::new(
            vec![expert],
            &Conditioning {
                cond: &cond,
                uncond: None,
            },
            TimestepForm::PerToken,
            tokens,
            Box::new(|_| Ok(Box::new(DenseAttention))),
        )?;
        denoise(
            &mut denoiser,
            &mut EulerSolver::new(3, 5.0),
            &noise,
            &mut |_| {},
        )?;
        assert_eq!(calls.borrow().len(), 3);
        assert!(calls.borrow().iter().all(|(_, t)| t == &[1, tokens]));
        Ok(())
    }
}
