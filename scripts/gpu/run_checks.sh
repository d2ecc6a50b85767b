#!/usr/bin/env bash
# One GPU run that checks and times the switchable paths side by side: every staged CUDA test binary, the
# weight loader (fast path vs VDIT_FAST_LOAD=0), kernel modules from cubins vs PTX (VDIT_CUBIN=0, with the driver's
# JIT cache off so PTX pays its compile as on a fresh machine), the VAE's fused channel kernels
# (vs VDIT_VAE_FUSED_NORM=0), the transformer forward, and the full-size
# transformer parity against diffusers.
#
# Here: bash scripts/gpu/stage.sh, plus the load_speed example staged as .gpu/run/load_speed.xz
# Device: on the GPU machine, with .gpu/run, .whl next to the tree: bash scripts/gpu/run_checks.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
FINAL_OUT="$OUT"; OUT=/tmp/results; mkdir -p $OUT
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C /tmp/results . ; cp /tmp/results/summary.md "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh

t "CUDA tests"
for bin in cuda_dit cuda_kernels cuda_policy cuda_load dit22_parity; do
  [ -x /tmp/$bin ] || continue
  echo "-- $bin"
  timeout 240 /tmp/$bin --test-threads=1 2>&1 | grep -E "^test |test result|relative error|panicked" | tee $OUT/$bin.log
done

t "weight loading, 10 GB random bf16 file: fast path vs VDIT_FAST_LOAD=0 (to the GPU, in bf16 and cast to f32)"
timeout 120 /tmp/load_speed /tmp/r.safetensors --make-random 10 --device cuda --repeat 3 2>&1 | tail -4 | tee $OUT/load.log
VDIT_FAST_LOAD=0 timeout 120 /tmp/load_speed /tmp/r.safetensors --device cuda --repeat 2 2>&1 | tail -3 | tee -a $OUT/load.log
timeout 120 /tmp/load_speed /tmp/r.safetensors --device cuda --dtype f32 --repeat 2 2>&1 | tail -3 | tee -a $OUT/load.log
VDIT_FAST_LOAD=0 timeout 120 /tmp/load_speed /tmp/r.safetensors --device cuda --dtype f32 --repeat 1 2>&1 | tail -2 | tee -a $OUT/load.log
rm -f /tmp/r.safetensors

t "module loads: cubin vs PTX (CUDA_CACHE_DISABLE=1), one small forward each, whole process timed"
for cubin in 1 0; do
  start=$(date +%s%N)
  VDIT_CUBIN=$cubin VDIT_PROFILE=1 CUDA_CACHE_DISABLE=1 timeout 120 /tmp/vdit bench transformer --device cuda --layers 2 --warmup 0 --iters 1 2>&1 |
    grep -E "module|^\| transformer" | tee -a $OUT/modules.log
  echo "VDIT_CUBIN=$cubin whole process $(( ($(date +%s%N) - start) / 1000000 )) ms" | tee -a $OUT/modules.log
done

t "VAE decode 21x60x104 -> 81x480x832: fused kernels (default), VDIT_VAE_FUSED_NORM=0"
timeout 90 /tmp/vdit bench vae --device cuda --warmup 1 --iters 2 2>&1 | grep -E "^\| vae|rror" | tee $OUT/vae.log
VDIT_VAE_FUSED_NORM=0 timeout 90 /tmp/vdit bench vae --device cuda --warmup 1 --iters 2 2>&1 | grep -E "^\| vae|rror" | tee -a $OUT/vae.log
VDIT_PROFILE=1 timeout 90 /tmp/vdit bench vae --device cuda --warmup 1 --iters 1 2>&1 | grep "^|" | tee $OUT/profile_vae.md

t "transformer forward B2 480p x81: dense and RainFusion 0.8"
timeout 60 /tmp/vdit bench transformer --device cuda --warmup 1 --iters 2 2>&1 | grep "^| transformer" | tee $OUT/transformer.log
timeout 60 /tmp/vdit bench transformer --device cuda --attention rainfusion --warmup 1 --iters 2 2>&1 | grep "^| transformer" | tee -a $OUT/transformer.log

t "full-size transformer parity (diffusers random weights, bf16 file)"
timeout 120 python3 scripts/gpu/full_parity.py /tmp/wan_full 2>&1 | tail -1 &&
  VDIT_FULL_DIR=/tmp/wan_full timeout 90 /tmp/cuda_dit --ignored --nocapture full_size 2>&1 | grep -E "relative error|test result|panicked" | tee $OUT/full_parity.log

{
  echo "# checks"; for f in $OUT/*.log; do echo "## $(basename "$f")"; grep -E "test result|FAILED|panicked|GB/s|\| |whole process|module|relative" "$f"; done
} > $OUT/summary.md
