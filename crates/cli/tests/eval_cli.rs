//! `vdit eval` on the tiny random-weight fixture model (tests/fixtures/tiny_pipeline). Random
//! weights draw no shapes, so these tests check the mechanics: the per-prompt videos and the
//! report files, the JSON fields, the seeds, the attention passthrough, and clear errors for bad
//! flags and bad prompt files.

mod common;

use std::path::Path;

use common::{tiny_model, vdit};
use vdit_pipeline::video::read_video;

/// An `eval` command line on the tiny model writing into `out`, plus `extra`.
fn eval_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "eval",
        "--model",
        tiny_model().to_str().unwrap(),
        "--size",
        "64x64",
        "--frames",
        "17",
        "--steps",
        "2",
        "--dtype",
        "f32",
        "--device",
        "cpu",
        "-o",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn share(value: &serde_json::Value) -> f64 {
    let v = value.as_f64().expect("a number");
    assert!((0.0..=1.0).contains(&v), "{v}");
    v
}

#[test]
fn eval_runs_a_prompt_file_with_sparse_attention_and_writes_its_report() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(
        &prompts,
        "# held-out style prompts\n\
         a red circle moving right\n\
         \n\
         a blue circle moving up and a yellow square moving down on a textured background\n",
    )
    .unwrap();
    let out = tmp.path().join("eval");
    let args = eval_args(
        &out,
        &[
            "--prompts",
            prompts.to_str().unwrap(),
            "--seed",
            "5",
            "--attention",
            "rainfusion",
            "--sparsity",
            "0.8",
            "--block-size",
            "16",
            "--dense-steps",
            "0",
        ],
    );
    let run = vdit(&args, &tmp.path().join("cache"));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&run.stdout).contains("| clips | colour | motion | count |"));

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(report["prompt_source"], prompts.to_str().unwrap());
    assert!(
        report["build_features"].is_array(),
        "build_features: {}",
        report["build_features"]
    );
    assert_eq!(report["settings"]["attention"]["mode"], "rainfusion");
    assert_eq!(report["settings"]["attention"]["sparsity"], 0.8);
    let accuracy = &report["accuracy"];
    assert_eq!(accuracy["clips"], 2);
    for field in ["colour", "motion", "count"] {
        share(&accuracy[field]);
    }
    let density = report["mean_effective_density"].as_f64().unwrap();
    assert!(
        density > 0.0 && density < 1.0,
        "sparse attention skipped nothing: {density}"
    );

    let rows = report["prompts"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["prompt"], "a red circle moving right");
    // Prompt i runs from the base seed + i.
    assert_eq!(rows[0]["seed"], 5);
    assert_eq!(rows[1]["seed"], 6);
    // The accuracy is the share of rows passing each check.
    for field in ["colour", "motion", "count"] {
        let passing = rows
            .iter()
            .filter(|r| r[format!("{field}_ok")].as_bool().unwrap())
            .count();
        assert_eq!(share(&accuracy[field]), passing as f64 / 2.0, "{field}");
    }
    for row in rows {
        assert!(row["objects_found"].is_u64());
        assert!(row["found"].is_array());
        assert!(row["denoise_s"].as_f64().unwrap() > 0.0);
        let video = read_video(Path::new(row["video"].as_str().unwrap()))
            .unwrap()
            .video;
        assert_eq!(
            (video.width, video.height, video.frames.len()),
            (64, 64, 17)
        );
    }
    assert!(out.join("00.mp4").is_file() && out.join("01.mp4").is_file());
    // The second prompt's clip is exactly what `vdit generate` makes from seed 5 + 1.
    let single = tmp.path().join("single.mp4");
    let mut args = eval_args(&single, &[]);
    args[0] = "generate".into();
    args.extend(
        [
            "-p",
            rows[1]["prompt"].as_str().unwrap(),
            "--seed",
            "6",
            "--attention",
            "rainfusion",
            "--sparsity",
            "0.8",
            "--block-size",
            "16",
            "--dense-steps",
            "0",
        ]
        .map(String::from),
    );
    let run = vdit(&args, &tmp.path().join("cache"));
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        read_video(&single).unwrap().video,
        read_video(&out.join("01.mp4")).unwrap().video,
        "eval's clip differs from vdit generate's"
    );

    let md = std::fs::read_to_string(out.join("eval.md")).unwrap();
    assert!(
        md.contains("| 1 | a blue circle moving up and a yellow square"),
        "{md}"
    );
}

/// Asserts that `extra` makes eval fail with exit status 2, no panic, a message containing each
/// of `expected`, and no report.
fn assert_rejected(extra: &[&str], expected: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let args = eval_args(&out, extra);
    let run = vdit(&args, &tmp.path().join("cache"));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{extra:?}:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{extra:?}:\n{stderr}");
    for e in expected {
        assert!(stderr.contains(e), "{extra:?}: no '{e}' in\n{stderr}");
    }
    assert!(!out.join("eval.json").exists());
}

#[test]
fn bad_flags_are_rejected_with_a_clear_message() {
    assert_rejected(&[], &["--prompts"]);
    assert_rejected(&["--builtin", "--prompts", "p.txt"], &["--builtin"]);
    assert_rejected(
        &["--builtin", "-p", "a red circle moving left"],
        &["not -p"],
    );
    assert_rejected(&["--builtin", "--noise", "n.safetensors"], &["--noise"]);
    assert_rejected(&["--builtin", "--sparsity", "1.5"], &["[0, 1)"]);
    assert_rejected(
        &["--prompts", "/nonexistent/prompts.txt"],
        &["/nonexistent/prompts.txt", "cannot read"],
    );
}

#[test]
fn prompts_outside_the_grammar_are_named_by_line_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(
        &prompts,
        "a red circle moving right\na pink circle moving right\na cat\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let run = vdit(
        &eval_args(&out, &["--prompts", prompts.to_str().unwrap()]),
        &tmp.path().join("cache"),
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("line 2") && stderr.contains("pink"),
        "{stderr}"
    );
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(!out.join("00.mp4").exists());

    std::fs::write(&prompts, "# only a comment\n\n").unwrap();
    let run = vdit(
        &eval_args(&out, &["--prompts", prompts.to_str().unwrap()]),
        &tmp.path().join("cache"),
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no prompts"), "{stderr}");
}
