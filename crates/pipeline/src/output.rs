//! Files a run writes, each atomically (a temp file in the same directory, then a rename), so an
//! interrupted run never leaves half a file under the final name: JSON reports and sidecars,
//! markdown reports, latents; and the output directories of `vdit compare` and `vdit eval`.

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
    let mut tmp = tempfile::Builder::new()
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

/// Saves `latents` as tensor `latents` of a safetensors file (atomically).
pub fn save_latents(path: &Path, latents: &Tensor) -> Result<()> {
    write_atomic(path, ".safetensors", |tmp| {
        let tensors = std::collections::HashMap::from([(
            "latents".to_string(),
            latents.to_dtype(DType::F32)?,
        )]);
        candle_core::safetensors::save(&tensors, tmp.path())?;
        Ok(())
    })
}

/// Writes `text` to `path` atomically.
pub fn write_text_atomic(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    write_atomic(path, "", |tmp| {
        tmp.write_all(text.as_bytes())
            .map_err(|e| write_error(path, e))
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
