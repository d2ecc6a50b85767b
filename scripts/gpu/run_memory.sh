#!/usr/bin/env bash
# Where vdit's device memory goes, against diffusers in the same GPU run (the 24 GB issue's first item): the
# Wan2.1-14B forward at 1280x720x81, batch 1, dense and RainFusion 0.8, and the Wan2.1 VAE decode at 720p x 81.
# Each side is measured the same way (the device's used memory sampled on a side thread, total - free, with the
# memory in use before the work beside it) and PyTorch also by its allocator (max_memory_allocated/reserved).
# A VDIT_PROFILE=1 pass of each prints the device memory in use after every stage (the live tensors at each
# stage boundary).
#
# Here: build vdit with `cargo build --release -p vdit --features vdit/cuda,vdit/cudnn --target-dir
# /work/target-cuda` and put it, stripped and xz-compressed, in .gpu/memory/vdit.xz; .whl holds the trimmed
# diffusers wheel. GPU run:
#     STAGED=.gpu/memory bash scripts/gpu/run_memory.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
FINAL_OUT="$OUT"; OUT=/tmp/results; mkdir -p $OUT
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C /tmp/results . ; cp /tmp/results/*.json "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
BUDGET=${BUDGET:-560}

step() {
  local log=$1 limit=$2; shift 2
  local left=$(( BUDGET - SECONDS ))
  if (( left < limit / 2 )); then
    echo "skipped (budget: ${SECONDS}s used of ${BUDGET}s): $*" | tee -a $OUT/skipped.log
    return 0
  fi
  (( limit > left )) && limit=$left
  timeout "$limit" "$@" > "$OUT/$log.log" 2>&1
  local rc=$?
  grep -E "^\||^diffusers|rror|Killed|panicked" "$OUT/$log.log" | tail -40
  (( rc != 0 )) && echo "exit status $rc (124: timed out): $*"
  return 0
}

big=(--preset t2v-14b --size 1280x720 --frames 81 --batch 1)
t "vdit: Wan2.1-14B forward, 1280x720x81, batch 1: dense, RainFusion 0.8"
step vdit_dense 110 /tmp/vdit bench --device cuda --warmup 1 --iters 2 --json $OUT/vdit_dense.json transformer "${big[@]}"
step vdit_rf 90 /tmp/vdit bench --device cuda --warmup 1 --iters 2 --json $OUT/vdit_rf.json transformer "${big[@]}" \
  --attention rainfusion --sparsity 0.8
t "vdit: the same dense forward, device memory after each stage (VDIT_PROFILE=1, one iteration)"
step vdit_dense_stages 90 env VDIT_PROFILE=1 /tmp/vdit bench --device cuda --warmup 0 --iters 1 transformer "${big[@]}"
t "vdit: Wan2.1 VAE decode, 21x90x160 latents -> 81 frames 1280x720"
step vdit_vae 90 /tmp/vdit bench --device cuda --warmup 1 --iters 2 --json $OUT/vdit_vae.json vae --latent 21x90x160
step vdit_vae_stages 60 env VDIT_PROFILE=1 /tmp/vdit bench --device cuda --warmup 0 --iters 1 vae --latent 21x90x160
t "diffusers: the same forward and decode"
step torch_memory 200 python3 scripts/gpu/torch_bench.py --memory --width 1280 --height 720 --frames 81 --batch 1 \
  --iters 2 --out $OUT/torch_memory.json
