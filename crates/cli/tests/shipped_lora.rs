//! The example LoRA shipped with vdit-tiny (models/loras/vdit-tiny-red-to-blue.safetensors, made
//! by scripts/train/train_lora.py) does what it was trained for, as `vdit eval` sees it: prompts
//! that name a red object give a blue one, and other colours stay as they were.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `vdit eval` of the prompts in `prompts` (seeds 0, 1, ...) with `extra` flags: each prompt's
/// colours as the analyser found them.
fn found_colours(prompts: &Path, out: &Path, extra: &[&str]) -> Vec<(String, Vec<String>)> {
    let run = Command::new(env!("CARGO_BIN_EXE_vdit"))
        .current_dir(root())
        .args(["eval", "--prompts"])
        .arg(prompts)
        .args(["--steps", "30", "--seed", "0", "-o"])
        .arg(out)
        .args(extra)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("VDIT_MODELS_DIR")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    report["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let colours = p["found"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["colour"].as_str().unwrap().to_string())
                .collect();
            (p["prompt"].as_str().unwrap().to_string(), colours)
        })
        .collect()
}

#[test]
fn the_example_lora_draws_red_objects_blue_and_leaves_other_colours() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(
        &prompts,
        "a red circle moving right\na red square moving left\na green square moving up\n",
    )
    .unwrap();
    let lora = root().join("models/loras/vdit-tiny-red-to-blue.safetensors");
    let base = found_colours(&prompts, &dir.path().join("base"), &[]);
    let with = found_colours(
        &prompts,
        &dir.path().join("lora"),
        &["--lora", lora.to_str().unwrap()],
    );
    eprintln!("without the LoRA: {base:?}\nwith it: {with:?}");
    // The colours each clip shows (the object count is not what the LoRA is about).
    let colours = |rows: &[(String, Vec<String>)]| -> Vec<Vec<String>> {
        rows.iter()
            .map(|(_, c)| {
                let mut c = c.clone();
                c.sort();
                c.dedup();
                c
            })
            .collect()
    };
    assert_eq!(
        colours(&base),
        [["red"], ["red"], ["green"]],
        "the base model"
    );
    assert_eq!(
        colours(&with),
        [["blue"], ["blue"], ["green"]],
        "with the LoRA"
    );
}
