//! Step caching on the shipped model (`models/vdit-tiny`, f32 on the CPU, 12 steps, guided):
//! the transformer and the prompt embeddings are loaded once and sampled several ways.
//! - A calibration run computes every step: its latents are bitwise the uncached run's, and it
//!   records one magnitude ratio per step and branch.
//! - MagCache on that calibration, and TeaCache on a test polynomial, at threshold 0 skip
//!   nothing and give bitwise the uncached latents.
//! - At a positive threshold they skip passes and stay close (latent cosine printed).
//! - Settings problems (no calibration, nothing left to skip, ignored flags) are one line each.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor};
use common::shipped_model;
use vdit_pipeline::metrics::cosine_similarity;
use vdit_pipeline::options::{DTypeChoice, DeviceChoice, StepCacheMode};
use vdit_pipeline::registry::Registry;
use vdit_pipeline::settings::{resolve, GenerateOptions, GenerateSettings};
use vdit_pipeline::stages::{
    encode_prompts, load_transformers, sample_latents_with, SampledLatents,
};
use vdit_pipeline::step_cache::CalibrationFile;

const STEPS: usize = 12;

fn options(out: &Path) -> GenerateOptions {
    let mut options = GenerateOptions::new("a red circle moving right on a blue background");
    options.model = Some(shipped_model().display().to_string());
    options.steps = Some(STEPS);
    options.seed = Some(3);
    options.dtype = DTypeChoice::F32;
    options.device = DeviceChoice::Cpu;
    options.offline = true;
    options.output = Some(out.join("clip.mp4"));
    options
}

fn settings(options: &GenerateOptions) -> GenerateSettings {
    resolve(options, &Registry::embedded()).unwrap().0
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn cached_runs_match_or_approach_the_uncached_one() {
    let dir = tempfile::tempdir().unwrap();
    let base = options(dir.path());
    let (plain, files) = resolve(&base, &Registry::embedded()).unwrap();
    let device = Device::Cpu;
    let text = encode_prompts(&plain, &files, &device).unwrap();
    let models = load_transformers(&plain, &files, &device).unwrap();
    let sample = |s: &GenerateSettings| -> SampledLatents {
        sample_latents_with(&models, s, &device, &text, None).unwrap()
    };
    let reference = sample(&plain);
    assert_eq!(reference.step_cache.skipped, 0);

    // Calibration: every step runs, and the ratios are recorded.
    let calibration_path = dir.path().join("calibration.json");
    let mut calibrate = base.clone();
    calibrate.cache_calibrate = Some(calibration_path.clone());
    let calibrated = sample(&settings(&calibrate));
    assert_eq!(values(&calibrated.latents), values(&reference.latents));
    let ratios = calibrated
        .calibration
        .expect("a calibration run records ratios");
    let uncond = ratios
        .uncond
        .clone()
        .expect("a guided run records both branches");
    assert_eq!((ratios.cond.len(), uncond.len()), (STEPS, STEPS));
    assert_eq!((ratios.cond[0], uncond[0]), (1.0, 1.0));
    assert!(ratios.cond.iter().all(|r| r.is_finite() && *r > 0.0));
    println!("vdit-tiny magnitude ratios (cond): {:?}", ratios.cond);
    let file = CalibrationFile {
        vdit_version: "test".into(),
        model: "vdit-tiny".into(),
        steps: STEPS,
        guidance_scale: plain.guidance_scale,
        shift: plain.shift,
        size: String::new(),
        frames: plain.frames,
        seed: plain.seed,
        magcache: Some(ratios),
        // A made-up polynomial (the identity) so that TeaCache runs on this model.
        teacache: Some(vec![1.0, 0.0]),
    };
    std::fs::write(&calibration_path, serde_json::to_string(&file).unwrap()).unwrap();

    for (mode, threshold) in [
        (StepCacheMode::MagCache, 0.3),
        (StepCacheMode::TeaCache, 0.2),
    ] {
        let mut cached = base.clone();
        cached.step_cache = mode;
        cached.cache_calibration = Some(calibration_path.clone());
        cached.cache_keep_first = Some(2);
        cached.cache_threshold = Some(0.0);
        let exact = sample(&settings(&cached));
        assert_eq!(exact.step_cache.skipped, 0, "{mode:?}");
        assert_eq!(exact.step_cache.passes, 2 * STEPS, "{mode:?}");
        assert!(
            values(&exact.latents) == values(&reference.latents),
            "{mode:?} at threshold 0 is not bitwise the uncached run"
        );

        cached.cache_threshold = Some(threshold);
        let skipping = sample(&settings(&cached));
        let cosine = cosine_similarity(&skipping.latents, &reference.latents).unwrap();
        println!(
            "{mode:?} threshold {threshold}: {}, latent cosine {cosine:.5}",
            skipping.step_cache
        );
        assert!(skipping.step_cache.skipped > 0, "{mode:?} skipped nothing");
        assert!(cosine > 0.95, "{mode:?}: latent cosine {cosine}");
    }
}

#[test]
fn step_cache_problems_are_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let problem = |edit: &dyn Fn(&mut GenerateOptions)| -> String {
        let mut o = options(dir.path());
        edit(&mut o);
        resolve(&o, &Registry::embedded()).unwrap_err().to_string()
    };
    // The shipped model has no TeaCache coefficients.
    let e = problem(&|o| o.step_cache = StepCacheMode::TeaCache);
    assert!(e.contains("no TeaCache coefficients"), "{e}");
    let e = problem(&|o| o.cache_threshold = Some(0.1));
    assert!(
        e.contains("--cache-threshold has no effect with --step-cache none"),
        "{e}"
    );
    let e = problem(&|o| {
        o.step_cache = StepCacheMode::MagCache;
        o.cache_keep_first = Some(11);
        o.cache_calibration = Some(dir.path().join("missing.json"));
    });
    assert!(e.contains("leaves none of the 12 steps"), "{e}");
    assert!(e.contains("--cache-calibration"), "{e}");
    assert_eq!(e.lines().count(), 2, "{e}");
    let e = problem(&|o| {
        o.step_cache = StepCacheMode::MagCache;
        o.cache_calibrate = Some(dir.path().join("c.json"));
    });
    assert!(
        e.contains("--cache-calibrate runs every step uncached"),
        "{e}"
    );
}
