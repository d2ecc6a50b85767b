//! Which existing files a run may replace, and the temporary files it writes through.
//!
//! vdit never replaces a file it did not write, unless the user passes `--overwrite`. A file is
//! recognised as vdit's by a marker that travels with it or sits beside it:
//!
//! | file | recognised as vdit's when |
//! |---|---|
//! | video `out.mp4` / `out.gif` | its sidecar `out.mp4.json` is a vdit record whose `files` list names it |
//! | png frame `out_00007.png` | the frame carries vdit's `vdit-fps` text chunk |
//! | sidecar, `compare.json`, `eval.json`, bench `--json` | it is a JSON object with a `vdit_version` field |
//! | `compare.md`, `eval.md`, compare / eval videos | the directory's `compare.json` / `eval.json` lists it |
//! | latents (`--latents-out`) | its safetensors header metadata says `format: vdit-latents` |
//!
//! Temporary files and folders are created beside their target (one filesystem, so the final
//! rename is one step) and named `.vdit-tmp-<pid>-<target name>-<random>`: hidden, never
//! mistaken for output, and removed by a later run in the same directory once process `<pid>`
//! is gone (a run killed with `kill -9` cannot remove its own).

use std::io::Read;
use std::path::{Path, PathBuf};

/// The flag that allows replacing files vdit did not write.
pub const OVERWRITE_FLAG: &str = "--overwrite";

/// Name prefix of every temporary file or folder a run creates beside its outputs.
pub const TEMP_PREFIX: &str = ".vdit-tmp-";

/// The `format` value of the metadata vdit writes into a latents file.
pub const LATENTS_FORMAT: &str = "vdit-latents";

/// The sidecar JSON of an output: the output's file name plus `.json` (`clip.mp4` →
/// `clip.mp4.json`, the png sequence `frames.png` → `frames.png.json`), so it can never be
/// another file's name stem (`data.mp4` does not touch `data.json`).
pub fn sidecar_path(output: &Path) -> PathBuf {
    let mut name = output
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".json");
    output.with_file_name(name)
}

/// How a writer treats a file already at its target path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replace {
    /// Replace it only if the vdit record (a sidecar or a report) at this path lists it.
    IfListedIn(PathBuf),
    /// `--overwrite`: replace whatever is there.
    Always,
}

impl Replace {
    /// The policy of an output with its own sidecar: `IfListedIn(sidecar)`, or `Always` with
    /// `--overwrite`.
    pub fn for_output(output: &Path, overwrite: bool) -> Self {
        if overwrite {
            Self::Always
        } else {
            Self::IfListedIn(sidecar_path(output))
        }
    }

    /// Whether `path` may be written: nothing is there, or the policy allows replacing it.
    pub fn allows(&self, path: &Path) -> bool {
        match self {
            Self::Always => true,
            Self::IfListedIn(record) => !exists(path) || record_lists(record, path),
        }
    }

    /// Why `path` may not be replaced, as one line naming the file and the flag.
    pub fn refusal(&self, path: &Path) -> String {
        match self {
            Self::Always => format!("{}: cannot replace it", path.display()),
            Self::IfListedIn(record) => foreign_file(
                path,
                &format!("no vdit record {} lists it", record.display()),
            ),
        }
    }
}

/// The one-line refusal for a file vdit did not write: names the file, why it is taken as
/// foreign, and the flag that allows replacing it.
pub fn foreign_file(path: &Path, why: &str) -> String {
    format!(
        "{} already exists and vdit did not write it ({why}); pass {OVERWRITE_FLAG} to replace it",
        path.display()
    )
}

/// Whether something (a file, a folder, a dangling link) is at `path`.
pub fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

/// Records and reports are small; anything larger is not one of vdit's.
const MAX_RECORD_BYTES: u64 = 64 << 20;

/// `path` as a vdit JSON record (sidecar or report): a JSON object with a `vdit_version` string.
pub fn read_vdit_record(path: &Path) -> Option<serde_json::Value> {
    let file = std::fs::File::open(path).ok()?;
    if file.metadata().ok()?.len() > MAX_RECORD_BYTES {
        return None;
    }
    let mut text = String::new();
    file.take(MAX_RECORD_BYTES).read_to_string(&mut text).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value.get("vdit_version")?.as_str()?;
    Some(value)
}

/// Whether the vdit record at `record` lists `file` (by file name) in its `files`, or names it
/// as its `settings.output`. Records live beside what they list, so the name is enough.
pub fn record_lists(record: &Path, file: &Path) -> bool {
    let Some(value) = read_vdit_record(record) else {
        return false;
    };
    let Some(name) = file.file_name() else {
        return false;
    };
    let names_it = |entry: &serde_json::Value| {
        entry
            .as_str()
            .is_some_and(|s| Path::new(s).file_name() == Some(name))
    };
    value
        .get("files")
        .and_then(|f| f.as_array())
        .is_some_and(|files| files.iter().any(names_it))
        || value
            .get("settings")
            .and_then(|s| s.get("output"))
            .is_some_and(names_it)
}

/// Whether `path` is a latents file vdit wrote (its safetensors metadata says
/// [`LATENTS_FORMAT`]). Only the header is read.
pub fn is_vdit_latents(path: &Path) -> bool {
    safetensors_metadata(path)
        .and_then(|m| m.get("format").and_then(|f| f.as_str()).map(String::from))
        .is_some_and(|f| f == LATENTS_FORMAT)
}

/// The `__metadata__` object of a safetensors file's header, if it has one.
pub fn safetensors_metadata(path: &Path) -> Option<serde_json::Map<String, serde_json::Value>> {
    let header = read_safetensors_header(path).ok()?;
    header.get("__metadata__")?.as_object().cloned()
}

/// Largest safetensors header read (the format's own limit is 100 MB).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The JSON header of a safetensors file (the 8-byte length, then that many bytes of JSON),
/// without reading the tensors.
pub fn read_safetensors_header(
    path: &Path,
) -> std::result::Result<serde_json::Map<String, serde_json::Value>, String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| "shorter than a safetensors header".to_string())?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Err(format!("header of {len} bytes is not a safetensors header"));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(|_| format!("truncated: its header says {len} bytes"))?;
    let value: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| format!("header is not JSON ({e})"))?;
    match value {
        serde_json::Value::Object(map) => Ok(map),
        _ => Err("header is not a JSON object".into()),
    }
}

/// The prefix of a temporary file or folder for `target`: `.vdit-tmp-<pid>-<name>-`, the name cut
/// to 60 characters.
pub fn temp_prefix(target: &Path) -> String {
    let name: String = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .take(60)
        .collect();
    format!("{TEMP_PREFIX}{}-{name}-", std::process::id())
}

/// Removes the temporary files and folders that runs which no longer exist left in `dir` (killed
/// before they could clean up). Returns what was removed. Entries of running processes, and
/// entries not named by [`temp_prefix`], are left alone.
pub fn remove_stale_temps(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMP_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if process_alive(pid) {
            continue;
        }
        let path = entry.path();
        let gone = match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        if gone.is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// Whether process `pid` exists (on systems where this cannot be told, it is assumed to).
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return true;
        };
        // SAFETY: signal 0 sends nothing; it only asks whether the process exists.
        let status = unsafe { libc::kill(pid, 0) };
        status == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_names_keep_the_whole_output_name() {
        assert_eq!(
            sidecar_path(Path::new("dir/data.mp4")),
            Path::new("dir/data.mp4.json")
        );
        assert_eq!(sidecar_path(Path::new("x.png")), Path::new("x.png.json"));
        assert_ne!(
            sidecar_path(Path::new("x.png")),
            sidecar_path(Path::new("x.gif"))
        );
    }

    #[test]
    fn records_list_files_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("r.json");
        std::fs::write(
            &record,
            r#"{"vdit_version": "0", "files": ["sub/a.mp4", "b.md"]}"#,
        )
        .unwrap();
        assert!(record_lists(&record, &dir.path().join("a.mp4")));
        assert!(record_lists(&record, &dir.path().join("b.md")));
        assert!(!record_lists(&record, &dir.path().join("c.mp4")));
        // Not vdit's: no vdit_version.
        std::fs::write(&record, r#"{"files": ["a.mp4"]}"#).unwrap();
        assert!(!record_lists(&record, &dir.path().join("a.mp4")));
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        // A pid above the kernel's limit (4194304) exists nowhere.
        let dead = dir.path().join(format!("{TEMP_PREFIX}99999999-x.png-abc"));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("x_00000.png"), b"partial").unwrap();
        let live = dir
            .path()
            .join(format!("{}abc", temp_prefix(Path::new("y.mp4"))));
        std::fs::write(&live, b"being written").unwrap();
        let other = dir.path().join(".vdit-tmp-notapid");
        std::fs::write(&other, b"?").unwrap();
        assert_eq!(remove_stale_temps(dir.path()), vec![dead.clone()]);
        assert!(!dead.exists() && live.exists() && other.exists());
    }
}
