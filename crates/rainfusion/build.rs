//! Compiles the CUDA kernels in `kernels/` to PTX, only when the `cuda` feature is on.
//!
//! The default (CPU) build, and CI, never run nvcc. With `cuda`, nvcc is taken from `$NVCC`,
//! else `$CUDA_ROOT/bin/nvcc` (or `CUDA_PATH`, `CUDA_HOME`), else `nvcc` on the PATH. Two PTX
//! files per kernel source: `compute_80` (Ampere and anything newer, JIT-compiled by the driver)
//! and `compute_90`; the attention kernels also get `compute_90a` (Hopper's wgmma, which only
//! sm_90 itself runs). `src/cuda` picks one by the device's compute capability.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Kernel sources and the virtual architectures each is compiled for.
const KERNELS: &[(&str, &[&str])] = &[
    ("attention", &["80", "90", "90a"]),
    ("mask", &["80", "90"]),
    ("fused", &["80", "90"]),
];

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
    for (kernel, arches) in KERNELS {
        let source = Path::new("kernels").join(format!("{kernel}.cu"));
        println!("cargo:rerun-if-changed={}", source.display());
        for arch in arches.iter() {
            let ptx = out_dir.join(format!("{kernel}_sm{arch}.ptx"));
            let status = Command::new(&nvcc)
                .args(["-O3", "-std=c++17", "--ptx", "-DRF_ATTENTION_LIBRARY_ONLY"])
                .arg(format!("-arch=compute_{arch}"))
                .arg("-o")
                .arg(&ptx)
                .arg(&source)
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
                    "nvcc failed on {} for compute_{arch} ({status})",
                    source.display()
                );
            }
        }
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
