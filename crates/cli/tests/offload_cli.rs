//! `vdit generate --offload`: streaming the transformer's blocks from host memory changes where
//! the weights are, not the result. On the tiny fixture model (tests/fixtures/tiny_pipeline) and
//! the tiny two-expert Wan2.2 model (tests/fixtures/wan22_two_expert), `--offload blocks` gives
//! latents exactly equal to `--offload none` for the same seed, and the printed settings and the
//! sidecar name the mode (and, for auto, that it was chosen).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

mod common;
use common::vdit;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// A small f32 CPU run of `model`, seeded; `extra` flags last.
fn run(model: &Path, dir: &Path, tag: &str, extra: &[&str]) -> (Tensor, serde_json::Value, String) {
    let out = dir.join(format!("{tag}.png"));
    let latents = dir.join(format!("{tag}.safetensors"));
    let mut args: Vec<String> = [
        "generate",
        "-p",
        "a red circle moving right",
        "--steps",
        "3",
        "--size",
        "64x64",
        "--frames",
        "5",
        "--seed",
        "11",
        "--dtype",
        "f32",
        "--device",
        "cpu",
    ]
    .map(String::from)
    .to_vec();
    args.extend([
        "--model".into(),
        model.display().to_string(),
        "-o".into(),
        out.display().to_string(),
        "--latents-out".into(),
        latents.display().to_string(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let output = vdit(&args, &dir.join("cache"));
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{tag}:\n{stderr}");
    let sidecar: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(vdit_pipeline::ownership::sidecar_path(&out)).unwrap(),
    )
    .unwrap();
    let latents =
        candle_core::safetensors::load(&latents, &Device::Cpu).unwrap()["latents"].clone();
    (latents, sidecar, stderr)
}

fn assert_bit_identical(label: &str, a: &Tensor, b: &Tensor) {
    assert_eq!(a.dims(), b.dims(), "{label}");
    let bits = |t: &Tensor| -> Vec<u32> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f32::to_bits)
            .collect()
    };
    let (a, b) = (bits(a), bits(b));
    let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert_eq!(
        differing,
        0,
        "{label}: {differing} of {} values differ",
        a.len()
    );
    // Non-trivial latents: the comparison means something.
    assert!(
        a.iter().any(|&v| f32::from_bits(v) != 0.0),
        "{label}: all zero"
    );
}

#[test]
fn streamed_blocks_give_the_same_latents_and_the_sidecar_records_the_mode() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("tiny_pipeline/model");
    let (none, none_sidecar, none_err) = run(&model, dir.path(), "none", &["--offload", "none"]);
    let (blocks, blocks_sidecar, blocks_err) =
        run(&model, dir.path(), "blocks", &["--offload", "blocks"]);
    assert_bit_identical("--offload blocks vs none", &blocks, &none);

    assert_eq!(none_sidecar["settings"]["offload"]["mode"], "none");
    assert_eq!(blocks_sidecar["settings"]["offload"]["mode"], "blocks");
    assert_eq!(blocks_sidecar["settings"]["offload"]["auto"], false);
    assert!(none_err.contains("offload      none"), "{none_err}");
    assert!(blocks_err.contains("offload      blocks"), "{blocks_err}");

    // One transformer: keeping only the active expert is keeping it.
    let (_, experts_sidecar, _) = run(&model, dir.path(), "experts", &["--offload", "experts"]);
    assert_eq!(experts_sidecar["settings"]["offload"]["mode"], "none");

    // The default is auto; on the CPU it keeps everything resident, and says it chose.
    let (auto, auto_sidecar, auto_err) = run(&model, dir.path(), "auto", &[]);
    assert_bit_identical("auto vs none", &auto, &none);
    assert_eq!(auto_sidecar["settings"]["offload"]["mode"], "none");
    assert_eq!(auto_sidecar["settings"]["offload"]["auto"], true);
    assert!(auto_err.contains("offload      none (auto"), "{auto_err}");
}

#[test]
fn two_experts_stream_per_expert_with_the_same_latents() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("wan22_two_expert/model");
    let (experts, experts_sidecar, _) =
        run(&model, dir.path(), "experts", &["--offload", "experts"]);
    let (kept, kept_sidecar, kept_err) = run(&model, dir.path(), "kept", &["--keep-experts"]);
    let (blocks, blocks_sidecar, _) = run(&model, dir.path(), "blocks", &["--offload", "blocks"]);
    assert_bit_identical("--keep-experts vs --offload experts", &kept, &experts);
    assert_bit_identical("--offload blocks vs experts", &blocks, &experts);
    assert_eq!(experts_sidecar["settings"]["offload"]["mode"], "experts");
    assert_eq!(experts_sidecar["settings"]["keep_experts"], false);
    // --keep-experts is --offload none.
    assert_eq!(kept_sidecar["settings"]["offload"]["mode"], "none");
    assert_eq!(kept_sidecar["settings"]["keep_experts"], true);
    assert!(kept_err.contains("both experts kept loaded"), "{kept_err}");
    assert_eq!(blocks_sidecar["settings"]["offload"]["mode"], "blocks");
    // Auto on the CPU: the behaviour before --offload (the first expert freed at the switch).
    let (_, auto_sidecar, _) = run(&model, dir.path(), "auto", &[]);
    assert_eq!(auto_sidecar["settings"]["offload"]["mode"], "experts");
}

#[test]
fn contradicting_offload_flags_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let base = |model: &str, extra: &[&str]| -> String {
        let mut args: Vec<String> = ["generate", "-p", "x", "--device", "cpu", "--model"]
            .map(String::from)
            .to_vec();
        args.push(fixture(model).display().to_string());
        args.extend(["-o".into(), dir.path().join("x.png").display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let output = vdit(&args, &cache);
        assert!(!output.status.success(), "{extra:?} should fail");
        String::from_utf8_lossy(&output.stderr).to_string()
    };
    let err = base(
        "wan22_two_expert/model",
        &["--keep-experts", "--offload", "blocks"],
    );
    assert!(err.contains("--keep-experts is --offload none"), "{err}");
    let err = base("tiny_pipeline/model", &["--offload", "sometimes"]);
    assert!(err.contains("sometimes"), "{err}");
}
