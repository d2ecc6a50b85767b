#!/usr/bin/env bash
# The 24 GB issue's stored-weight rows: GGUF layers dequantised on the device before a bf16 GEMM, and fp8 blocks
# streamed as fp8 at the real size, in one GPU run:
#   1. cuda_dit (the fused kernels and the cuBLASLt linear, now behind one launch helper), cuda_block_stream (Q8_0 on CUDA against diffusers, streamed = resident for every format), cuda_policy and
#      cuda_kernels (the RainFusion device-mask lookup merged into one method since their last run);
#   2. the Wan2.1-14B forward, 1280x720x81, batch 2: resident bf16 (the baseline row), then the blocks streamed as
#      Q8_0 and as scaled fp8 (`--weights q8_0|fp8 --offload blocks`), each after one warm-up forward.
#
# Here: STAGE_TESTS="cuda_kernels cuda_policy cuda_block_stream cuda_dit" bash scripts/gpu/stage.sh. GPU run:
#     bash scripts/gpu/run_formats.sh        (carry .gpu/run)
set -uo pipefail
FINAL_OUT="$OUT"; OUT=/tmp/results-formats; mkdir -p $OUT
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C $OUT . ; cp $OUT/*.json "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
BUDGET=${BUDGET:-560}
STEP_SHOW='^\||^test |test result|rror|Killed|panicked|vs diffusers'; STEP_LINES=30

t "CUDA tests"
for name in cuda_block_stream cuda_policy cuda_kernels cuda_dit; do
  [ -x /tmp/$name ] && step $name 90 /tmp/$name --test-threads=1
done
warm=(--device cuda --warmup 1 --iters 1)
b2=(--preset t2v-14b --size 1280x720 --frames 81 --batch 2)
t "Wan2.1-14B forward, 1280x720x81, batch 2: resident bf16, blocks streamed as Q8_0 and as fp8"
step resident 110 /tmp/vdit bench "${warm[@]}" --json $OUT/offload_none.json transformer "${b2[@]}" --offload none
for w in ${FORMATS:-q8_0 fp8}; do
  step blocks_$w 130 /tmp/vdit bench "${warm[@]}" --json $OUT/offload_blocks_$w.json transformer "${b2[@]}" \
    --offload blocks --weights $w
done
