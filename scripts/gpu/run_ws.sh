#!/usr/bin/env bash
# The warp-specialised Hopper attention kernel (kernels/attention.cu, `attention_fwd_ws`; NOTES.md v12, v13) against
# cuDNN, FlashAttention-2 and FlexAttention, in one GPU run:
#   1. cuda_kernels with the defaults (TMA loads where rows are not gathered), then with RAINFUSION_CUDA_TMA=0 (every
#      reference test then loads by cp.async); cuda_policy;
#   2. the CuPy harness (scripts/gpu/attn_harness.py): checks of the kernel's two loading forms against float64,
#      then B1 h12 L32760 d128 dense and 50/25/20/10 % block-sparse, ours and PyTorch's in the same process;
#   3. `vdit bench attention` and the Wan2.1-1.3B forward (batch 2, 832x480x81, dense and RainFusion 0.8), with TMA
#      and with cp.async loads.
#
# Here: STAGE_TESTS="cuda_kernels cuda_policy" bash scripts/gpu/stage.sh, then the harness's cubins:
#     bash scripts/gpu/run_ws.sh prepare
# GPU run (carry .gpu/run and .whl; the device returns at most 8 files):
#     bash scripts/gpu/run_ws.sh
set -uo pipefail
if [ "${1:-}" = prepare ]; then
  # shellcheck disable=SC1091
  source ../shared/tools/cuda-toolchain.sh >/dev/null
  mkdir -p .gpu/run/kern
  nvcc -O3 -std=c++17 -gencode=arch=compute_90,code=sm_90 -cubin -o .gpu/run/kern/attention_sm90.cubin \
    crates/rainfusion/kernels/attention.cu
  nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -cubin -o .gpu/run/kern/attention_sm90a.cubin \
    crates/rainfusion/kernels/attention.cu
  exit 0
fi
export PYTHONUNBUFFERED=1
FINAL_OUT="$OUT"; OUT=/tmp/results-ws; mkdir -p $OUT
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C $OUT . ; cp $OUT/attn_table.json $OUT/summary.md "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
BUDGET=${BUDGET:-400}
STEP_SHOW='^\||test result|FAILED|failed|rror|Killed|panicked|TFLOP|rel_err|CHECKS|checks'; STEP_LINES=60

t "CUDA tests: TMA loads (the default), then cp.async loads"
step tests_tma 150 /tmp/cuda_kernels --test-threads=1
step tests_cp_async 120 env RAINFUSION_CUDA_TMA=0 /tmp/cuda_kernels --test-threads=1
[ -x /tmp/cuda_policy ] && step tests_policy 120 /tmp/cuda_policy --test-threads=1
t "harness: the Hopper kernel (ws: cp.async, wst: TMA), cuDNN, FA2, FlexAttention (B1 h12 L32760 d128)"
step harness 240 python3 scripts/gpu/attn_harness.py --module .gpu/run/kern/attention_sm90.cubin \
  --variants d128_w4m2n64s2 --wgmma .gpu/run/kern/attention_sm90a.cubin --wgmma-kernels ws,wst --passes 2 \
  ${NO_FLEX:+--no-flex} --out $OUT
warm=(--device cuda --warmup 1 --iters 3)
for tma in 1 0; do
  t "RAINFUSION_CUDA_TMA=$tma: vdit bench attention; the Wan2.1-1.3B forward, batch 2, 832x480x81: dense, RainFusion 0.8"
  export RAINFUSION_CUDA_TMA=$tma
  step attention_tma$tma 60 /tmp/vdit bench --device cuda attention
  step dense_tma$tma 60 /tmp/vdit bench "${warm[@]}" transformer
  step rf_tma$tma 60 /tmp/vdit bench "${warm[@]}" transformer --attention rainfusion --sparsity 0.8
done
grep "^| attention\|^| transformer\|^| mask" $OUT/attention_tma*.log $OUT/dense_tma*.log $OUT/rf_tma*.log |
  sed "s|$OUT/||" > $OUT/summary.md
