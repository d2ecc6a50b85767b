//! `vdit bench` at toy sizes on the CPU: every subcommand runs, prints its table and writes JSON
//! whose numbers are measured (one sample per iteration, median and TFLOP/s consistent with them);
//! bad flags are one-line errors with the usage exit status, before any work.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn vdit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vdit"))
        .arg("bench")
        .args(args)
        .output()
        .expect("vdit runs")
}

/// Runs a bench that must succeed and returns its JSON report and stdout.
fn bench_ok(args: &[&str], json: &Path) -> (Value, String) {
    let mut all = vec!["--device", "cpu", "--json", json.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = vdit(&all);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "vdit bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    (report, stdout)
}

fn rows(report: &Value) -> &Vec<Value> {
    report["rows"].as_array().expect("rows")
}

/// Each row has `iters` positive samples whose median and minimum are the ones reported.
fn check_timings(row: &Value, iters: usize) {
    let samples: Vec<f64> = row["samples_s"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(samples.len(), iters, "{row}");
    assert!(samples.iter().all(|s| s.is_finite() && *s > 0.0), "{row}");
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if iters % 2 == 1 {
        sorted[iters / 2]
    } else {
        0.5 * (sorted[iters / 2 - 1] + sorted[iters / 2])
    };
    // serde_json's default float parsing may be one ulp off the printed value.
    let close = |key: &str, want: f64| (row[key].as_f64().unwrap() - want).abs() <= 1e-12 * want;
    assert!(close("median_s", median), "median of {samples:?}: {row}");
    assert!(close("min_s", sorted[0]), "min of {samples:?}: {row}");
}

#[test]
fn attention_bench_times_each_density_and_mask_prediction() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("attention.json");
    let (report, stdout) = bench_ok(
        &[
            "--iters",
            "3",
            "--warmup",
            "1",
            "attention",
            "--tokens",
            "700",
            "--heads",
            "2",
            "--head-dim",
            "32",
            "--block-size",
            "64",
            "--densities",
            "1,0.5,0.2",
        ],
        &json,
    );
    assert_eq!(report["device"], "cpu");
    assert_eq!(report["iters"], 3);
    assert!(
        report["build_features"].is_array(),
        "build_features: {}",
        report["build_features"]
    );
    let rows = rows(&report);
    assert_eq!(rows.len(), 4, "three densities and mask prediction");
    // 700 tokens = 11 blocks of 64: the kept fraction is ceil(11·d)/11.
    for (row, density) in rows[..3].iter().zip([1.0, 6.0 / 11.0, 3.0 / 11.0]) {
        assert_eq!(row["bench"], "attention");
        check_timings(row, 3);
        let kept = row["density"].as_f64().unwrap();
        assert!((kept - density).abs() < 1e-9, "{row}");
        let flops = 4.0 * 700f64.powi(2) * 32.0 * 2.0 * kept;
        let tflops = flops / row["median_s"].as_f64().unwrap() / 1e12;
        assert!((row["tflops"].as_f64().unwrap() - tflops).abs() <= 1e-9 * tflops.max(1.0));
    }
    assert_eq!(rows[0]["case"], "dense");
    assert_eq!(rows[3]["bench"], "mask prediction");
    check_timings(&rows[3], 3);
    for needle in [
        "| attention | dense |",
        "block-sparse 0.2",
        "mask prediction",
    ] {
        assert!(stdout.contains(needle), "table lacks {needle}:\n{stdout}");
    }
}

#[test]
fn transformer_bench_runs_dense_and_rainfusion_at_toy_size() {
    let dir = tempfile::tempdir().unwrap();
    // 128×64, 5 frames: a 2×8×16 latent grid = 64 tokens = 4 blocks of 16.
    let toy = [
        "transformer",
        "--preset",
        "tiny",
        "--size",
        "128x64",
        "--frames",
        "5",
        "--text-len",
        "8",
        "--block-size",
        "16",
        "--iters",
        "2",
    ];
    let json = dir.path().join("dense.json");
    let (dense, stdout) = bench_ok(&[&toy[..], &["--attention", "dense"]].concat(), &json);
    let row = &rows(&dense)[0];
    check_timings(row, 2);
    assert_eq!(row["case"], "dense");
    assert_eq!(row["density"].as_f64().unwrap(), 1.0);
    assert!(row["shape"].as_str().unwrap().contains("L64"), "{row}");
    assert!(stdout.contains("| transformer | dense |"), "{stdout}");
    // Auto on the CPU keeps the blocks resident, and the row says so.
    assert_eq!(row["offload"], "none");

    // Blocks streamed from host memory: the row names it (the bench itself fails unless every
    // block was copied once per forward).
    let json = dir.path().join("blocks.json");
    let (blocks, stdout) = bench_ok(&[&toy[..], &["--offload", "blocks"]].concat(), &json);
    let row = &rows(&blocks)[0];
    check_timings(row, 2);
    assert_eq!(row["offload"], "blocks");
    assert_eq!(row["case"], "dense, offload blocks");
    assert!(
        stdout.contains("| transformer | dense, offload blocks |"),
        "{stdout}"
    );

    // Stored weight formats, streamed: the row names the format.
    for (weights, case) in [
        ("q8_0", "dense, q8_0 weights, offload blocks"),
        ("fp8", "dense, fp8 weights, offload blocks"),
    ] {
        let json = dir.path().join(format!("{weights}.json"));
        let args = [&toy[..], &["--offload", "blocks", "--weights", weights]].concat();
        let (report, _) = bench_ok(&args, &json);
        let row = &rows(&report)[0];
        check_timings(row, 2);
        assert_eq!(row["case"], case);
    }

    let json = dir.path().join("sparse.json");
    let sparse_args = [
        &toy[..],
        &["--attention", "rainfusion", "--sparsity", "0.8"],
    ]
    .concat();
    let (sparse, _) = bench_ok(&sparse_args, &json);
    let row = &rows(&sparse)[0];
    check_timings(row, 2);
    assert_eq!(row["case"], "rainfusion 0.8");
    let density = row["density"].as_f64().unwrap();
    assert!(density > 0.0 && density < 1.0, "blocks were skipped: {row}");

    // Explicit sizes override the preset.
    let json = dir.path().join("override.json");
    let (custom, _) = bench_ok(
        &[&toy[..], &["--layers", "1", "--heads", "4"]].concat(),
        &json,
    );
    assert!(rows(&custom)[0]["shape"]
        .as_str()
        .unwrap()
        .starts_with("1L×4H×16d"));
}

#[test]
fn vae_bench_decodes_a_toy_latent() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("vae.json");
    let args = [
        "vae",
        "--latent",
        "2x4x4",
        "--base-dim",
        "8",
        "--iters",
        "1",
        "--warmup",
        "0",
    ];
    let (report, stdout) = bench_ok(&args, &json);
    let row = &rows(&report)[0];
    check_timings(row, 1);
    assert!(
        row["shape"].as_str().unwrap().contains("5 frames 32x32"),
        "{row}"
    );
    assert!(stdout.contains("| vae | whole frames |"), "{stdout}");
}

/// The image-to-video rows: the VAE encoder on the video a latent grid decodes to, and an I2V
/// transformer forward with its image tokens.
#[test]
fn vae_encode_and_i2v_transformer_benches_run_toy_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("enc.json");
    let args = [
        "vae",
        "--encode",
        "--latent",
        "2x4x4",
        "--base-dim",
        "8",
        "--iters",
        "1",
        "--warmup",
        "0",
    ];
    let (report, stdout) = bench_ok(&args, &json);
    let row = &rows(&report)[0];
    check_timings(row, 1);
    assert!(
        row["shape"]
            .as_str()
            .unwrap()
            .contains("5 frames 32x32 → latent 2x4x4"),
        "{row}"
    );
    assert!(stdout.contains("| vae-encode |"), "{stdout}");

    let json = dir.path().join("i2v.json");
    let args = [
        "transformer",
        "--preset",
        "i2v-14b",
        "--layers",
        "1",
        "--heads",
        "2",
        "--head-dim",
        "16",
        "--ffn-dim",
        "32",
        "--size",
        "64x64",
        "--frames",
        "5",
        "--text-len",
        "8",
        "--iters",
        "1",
        "--warmup",
        "0",
    ];
    let (report, _) = bench_ok(&args, &json);
    let row = &rows(&report)[0];
    check_timings(row, 1);
    assert!(row["shape"].as_str().unwrap().ends_with("i2v-14b"), "{row}");
}

#[test]
fn bad_flags_are_clear_errors() {
    let cases: [(&[&str], &str); 8] = [
        (&["--iters", "0", "vae"], "at least one timed iteration"),
        (
            &["attention", "--densities", "0"],
            "not a density in (0, 1]",
        ),
        (&["attention", "--block-size", "100"], "power of two"),
        (&["transformer", "--frames", "80"], "4n+1"),
        (&["transformer", "--size", "100x64"], "multiple of 16"),
        (&["transformer", "--preset", "huge"], "huge"),
        (&["vae", "--latent", "21x60"], "FRAMESxHEIGHTxWIDTH"),
        (&["transformer", "--sparsity", "1.0"], "sparsity"),
    ];
    for (args, needle) in cases {
        let out = vdit(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // Checked after parsing: a config the transformer cannot have, a device not built in.
    let out = vdit(&[
        "--device",
        "cpu",
        "transformer",
        "--preset",
        "tiny",
        "--head-dim",
        "5",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("head_dim 5"), "{stderr}");
    if !cfg!(feature = "cuda") {
        let out = vdit(&["--device", "cuda", "vae"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("built without CUDA"), "{stderr}");
    }
}

/// `vdit bench pipeline` on the tiny fixture model (tests/fixtures/tiny_pipeline): a first and a
/// warm run of the whole `vdit generate` pipeline, each a row with every stage measured and the
/// stages adding up to no more than the run.
#[test]
fn pipeline_bench_times_a_first_and_a_warm_run_of_the_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("pipeline.json");
    let videos = dir.path().join("videos");
    let model =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny_pipeline/model");
    let args = [
        "--dtype",
        "f32",
        "pipeline",
        "-m",
        model.to_str().unwrap(),
        "--size",
        "48x32",
        "--frames",
        "9",
        "--steps",
        "4",
        "--guidance-scale",
        "5",
        "-o",
        videos.to_str().unwrap(),
    ];
    let (report, stdout) = bench_ok(&args, &json);
    let rows = rows(&report);
    assert_eq!(rows.len(), 2, "{report}");
    for (row, case) in rows.iter().zip(["vdit first run", "vdit warm run"]) {
        assert_eq!(row["bench"], "pipeline");
        assert_eq!(row["case"], case);
        assert!(
            row["shape"]
                .as_str()
                .unwrap()
                .starts_with("48x32x9, 4 steps, guidance 5"),
            "{row}"
        );
        let stages = &row["stages"];
        let get = |key: &str| {
            stages[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} missing: {row}"))
        };
        for key in [
            "load_s",
            "encode_s",
            "denoise_s",
            "decode_s",
            "write_s",
            "total_s",
            "text_encoder_load_s",
            "transformer_load_s",
            "vae_load_s",
            "first_step_s",
            "seconds_per_step",
        ] {
            assert!(get(key) > 0.0, "{key} not positive: {row}");
        }
        let total = get("total_s");
        assert_eq!(row["median_s"].as_f64().unwrap(), total, "{row}");
        let parts: f64 = [
            "imports_s",
            "load_s",
            "encode_s",
            "denoise_s",
            "decode_s",
            "write_s",
        ]
        .iter()
        .map(|k| get(k))
        .sum();
        assert!(
            parts <= total * (1.0 + 1e-9),
            "stages {parts} > total {total}: {row}"
        );
        assert!(
            get("first_step_s") < total && get("load_s") >= get("transformer_load_s"),
            "{row}"
        );
        // CPU runs report the peak resident set.
        assert!(row["peak_host_bytes"].as_u64().unwrap() > 0, "{row}");
    }
    // Start-up is charged to the first run only.
    assert!(rows[0]["stages"]["imports_s"].as_f64().unwrap() > 0.0);
    assert_eq!(rows[1]["stages"]["imports_s"].as_f64().unwrap(), 0.0);
    for run in ["run1.mp4", "run2.mp4"] {
        let video = vdit_pipeline::video::read_video(&videos.join(run)).unwrap();
        assert_eq!(video.video.frames.len(), 9, "{run}");
    }
    assert!(stdout.contains("| vdit first run |"), "{stdout}");
    assert!(stdout.contains("peak RSS"), "{stdout}");
}

/// Wan2.2 shapes: the TI2V-5B transformer (48 channels, ×16 VAE) at a toy grid and size, and
/// the Wan2.2 VAE with a toy channel base.
#[test]
fn wan22_shapes_run_at_toy_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("ti2v.json");
    // 128×64 at ×16: a 2×4×8 latent grid → 16 tokens after the 2×2 patches.
    let (report, stdout) = bench_ok(
        &[
            "--iters",
            "1",
            "--warmup",
            "0",
            "transformer",
            "--preset",
            "ti2v-5b",
            "--layers",
            "1",
            "--heads",
            "2",
            "--head-dim",
            "16",
            "--ffn-dim",
            "32",
            "--size",
            "128x64",
            "--frames",
            "5",
            "--text-len",
            "8",
            "--batch",
            "1",
        ],
        &json,
    );
    let row = &rows(&report)[0];
    check_timings(row, 1);
    let shape = row["shape"].as_str().unwrap();
    assert!(shape.contains("L16") && shape.ends_with("ti2v-5b"), "{row}");
    assert!(stdout.contains("ti2v-5b"), "{stdout}");

    let json = dir.path().join("vae22.json");
    let (report, _) = bench_ok(
        &[
            "--iters",
            "1",
            "--warmup",
            "0",
            "vae",
            "--vae",
            "wan2.2",
            "--latent",
            "2x2x2",
            "--base-dim",
            "8",
        ],
        &json,
    );
    let row = &rows(&report)[0];
    check_timings(row, 1);
    // ×16 in space, 1 + 4 frames.
    assert!(
        row["shape"]
            .as_str()
            .unwrap()
            .contains("Wan2.2 B1 latent 2x2x2 → 5 frames 32x32"),
        "{row}"
    );
    // 144 px at ×16 is 9 latent columns, not a whole number of 2×2 patches: refused before work.
    let out = vdit(&[
        "--device",
        "cpu",
        "transformer",
        "--preset",
        "ti2v-5b",
        "--size",
        "144x64",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("patch size"), "{stderr}");
}

/// HunyuanVideo 1.5 at a toy width (one block of 2 heads × 16, the released text widths) and a
/// 64×32×5 video (×16 VAE: a 2×2×4 grid, 16 tokens): the row is written with a TFLOP/s figure
/// that matches its median; a RainFusion row on a larger toy grid skips blocks; bad text lengths
/// are refused in one line before any work.
#[test]
fn hunyuan15_transformer_bench_runs_a_toy_dense_and_with_rainfusion() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("hy.json");
    let toy = [
        "--iters",
        "1",
        "--warmup",
        "0",
        "transformer",
        "--preset",
        "hunyuanvideo-1.5",
        "--layers",
        "1",
        "--heads",
        "2",
        "--head-dim",
        "16",
        "--ffn-dim",
        "64",
        "--size",
        "64x32",
        "--frames",
        "5",
        "--text-len",
        "8",
        "--glyph-len",
        "3",
    ];
    let (report, stdout) = bench_ok(&toy, &json);
    let row = &rows(&report)[0];
    check_timings(row, 1);
    assert_eq!(row["case"], "dense");
    let shape = row["shape"].as_str().unwrap();
    assert!(
        shape.starts_with("1L×2H×16d B1 64x32x5 (L16, text 8+3)")
            && shape.ends_with("hunyuanvideo-1.5"),
        "{row}"
    );
    assert!(stdout.contains("hunyuanvideo-1.5"), "{stdout}");
    // The FLOP count of bench.rs (dim 32, MLP 64, N = 16 + 8 + 3 tokens) over the median.
    let (dim, mlp, n, video, prompt, glyph) = (32.0, 64.0, 27.0, 16.0, 8.0, 3.0);
    let per_token = 4.0 * dim * dim + 2.0 * dim * mlp;
    let blocks = 2.0 * n * per_token + 4.0 * n * n * dim;
    let refiner = 2.0 * prompt * 3584.0 * dim
        + 2.0 * (2.0 * prompt * per_token + 4.0 * prompt * prompt * dim);
    let glyph_flops = 2.0 * glyph * (1472.0 * 2048.0 + 2048.0 * 2048.0 + 2048.0 * dim);
    let io = 2.0 * video * dim * (65.0 + 32.0);
    let want = (blocks + refiner + glyph_flops + io) / row["median_s"].as_f64().unwrap() / 1e12;
    let tflops = row["tflops"].as_f64().unwrap();
    assert!(
        (tflops - want).abs() <= 1e-9 * want,
        "{tflops} against {want}"
    );

    // Streamed blocks (`--offload blocks`): the row says so, and every block was copied in.
    let mut streamed = toy.to_vec();
    streamed.extend(["--offload", "blocks", "--layers", "2"]);
    let (report, _) = bench_ok(&streamed, &json);
    let row = &rows(&report)[0];
    assert_eq!(row["case"], "dense, offload blocks", "{row}");
    assert_eq!(row["offload"], "blocks", "{row}");

    // 128×64×9: a 3×4×8 grid (96 video tokens, 6 blocks of 16, frame 0 a dense sink).
    let mut sparse = toy.to_vec();
    sparse.extend([
        "--size",
        "128x64",
        "--frames",
        "9",
        "--attention",
        "rainfusion",
        "--sparsity",
        "0.75",
        "--block-size",
        "16",
    ]);
    let (report, _) = bench_ok(&sparse, &json);
    let row = &rows(&report)[0];
    assert_eq!(row["case"], "rainfusion 0.75", "{row}");
    let density = row["density"].as_f64().unwrap();
    assert!(density > 0.0 && density < 1.0, "{row}");

    // A text longer than the pipeline pads to: one line, before any work.
    let mut args = vec!["--device", "cpu"];
    args.extend_from_slice(&toy);
    args.extend_from_slice(&["--text-len", "1001"]);
    let out = vdit(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("pads to 1000"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// The HunyuanVideo 1.5 VAE row at toy widths (`--base-dim 8`: every width of the released
/// 128/256/512/1024/1024 × 8/128, which the full size would take minutes to run on the CPU):
/// whole frames of a 2×2×2 latent (×16 space, 1 + 4 frames), then diffusers' 16-latent-pixel
/// tiles over a 17-wide latent (two tiles); encoder, TAEHV and bad widths refused before work.
#[test]
fn hunyuan15_vae_bench_decodes_toy_latents_whole_and_tiled() {
    let dir = tempfile::tempdir().unwrap();
    let toy = [
        "--iters",
        "1",
        "--warmup",
        "0",
        "vae",
        "--vae",
        "hunyuanvideo-1.5",
    ];
    for (extra, case, shape) in [
        (
            &["--latent", "2x2x2"][..],
            "whole frames",
            "HunyuanVideo 1.5 B1 latent 2x2x2 → 5 frames 32x32",
        ),
        (
            &["--latent", "2x1x17", "--tiling"][..],
            "tiled",
            "HunyuanVideo 1.5 B1 latent 2x1x17 → 5 frames 272x16",
        ),
    ] {
        let json = dir.path().join(format!("hy_vae_{case}.json"));
        let mut args = toy.to_vec();
        args.extend_from_slice(&["--base-dim", "8"]);
        args.extend_from_slice(extra);
        let (report, stdout) = bench_ok(&args, &json);
        let row = &rows(&report)[0];
        check_timings(row, 1);
        assert_eq!(row["bench"], "vae");
        assert_eq!(row["case"], case);
        assert_eq!(row["shape"], shape, "{row}");
        assert!(stdout.contains(&format!("| vae | {case} |")), "{stdout}");
    }

    for (extra, needle) in [
        (
            &["--encode"][..],
            "--encode: not built for --vae hunyuanvideo-1.5",
        ),
        (&["--tiny"][..], "no TAEHV decoder"),
        // 6 × 8 = 48 decoder channels at the top: not a multiple of the 32 latent channels.
        (&["--base-dim", "6"][..], "multiple of latent_channels"),
    ] {
        let mut args = vec!["--device", "cpu"];
        args.extend_from_slice(&toy);
        args.extend_from_slice(&["--latent", "2x2x2"]);
        args.extend_from_slice(extra);
        let out = vdit(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
    }
}
