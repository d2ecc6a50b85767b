//! Stage timings inside a forward pass, for finding where GPU time goes (`VDIT_PROFILE=1`).
//!
//! When the variable is set, [`span`] synchronises the device before and after the work it
//! wraps and adds the wall time to a process-wide table under the span's name; [`report`]
//! prints that table. Synchronising serialises the GPU queue, so profiled runs are slower in
//! total: use them for the split between stages, and the plain benchmark for absolute times.
//! On CUDA each stage also records the device's used memory right after it (the queue drained,
//! so freed buffers are back): the live tensors at each stage boundary, which is where memory
//! kept alive too long shows. Unset, [`span`] only runs the closure.

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
    /// The largest device used memory seen right after the stage, bytes (CUDA; 0 elsewhere).
    max_used_after: u64,
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
    let used_after = device_used_bytes(device).unwrap_or(0);
    let mut table = table().lock().unwrap_or_else(|e| e.into_inner());
    let entry = table.entry(name).or_default();
    entry.calls += 1;
    entry.seconds += seconds;
    entry.max_used_after = entry.max_used_after.max(used_after);
    Ok(out)
}

/// The device's used memory (total − free), bytes: CUDA only (`None` elsewhere).
pub fn device_used_bytes(device: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Ok(cuda) = device.as_cuda_device() {
        let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
        return Some((total - free) as u64);
    }
    let _ = device;
    None
}

/// The peaks of the stream-ordered memory pool that candle's CUDA allocations come from
/// (`cuMemAllocAsync`), bytes: what PyTorch calls `max_memory_allocated` and
/// `max_memory_reserved`. The device's used memory (what [`DevicePeakSampler`] sees) is the
/// reserved figure plus the context, the libraries' own allocations and other processes; the
/// gap between allocated and reserved is memory the pool kept (freed, not yet handed back, or
/// fragmented).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolPeaks {
    /// The most bytes held by live allocations at once.
    pub allocated: u64,
    /// The most bytes the pool held from the device at once.
    pub reserved: u64,
}

/// The current device's memory pool (CUDA only).
#[cfg(feature = "cuda")]
fn memory_pool(
    device: &Device,
) -> Option<candle_core::cuda_backend::cudarc::driver::sys::CUmemoryPool> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let cuda = device.as_cuda_device().ok()?;
    let context = cuda.cuda_stream().context().clone();
    context.bind_to_thread().ok()?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: a valid device ordinal of a live context, and an out-pointer to write.
    let status = unsafe { sys::cuDeviceGetMemPool(&mut pool, context.cu_device()) };
    (status == sys::CUresult::CUDA_SUCCESS && !pool.is_null()).then_some(pool)
}

/// The pool's allocated and reserved peaks since the last [`reset_pool_peaks`]: CUDA only
/// (`None` elsewhere, or when the driver does not answer).
pub fn pool_peaks(device: &Device) -> Option<PoolPeaks> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::sys;
        let pool = memory_pool(device)?;
        let read = |attr: sys::CUmemPool_attribute| -> Option<u64> {
            let mut value: u64 = 0;
            // SAFETY: both attributes are cuuint64_t values written through the pointer.
            let status =
                unsafe { sys::cuMemPoolGetAttribute(pool, attr, &mut value as *mut u64 as *mut _) };
            (status == sys::CUresult::CUDA_SUCCESS).then_some(value)
        };
        Some(PoolPeaks {
            allocated: read(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?,
            reserved: read(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?,
        })
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        None
    }
}

/// Restarts the pool's peaks at their current values (the driver resets a high-water mark by
/// writing 0 to it); false where there is no pool or the driver refuses.
pub fn reset_pool_peaks(device: &Device) -> bool {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda_backend::cudarc::driver::sys;
        let Some(pool) = memory_pool(device) else {
            return false;
        };
        [
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
        ]
        .into_iter()
        .all(|attr| {
            let mut zero: u64 = 0;
            // SAFETY: the high-water marks take a cuuint64_t 0 to reset.
            let status =
                unsafe { sys::cuMemPoolSetAttribute(pool, attr, &mut zero as *mut u64 as *mut _) };
            status == sys::CUresult::CUDA_SUCCESS
        })
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        false
    }
}

/// Samples the device's used memory (total − free) on a side thread until stopped, keeping the
/// maximum: candle has no allocator statistics, and the driver's figure is what an out-of-memory
/// error would be about. Other processes on the same device count too.
pub struct DevicePeakSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Option<u64>>,
}

impl DevicePeakSampler {
    /// Starts sampling on CUDA devices every `interval`; `None` elsewhere.
    pub fn start(device: &Device, interval: std::time::Duration) -> Option<Self> {
        #[cfg(feature = "cuda")]
        if let Ok(cuda) = device.as_cuda_device() {
            use std::sync::atomic::{AtomicBool, Ordering};
            let context = cuda.cuda_stream().context().clone();
            let stop = std::sync::Arc::new(AtomicBool::new(false));
            let stopped = stop.clone();
            let thread = std::thread::spawn(move || {
                let mut peak = None;
                loop {
                    if let Ok((free, total)) = context.mem_get_info() {
                        peak = peak.max(Some((total - free) as u64));
                    }
                    if stopped.load(Ordering::Relaxed) {
                        return peak;
                    }
                    std::thread::sleep(interval);
                }
            });
            return Some(Self { stop, thread });
        }
        let _ = (device, interval);
        None
    }

    /// Stops sampling and returns the peak seen, if any sample succeeded.
    pub fn stop(self) -> Option<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().ok().flatten()
    }
}

/// The process's peak resident set (VmHWM), where the OS reports it (Linux).
pub fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Restarts the kernel's peak-resident-set count (VmHWM) at the current RSS (Linux: `5` to
/// /proc/self/clear_refs), so each run's peak is its own; a no-op where that is refused (false).
pub fn reset_peak_resident() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The device's (free, total) memory, bytes, as the driver reports it now: CUDA only (`None` on
/// the CPU and elsewhere). Free memory counts nothing candle's allocator holds as free: call it
/// before loading, when the process holds nothing yet.
pub fn device_free_bytes(device: &Device) -> Option<(u64, u64)> {
    #[cfg(feature = "cuda")]
    if let Ok(cuda) = device.as_cuda_device() {
        let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
        return Some((free as u64, total as u64));
    }
    let _ = device;
    None
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
    let memory = table.values().any(|e| e.max_used_after > 0);
    let mut out = String::from("| stage | calls | total ms | ms per call | share |");
    out.push_str(if memory {
        " device used after (max) |\n|---|---|---|---|---|---|\n"
    } else {
        "\n|---|---|---|---|---|\n"
    });
    for (name, e) in rows {
        out.push_str(&format!(
            "| {name} | {} | {:.1} | {:.3} | {:.1} % |",
            e.calls,
            e.seconds * 1e3,
            e.seconds * 1e3 / e.calls.max(1) as f64,
            100.0 * e.seconds / total.max(f64::MIN_POSITIVE)
        ));
        if memory {
            out.push_str(&format!(
                " {:.2} GiB |",
                e.max_used_after as f64 / (1u64 << 30) as f64
            ));
        }
        out.push('\n');
    }
    Some(out)
}
