//! Stage timings inside a forward pass, for finding where GPU time goes (`VDIT_PROFILE=1`).
//!
//! When the variable is set, [`span`] synchronises the device before and after the work it
//! wraps and adds the wall time to a process-wide table under the span's name; [`report`]
//! prints that table. Synchronising serialises the GPU queue, so profiled runs are slower in
//! total: use them for the split between stages, and the plain benchmark for absolute times.
//! Unset, [`span`] only runs the closure.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use candle_core::Device;

use crate::error::Result;

/// The environment variable that turns profiling on.
pub const PROFILE_ENV: &str = "VDIT_PROFILE";

#[derive(Debug, Default, Clone, Copy)]
struct Entry {
    calls: u64,
    seconds: f64,
}

fn table() -> &'static Mutex<BTreeMap<&'static str, Entry>> {
    static TABLE: OnceLock<Mutex<BTreeMap<&'static str, Entry>>> = OnceLock::new();
    TABLE.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// Whether [`PROFILE_ENV`] is set (read once).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os(PROFILE_ENV).is_some_and(|v| !v.is_empty() && v != "0"))
}

/// Runs `work`, timing it under `name` when profiling is on.
pub fn span<T>(name: &'static str, device: &Device, work: impl FnOnce() -> Result<T>) -> Result<T> {
    if !enabled() {
        return work();
    }
    device.synchronize()?;
    let start = Instant::now();
    let out = work()?;
    device.synchronize()?;
    let seconds = start.elapsed().as_secs_f64();
    let mut table = table().lock().unwrap_or_else(|e| e.into_inner());
    let entry = table.entry(name).or_default();
    entry.calls += 1;
    entry.seconds += seconds;
    Ok(out)
}

/// Clears the table (e.g. after warm-up iterations).
pub fn reset() {
    table().lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// The table as markdown, largest stage first; `None` when nothing was recorded.
pub fn report() -> Option<String> {
    let table = table().lock().unwrap_or_else(|e| e.into_inner());
    if table.is_empty() {
        return None;
    }
    let total: f64 = table.values().map(|e| e.seconds).sum();
    let mut rows: Vec<_> = table.iter().collect();
    rows.sort_by(|a, b| b.1.seconds.total_cmp(&a.1.seconds));
    let mut out =
        String::from("| stage | calls | total ms | ms per call | share |\n|---|---|---|---|---|\n");
    for (name, e) in rows {
        out.push_str(&format!(
            "| {name} | {} | {:.1} | {:.3} | {:.1} % |\n",
            e.calls,
            e.seconds * 1e3,
            e.seconds * 1e3 / e.calls.max(1) as f64,
            100.0 * e.seconds / total.max(f64::MIN_POSITIVE)
        ));
    }
    Some(out)
}
