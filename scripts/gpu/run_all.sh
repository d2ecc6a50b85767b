#!/usr/bin/env bash
# The README's GPU table in one GPU run: the CUDA tests, our engine (`vdit bench`) and
# PyTorch/diffusers (scripts/gpu/torch_bench.py) on the same shapes, stage timings of one
# transformer forward, full-size transformer parity against diffusers, and an end-to-end
# `vdit generate --device cuda --attention rainfusion` on vdit-tiny.
#
# Here (no GPU; see scripts/gpu/stage.sh, which builds and stages everything):
#     bash scripts/gpu/stage.sh            # → .gpu/run/{vdit,cuda_dit,cuda_kernels,cuda_policy}.xz
#     (and the diffusers wheel in .whl, see the device README, trimmed by scripts/gpu/trim_diffusers_wheel.py:
#     the tree is ~38 MB, .gpu/run ~25 MB, and a GPU run takes 64 MiB in all)
# GPU run:
#     on the GPU machine, with .gpu/run, .whl next to the tree: bash scripts/gpu/run_all.sh
#     (when the tree grows past ~39 MB that is over 64 MiB: carry .gpu/run/{vdit,cuda_dit,cuda_kernels}.xz one by
#     one and the cuda_policy tests are skipped, as in the v9 defaults run of NOTES.md)
#
# QUICK=1 runs the tests, our benchmark and the stage timings only (no PyTorch side). PROFILE_OPS=1 adds the
# stage timings of the candle-ops block path (VDIT_NO_FUSED=1).
# Logs go to $OUT/logs.tar.gz (the device returns at most 8 files); the table, vdit.json and
# torch.json come back as files.
set -uo pipefail
export PYTHONUNBUFFERED=1
FINAL_OUT="$OUT"; OUT=/tmp/results; mkdir -p $OUT
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C /tmp/results . ; cp /tmp/results/table.md /tmp/results/vdit.json /tmp/results/torch.json /tmp/results/cuda_rf.mp4 "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
# The v8 paths that kernels v9 made the defaults, each switched off: transformer without the cuBLASLt epilogue, VAE on
# candle's cuDNN convolution. Both modes time them beside the defaults; the rows go to $OUT/switched_off.log.
switched_off() {
  VDIT_CUBLASLT=0 timeout 60 /tmp/vdit bench transformer --device cuda --warmup 1 --iters 2 2>&1 | grep "^| transformer" | tee $OUT/switched_off.log
  VDIT_VAE_TENSOR_OPS=0 timeout 90 /tmp/vdit bench vae --device cuda --warmup 0 --iters 1 2>&1 | grep -E "^\| vae|rror" | tee -a $OUT/switched_off.log
  # v10: the VAE's fused channel kernels off (candle-ops norm, SiLU, bias adds)
  VDIT_VAE_FUSED_NORM=0 timeout 90 /tmp/vdit bench vae --device cuda --warmup 1 --iters 1 2>&1 | grep -E "^\| vae|rror" | tee -a $OUT/switched_off.log
}

t "tests: fused DiT block + fused kernels (cuda_dit)"
/tmp/cuda_dit --test-threads=1 2>&1 | grep -E "^test |test result|relative error|panicked" | tee $OUT/cuda_dit.log
t "tests: attention kernels (cuda_kernels)"
/tmp/cuda_kernels 2>&1 | grep -E "^test |test result|panicked" | tee $OUT/cuda_kernels.log
t "tests: RainFusion policy on CUDA (cuda_policy)"
[ -x /tmp/cuda_policy ] && /tmp/cuda_policy 2>&1 | grep -E "^test |test result|panicked"

if [ "${QUICK:-0}" = 1 ]; then
  t "quick: fused kernels at full size"
  timeout 60 /tmp/cuda_dit --ignored --nocapture bench_fused 2>&1 | grep -E "^fused|panicked|TFLOP" | tee $OUT/fused_kernels.log
  t "quick: transformer dense and RainFusion 0.8, VAE with stage timings"
  timeout 60 /tmp/vdit bench transformer --device cuda --warmup 1 --iters 2 2>&1 | grep "transformer"
  timeout 60 /tmp/vdit bench transformer --device cuda --attention rainfusion --warmup 1 --iters 2 2>&1 | grep "transformer"
  VDIT_PROFILE=1 timeout 60 /tmp/vdit bench transformer --device cuda --warmup 1 --iters 1 2>&1 | grep "^|" | tee $OUT/profile_fused.md
  timeout 60 /tmp/vdit bench vae --device cuda --warmup 1 --iters 2 2>&1 | grep -E "^\| vae|rror"
  VDIT_PROFILE=1 timeout 90 /tmp/vdit bench vae --device cuda --warmup 1 --iters 1 2>&1 | grep "^|" | tee $OUT/profile_vae.md
  t "quick: switched off: VDIT_CUBLASLT=0 (transformer), VDIT_VAE_TENSOR_OPS=0, VDIT_VAE_FUSED_NORM=0 (VAE)"
  switched_off
  t "quick: full-size transformer parity (diffusers random weights, bf16 file)"
  timeout 120 python3 scripts/gpu/full_parity.py /tmp/wan_full 2>&1 | tail -1 &&
    VDIT_FULL_DIR=/tmp/wan_full timeout 90 /tmp/cuda_dit --ignored --nocapture full_size 2>&1 | grep -E "relative error|test result|panicked" | tee $OUT/full_parity.log
  t "quick: generate --device cuda --attention rainfusion (vdit-tiny, 256x256x49)"
  timeout 60 /tmp/vdit generate --device cuda --attention rainfusion --sparsity 0.8 -m models/vdit-tiny -p "a blue square moving left" --size 256x256 --frames 49 --seed 2 -o $OUT/cuda_rf.mp4 2>&1 | grep -v OpenH264 | tail -4
  exit 0
fi

t "vdit bench (ours: attention, transformer dense and RainFusion 0.8, VAE)"
timeout 200 /tmp/vdit bench --device cuda --warmup 1 --iters 2 --json $OUT/vdit.json 2>&1 | grep -v "^stage\|^|" | tail -14
t "stage timings of one forward (VDIT_PROFILE=1): fused path (and the candle-ops path with PROFILE_OPS=1), RainFusion, VAE"
VDIT_PROFILE=1 timeout 60 /tmp/vdit bench transformer --device cuda --warmup 1 --iters 1 2>&1 | grep "^|" | tee $OUT/profile_fused.md
[ "${PROFILE_OPS:-0}" = 1 ] && VDIT_NO_FUSED=1 VDIT_PROFILE=1 timeout 60 /tmp/vdit bench transformer --device cuda --warmup 1 --iters 1 2>&1 | grep "^|" | tee $OUT/profile_ops.md
VDIT_PROFILE=1 timeout 60 /tmp/vdit bench transformer --device cuda --attention rainfusion --warmup 1 --iters 1 2>&1 | grep "^|" | tee $OUT/profile_rainfusion.md
VDIT_PROFILE=1 timeout 90 /tmp/vdit bench vae --device cuda --warmup 1 --iters 1 2>&1 | grep "^|" | tee $OUT/profile_vae.md

t "switched off: VDIT_CUBLASLT=0 (transformer), VDIT_VAE_TENSOR_OPS=0 (VAE)"
switched_off

t "torch / diffusers"
timeout 240 python3 scripts/gpu/torch_bench.py --out $OUT/torch.json 2>&1 | tail -12

t "full-size transformer parity (diffusers random weights, bf16 file)"
timeout 120 python3 scripts/gpu/full_parity.py /tmp/wan_full 2>&1 | tail -2 &&
  VDIT_FULL_DIR=/tmp/wan_full timeout 90 /tmp/cuda_dit --ignored --nocapture full_size 2>&1 | grep -E "relative error|test result|panicked" | tee $OUT/full_parity.log

t "generate --device cuda --attention rainfusion (vdit-tiny, 256x256x49)"
timeout 60 /tmp/vdit generate --device cuda --attention rainfusion --sparsity 0.8 -m models/vdit-tiny -p "a blue square moving left" --size 256x256 --frames 49 --seed 2 -o $OUT/cuda_rf.mp4 2>&1 | grep -v OpenH264 | tail -4

t "one table"
python3 scripts/gpu/report.py $OUT/vdit.json $OUT/torch.json | tee $OUT/table.md
