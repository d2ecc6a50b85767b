//! `vdit` never loses a user's file or a finished denoise (issue 24, "Data loss and wrong
//! output"), on the tiny random-weight fixture model (tests/fixtures/tiny_pipeline):
//! - the sidecar is named after the whole output name, so it never replaces another file;
//! - an existing file vdit did not write stops the run before any work, unless `--overwrite`;
//! - files the run reads are checked before sampling (a truncated VAE fails before step 1);
//! - when the decode fails after sampling, the latents are saved and `--latents-in` resumes
//!   from them, giving the video an uninterrupted run gives.
//!
//! The writers' side (png sequences whole or not at all) is in
//! crates/pipeline/tests/no_data_loss.rs.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{tiny_model, vdit, vdit_command};
use vdit_pipeline::video::read_video;

/// `vdit generate` on the tiny model, 48x32, 9 frames, 2 steps, writing `out`, plus `extra`.
fn generate_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "generate",
        "-p",
        "a red circle moving right",
        "--model",
        tiny_model().to_str().unwrap(),
        "--size",
        "48x32",
        "--frames",
        "9",
        "--steps",
        "2",
        "--seed",
        "3",
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

struct Run {
    ok: bool,
    code: Option<i32>,
    stderr: String,
}

impl From<std::process::Output> for Run {
    fn from(output: std::process::Output) -> Self {
        Run {
            ok: output.status.success(),
            code: output.status.code(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

fn run(args: &[String], dir: &Path) -> Run {
    vdit(args, &dir.join("cache")).into()
}

fn sidecar(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Whether a stage's timing line (`encode …`, `denoise …`, `decode …`) was printed.
fn stage_ran(stderr: &str) -> bool {
    stderr.lines().any(|l| {
        ["encode ", "denoise ", "decode "]
            .iter()
            .any(|stage| l.starts_with(stage))
    })
}

/// The error lines of a run refused before any work: exit status 2, no stage started.
fn refused_before_work(run: &Run) -> Vec<String> {
    assert!(!run.ok, "the run was not refused:\n{}", run.stderr);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        !stage_ran(&run.stderr),
        "work started before the refusal:\n{}",
        run.stderr
    );
    run.stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(String::from)
        .collect()
}

/// Before the fix, `-o data.mp4` wrote its sidecar over an unrelated `data.json`, and `-o x.png`
/// then `-o x.gif` shared `x.json`.
#[test]
fn the_sidecar_is_named_after_the_whole_output_and_replaces_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let unrelated = dir.path().join("data.json");
    std::fs::write(&unrelated, "{\"mine\": true}").unwrap();
    let r = run(
        &generate_args(&dir.path().join("data.mp4"), &[]),
        dir.path(),
    );
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(&unrelated).unwrap(),
        "{\"mine\": true}"
    );
    let record = sidecar(&dir.path().join("data.mp4.json"));
    assert_eq!(record["settings"]["seed"], 3);
    assert!(
        record["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().ends_with("data.mp4")),
        "{record}"
    );
    assert!(r.stderr.contains("data.mp4.json"), "{}", r.stderr);

    for name in ["x.png", "x.gif"] {
        let r = run(&generate_args(&dir.path().join(name), &[]), dir.path());
        assert!(r.ok, "{name}: {}", r.stderr);
    }
    assert_eq!(
        sidecar(&dir.path().join("x.png.json"))["settings"]["format"],
        "png"
    );
    assert_eq!(
        sidecar(&dir.path().join("x.gif.json"))["settings"]["format"],
        "gif"
    );
    assert!(!dir.path().join("x.json").exists());
}

/// Before the fix, the video writers replaced whatever was at `-o`.
#[test]
fn a_file_vdit_did_not_write_stops_the_run_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clip.mp4");
    std::fs::write(&out, b"my holiday video").unwrap();
    let started = Instant::now();
    let r = run(&generate_args(&out, &[]), dir.path());
    let errors = refused_before_work(&r);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("clip.mp4") && errors[0].contains("--overwrite"),
        "{errors:?}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"my holiday video");
    println!("refused in {:.2} s", started.elapsed().as_secs_f64());

    // A foreign sidecar and a foreign latents file are refused in the same way, all at once.
    std::fs::remove_file(&out).unwrap();
    std::fs::write(dir.path().join("clip.mp4.json"), b"{}").unwrap();
    let latents = dir.path().join("z.safetensors");
    std::fs::write(&latents, b"someone's tensors").unwrap();
    let r = run(
        &generate_args(&out, &["--latents-out", latents.to_str().unwrap()]),
        dir.path(),
    );
    let errors = refused_before_work(&r);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("clip.mp4.json")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("z.safetensors")),
        "{errors:?}"
    );
    assert!(
        errors.iter().all(|e| e.contains("--overwrite")),
        "{errors:?}"
    );

    // --overwrite replaces them; then the outputs are vdit's and a re-run needs no flag.
    let args = generate_args(&out, &["--latents-out", latents.to_str().unwrap()]);
    let mut overwrite = args.clone();
    overwrite.push("--overwrite".into());
    let r = run(&overwrite, dir.path());
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(read_video(&out).unwrap().video.frame_count(), 9);
    let r = run(&args, dir.path());
    assert!(r.ok, "a re-run over vdit's own files: {}", r.stderr);
}

/// Before the fix, `--latents-out DIR` failed after sampling and no video was written.
#[test]
fn a_latents_out_directory_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(
        &generate_args(
            &dir.path().join("clip.mp4"),
            &["--latents-out", dir.path().to_str().unwrap()],
        ),
        dir.path(),
    );
    let errors = refused_before_work(&r);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("--latents-out") && e.contains("is a directory")),
        "{errors:?}"
    );
}

/// A copy of the tiny model whose VAE file is `vae_bytes` (the rest linked from the fixture).
fn model_with_vae(dir: &Path, vae_bytes: &[u8]) -> PathBuf {
    let model = dir.join("model");
    for component in [
        "text_encoder",
        "transformer",
        "tokenizer",
        "scheduler",
        "vae",
    ] {
        let from = tiny_model().join(component);
        std::fs::create_dir_all(model.join(component)).unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), model.join(component).join(entry.file_name())).unwrap();
        }
    }
    std::fs::copy(
        tiny_model().join("model_index.json"),
        model.join("model_index.json"),
    )
    .unwrap();
    std::fs::write(
        model.join("vae/diffusion_pytorch_model.safetensors"),
        vae_bytes,
    )
    .unwrap();
    model
}

fn fixture_vae() -> Vec<u8> {
    std::fs::read(tiny_model().join("vae/diffusion_pytorch_model.safetensors")).unwrap()
}

fn with_model(args: &mut [String], model: &Path) {
    let at = args.iter().position(|a| a == "--model").unwrap();
    args[at + 1] = model.display().to_string();
}

/// Before the fix, a truncated VAE failed only after the whole denoise.
#[test]
fn a_truncated_vae_fails_before_the_first_step() {
    let dir = tempfile::tempdir().unwrap();
    let vae = fixture_vae();
    let model = model_with_vae(dir.path(), &vae[..vae.len() * 2 / 3]);
    let out = dir.path().join("clip.mp4");
    let mut args = generate_args(&out, &[]);
    with_model(&mut args, &model);
    let r = run(&args, dir.path());
    assert!(!r.ok, "{}", r.stderr);
    assert!(!stage_ran(&r.stderr), "work started:\n{}", r.stderr);
    assert!(
        r.stderr.contains("vae/diffusion_pytorch_model.safetensors")
            && r.stderr.contains("truncated"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
}

type VaeTensors = std::collections::HashMap<String, candle_core::Tensor>;
type VaeEdit = Box<dyn FnOnce(&mut VaeTensors)>;

/// A VAE copy of the tiny model with `edit` applied to its tensors.
fn model_with_edited_vae(dir: &Path, edit: impl FnOnce(&mut VaeTensors)) -> PathBuf {
    let mut tensors = candle_core::safetensors::load(
        tiny_model().join("vae/diffusion_pytorch_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    edit(&mut tensors);
    let edited = dir.join("edited_vae.safetensors");
    candle_core::safetensors::save(&tensors, &edited).unwrap();
    model_with_vae(dir, &std::fs::read(&edited).unwrap())
}

/// Before the fix, a VAE whose header was whole but which lacked a tensor (or held one of
/// another shape) passed the checks before sampling and failed only at the decode.
#[test]
fn a_vae_missing_a_tensor_or_of_another_shape_fails_before_the_first_step() {
    let cases: [(&str, VaeEdit); 2] = [
        (
            "decoder.conv_out.weight",
            Box::new(|t| {
                t.remove("decoder.conv_out.weight")
                    .expect("the VAE decoder has an output conv");
            }),
        ),
        (
            "decoder.conv_in.bias",
            Box::new(|t| {
                let bias = t.get("decoder.conv_in.bias").unwrap();
                let longer = candle_core::Tensor::cat(&[bias, bias], 0).unwrap();
                t.insert("decoder.conv_in.bias".into(), longer);
            }),
        ),
    ];
    for (key, edit) in cases {
        let dir = tempfile::tempdir().unwrap();
        let model = model_with_edited_vae(dir.path(), edit);
        let out = dir.path().join("clip.mp4");
        let mut args = generate_args(&out, &[]);
        with_model(&mut args, &model);
        let r = run(&args, dir.path());
        assert!(!r.ok, "{}", r.stderr);
        assert!(!stage_ran(&r.stderr), "work started:\n{}", r.stderr);
        let error = r.stderr.lines().find(|l| l.starts_with("error:")).unwrap();
        assert!(
            error.contains("vae") && error.contains(key),
            "{key}: {}",
            r.stderr
        );
        assert!(!out.exists());
    }
}

/// `vdit` with `args`, writing no file larger than `max_bytes` (RLIMIT_FSIZE, with SIGXFSZ
/// ignored so a write past it fails with EFBIG as a full disk fails with ENOSPC).
#[cfg(unix)]
fn run_with_file_limit(args: &[String], dir: &Path, max_bytes: u64) -> Run {
    use std::os::unix::process::CommandExt;
    let mut command = vdit_command(args, &dir.join("cache"));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: max_bytes as libc::rlim_t,
                rlim_max: max_bytes as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.output().expect("vdit runs").into()
}

/// The disk fills while the video is written, after the whole denoise (a file-size limit that
/// the 21 KB gif passes and the 5 KB latents do not): the latents must survive, and
/// `--latents-in` must give the video an uninterrupted run gives.
#[cfg(unix)]
#[test]
fn a_full_disk_at_the_video_keeps_the_latents_and_latents_in_resumes_to_the_same_video() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("clip.gif");
    let args = generate_args(&out, &[]);
    let r = run_with_file_limit(&args, dir.path(), 12 * 1024);
    assert!(!r.ok, "{}", r.stderr);
    assert!(stage_ran(&r.stderr), "sampling ran: {}", r.stderr);
    let error = r.stderr.lines().find(|l| l.starts_with("error:")).unwrap();
    assert_eq!(
        error.matches("os error").count(),
        1,
        "the OS error once: {error}"
    );
    // No half-written video, and no temporary file left that looks like one.
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "cache" && !n.ends_with(".latents.safetensors"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let saved = dir.path().join("clip.gif.latents.safetensors");
    assert!(saved.is_file(), "{}", r.stderr);
    let resume_line = r
        .stderr
        .lines()
        .find(|l| l.contains("--latents-in"))
        .unwrap_or_else(|| panic!("no resume line:\n{}", r.stderr));
    assert!(
        resume_line.contains(saved.to_str().unwrap()),
        "{resume_line}"
    );
    assert!(!out.exists());

    // Resume with the disk freed (the command the line prints).
    let mut resume = generate_args(&out, &["--latents-in", saved.to_str().unwrap()]);
    // Prompt and seed are not used: change them to show it.
    resume[2] = "another prompt".into();
    let r = run(&resume, dir.path());
    assert!(r.ok, "{}", r.stderr);
    assert!(
        !r.stderr
            .lines()
            .any(|l| l.starts_with("denoise ") || l.starts_with("encode ")),
        "resuming sampled again:\n{}",
        r.stderr
    );
    let record = sidecar(&dir.path().join("clip.gif.json"));
    assert!(
        record["settings"]["latents_in"]
            .as_str()
            .unwrap()
            .ends_with("clip.gif.latents.safetensors"),
        "{record}"
    );

    // The same run uninterrupted.
    let whole = dir.path().join("whole.gif");
    let r = run(&generate_args(&whole, &[]), dir.path());
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&whole).unwrap(),
        "the resumed video differs from the uninterrupted one"
    );
}

/// `--latents-in` for another size says what the latents were made for.
#[test]
fn latents_of_another_size_are_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let latents = dir.path().join("z.safetensors");
    let r = run(
        &generate_args(
            &dir.path().join("a.gif"),
            &["--latents-out", latents.to_str().unwrap()],
        ),
        dir.path(),
    );
    assert!(r.ok, "{}", r.stderr);
    let r = run(
        &generate_args(
            &dir.path().join("b.gif"),
            &["--latents-in", latents.to_str().unwrap(), "--size", "64x64"],
        ),
        dir.path(),
    );
    assert!(!r.ok);
    assert!(
        r.stderr.contains("--latents-in") && r.stderr.contains("48x32"),
        "{}",
        r.stderr
    );
    assert!(!dir.path().join("b.gif").exists());
}

/// `vdit compare`, `vdit eval` and `vdit bench --json` follow the same rule for their reports
/// and videos.
#[test]
fn compare_eval_and_bench_refuse_files_they_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model();
    let compare_dir = dir.path().join("cmp");
    std::fs::create_dir(&compare_dir).unwrap();
    std::fs::write(compare_dir.join("compare.md"), "my notes").unwrap();
    let compare: Vec<String> = [
        "compare",
        "-p",
        "a red circle moving right",
        "--model",
        model.to_str().unwrap(),
        "--size",
        "48x32",
        "--frames",
        "9",
        "--steps",
        "2",
        "--device",
        "cpu",
        "-o",
        compare_dir.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let errors = refused_before_work(&run(&compare, dir.path()));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("compare.md") && e.contains("--overwrite")),
        "{errors:?}"
    );
    assert_eq!(
        std::fs::read_to_string(compare_dir.join("compare.md")).unwrap(),
        "my notes"
    );

    let eval_dir = dir.path().join("ev");
    std::fs::create_dir(&eval_dir).unwrap();
    std::fs::write(eval_dir.join("00.mp4"), "a video of mine").unwrap();
    let eval: Vec<String> = [
        "eval",
        "--builtin",
        "--model",
        model.to_str().unwrap(),
        "--size",
        "48x32",
        "--frames",
        "9",
        "--steps",
        "1",
        "--device",
        "cpu",
        "-o",
        eval_dir.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let errors = refused_before_work(&run(&eval, dir.path()));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("00.mp4") && e.contains("--overwrite")),
        "{errors:?}"
    );

    let json = dir.path().join("results.json");
    std::fs::write(&json, "[1, 2, 3]").unwrap();
    let bench: Vec<String> = [
        "bench",
        "attention",
        "--tokens",
        "256",
        "--heads",
        "1",
        "--device",
        "cpu",
        "--json",
        json.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let errors = refused_before_work(&run(&bench, dir.path()));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("results.json") && e.contains("--overwrite")),
        "{errors:?}"
    );
    assert_eq!(std::fs::read_to_string(&json).unwrap(), "[1, 2, 3]");
}

/// A second `vdit compare` into the same directory replaces the first one's files (all listed in
/// its compare.json) without `--overwrite`.
#[test]
fn compare_reruns_over_its_own_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let args: Vec<String> = [
        "compare",
        "-p",
        "a red circle moving right",
        "--model",
        tiny_model().to_str().unwrap(),
        "--size",
        "48x32",
        "--frames",
        "9",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--sparsities",
        "0.5",
        "-o",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for attempt in 0..2 {
        let r = run(&args, dir.path());
        assert!(r.ok, "attempt {attempt}: {}", r.stderr);
    }
    let report = sidecar(&out.join("compare.json"));
    let files: Vec<&str> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for name in [
        "compare.json",
        "compare.md",
        "dense.mp4",
        "side_by_side.mp4",
    ] {
        assert!(files.contains(&name), "{files:?}");
    }
}
