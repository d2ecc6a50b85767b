//! Model resolution: `--model` is a registry name, a local directory or a Hugging Face hub id,
//! all in the diffusers layout:
//!
//! ```text
//! model_index.json
//! transformer/   config.json, diffusion_pytorch_model.safetensors (or *.safetensors.index.json + shards)
//! vae/           config.json, diffusion_pytorch_model.safetensors
//! text_encoder/  config.json, model.safetensors (or model.safetensors.index.json + shards)
//! tokenizer/     tokenizer.json
//! scheduler/     scheduler_config.json
//! ```
//!
//! Hub files go through hf-hub's cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`). Offline mode (`--offline` or `HF_HUB_OFFLINE=1`) reads the cache
//! only and never opens a connection. Every failed lookup says every place vdit looked.

use std::cell::OnceCell;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Result, VditError};
use crate::registry::{EntrySource, Registry};

/// Weight file names of one component, in order of preference: a shard index wins.
const WEIGHT_CANDIDATES: &[&str] = &[
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.safetensors",
    "model.safetensors.index.json",
    "model.safetensors",
];

/// How vdit talks to the hub.
#[derive(Debug, Clone, PartialEq)]
pub struct HubOptions {
    /// Never touch the network; resolve hub files from the cache only.
    pub offline: bool,
    /// hf-hub cache directory (the one holding `models--owner--name/`).
    pub cache_dir: PathBuf,
}

impl HubOptions {
    /// Options from the environment, with `offline` forced on by the flag.
    /// Honours `HF_HUB_OFFLINE`, `HF_HUB_CACHE` and `HF_HOME` like the Python hub client.
    pub fn from_env(offline_flag: bool) -> Self {
        let env_offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
            .unwrap_or(false);
        let cache_dir = match std::env::var_os("HF_HUB_CACHE") {
            Some(dir) => PathBuf::from(dir),
            None => Cache::from_env().path().clone(),
        };
        Self {
            offline: offline_flag || env_offline,
            cache_dir,
        }
    }
}

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelLocation {
    Local(PathBuf),
    Hub { repo_id: String, revision: String },
}

impl std::fmt::Display for ModelLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelLocation::Local(dir) => write!(f, "{}", dir.display()),
            ModelLocation::Hub { repo_id, revision } if revision == "main" => {
                write!(f, "hub:{repo_id}")
            }
            ModelLocation::Hub { repo_id, revision } => write!(f, "hub:{repo_id}@{revision}"),
        }
    }
}

/// Whether `spec` has the shape of a hub id: `owner/name`, optionally `@revision`.
fn parse_hub_id(spec: &str) -> Option<(String, String)> {
    let (id, revision) = match spec.split_once('@') {
        Some((id, rev)) if !rev.is_empty() => (id, rev),
        Some(_) => return None,
        None => (spec, "main"),
    };
    let (owner, name) = id.split_once('/')?;
    let valid = |s: &str| {
        !s.is_empty()
            && !s.starts_with(['.', '-'])
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (valid(owner) && valid(name)).then(|| (id.to_string(), revision.to_string()))
}

impl ModelLocation {
    /// Interprets `--model`: a registry name first, then an existing directory, then a hub id.
    pub fn parse(spec: &str, registry: &Registry) -> Result<Self> {
        if let Some(entry) = registry.get(spec) {
            return Ok(match &entry.source {
                EntrySource::Hub { repo_id, revision } => ModelLocation::Hub {
                    repo_id: repo_id.clone(),
                    revision: revision.clone().unwrap_or_else(|| "main".into()),
                },
                EntrySource::Local(dir) => ModelLocation::Local(dir.clone()),
            });
        }
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(ModelLocation::Local(path.to_path_buf()));
        }
        if path.exists() {
            return Err(VditError::Resolve(format!(
                "--model {spec}: is a file, not a model directory; pass a single weight file with \
                 --dit, --vae or --text-encoder instead"
            )));
        }
        let looks_like_path = spec.starts_with(['.', '/', '~']) || spec.contains('\\');
        if !looks_like_path {
            if let Some((repo_id, revision)) = parse_hub_id(spec) {
                return Ok(ModelLocation::Hub { repo_id, revision });
            }
        }
        Err(VditError::Resolve(format!(
            "--model {spec}: not a registry name (known: {}), not an existing directory, and not a hub id \
             of the form owner/name",
            registry.names().join(", ")
        )))
    }
}

/// Resolves the files of one model, local or on the hub.
pub struct ModelFiles {
    location: ModelLocation,
    hub: HubOptions,
    /// Lazily built hub client (never built offline).
    api: OnceCell<Api>,
    /// The hub repo's file list, fetched once when online.
    remote_files: OnceCell<Vec<String>>,
}

impl std::fmt::Debug for ModelFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelFiles")
            .field("location", &self.location)
            .field("hub", &self.hub)
            .finish()
    }
}

impl ModelFiles {
    pub fn new(location: ModelLocation, hub: HubOptions) -> Self {
        Self {
            location,
            hub,
            api: OnceCell::new(),
            remote_files: OnceCell::new(),
        }
    }

    pub fn location(&self) -> &ModelLocation {
        &self.location
    }

    /// The folder of `component` (e.g. `transformer`) where it can be read without the network:
    /// in a local model, or in the hub cache's snapshot once its `config.json` is cached; `None`
    /// for a hub model not downloaded yet. For estimates made before any download.
    pub fn cached_component_dir(&self, component: &str) -> Option<PathBuf> {
        match &self.location {
            ModelLocation::Local(dir) => Some(dir.join(component)),
            ModelLocation::Hub { repo_id, revision } => self
                .cache_repo(repo_id, revision)
                .get(&format!("{component}/config.json"))
                .and_then(|config| config.parent().map(Path::to_path_buf)),
        }
    }

    fn cache_repo(&self, repo_id: &str, revision: &str) -> hf_hub::CacheRepo {
        Cache::new(self.hub.cache_dir.clone()).repo(Repo::with_revision(
            repo_id.to_string(),
            RepoType::Model,
            revision.to_string(),
        ))
    }

    /// Where the cache keeps `repo_id`, for messages.
    fn cache_location(&self, repo_id: &str, revision: &str, file: &str) -> String {
        let folder = format!("models--{}", repo_id.replace('/', "--"));
        format!(
            "{}/snapshots/<{revision}>/{file}",
            self.hub.cache_dir.join(folder).display()
        )
    }

    fn api_repo(&self, repo_id: &str, revision: &str) -> Result<ApiRepo> {
        if self.api.get().is_none() {
            let api = ApiBuilder::from_cache(Cache::new(self.hub.cache_dir.clone()))
                .with_endpoint(
                    std::env::var("HF_ENDPOINT")
                        .unwrap_or_else(|_| "https://huggingface.co".into()),
                )
                .with_token(
                    std::env::var("HF_TOKEN")
                        .ok()
                        .or_else(|| Cache::from_env().token()),
                )
                .build()
                .map_err(|e| VditError::Resolve(format!("cannot start the hub client: {e}")))?;
            let _ = self.api.set(api);
        }
        let api = self.api.get().expect("set above");
        Ok(api.repo(Repo::with_revision(
            repo_id.to_string(),
            RepoType::Model,
            revision.to_string(),
        )))
    }

    /// The hub repo's file list (one request, remembered).
    fn remote_files(&self, repo_id: &str, revision: &str) -> Result<&Vec<String>> {
        if self.remote_files.get().is_none() {
            let info = self.api_repo(repo_id, revision)?.info().map_err(|e| {
                VditError::Resolve(format!(
                    "cannot list hub repo {repo_id}@{revision}: {e} (for a cached model, add --offline)"
                ))
            })?;
            let names = info.siblings.into_iter().map(|s| s.rfilename).collect();
            let _ = self.remote_files.set(names);
        }
        Ok(self.remote_files.get().expect("set above"))
    }

    /// Finds `relative` (e.g. `vae/config.json`); `Ok(None)` when absent, with the places tried
    /// appended to `looked`.
    fn find(&self, relative: &str, looked: &mut Vec<String>) -> Result<Option<PathBuf>> {
        match &self.location {
            ModelLocation::Local(dir) => {
                let path = dir.join(relative);
                looked.push(path.display().to_string());
                Ok(path.is_file().then_some(path))
            }
            ModelLocation::Hub { repo_id, revision } => {
                if let Some(path) = self.cache_repo(repo_id, revision).get(relative) {
                    return Ok(Some(path));
                }
                looked.push(format!(
                    "hf cache {}",
                    self.cache_location(repo_id, revision, relative)
                ));
                if self.hub.offline {
                    return Ok(None);
                }
                looked.push(format!("hub {repo_id}@{revision}:{relative}"));
                if !self
                    .remote_files(repo_id, revision)?
                    .iter()
                    .any(|f| f == relative)
                {
                    return Ok(None);
                }
                let path = self
                    .api_repo(repo_id, revision)?
                    .get(relative)
                    .map_err(|e| {
                        VditError::Resolve(format!(
                            "downloading {relative} from {repo_id}@{revision}: {e}"
                        ))
                    })?;
                Ok(Some(path))
            }
        }
    }

    fn missing(&self, what: &str, looked: &[String]) -> VditError {
        let offline = match (&self.location, self.hub.offline) {
            (ModelLocation::Hub { .. }, true) => {
                " (offline: only the cache was searched; run once without --offline to download)"
            }
            _ => "",
        };
        VditError::Resolve(format!(
            "{what} of model {} not found{offline}; looked in:\n  {}",
            self.location,
            looked.join("\n  ")
        ))
    }

    /// A file that must exist, e.g. `transformer/config.json`.
    pub fn file(&self, relative: &str) -> Result<PathBuf> {
        let mut looked = Vec::new();
        self.find(relative, &mut looked)?
            .ok_or_else(|| self.missing(relative, &looked))
    }

    /// A file that may be absent, e.g. `scheduler/scheduler_config.json`.
    pub fn optional_file(&self, relative: &str) -> Result<Option<PathBuf>> {
        self.find(relative, &mut Vec::new())
    }

    /// The weights of `component` (`transformer`, `vae`, `text_encoder`): the path to hand to
    /// `WeightFiles::open` — a shard index (every shard fetched next to it) or one file.
    pub fn weights(&self, component: &str) -> Result<PathBuf> {
        let mut looked = Vec::new();
        for candidate in WEIGHT_CANDIDATES {
            let relative = format!("{component}/{candidate}");
            let Some(path) = self.find(&relative, &mut looked)? else {
                continue;
            };
            if candidate.ends_with(".index.json") {
                for shard in shard_names(&path)? {
                    self.file(&format!("{component}/{shard}"))?;
                }
            }
            return Ok(path);
        }
        Err(self.missing(&format!("{component} weights"), &looked))
    }
}

/// The shard files a `*.safetensors.index.json` names (its `weight_map` values), sorted, unique.
pub fn shard_names(index: &Path) -> Result<Vec<String>> {
    let bad = |reason: String| {
        VditError::Resolve(format!("bad shard index {}: {reason}", index.display()))
    };
    let text = std::fs::read_to_string(index).map_err(|source| VditError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return Err(bad("`weight_map` names no files".into()));
    }
    Ok(names)
}

/// A per-file override (`--dit`, `--vae`, `--text-encoder`): a weight file, a shard index, or a
/// directory holding either. Checked to exist so the error comes before any model loads.
pub fn check_override(flag: &str, path: &Path) -> Result<()> {
    if path.exists() {
        Ok(())
    } else {
        Err(VditError::Resolve(format!(
            "{flag} {}: no such file or directory",
            path.display()
        )))
    }
}

/// The weights and (optional) config of one component after overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentFiles {
    /// What to open with `WeightFiles::open`.
    pub weights: PathBuf,
    /// Its `config.json`, if one was found.
    pub config: Option<PathBuf>,
}

impl ModelFiles {
    /// Weights and config of `component`, honouring an override path: an override directory
    /// brings its own `config.json` if it has one, else the model's config is used.
    pub fn component(
        &self,
        component: &str,
        override_path: Option<&Path>,
    ) -> Result<ComponentFiles> {
        let model_config = |files: &Self| files.optional_file(&format!("{component}/config.json"));
        match override_path {
            Some(path) => {
                let own_config = if path.is_dir() {
                    Some(path.join("config.json"))
                } else {
                    path.parent().map(|dir| dir.join("config.json"))
                }
                .filter(|c| c.is_file());
                let config = match own_config {
                    Some(c) => Some(c),
                    None => model_config(self)?,
                };
                Ok(ComponentFiles {
                    weights: path.to_path_buf(),
                    config,
                })
            }
            None => Ok(ComponentFiles {
                weights: self.weights(component)?,
                config: Some(self.file(&format!("{component}/config.json"))?),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_recognised() {
        assert_eq!(
            parse_hub_id("Wan-AI/Wan2.1-T2V-1.3B-Diffusers"),
            Some(("Wan-AI/Wan2.1-T2V-1.3B-Diffusers".into(), "main".into()))
        );
        assert_eq!(
            parse_hub_id("a/b@refs/pr/2"),
            Some(("a/b".into(), "refs/pr/2".into()))
        );
        assert_eq!(parse_hub_id("a/b@v1"), Some(("a/b".into(), "v1".into())));
        assert_eq!(parse_hub_id("no-slash"), None);
        assert_eq!(parse_hub_id("a/b/c"), None);
        assert_eq!(parse_hub_id("/b"), None);
        assert_eq!(parse_hub_id("a/b@"), None);
    }

    /// A fake hf-hub cache holding `owner/name` at revision main.
    fn fake_cache(files: &[(&str, &str)]) -> tempfile::TempDir {
        let cache = tempfile::tempdir().unwrap();
        let repo = cache.path().join("models--owner--name");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
        for (name, text) in files {
            let path = repo.join("snapshots/0123abcd").join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        cache
    }

    fn offline_files(cache: &Path) -> ModelFiles {
        let location = ModelLocation::Hub {
            repo_id: "owner/name".into(),
            revision: "main".into(),
        };
        ModelFiles::new(
            location,
            HubOptions {
                offline: true,
                cache_dir: cache.to_path_buf(),
            },
        )
    }

    #[test]
    fn a_cached_component_folder_is_found_without_the_network() {
        let cache = fake_cache(&[
            ("transformer/config.json", "{}"),
            ("transformer/diffusion_pytorch_model.safetensors", "0123"),
        ]);
        let files = offline_files(cache.path());
        let dir = files.cached_component_dir("transformer").unwrap();
        assert!(dir.join("diffusion_pytorch_model.safetensors").is_file());
        assert_eq!(files.cached_component_dir("vae"), None);
        let local = ModelFiles::new(
            ModelLocation::Local(PathBuf::from("/models/m")),
            HubOptions {
                offline: true,
                cache_dir: cache.path().to_path_buf(),
            },
        );
        assert_eq!(
            local.cached_component_dir("vae"),
            Some(PathBuf::from("/models/m/vae"))
        );
    }

    #[test]
    fn offline_resolution_reads_the_cache_including_shards() {
        let index = r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
        let cache = fake_cache(&[
            ("text_encoder/config.json", "{}"),
            ("text_encoder/model.safetensors.index.json", index),
            ("text_encoder/model-00001-of-00002.safetensors", ""),
            ("text_encoder/model-00002-of-00002.safetensors", ""),
            ("vae/config.json", "{}"),
            ("vae/diffusion_pytorch_model.safetensors", ""),
        ]);
        let files = offline_files(cache.path());
        let te = files.component("text_encoder", None).unwrap();
        assert!(te
            .weights
            .ends_with("text_encoder/model.safetensors.index.json"));
        assert!(te.config.unwrap().ends_with("text_encoder/config.json"));
        let vae = files.weights("vae").unwrap();
        assert!(vae.ends_with("vae/diffusion_pytorch_model.safetensors"));
        assert_eq!(
            files
                .optional_file("scheduler/scheduler_config.json")
                .unwrap(),
            None
        );
    }

    #[test]
    fn offline_missing_files_name_every_place_looked() {
        let index = r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
        let cache = fake_cache(&[
            ("text_encoder/model.safetensors.index.json", index),
            ("text_encoder/model-00001-of-00002.safetensors", ""),
        ]);
        let files = offline_files(cache.path());
        let err = files.weights("transformer").unwrap_err().to_string();
        assert!(err.contains("offline"), "{err}");
        for candidate in WEIGHT_CANDIDATES {
            assert!(err.contains(&format!("transformer/{candidate}")), "{err}");
        }
        assert!(err.contains(&cache.path().display().to_string()), "{err}");
        // A shard named by the index but absent from the cache.
        let err = files.weights("text_encoder").unwrap_err().to_string();
        assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
    }

    #[test]
    fn local_directories_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("vae")).unwrap();
        std::fs::write(dir.path().join("vae/config.json"), "{}").unwrap();
        let files = ModelFiles::new(
            ModelLocation::Local(dir.path().to_path_buf()),
            HubOptions {
                offline: true,
                cache_dir: dir.path().join("no-cache"),
            },
        );
        let err = files.component("vae", None).unwrap_err().to_string();
        assert!(
            err.contains(
                &dir.path()
                    .join("vae/diffusion_pytorch_model.safetensors")
                    .display()
                    .to_string()
            ),
            "{err}"
        );
        // An override file without its own config falls back to the model's config.
        let weights = dir.path().join("elsewhere.safetensors");
        let vae = files.component("vae", Some(&weights)).unwrap();
        assert_eq!(vae.weights, weights);
        assert_eq!(vae.config, Some(dir.path().join("vae/config.json")));
    }

    #[test]
    fn model_specs_parse_in_order_registry_directory_hub() {
        let registry = Registry::embedded();
        assert_eq!(
            ModelLocation::parse("wan2.1-t2v-14b", &registry).unwrap(),
            ModelLocation::Hub {
                repo_id: "Wan-AI/Wan2.1-T2V-14B-Diffusers".into(),
                revision: "main".into()
            }
        );
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().to_str().unwrap();
        assert_eq!(
            ModelLocation::parse(spec, &registry).unwrap(),
            ModelLocation::Local(dir.path().into())
        );
        assert!(matches!(
            ModelLocation::parse("someone/model", &registry).unwrap(),
            ModelLocation::Hub { .. }
        ));
        let err = ModelLocation::parse("./missing-dir", &registry)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("wan2.1-t2v-1.3b") && err.contains("not an existing directory"),
            "{err}"
        );
    }
}
