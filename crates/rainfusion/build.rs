//! Compiles the CUDA kernels in `kernels/` to PTX and to cubins, only when the `cuda` feature
//! is on.
//!
//! The default (CPU) build, and CI, never run nvcc. With `cuda`, nvcc is taken from `$NVCC`,
//! else `$CUDA_ROOT/bin/nvcc` (or `CUDA_PATH`, `CUDA_HOME`), else `nvcc` on the PATH. Two PTX
//! files per kernel source: `compute_80` (Ampere and anything newer, JIT-compiled by the driver)
//! and `compute_90`; the attention kernels also get `compute_90a` (Hopper's wgmma, which only
//! sm_90 itself runs). Beside them, machine code (cubin) for the chips we target, so those load
//! without the driver's JIT: `sm_80` for every source (it runs on every 8.x chip), `sm_90a` for
//! the attention kernels (their Hopper build is the wgmma one) and `sm_90` for the others.
//! `src/cuda/module.rs` picks one by the device's compute capability. The nvcc runs go in
//! parallel.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Kernel sources, the virtual architectures each is compiled to PTX for, and the real ones it
/// is compiled to a cubin for.
const KERNELS: &[(&str, &[&str], &[&str])] = &[
    ("attention", &["80", "90", "90a"], &["80", "90a"]),
    ("mask", &["80", "90"], &["80", "90"]),
    ("fused", &["80", "90"], &["80", "90"]),
];

/// What nvcc writes: a PTX file for `compute_<arch>` or a cubin for `sm_<arch>`.
#[derive(Clone, Copy)]
enum Output {
    Ptx,
    Cubin,
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_FEATURE_CUDA");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_ROOT");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = find_nvcc();
    let mut jobs = Vec::new();
    for (kernel, ptx_arches, cubin_arches) in KERNELS {
        let source = Path::new("kernels").join(format!("{kernel}.cu"));
        println!("cargo:rerun-if-changed={}", source.display());
        let outputs = ptx_arches
            .iter()
            .map(|arch| (Output::Ptx, arch))
            .chain(cubin_arches.iter().map(|arch| (Output::Cubin, arch)));
        jobs.extend(outputs.map(|(output, arch)| (source.clone(), *kernel, *arch, output)));
    }
    std::thread::scope(|scope| {
        for (source, kernel, arch, output) in &jobs {
            let (nvcc, out_dir) = (&nvcc, &out_dir);
            scope.spawn(move || compile(nvcc, source, out_dir, kernel, arch, *output));
        }
    });
}

fn compile(nvcc: &Path, source: &Path, out_dir: &Path, kernel: &str, arch: &str, output: Output) {
    let (flag, target, file) = match output {
        Output::Ptx => (
            "--ptx",
            format!("-arch=compute_{arch}"),
            format!("{kernel}_sm{arch}.ptx"),
        ),
        Output::Cubin => (
            "--cubin",
            format!("-arch=sm_{arch}"),
            format!("{kernel}_sm{arch}.cubin"),
        ),
    };
    let status = Command::new(nvcc)
        .args(["-O3", "-std=c++17", flag])
        .arg(&target)
        .arg("-o")
        .arg(out_dir.join(file))
        .arg(source)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "feature `cuda` needs nvcc to compile {}: could not run {}: {e} \
                 (set NVCC or CUDA_ROOT, or `source ../shared/tools/cuda-toolchain.sh`)",
                source.display(),
                nvcc.display()
            )
        });
    if !status.success() {
        panic!(
            "nvcc failed on {} for {target} ({status})",
            source.display()
        );
    }
}

fn find_nvcc() -> PathBuf {
    if let Some(nvcc) = env::var_os("NVCC") {
        return PathBuf::from(nvcc);
    }
    for var in ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"] {
        if let Some(root) = env::var_os(var) {
            let candidate = Path::new(&root).join("bin").join("nvcc");
            if candidate.exists() {
                return candidate;
            }
        }
    }
    PathBuf::from("nvcc")
}
