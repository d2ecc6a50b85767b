//! The few-step sampling of distilled LoRAs against diffusers (tests/fixtures/lora, made by
//! scripts/reference/gen_lora_pipeline.py): lightx2v's step list [1000, 750, 500, 250] at
//! shift 5 as diffusers' flow-matching schedulers compute it, and diffusers'
//! `FlowMatchLCMScheduler.step` with the fresh noise it drew.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use vdit_pipeline::sampling::{distilled_flow_schedule, LcmSolver, SamplerKind};

const STEP_LIST: [f64; 4] = [1000.0, 750.0, 500.0, 250.0];

fn reference() -> HashMap<String, Tensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/lora/tiny_pipeline_reference.safetensors");
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn the_step_list_schedule_equals_diffusers() {
    let reference = reference();
    let schedule = distilled_flow_schedule(&STEP_LIST, 5.0);
    assert_eq!(schedule.timesteps, values(&reference["timesteps"]));
    assert_eq!(schedule.sigmas, values(&reference["sigmas"]));
    assert_eq!(schedule.sigmas, values(&reference["lcm_sigmas"]));
}

#[test]
fn the_lcm_step_equals_diffusers_given_its_noise() {
    let reference = reference();
    let (sample, velocity) = (&reference["lcm_sample"], &reference["lcm_velocity"]);
    for k in 0..STEP_LIST.len() {
        let mut solver = LcmSolver::from_schedule(distilled_flow_schedule(&STEP_LIST, 5.0), 0);
        // Walk to step k on the same input (each of diffusers' steps was taken from `sample`).
        for _ in 0..k {
            solver
                .step_with_noise(velocity, sample, &sample.zeros_like().unwrap())
                .unwrap();
        }
        let out = solver
            .step_with_noise(velocity, sample, &reference[&format!("lcm_noise_{k}")])
            .unwrap();
        let expected = &reference[&format!("lcm_out_{k}")];
        let err = rainfusion::reference::relative_error(&out, expected).unwrap();
        assert!(err < 1e-6, "step {k}: {err:e}");
    }
}

#[test]
fn the_lcm_sampler_is_deterministic_in_the_seed_and_draws_new_noise_each_step() {
    let sample = Tensor::ones((1, 2, 1, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let velocity = sample.zeros_like().unwrap();
    let run = |seed: u64| -> Vec<Vec<f32>> {
        let mut solver = SamplerKind::Lcm
            .solver(4, 5.0, Some(&STEP_LIST), seed)
            .unwrap();
        let mut outs = Vec::new();
        while solver.step_index() < 4 {
            outs.push(values(&solver.step(&velocity, &sample).unwrap()));
        }
        outs
    };
    let (a, b, c) = (run(3), run(3), run(4));
    assert_eq!(a, b);
    assert_ne!(a, c);
    // Steps 0 and 1 re-noise the same x̂₀ = 1 with different fresh noise.
    assert_ne!(a[0], a[1]);
    // The last step returns x̂₀ itself (no noise): x − σ·0 = 1.
    assert!(a[3].iter().all(|v| *v == 1.0));
}

#[test]
fn unipc_refuses_a_step_list() {
    let err = SamplerKind::Unipc
        .solver(4, 5.0, Some(&STEP_LIST), 0)
        .err()
        .expect("unipc with a step list")
        .to_string();
    assert!(err.contains("--timesteps"), "{err}");
}
