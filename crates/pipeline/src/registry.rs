//! The model registry: one TOML file per known checkpoint under `models/`, naming where the
//! weights live (a hub repo or a directory next to the TOML) and the settings that suit it.
//!
//! ```toml
//! name = "wan2.1-t2v-1.3b"
//! description = "Wan2.1 T2V 1.3B, 480p"
//! hub_id = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"   # or: path = "vdit-tiny" (relative to this file)
//! revision = "main"                              # optional, hub only
//! family = "wan2.1-t2v"                          # optional, see crate::family (default wan2.1-t2v)
//!
//! [defaults]                                     # every key optional
//! width = 832
//! height = 480
//! frames = 81
//! steps = 50
//! guidance_scale = 5.0
//! guidance_scale_2 = 3.0                         # two-expert families: the low-noise expert's
//! shift = 5.0
//! fps = 16
//! sampler = "unipc"                              # unipc | euler | lcm
//! timesteps = [1000, 750, 500, 250]              # a distilled model's step list (sets steps)
//! negative_prompt = "..."
//! cache_calibration = "wan2.1-t2v-1.3b"          # step cache: a built-in calibration, or a
//!                                                # calibration file in a local model's folder
//!
//! [[lora]]                                       # optional, repeatable: a recipe's LoRAs
//! hub_id = "lightx2v/Wan2.1-Distill-Loras"
//! file = "wan2.1_t2v_14b_lora_rank64_lightx2v_4step.safetensors"
//! strength = 1.0                                 # optional, 1.0
//! expert = 1                                     # optional; two-expert models: 1 high, 2 low noise
//! ```
//!
//! A local model folder carries its own defaults in `vdit.json` ([`MODEL_DEFAULTS_FILE`]: the keys
//! of `[defaults]`, as JSON), so `-m path/to/folder` runs with the same settings as the registry
//! name. A local entry reads its folder's file (or the one `defaults_file` names, relative to the
//! TOML); keys in the TOML's `[defaults]` win over the file's.
//!
//! The registry directory is `$VDIT_MODELS_DIR` if set, else the repository's `models/`. The
//! hub entries are also compiled into the binary, so `vdit` works from anywhere.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, VditError};
use crate::family::{family_by_name, ModelFamily, DEFAULT_FAMILY};
use crate::sampling::SamplerKind;

/// Registry names tried in order when `--model` is absent: the first one that is available
/// (a hub entry always is; a local entry when its directory exists) is the default model.
/// vdit-tiny (the small model shipped in `models/vdit-tiny/`) wins once it is there.
pub const DEFAULT_MODELS: &[&str] = &["vdit-tiny", "wan2.1-t2v-1.3b"];

/// Environment variable naming another registry directory.
pub const MODELS_DIR_ENV: &str = "VDIT_MODELS_DIR";

/// The repository's registry, as seen at build time.
const REPO_MODELS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models");

/// Hub entries compiled in, used when no registry directory can be found at run time.
const EMBEDDED: &[(&str, &str)] = &[
    (
        "wan2.1-t2v-1.3b.toml",
        include_str!("../../../models/wan2.1-t2v-1.3b.toml"),
    ),
    (
        "wan2.1-t2v-14b.toml",
        include_str!("../../../models/wan2.1-t2v-14b.toml"),
    ),
    (
        "wan2.2-t2v-a14b.toml",
        include_str!("../../../models/wan2.2-t2v-a14b.toml"),
    ),
    (
        "wan2.2-ti2v-5b.toml",
        include_str!("../../../models/wan2.2-ti2v-5b.toml"),
    ),
    (
        "wan2.1-i2v-14b-480p.toml",
        include_str!("../../../models/wan2.1-i2v-14b-480p.toml"),
    ),
    (
        "wan2.1-i2v-14b-720p.toml",
        include_str!("../../../models/wan2.1-i2v-14b-720p.toml"),
    ),
    (
        "wan2.1-flf2v-14b-720p.toml",
        include_str!("../../../models/wan2.1-flf2v-14b-720p.toml"),
    ),
    (
        "wan2.2-i2v-a14b.toml",
        include_str!("../../../models/wan2.2-i2v-a14b.toml"),
    ),
    (
        "wan2.1-t2v-14b-4step.toml",
        include_str!("../../../models/wan2.1-t2v-14b-4step.toml"),
    ),
    (
        "wan2.2-t2v-a14b-4step.toml",
        include_str!("../../../models/wan2.2-t2v-a14b-4step.toml"),
    ),
    (
        "hunyuanvideo-1.5-480p.toml",
        include_str!("../../../models/hunyuanvideo-1.5-480p.toml"),
    ),
    (
        "hunyuanvideo-1.5-720p.toml",
        include_str!("../../../models/hunyuanvideo-1.5-720p.toml"),
    ),
];

/// The file in a model folder that holds its defaults (the keys of [`ModelDefaults`], as JSON).
pub const MODEL_DEFAULTS_FILE: &str = "vdit.json";

/// Settings a registry entry or a model folder recommends; any may be absent (then the family's
/// default applies).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDefaults {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub frames: Option<u32>,
    pub steps: Option<usize>,
    pub guidance_scale: Option<f64>,
    /// The second (low-noise) expert's guidance scale, two-expert families only.
    pub guidance_scale_2: Option<f64>,
    pub shift: Option<f64>,
    pub fps: Option<u32>,
    pub sampler: Option<SamplerKind>,
    /// A distilled model's denoising step list (training timesteps, decreasing); sets the steps.
    pub timesteps: Option<Vec<f64>>,
    pub negative_prompt: Option<String>,
    /// The model's step-cache calibration: a built-in name (`wan2.1-t2v-1.3b`, see
    /// [`crate::step_cache::calibration::BUILTIN_NAMES`]) or, for a local model, a calibration
    /// file (written by `--cache-calibrate`) relative to its folder.
    pub cache_calibration: Option<String>,
}

/// What an entry says of its published transformer (one expert of a two-expert model): enough
/// to estimate a run's memory before the files are downloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedTransformer {
    /// Width (heads × head dim).
    pub dim: u64,
    /// Feed-forward width.
    pub ffn_dim: u64,
    pub layers: u64,
    /// Parameters of one transformer.
    pub params: u64,
}

/// A LoRA that an entry applies (a recipe: base model + LoRA + sampling settings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryLora {
    /// The hub repository holding the file.
    pub hub_id: String,
    /// The file inside it.
    pub file: String,
    #[serde(default = "unit_strength")]
    pub strength: f64,
    /// Two-expert models: 1 (high noise) or 2 (low noise); 1 otherwise.
    #[serde(default = "first_expert")]
    pub expert: u8,
}

fn unit_strength() -> f64 {
    1.0
}

fn first_expert() -> u8 {
    1
}

impl ModelDefaults {
    /// Each key of `self`, else `fallback`'s.
    pub fn or(&self, fallback: &ModelDefaults) -> ModelDefaults {
        ModelDefaults {
            width: self.width.or(fallback.width),
            height: self.height.or(fallback.height),
            frames: self.frames.or(fallback.frames),
            steps: self.steps.or(fallback.steps),
            guidance_scale: self.guidance_scale.or(fallback.guidance_scale),
            guidance_scale_2: self.guidance_scale_2.or(fallback.guidance_scale_2),
            shift: self.shift.or(fallback.shift),
            fps: self.fps.or(fallback.fps),
            sampler: self.sampler.or(fallback.sampler),
            timesteps: self
                .timesteps
                .clone()
                .or_else(|| fallback.timesteps.clone()),
            negative_prompt: self
                .negative_prompt
                .clone()
                .or_else(|| fallback.negative_prompt.clone()),
            cache_calibration: self
                .cache_calibration
                .clone()
                .or_else(|| fallback.cache_calibration.clone()),
        }
    }

    /// The values a run could not use, one line each (empty when all are usable). Sizes are
    /// checked against the family's multiple when the settings are resolved.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, v) in [("width", self.width), ("height", self.height)] {
            if v == Some(0) {
                problems.push(format!("{name} is 0"));
            }
        }
        if let Some(f) = self.frames {
            if f == 0 || !(f - 1).is_multiple_of(4) {
                problems.push(format!("frames {f} is not 4n+1"));
            }
        }
        if let Some(s) = self.steps {
            if !(1..=1000).contains(&s) {
                problems.push(format!("steps {s} is outside 1..=1000"));
            }
        }
        for (name, v) in [
            ("guidance_scale", self.guidance_scale),
            ("guidance_scale_2", self.guidance_scale_2),
        ] {
            if let Some(g) = v {
                if !g.is_finite() || g < 0.0 {
                    problems.push(format!("{name} {g} is not a finite scale ≥ 0"));
                }
            }
        }
        if let Some(s) = self.shift {
            if !s.is_finite() || s <= 0.0 {
                problems.push(format!("shift {s} is not a finite shift > 0"));
            }
        }
        if let Some(f) = self.fps {
            if !(1..=240).contains(&f) {
                problems.push(format!("fps {f} is outside 1..=240"));
            }
        }
        if let Some(list) = &self.timesteps {
            if let Err(e) = crate::sampling::check_step_list(list) {
                problems.push(format!("timesteps: {e}"));
            }
        }
        problems
    }

    /// Parses a model folder's defaults file (JSON, unknown keys refused); `path` names it in
    /// errors, which are one line.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        // One line, whatever the file holds: serde echoes names from the file, which may hold
        // line breaks and other control characters; those are written escaped.
        let bad = |reason: String| {
            let reason: String = reason
                .chars()
                .map(|c| match c.is_control() {
                    true => c.escape_default().to_string(),
                    false => c.to_string(),
                })
                .collect();
            VditError::InvalidSetting(format!("model defaults {}: {reason}", path.display()))
        };
        let defaults: ModelDefaults = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let problems = defaults.problems();
        if !problems.is_empty() {
            return Err(bad(problems.join("; ")));
        }
        Ok(defaults)
    }

    /// Reads a model folder's defaults file.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| VditError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// The defaults of the model folder `dir` ([`MODEL_DEFAULTS_FILE`]), if it has that file.
    pub fn of_folder(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(MODEL_DEFAULTS_FILE);
        if path.is_file() {
            Self::from_json_file(&path).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Where an entry's files are.
#[derive(Debug, Clone, PartialEq)]
pub enum EntrySource {
    /// A Hugging Face hub repository in the diffusers layout.
    Hub {
        repo_id: String,
        revision: Option<String>,
    },
    /// A local directory in the diffusers layout (absolute, resolved against the TOML's directory).
    Local(PathBuf),
}

/// One registry entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    pub name: String,
    pub description: String,
    pub source: EntrySource,
    pub defaults: ModelDefaults,
    /// LoRAs the entry applies (a recipe: e.g. a 4-step distilled LoRA on its base model).
    pub loras: Vec<EntryLora>,
    /// The family the TOML names (Wan2.1 T2V when it names none).
    pub family: &'static ModelFamily,
    /// The transformer's size as published (`[transformer]` in the TOML), if the entry says.
    pub transformer: Option<PublishedTransformer>,
    /// The TOML it came from (or `<embedded>/<file>`).
    pub file: PathBuf,
}

impl ModelEntry {
    /// Whether the weights can be found without asking the user for anything: hub entries
    /// always (they download), local entries when their directory exists.
    pub fn is_available(&self) -> bool {
        match &self.source {
            EntrySource::Hub { .. } => true,
            EntrySource::Local(dir) => dir.join("model_index.json").is_file(),
        }
    }

    /// Human-readable location: the hub id or the directory.
    pub fn location(&self) -> String {
        match &self.source {
            EntrySource::Hub {
                repo_id,
                revision: Some(rev),
            } => format!("{repo_id}@{rev}"),
            EntrySource::Hub {
                repo_id,
                revision: None,
            } => repo_id.clone(),
            EntrySource::Local(dir) => dir.display().to_string(),
        }
    }
}

/// The TOML schema of an entry file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    name: String,
    #[serde(default)]
    description: String,
    hub_id: Option<String>,
    revision: Option<String>,
    path: Option<PathBuf>,
    family: Option<String>,
    /// The model folder's defaults file, relative to the TOML (a local entry reads its folder's
    /// `vdit.json` without it).
    defaults_file: Option<PathBuf>,
    #[serde(default)]
    defaults: ModelDefaults,
    #[serde(default)]
    lora: Vec<EntryLora>,
    transformer: Option<PublishedTransformer>,
}

/// Parses one entry; `base_dir` resolves a relative `path`.
fn parse_entry(text: &str, file: &Path, base_dir: &Path) -> Result<ModelEntry> {
    let bad = |reason: String| VditError::Registry {
        path: file.to_path_buf(),
        reason,
    };
    let raw: EntryFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    let source = match (raw.hub_id, raw.path) {
        (Some(repo_id), None) => EntrySource::Hub {
            repo_id,
            revision: raw.revision,
        },
        (None, Some(path)) => EntrySource::Local(base_dir.join(path)),
        _ => return Err(bad("give exactly one of `hub_id` and `path`".into())),
    };
    if raw.name.trim().is_empty() {
        return Err(bad("`name` is empty".into()));
    }
    let family = match &raw.family {
        Some(name) => family_by_name(name).map_err(|e| bad(e.to_string()))?,
        None => DEFAULT_FAMILY,
    };
    for lora in &raw.lora {
        if lora.expert == 0 || lora.expert as usize > family.experts.len() {
            return Err(bad(format!(
                "[[lora]] {}: expert {} does not exist (the {} family has {})",
                lora.file,
                lora.expert,
                family.name,
                family.experts.len()
            )));
        }
    }
    let problems = raw.defaults.problems();
    if !problems.is_empty() {
        return Err(bad(format!("[defaults]: {}", problems.join("; "))));
    }
    // The folder's own defaults fill in what the TOML leaves out.
    // A local model not downloaded yet has no defaults file either.
    let folder_defaults = match (&raw.defaults_file, &source) {
        // Neither is a folder that holds no model yet (say, a copy of the tree sent without it).
        (Some(_), EntrySource::Local(dir)) if !dir.join("model_index.json").is_file() => None,
        (Some(file), _) => Some(ModelDefaults::from_json_file(&base_dir.join(file))?),
        (None, EntrySource::Local(dir)) => ModelDefaults::of_folder(dir)?,
        (None, EntrySource::Hub { .. }) => None,
    };
    let defaults = match folder_defaults {
        Some(folder) => raw.defaults.or(&folder),
        None => raw.defaults,
    };
    Ok(ModelEntry {
        name: raw.name,
        description: raw.description,
        source,
        defaults,
        loras: raw.lora,
        family,
        transformer: raw.transformer,
        file: file.to_path_buf(),
    })
}

/// Every known model.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    entries: Vec<ModelEntry>,
}

impl Registry {
    /// Reads every `*.toml` of `dir` (sorted by file name). Two entries with one name is an error.
    pub fn load_dir(dir: &Path) -> Result<Self> {
        let io = |source| VditError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml") && p.is_file())
            .collect();
        files.sort();
        let mut registry = Registry::default();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| VditError::Io {
                path: file.clone(),
                source,
            })?;
            registry.insert(parse_entry(&text, &file, dir)?)?;
        }
        Ok(registry)
    }

    /// The hub entries compiled into the binary.
    pub fn embedded() -> Self {
        let mut registry = Registry::default();
        for (name, text) in EMBEDDED {
            let file = Path::new("<embedded>").join(name);
            // The embedded files are tested (see tests below), so this cannot fail at run time.
            if let Ok(entry) = parse_entry(text, &file, Path::new(".")) {
                registry.entries.push(entry);
            }
        }
        registry
    }

    /// The registry users get: `$VDIT_MODELS_DIR` if set (it must exist), else the repository's
    /// `models/` if present, else the embedded entries.
    pub fn discover() -> Result<Self> {
        if let Some(dir) = std::env::var_os(MODELS_DIR_ENV) {
            let dir = PathBuf::from(dir);
            if !dir.is_dir() {
                return Err(VditError::Resolve(format!(
                    "{MODELS_DIR_ENV}={} is not a directory",
                    dir.display()
                )));
            }
            return Self::load_dir(&dir);
        }
        let repo_dir = Path::new(REPO_MODELS_DIR);
        if repo_dir.is_dir() {
            return Self::load_dir(&repo_dir.canonicalize().unwrap_or(repo_dir.to_path_buf()));
        }
        Ok(Self::embedded())
    }

    fn insert(&mut self, entry: ModelEntry) -> Result<()> {
        if let Some(other) = self.get(&entry.name) {
            return Err(VditError::Registry {
                path: entry.file.clone(),
                reason: format!(
                    "model `{}` is also defined in {}",
                    entry.name,
                    other.file.display()
                ),
            });
        }
        self.entries.push(entry);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&ModelEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    pub fn entries(&self) -> &[ModelEntry] {
        &self.entries
    }

    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }

    /// The model used when `--model` is absent: the first available of [`DEFAULT_MODELS`].
    pub fn default_model(&self) -> Option<&ModelEntry> {
        DEFAULT_MODELS
            .iter()
            .filter_map(|name| self.get(name))
            .find(|entry| entry.is_available())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_defaults_file_error_is_one_line_whatever_the_file_holds() {
        // serde names the unknown field as written, line break included
        let text = r#"{"guid\n_scale": 5}"#;
        let err = ModelDefaults::from_json_str(text, Path::new("vdit.json")).unwrap_err();
        let line = err.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains("vdit.json") && line.contains("guid\\n_scale"),
            "{line}"
        );
    }

    #[test]
    fn embedded_entries_parse_and_name_the_diffusers_repos() {
        let registry = Registry::embedded();
        assert_eq!(registry.entries().len(), EMBEDDED.len());
        let small = registry.get("wan2.1-t2v-1.3b").unwrap();
        assert_eq!(
            small.source,
            EntrySource::Hub {
                repo_id: "Wan-AI/Wan2.1-T2V-1.3B-Diffusers".into(),
                revision: None
            }
        );
        assert_eq!(small.defaults.width, Some(832));
        assert_eq!(small.defaults.frames, Some(81));
        let large = registry.get("wan2.1-t2v-14b").unwrap();
        assert_eq!(large.location(), "Wan-AI/Wan2.1-T2V-14B-Diffusers");
    }

    #[test]
    fn hunyuan_entries_name_their_family_hub_repos_and_published_defaults() {
        let registry = Registry::embedded();
        for (name, repo, (width, height), shift) in [
            (
                "hunyuanvideo-1.5-480p",
                "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_t2v",
                (848, 480),
                5.0,
            ),
            (
                "hunyuanvideo-1.5-720p",
                "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-720p_t2v",
                (1280, 720),
                9.0,
            ),
        ] {
            let entry = registry.get(name).unwrap();
            assert_eq!(entry.location(), repo);
            assert_eq!(entry.family.name, "hunyuanvideo-1.5-t2v");
            let d = &entry.defaults;
            assert_eq!((d.width, d.height), (Some(width), Some(height)));
            assert_eq!((d.frames, d.steps), (Some(121), Some(50)));
            assert_eq!((d.guidance_scale, d.shift), (Some(6.0), Some(shift)));
            assert_eq!(d.sampler, Some(SamplerKind::Euler));
        }
    }

    #[test]
    fn image_to_video_entries_name_their_families_and_hub_repos() {
        let registry = Registry::embedded();
        for (name, repo, family) in [
            (
                "wan2.1-i2v-14b-480p",
                "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
                "wan2.1-i2v",
            ),
            (
                "wan2.1-i2v-14b-720p",
                "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
                "wan2.1-i2v",
            ),
            (
                "wan2.1-flf2v-14b-720p",
                "Wan-AI/Wan2.1-FLF2V-14B-720P-diffusers",
                "wan2.1-flf2v",
            ),
            (
                "wan2.2-i2v-a14b",
                "Wan-AI/Wan2.2-I2V-A14B-Diffusers",
                "wan2.2-i2v-a14b",
            ),
        ] {
            let entry = registry.get(name).unwrap();
            assert_eq!(entry.location(), repo);
            assert_eq!(entry.family.name, family);
            assert!(entry.family.image.is_some_and(|i| i.required), "{name}");
        }
        let a14b = registry.get("wan2.2-i2v-a14b").unwrap();
        assert_eq!(a14b.family.boundary_ratio, Some(0.9));
        assert_eq!(a14b.defaults.guidance_scale_2, Some(3.5));
        assert!(registry
            .get("wan2.2-ti2v-5b")
            .unwrap()
            .family
            .image
            .is_some_and(|i| !i.required));
    }

    #[test]
    fn recipes_name_their_loras_per_expert_and_their_step_list() {
        let registry = Registry::embedded();
        let wan21 = registry.get("wan2.1-t2v-14b-4step").unwrap();
        assert_eq!(wan21.loras.len(), 1);
        assert_eq!(wan21.loras[0].hub_id, "lightx2v/Wan2.1-Distill-Loras");
        assert_eq!(
            wan21.defaults.timesteps,
            Some(vec![1000.0, 750.0, 500.0, 250.0])
        );
        assert_eq!(wan21.defaults.guidance_scale, Some(1.0));
        let wan22 = registry.get("wan2.2-t2v-a14b-4step").unwrap();
        let experts: Vec<u8> = wan22.loras.iter().map(|l| l.expert).collect();
        assert_eq!(experts, [1, 2]);

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bad.toml"),
            "name = \"x\"\nhub_id = \"a/b\"\n[[lora]]\nhub_id = \"c/d\"\nfile = \"e.safetensors\"\nexpert = 2\n",
        )
        .unwrap();
        let err = Registry::load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("expert 2 does not exist"), "{err}");
    }

    #[test]
    fn repository_registry_loads() {
        let registry = Registry::load_dir(Path::new(REPO_MODELS_DIR)).unwrap();
        for (file, _) in EMBEDDED {
            let name = file.trim_end_matches(".toml");
            assert!(registry.get(name).is_some(), "{name} missing from models/");
        }
        assert!(registry.default_model().is_some());
    }

    #[test]
    fn the_shipped_model_becomes_the_default_once_present() {
        let dir = tempfile::tempdir().unwrap();
        for (file, text) in EMBEDDED {
            std::fs::write(dir.path().join(file), text).unwrap();
        }
        std::fs::write(
            dir.path().join("vdit-tiny.toml"),
            "name = \"vdit-tiny\"\npath = \"vdit-tiny\"\n",
        )
        .unwrap();
        let registry = Registry::load_dir(dir.path()).unwrap();
        assert_eq!(registry.default_model().unwrap().name, "wan2.1-t2v-1.3b");
        std::fs::create_dir_all(dir.path().join("vdit-tiny")).unwrap();
        std::fs::write(dir.path().join("vdit-tiny/model_index.json"), "{}").unwrap();
        let registry = Registry::load_dir(dir.path()).unwrap();
        assert_eq!(registry.default_model().unwrap().name, "vdit-tiny");
    }

    #[test]
    fn a_named_defaults_file_is_read_only_once_the_folder_holds_a_model() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("m.toml"),
            "name = \"m\"\npath = \"m\"\ndefaults_file = \"m/vdit.json\"\n",
        )
        .unwrap();
        // The folder is there but empty (a copy of the tree without the model): no defaults.
        std::fs::create_dir_all(dir.path().join("m")).unwrap();
        let registry = Registry::load_dir(dir.path()).unwrap();
        assert_eq!(registry.get("m").unwrap().defaults.steps, None);
        // Once it holds a model, a missing defaults file is an error that names it.
        std::fs::write(dir.path().join("m/model_index.json"), "{}").unwrap();
        let err = Registry::load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("vdit.json"), "{err}");
        std::fs::write(dir.path().join("m/vdit.json"), r#"{"steps": 7}"#).unwrap();
        let registry = Registry::load_dir(dir.path()).unwrap();
        assert_eq!(registry.get("m").unwrap().defaults.steps, Some(7));
    }

    #[test]
    fn local_entries_resolve_against_their_directory_and_bad_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tiny.toml"),
            "name = \"tiny\"\npath = \"tiny-dir\"\n[defaults]\nsteps = 8\nsampler = \"euler\"\n",
        )
        .unwrap();
        let registry = Registry::load_dir(dir.path()).unwrap();
        let tiny = registry.get("tiny").unwrap();
        assert_eq!(tiny.source, EntrySource::Local(dir.path().join("tiny-dir")));
        assert_eq!(tiny.defaults.sampler, Some(SamplerKind::Euler));
        assert!(!tiny.is_available());

        std::fs::write(
            dir.path().join("bad.toml"),
            "name = \"x\"\nhub_id = \"a/b\"\npath = \"c\"\n",
        )
        .unwrap();
        let err = Registry::load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("bad.toml") && err.contains("exactly one"),
            "{err}"
        );

        std::fs::write(
            dir.path().join("bad.toml"),
            "name = \"x\"\nhub_id = \"a/b\"\nstepz = 3\n",
        )
        .unwrap();
        let err = Registry::load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("stepz"), "{err}");
    }
}
