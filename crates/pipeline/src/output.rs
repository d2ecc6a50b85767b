//! Files a run writes, each atomically (a temp file in the same directory, then a rename), so an
//! interrupted run never leaves half a file under the final name: JSON reports and sidecars,
//! markdown reports, latents; and the output directories of `vdit compare` and `vdit eval`.
//! Whether an existing file may be replaced is decided before the run ([`crate::ownership`]).

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::error::{Result, VditError};

/// The optional backends this build was compiled with (`cuda`, `cudnn`, `metal`), in that order;
/// empty for a CPU-only build. `vdit --version` prints them and the sidecar records them, so a
/// timing or an error can be matched to the build that produced it.
pub fn build_features() -> &'static [&'static str] {
    const FEATURES: &[(&str, bool)] = &[
        ("cuda", cfg!(feature = "cuda")),
        ("cudnn", cfg!(feature = "cudnn")),
        ("metal", cfg!(feature = "metal")),
    ];
    static ENABLED: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    ENABLED.get_or_init(|| {
        FEATURES
            .iter()
            .filter(|(_, on)| *on)
            .map(|(name, _)| *name)
            .collect()
    })
}

/// Writes `path` atomically: `fill` writes a temp file (named with `suffix`) in the same
/// directory, which is then renamed over `path` and given the usual 0644 (temp files are created
/// private). Every writer of this module goes through here.
fn write_atomic(
    path: &Path,
    suffix: &str,
    fill: impl FnOnce(&mut tempfile::NamedTempFile) -> Result<()>,
) -> Result<()> {
    let io = |source| write_error(path, source);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    crate::ownership::remove_stale_temps(&dir);
    let mut tmp = tempfile::Builder::new()
        .prefix(&crate::ownership::temp_prefix(path))
        .suffix(suffix)
        .tempfile_in(&dir)
        .map_err(io)?;
    fill(&mut tmp)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).map_err(io)?;
    }
    Ok(())
}

fn write_error(path: &Path, source: std::io::Error) -> VditError {
    VditError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `value` as pretty JSON to `path` atomically.
pub fn write_json_atomic(path: &Path, value: &impl Serialize) -> Result<()> {
    write_atomic(path, "", |tmp| {
        serde_json::to_writer_pretty(tmp, value)
            .map_err(|e| write_error(path, std::io::Error::other(e)))
    })
}

/// Saves `latents` (f32) as tensor `latents` of a safetensors file (atomically). The header's
/// metadata marks the file as vdit's (`format: vdit-latents`, `vdit_version`) and carries
/// `info` (the run's size, frames, model, seed), so a later run may replace it and
/// `--latents-in` can say what it was made for.
pub fn save_latents(path: &Path, latents: &Tensor, info: &[(&str, String)]) -> Result<()> {
    let mut metadata = std::collections::HashMap::from([
        (
            "format".to_string(),
            crate::ownership::LATENTS_FORMAT.to_string(),
        ),
        (
            "vdit_version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ]);
    metadata.extend(info.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let latents = latents.to_dtype(DType::F32)?;
    write_atomic(path, ".safetensors", |tmp| {
        safetensors::serialize_to_file([("latents", &latents)], Some(metadata), tmp.path())
            .map_err(|e| write_error(path, std::io::Error::other(e)))
    })
}

/// Loads tensor `latents` of a file [`save_latents`] wrote (or any safetensors file with that
/// tensor), as f32 on `device`. `flag` names the setting in errors.
pub fn load_latents(flag: &str, path: &Path, device: &candle_core::Device) -> Result<Tensor> {
    let bad =
        |reason: String| VditError::InvalidSetting(format!("{flag} {}: {reason}", path.display()));
    let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .map_err(|e| bad(e.to_string()))?;
    let latents = tensors.get("latents").ok_or_else(|| {
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        bad(format!("no tensor named `latents` (it has: {names:?})"))
    })?;
    Ok(latents.to_dtype(DType::F32)?.to_device(device)?)
}

/// Writes `text` to `path` atomically.
pub fn write_text_atomic(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    write_atomic(path, "", |tmp| {
        tmp.write_all(text.as_bytes())
            .map_err(|e| write_error(path, e))
    })
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    write_atomic(path, "", |tmp| {
        tmp.write_all(bytes).map_err(|e| write_error(path, e))
    })
}

/// Creates `dir` (and its parents) unless it exists; a clear error if it is a file.
pub fn create_output_dir(flag: &str, dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(VditError::InvalidSetting(format!(
            "{flag} {}: exists and is not a directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        VditError::InvalidSetting(format!(
            "{flag} {}: cannot create the directory ({e})",
            dir.display()
        ))
    })
}

/// Checks, before any work, the files a report-writing command (`vdit compare`, `vdit eval`,
/// `vdit bench --json`) will write: its JSON `record` may be replaced only if it is a vdit record,
/// and each of `files` only if that record lists it, unless `overwrite`. Every problem, one line
/// each, naming the file and `--overwrite`.
pub fn check_report_outputs(record: &Path, files: &[PathBuf], overwrite: bool) -> Result<()> {
    use crate::ownership::{exists, foreign_file, read_vdit_record, record_lists};
    if overwrite {
        return Ok(());
    }
    let mut problems = Vec::new();
    if exists(record) && read_vdit_record(record).is_none() {
        problems.push(foreign_file(
            record,
            "it is not a JSON report with a vdit_version field",
        ));
    }
    for file in files {
        if exists(file) && !record_lists(record, file) {
            problems.push(foreign_file(
                file,
                &format!("the vdit report {} does not list it", record.display()),
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(VditError::InvalidSetting(problems.join("\n")))
    }
}
