//! A model folder carries its own defaults (`vdit.json`): the shipped model given by path runs at
//! its own size, frames, steps and negative prompt, exactly like its registry name; a bad file is
//! one error line naming it.

use std::path::{Path, PathBuf};

use vdit_pipeline::registry::{ModelDefaults, Registry, MODEL_DEFAULTS_FILE};
use vdit_pipeline::settings::{resolve, GenerateOptions, GenerateSettings};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn settings_for(model: &str, registry: &Registry, out: &Path) -> GenerateSettings {
    let mut options = GenerateOptions::new("a red circle moving right");
    options.model = Some(model.to_string());
    options.output = Some(out.join("x.mp4"));
    options.seed = Some(1);
    resolve(&options, registry).unwrap().0
}

#[test]
fn the_shipped_model_by_path_gets_its_own_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let folder = repo().join("models/vdit-tiny");
    // No registry at all: only the folder says what suits it.
    let by_path = settings_for(folder.to_str().unwrap(), &Registry::default(), dir.path());
    assert_eq!((by_path.width, by_path.height), (128, 128));
    assert_eq!(by_path.frames, 17);
    assert_eq!(by_path.steps, 30);
    assert_eq!(by_path.shift, 3.0);
    assert_eq!(by_path.negative_prompt, "");

    // The registry name resolves to the same settings.
    let registry = Registry::load_dir(&repo().join("models")).unwrap();
    let by_name = settings_for("vdit-tiny", &registry, dir.path());
    assert_eq!(
        (by_name.width, by_name.height, by_name.frames, by_name.steps),
        (by_path.width, by_path.height, by_path.frames, by_path.steps)
    );
    assert_eq!(by_name.negative_prompt, by_path.negative_prompt);
    assert_eq!(by_name.guidance_scale, by_path.guidance_scale);
    assert_eq!(by_name.fps, by_path.fps);
}

#[test]
fn a_bad_defaults_file_is_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(MODEL_DEFAULTS_FILE);
    std::fs::write(&file, r#"{"width": 128, "stepz": 3}"#).unwrap();
    let err = ModelDefaults::from_json_file(&file)
        .unwrap_err()
        .to_string();
    assert!(err.contains("vdit.json") && err.contains("stepz"), "{err}");
    assert!(!err.contains('\n'), "{err}");

    std::fs::write(&file, r#"{"frames": 16, "steps": 0}"#).unwrap();
    let err = ModelDefaults::from_json_file(&file)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("frames 16 is not 4n+1") && err.contains("steps 0"),
        "{err}"
    );

    // A model folder with that file: resolve reports it with the other problems.
    let mut options = GenerateOptions::new("x");
    options.model = Some(dir.path().to_str().unwrap().to_string());
    options.output = Some(dir.path().join("x.mp4"));
    let err = resolve(&options, &Registry::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("vdit.json"), "{err}");
}

#[test]
fn the_registry_toml_wins_over_the_folder_file() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("m");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("model_index.json"), "{}").unwrap();
    std::fs::write(
        folder.join(MODEL_DEFAULTS_FILE),
        r#"{"steps": 12, "frames": 9, "negative_prompt": "blur"}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("m.toml"),
        "name = \"m\"\npath = \"m\"\n[defaults]\nsteps = 20\n",
    )
    .unwrap();
    let registry = Registry::load_dir(dir.path()).unwrap();
    let d = &registry.get("m").unwrap().defaults;
    assert_eq!(d.steps, Some(20));
    assert_eq!(d.frames, Some(9));
    assert_eq!(d.negative_prompt.as_deref(), Some("blur"));
}
