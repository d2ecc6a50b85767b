#!/usr/bin/env bash
# GPU benchmark and on-device checks of rainfusion's CUDA kernels, in two halves:
#
#   scripts/gpu/bench.sh prepare [DEST]   # here (no GPU needed): compile kernels, build the CUDA
#                                         # test binary and the vdit binary, stage all in DEST
#   bash DEST/bench.sh device [DEST]      # on the GPU machine: run everything, print one table
#
# DEST defaults to .gpu/cuda (git-ignored, carried to the device). With the device tool:
#   on the GPU machine, with .gpu/cuda next to the tree: bash .gpu/cuda/bench.sh device .gpu/cuda
# Tables and logs go to $OUT when set. See scripts/gpu/NOTES.md for results and method.
set -euo pipefail
mode="${1:-}"
dest="${2:-.gpu/cuda}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

case "$mode" in
prepare)
  repo="$(cd "$here/../.." && pwd)"
  target="${CARGO_TARGET_DIR_CUDA:-/work/target-cuda}"
  mkdir -p "$dest"
  # shellcheck disable=SC1091
  source "$repo/../shared/tools/cuda-toolchain.sh"
  kernels="$repo/crates/rainfusion/kernels"
  nvcc -O3 -std=c++17 -gencode=arch=compute_90,code=sm_90 -cubin -o "$dest/attention_sm90.cubin" "$kernels/attention.cu"
  nvcc -O3 -std=c++17 -arch=compute_80 -ptx -o "$dest/attention_sm80.ptx" "$kernels/attention.cu"
  nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -cubin -o "$dest/attention_sm90a.cubin" "$kernels/attention.cu"
  nvcc -O3 -std=c++17 -gencode=arch=compute_90,code=sm_90 -cubin -o "$dest/mask_sm90.cubin" "$kernels/mask.cu"
  cp "$here/attn_harness.py" "$here/bench.sh" "$dest/"
  if [ "${SKIP_RUST:-0}" != 1 ]; then
    # Test binary of the CUDA kernels (crates/rainfusion/tests/cuda_kernels.rs).
    # (-p vdit too, so the feature set matches the vdit build and its artifacts are reused)
    test_bin=$(cd "$repo" && nice -n 15 cargo test --release -p vdit -p rainfusion --features vdit/cuda --test cuda_kernels \
      --no-run --target-dir "$target" --message-format=json 2>/dev/null |
      python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda_kernels":
        print(m["executable"])')
    cp "$test_bin" "$dest/cuda_kernels_test" && strip "$dest/cuda_kernels_test"
  fi
  if [ "${WITH_VDIT:-0}" = 1 ]; then
    # The vdit binary, for `vdit bench` / `vdit generate --device cuda`. With the test binary
    # too it nears the 64 MiB a GPU run carries: stage one of them per run.
    (cd "$repo" && nice -n 15 cargo build --release -p vdit --features cuda --target-dir "$target")
    cp "$target/release/vdit" "$dest/vdit" && strip "$dest/vdit"
  fi
  du -sh "$dest"
  ;;
device)
  out="${OUT:-$dest/out}"
  mkdir -p "$out"
  export PYTHONUNBUFFERED=1
  export LD_LIBRARY_PATH="/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader | tee "$out/gpu.txt"
  status=0
  if [ -x "$dest/cuda_kernels_test" ]; then
    echo "== candle integration: cargo test --features cuda --test cuda_kernels (on the GPU)"
    "$dest/cuda_kernels_test" --test-threads=1 2>&1 | tee "$out/cuda_kernels_test.log" | grep -E "^test |test result" || status=1
    "$dest/cuda_kernels_test" --ignored --nocapture bench_full_size 2>&1 | tee "$out/candle_bench.log" | grep -E "^candle" || status=1
  fi
  echo "== kernels through CuPy vs torch (correctness, then timing)"
  python3 "$dest/attn_harness.py" --module "$dest/attention_sm90.cubin" --ptx80 "$dest/attention_sm80.ptx" \
    --wgmma "$dest/attention_sm90a.cubin" --mask-module "$dest/mask_sm90.cubin" \
    --variants "${VARIANTS:-d128_w4m2n64s2,d128_w4m1n64qs2,d64_w4m2n128s2,d64_w4m1n64qs2}" \
    --passes "${PASSES:-1}" --out "$out" 2>&1 | grep -v "> ok$" | tee "$out/attn_harness.log" || status=1
  if [ -x "$dest/vdit" ] && "$dest/vdit" bench --help >/dev/null 2>&1; then
    echo "== vdit bench (transformer / VAE, the vdit binary)"
    "$dest/vdit" bench --device cuda 2>&1 | tee "$out/vdit_bench.log" || status=1
  fi
  exit $status
  ;;
*)
  sed -n 2,12p "$0"
  exit 2
  ;;
esac
