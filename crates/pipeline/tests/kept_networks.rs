//! Networks kept loaded between runs of one process (`stages::generate_keeping`, behind
//! `vdit bench pipeline --keep-loaded`): a second run of the same model and load settings loads
//! nothing and makes the same video as a fresh run; other load settings load again; runs that
//! offload keep nothing.

mod common;

use std::path::Path;

use common::shipped_model_options;
use vdit_pipeline::options::OffloadMode;
use vdit_pipeline::registry::Registry;
use vdit_pipeline::resident::may_keep;
use vdit_pipeline::settings::{resolve, GenerateSettings};
use vdit_pipeline::stages::{generate, generate_keeping, KeptNetworks, RunReport};

fn settings(
    dir: &Path,
    name: &str,
    seed: u64,
) -> (GenerateSettings, vdit_pipeline::hub::ModelFiles) {
    let mut options = shipped_model_options(dir, name, seed);
    options.size = Some((64, 64));
    options.frames = Some(5);
    options.steps = Some(2);
    resolve(&options, &Registry::default()).unwrap()
}

/// The three loads of a run: text encoder, transformer, decoder.
fn loads(report: &RunReport) -> [f64; 3] {
    let t = &report.timings;
    [t.text_encoder_load_s, t.transformer_load_s, t.vae_load_s]
}

fn video(report: &RunReport) -> Vec<u8> {
    std::fs::read(&report.video_files[0]).unwrap()
}

#[test]
fn a_second_run_loads_nothing_and_makes_the_same_video() {
    let dir = tempfile::tempdir().unwrap();
    let mut kept = KeptNetworks::default();
    let (first_settings, files) = settings(dir.path(), "first.mp4", 3);
    let first = generate_keeping(&first_settings, &files, &mut kept).unwrap();
    assert!(
        loads(&first).iter().all(|s| *s > 0.0),
        "the first run loads all three: {:?}",
        loads(&first)
    );
    let (second_settings, files) = settings(dir.path(), "second.mp4", 3);
    let second = generate_keeping(&second_settings, &files, &mut kept).unwrap();
    assert_eq!(loads(&second), [0.0; 3], "the second run loads nothing");
    let (fresh_settings, files) = settings(dir.path(), "fresh.mp4", 3);
    let fresh = generate(&fresh_settings, &files).unwrap();
    assert_eq!(video(&first), video(&second), "kept networks, same video");
    assert_eq!(video(&first), video(&fresh), "the same as a run that loads");

    // Another seed is not another load; another place for the text encoder is.
    let (other_seed, files) = settings(dir.path(), "seed.mp4", 4);
    let report = generate_keeping(&other_seed, &files, &mut kept).unwrap();
    assert_eq!(loads(&report), [0.0; 3], "another seed reuses them");
    assert_ne!(video(&report), video(&first), "and samples other noise");
    let (mut moved, files) = settings(dir.path(), "moved.mp4", 3);
    moved.t5_cpu = !moved.t5_cpu;
    let report = generate_keeping(&moved, &files, &mut kept).unwrap();
    assert!(
        loads(&report).iter().all(|s| *s > 0.0),
        "other load settings load again: {:?}",
        loads(&report)
    );
}

#[test]
fn runs_that_offload_or_switch_experts_keep_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = settings(dir.path(), "x.mp4", 1);
    assert!(may_keep(&s));
    s.offload.mode = OffloadMode::Blocks;
    assert!(!may_keep(&s), "blocks streamed from host memory");
    s.offload.mode = OffloadMode::Experts;
    assert!(!may_keep(&s));
    s.offload.mode = OffloadMode::None;
    let two_experts = vdit_pipeline::family::FAMILIES
        .iter()
        .find(|f| f.experts.len() == 2)
        .expect("a two-expert family (Wan2.2 A14B)");
    s.family = two_experts;
    assert!(
        !may_keep(&s),
        "{}: one expert loaded at a time",
        two_experts.name
    );
}
