//! candle's CUDA kernels compiled once per machine in helper processes, all at once.
//!
//! candle ships its kernels as PTX, which the driver compiles to machine code the first time a
//! module is loaded on a machine and keeps in its JIT cache (`CUDA_CACHE_PATH`). Inside one
//! process the driver compiles one module at a time (measured: threads of one process did not
//! overlap, `scripts/gpu/NOTES.md`, v11), so a machine's first run waited about 13 s before its
//! first step. Here, when the first module load shows that the cache is cold, one helper
//! process per candle module loads that module (each with a CUDA context of its own, so the
//! driver compiles them side by side) and the run waits for them; candle's own loads then hit
//! the filled cache.
//!
//! The helper is the running binary itself, started with [`HELPER_ENV`] naming the module; a
//! binary that wants helpers calls [`serve_helper_or_enable`] first thing in `main`. Without
//! that call (tests, other programs) no process is ever started. `VDIT_WARM_KERNELS=0` turns
//! the helpers off.

/// Environment variable of a helper process: the candle module it compiles, then it exits.
pub const HELPER_ENV: &str = "VDIT_KERNEL_CACHE_MODULE";
/// Environment variable: `0` never starts helper processes.
pub const WARM_ENV: &str = "VDIT_WARM_KERNELS";

/// What [`warm_up`] did on a cold cache.
#[derive(Debug, Clone)]
pub struct WarmUp {
    /// Helper processes started, one per module.
    pub modules: usize,
    /// Wall time from the first helper's start to the last one's end.
    pub seconds: f64,
    /// Modules whose helper failed (candle compiles them itself when it needs them).
    pub failed: Vec<String>,
}

/// In a helper process (see [`HELPER_ENV`]): compiles the module and exits with status 0, or 1
/// on failure. Otherwise allows [`warm_up`] to start helpers from this binary and returns.
pub fn serve_helper_or_enable() {
    let Some(module) = std::env::var_os(HELPER_ENV) else {
        imp::enable();
        return;
    };
    let ok = imp::compile(&module.to_string_lossy());
    std::process::exit(if ok { 0 } else { 1 });
}

/// On a CUDA device whose driver JIT cache is cold, compiles candle's modules in helper
/// processes at once and waits for them; `None` when nothing was started (another device, the
/// cache warm, helpers not enabled or turned off).
pub fn warm_up(device: &candle_core::Device) -> Option<WarmUp> {
    if std::env::var(WARM_ENV).is_ok_and(|v| v.trim() == "0")
        || std::env::var("CUDA_CACHE_DISABLE").is_ok_and(|v| v.trim() == "1")
    {
        return None;
    }
    imp::warm_up(device)
}

#[cfg(not(feature = "cuda"))]
mod imp {
    pub(super) fn enable() {}

    pub(super) fn compile(_module: &str) -> bool {
        false
    }

    pub(super) fn warm_up(_device: &candle_core::Device) -> Option<super::WarmUp> {
        None
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use candle_core::cuda_backend::cudarc::driver::CudaContext;
    use candle_core::Device;
    use candle_kernels::Module;

    use super::{WarmUp, HELPER_ENV};

    static ENABLED: AtomicBool = AtomicBool::new(false);

    /// A module load slower than this means the driver compiled it: a cold cache. A load from
    /// the cache takes about a millisecond; compiling candle's smallest module (fill, 45 KB of
    /// PTX), tens of milliseconds.
    const COLD_LOAD: Duration = Duration::from_millis(25);
    /// A helper still running after this is killed (candle then compiles its module itself).
    const HELPER_LIMIT: Duration = Duration::from_secs(180);

    /// candle's modules a dense or RainFusion run loads, by name. Left out: `fill` (the probe
    /// loads it in this process) and `quantized` (5.8 MB of PTX, for GGUF weights only).
    const MODULES: [(&str, Module); 9] = [
        ("affine", candle_kernels::AFFINE),
        ("binary", candle_kernels::BINARY),
        ("cast", candle_kernels::CAST),
        ("conv", candle_kernels::CONV),
        ("indexing", candle_kernels::INDEXING),
        ("reduce", candle_kernels::REDUCE),
        ("sort", candle_kernels::SORT),
        ("ternary", candle_kernels::TERNARY),
        ("unary", candle_kernels::UNARY),
    ];

    pub(super) fn enable() {
        ENABLED.store(true, Ordering::Relaxed);
    }

    pub(super) fn compile(module: &str) -> bool {
        let Some((_, module)) = MODULES.iter().find(|(name, _)| *name == module) else {
            return false;
        };
        let Ok(context) = CudaContext::new(0) else {
            return false;
        };
        context.load_module(module.ptx().into()).is_ok()
    }

    pub(super) fn warm_up(device: &Device) -> Option<WarmUp> {
        let Device::Cuda(cuda) = device else {
            return None;
        };
        if !ENABLED.load(Ordering::Relaxed) {
            return None;
        }
        // The probe: candle loads its fill module (needed anyway) through the driver's cache.
        let start = Instant::now();
        cuda.get_or_load_func("const_set_u8", &candle_kernels::FILL)
            .ok()?;
        if start.elapsed() < COLD_LOAD {
            return None;
        }
        let exe = std::env::current_exe().ok()?;
        eprintln!(
            "first CUDA run on this machine: the driver compiles candle's kernels once, in {} \
             processes at once (later runs load them from its cache)",
            MODULES.len()
        );
        let start = Instant::now();
        let helpers: Vec<(&str, std::io::Result<Child>)> = MODULES
            .iter()
            .map(|(name, _)| {
                let child = Command::new(&exe)
                    .env(HELPER_ENV, name)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn();
                (*name, child)
            })
            .collect();
        let mut failed = Vec::new();
        for (name, child) in helpers {
            let ok = child.is_ok_and(|mut child| wait_within(&mut child, HELPER_LIMIT, start));
            if !ok {
                failed.push(name.to_string());
            }
        }
        Some(WarmUp {
            modules: MODULES.len(),
            seconds: start.elapsed().as_secs_f64(),
            failed,
        })
    }

    /// Waits for `child` until `limit` after `start`; kills it then. Whether it exited with 0.
    fn wait_within(child: &mut Child, limit: Duration, start: Instant) -> bool {
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if start.elapsed() < limit => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_helper_is_started_for_a_cpu() {
        assert!(super::warm_up(&candle_core::Device::Cpu).is_none());
    }
}
