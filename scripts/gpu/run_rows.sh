#!/usr/bin/env bash
# The row kernels of the DiT block in their warp-per-row forms (kernels/fused.cu `rf_residual_norm_*`,
# `rf_rms_rope_v*`: a row in registers, 16-byte accesses; the gated residual and the next LayerNorm in one pass; opt-in
# with RAINFUSION_CUDA_ROW_KERNELS=1) against the CTA-per-row forms, in one run:
#   1. cuda_dit's tests (the row kernels at every access width among them);
#   2. the fused kernels' bandwidths (cuda_dit bench_fused_kernels);
#   3. the Wan2.1-1.3B forward, batch 2, 832x480x81, dense and RainFusion 0.8: the CTA-per-row kernels (the
#      default) and the warp-per-row ones (RAINFUSION_CUDA_ROW_KERNELS=1) taking turns, then a profiled forward;
#   4. the full-size transformer parity against diffusers (bf16, ≤ 5e-3);
#   5. PyTorch on the same shapes (torch_bench.py: cuDNN/FA2/Flex attention and diffusers' forward);
#   6. cuda_kernels with TMA and with cp.async loads, and cuda_policy, as the budget allows.
#
# Here: STAGE_TESTS="cuda_dit cuda_kernels cuda_policy" bash scripts/gpu/stage.sh
# GPU run (carry .gpu/run and .whl; with the fixtures the tests do not read left out, the carry fits 64 MiB):
#     bash scripts/gpu/run_rows.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
FINAL_OUT="$OUT"; OUT=/tmp/results-rows; mkdir -p $OUT
trap 'tar czf "$FINAL_OUT/logs-rows.tar.gz" -C $OUT . ; cp $OUT/summary.md "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
BUDGET=${BUDGET:-560}
STEP_SHOW='^\||^fused|test result|FAILED|failed|rror|Killed|panicked|relative error'; STEP_LINES=30

t "CUDA tests: cuda_dit"
step tests_dit 150 /tmp/cuda_dit --test-threads=1
t "fused kernels, [2, 32760, 1536]"
step fused 60 /tmp/cuda_dit --ignored --nocapture bench_fused
t "the 1.3B forward, batch 2, 832x480x81: CTA-per-row (cta) and warp-per-row (warp) row kernels, taking turns"
warm=(--device cuda --warmup 1 --iters 5)
rf=(--attention rainfusion --sparsity 0.8)
cta=(env RAINFUSION_CUDA_ROW_KERNELS=0 /tmp/vdit)
warp=(env RAINFUSION_CUDA_ROW_KERNELS=1 /tmp/vdit)
step dense_cta 60 "${cta[@]}" bench "${warm[@]}" transformer
step dense_warp 60 "${warp[@]}" bench "${warm[@]}" transformer
step rf_cta 60 "${cta[@]}" bench "${warm[@]}" transformer "${rf[@]}"
step rf_warp 60 "${warp[@]}" bench "${warm[@]}" transformer "${rf[@]}"
t "full-size transformer parity against diffusers"
step parity_model 150 python3 scripts/gpu/full_parity.py /tmp/wan_full
step parity 90 env VDIT_FULL_DIR=/tmp/wan_full /tmp/cuda_dit --ignored --nocapture full_size
step parity_warp 90 env VDIT_FULL_DIR=/tmp/wan_full RAINFUSION_CUDA_ROW_KERNELS=1 /tmp/cuda_dit --ignored --nocapture \
  full_size
t "the forwards again, in the other order; attention and mask prediction; one profiled forward"
step dense_warp2 60 "${warp[@]}" bench "${warm[@]}" transformer
step dense_cta2 60 "${cta[@]}" bench "${warm[@]}" transformer
step attention 60 /tmp/vdit bench --device cuda attention
step profile 60 env VDIT_PROFILE=1 RAINFUSION_CUDA_ROW_KERNELS=1 /tmp/vdit bench --device cuda --warmup 1 --iters 1 \
  transformer
t "PyTorch on the same shapes"
step torch 150 python3 scripts/gpu/torch_bench.py --skip-vae --out $OUT/torch.json
t "CUDA tests of the attention kernels: TMA loads, then cp.async loads; cuda_policy"
step tests_tma 150 /tmp/cuda_kernels --test-threads=1
step tests_cp_async 120 env RAINFUSION_CUDA_TMA=0 /tmp/cuda_kernels --test-threads=1
[ -x /tmp/cuda_policy ] && step tests_policy 120 /tmp/cuda_policy --test-threads=1
{ echo "# row kernels, $(nvidia-smi --query-gpu=name --format=csv,noheader)"
  grep -h "^| transformer\|^| attention\|^| mask" $OUT/dense_*.log $OUT/rf_*.log $OUT/attention.log 2>/dev/null
  grep -h "^fused" $OUT/fused.log; grep -h "transformer \|attention \|flex" $OUT/torch.log
  grep -h "relative error\|test result" $OUT/tests_*.log $OUT/parity*.log; } > $OUT/summary.md
t "done (${SECONDS}s)"
