#!/usr/bin/env bash
# The warp-specialised Hopper attention kernel (kernels/attention.cu, `attention_fwd_ws`) against the library's wgmma
# kernel, cuDNN, FlashAttention-2 and FlexAttention, in one GPU run:
#   1. cuda_kernels twice: with the default kernel, and with RAINFUSION_CUDA_HOPPER_KERNEL=ws (every reference test
#      then runs the new kernel), and its test that compares the two kernels;
#   2. the CuPy harness (scripts/gpu/attn_harness.py): checks of both Hopper kernels against float64, then
#      B1 h12 L32760 d128 dense and 50/25/20/10 % block-sparse, ours and PyTorch's in the same process;
#   3. `vdit bench attention` and the Wan2.1-1.3B forward (batch 2, 832x480x81, dense and RainFusion 0.8) with each
#      kernel.
#
# Here: STAGE_TESTS=cuda_kernels bash scripts/gpu/stage.sh, then the harness's cubins:
#     bash scripts/gpu/run_ws.sh prepare
# GPU run (carry .gpu/run and .whl):
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
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C $OUT . ; cp $OUT/*.json $OUT/*.md "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
BUDGET=${BUDGET:-500}
STEP_SHOW='^\||^test |test result|rror|Killed|panicked|TFLOP|rel_err|CHECKS|checks'; STEP_LINES=60

t "CUDA tests: the default Hopper kernel, then the warp-specialised one"
step tests_default 120 /tmp/cuda_kernels --test-threads=1
step tests_ws 120 env RAINFUSION_CUDA_HOPPER_KERNEL=ws /tmp/cuda_kernels --test-threads=1
t "harness: both Hopper kernels, cuDNN, FA2, FlexAttention (B1 h12 L32760 d128)"
step harness 240 python3 scripts/gpu/attn_harness.py --module .gpu/run/kern/attention_sm90.cubin \
  --variants d128_w4m2n64s2 --wgmma .gpu/run/kern/attention_sm90a.cubin --wgmma-kernels wgmma,ws --passes 2 \
  ${NO_FLEX:+--no-flex} --out $OUT
warm=(--device cuda --warmup 1 --iters 3)
for kernel in wgmma ws; do
  t "kernel $kernel: vdit bench attention; the Wan2.1-1.3B forward, batch 2, 832x480x81: dense, RainFusion 0.8"
  export RAINFUSION_CUDA_HOPPER_KERNEL=$kernel
  step attention_$kernel 60 /tmp/vdit bench --device cuda --json $OUT/attention_$kernel.json attention
  step dense_$kernel 60 /tmp/vdit bench "${warm[@]}" --json $OUT/dense_$kernel.json transformer
  step rf_$kernel 60 /tmp/vdit bench "${warm[@]}" --json $OUT/rf_$kernel.json transformer --attention rainfusion \
    --sparsity 0.8
done
