//! Samplers against diffusers: schedules (timesteps, sigmas) and full step-by-step trajectories
//! recorded by scripts/reference/gen_scheduler_fixtures.py in tests/fixtures/schedulers/.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use vdit_pipeline::sampling::{euler_flow_schedule, unipc_flow_schedule, SamplerKind};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/schedulers")
}

#[derive(serde::Deserialize)]
struct ReferenceSchedule {
    sampler: String,
    shift: f64,
    steps: usize,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
}

fn reference_schedules() -> HashMap<String, ReferenceSchedule> {
    let text = std::fs::read_to_string(fixture_dir().join("schedules.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).abs())
        .fold(0.0, f64::max)
}

/// ‖a − b‖ / ‖b‖ over all elements.
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    rainfusion::reference::relative_error(a, b).unwrap()
}

#[test]
fn schedules_match_diffusers_for_shift_3_and_5_and_10_and_50_steps() {
    let references = reference_schedules();
    assert_eq!(
        references.len(),
        8,
        "expected unipc/euler x shift 3/5 x 10/50 steps"
    );
    for (name, reference) in &references {
        let schedule = match reference.sampler.as_str() {
            "unipc" => unipc_flow_schedule(reference.steps, reference.shift),
            "euler" => euler_flow_schedule(reference.steps, reference.shift),
            other => panic!("unknown sampler {other} in {name}"),
        };
        assert_eq!(schedule.num_steps(), reference.steps, "{name}");
        let sigma_err = max_abs_diff(&schedule.sigmas, &reference.sigmas);
        let timestep_err = max_abs_diff(&schedule.timesteps, &reference.timesteps);
        println!("{name}: max |Δσ| = {sigma_err:.2e}, max |Δt| = {timestep_err:.2e}");
        // Sigmas are f32 in diffusers too: agree to f32 rounding.
        assert!(sigma_err <= 1e-7, "{name}: sigmas differ by {sigma_err}");
        if reference.sampler == "unipc" {
            // Integer timesteps: must be identical.
            assert_eq!(
                timestep_err, 0.0,
                "{name}: timesteps {:?} vs {:?}",
                schedule.timesteps, reference.timesteps
            );
        } else {
            assert!(
                timestep_err <= 1e-6,
                "{name}: timesteps differ by {timestep_err}"
            );
        }
    }
}

#[test]
fn unipc_tiny_pipeline_timesteps() {
    // tests/fixtures/tiny_pipeline was sampled by diffusers with these (4 steps, shift 3).
    let reference = candle_core::safetensors::load(
        fixture_dir().join("../tiny_pipeline/reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let expected: Vec<f32> = reference["timesteps"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|t| t as f32)
        .collect();
    assert_eq!(expected, vec![999.0, 900.0, 750.0, 500.0]);
    assert_eq!(unipc_flow_schedule(4, 3.0).timesteps, expected);
}

/// Replays a recorded trajectory: feeds the solver diffusers' model outputs and compares every
/// sample it returns with diffusers' `step()` output.
fn check_trajectory(sampler: SamplerKind, shift: f64, steps: usize) {
    let name = format!("{}_shift{shift}_steps{steps}", sampler.name());
    let tensors = candle_core::safetensors::load(
        fixture_dir().join(format!("{name}.safetensors")),
        &Device::Cpu,
    )
    .unwrap();
    let mut solver = sampler.solver(steps, shift, None, 0).unwrap();
    let mut sample = tensors["x_0"].clone();
    let mut worst = 0.0f64;
    for k in 0..steps {
        let velocity = &tensors[&format!("v_{k}")];
        // The solver continues from its own sample, so any error would accumulate, not reset.
        sample = solver.step(velocity, &sample).unwrap();
        let err = relative_error(&sample, &tensors[&format!("x_{}", k + 1)]);
        worst = worst.max(err);
        assert!(err <= 1e-5, "{name}: step {k} relative error {err:.3e}");
    }
    assert_eq!(solver.step_index(), steps);
    assert!(
        solver.step(&tensors["v_0"], &sample).is_err(),
        "stepping past the end must fail"
    );
    println!("{name}: worst per-step relative error {worst:.3e}");
}

#[test]
fn unipc_trajectory_shift3_10_steps() {
    check_trajectory(SamplerKind::Unipc, 3.0, 10);
}

#[test]
fn unipc_trajectory_shift5_10_steps() {
    check_trajectory(SamplerKind::Unipc, 5.0, 10);
}

#[test]
fn unipc_trajectory_shift5_50_steps() {
    check_trajectory(SamplerKind::Unipc, 5.0, 50);
}

#[test]
fn euler_trajectory_shift3_10_steps() {
    check_trajectory(SamplerKind::Euler, 3.0, 10);
}

#[test]
fn euler_trajectory_shift5_10_steps() {
    check_trajectory(SamplerKind::Euler, 5.0, 10);
}
