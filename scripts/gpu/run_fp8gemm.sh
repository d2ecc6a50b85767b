#!/usr/bin/env bash
# fp8 layers on cuBLASLt's fp8 GEMM (VDIT_FP8_GEMM=1: activations rounded to e4m3 by a per-call scale) against the
# default, each layer's fp8 weight cast to bf16 for a bf16 GEMM, in one GPU run:
#   1. cuda_kernels' fp8_linear test (against the f32 product) and cuda_block_stream (the fp8 fixture on the fp8
#      GEMM against diffusers, after the streaming cases);
#   2. forwards with scaled fp8 weights, cast (the default) then on the fp8 GEMM: the Wan2.1-1.3B at 832x480x81,
#      batch 2, and the 14B at 1280x720x81, batch 1, resident; with STREAMED=1 also the 14B at batch 2 with the
#      blocks streamed.
#
# Here: STAGE_TESTS="cuda_kernels cuda_block_stream" bash scripts/gpu/stage.sh. GPU run:
#     bash scripts/gpu/run_fp8gemm.sh        (carry .gpu/run)
set -uo pipefail
FINAL_OUT="$OUT"; OUT=/tmp/results-fp8gemm; mkdir -p $OUT
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C $OUT . ; cp $OUT/*.json "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
BUDGET=${BUDGET:-420}
STEP_SHOW='^\||^test |test result|rror|Killed|panicked|relative error|vs diffusers'; STEP_LINES=20
t "CUDA tests"
[ -x /tmp/cuda_kernels ] && step cuda_kernels 60 /tmp/cuda_kernels --test-threads=1 --nocapture fp8_linear
[ -x /tmp/cuda_block_stream ] && step cuda_block_stream 90 /tmp/cuda_block_stream --test-threads=1 --nocapture
small=(--device cuda --warmup 1 --iters 3)
t "Wan2.1-1.3B forward, 832x480x81, batch 2, fp8 weights resident: weights cast, then the fp8 GEMM"
step small_cast 40 /tmp/vdit bench "${small[@]}" --json $OUT/small_cast.json transformer --weights fp8
step small_gemm 40 env VDIT_FP8_GEMM=1 /tmp/vdit bench "${small[@]}" --json $OUT/small_gemm.json transformer \
  --weights fp8
warm=(--device cuda --warmup 1 --iters 1)
b1=(--preset t2v-14b --size 1280x720 --frames 81 --batch 1 --offload none --weights fp8)
t "Wan2.1-14B forward, 1280x720x81, batch 1, fp8 weights resident: weights cast, then the fp8 GEMM"
step big_cast 60 /tmp/vdit bench "${warm[@]}" --json $OUT/big_cast.json transformer "${b1[@]}"
step big_gemm 60 env VDIT_FP8_GEMM=1 /tmp/vdit bench "${warm[@]}" --json $OUT/big_gemm.json transformer "${b1[@]}"
if [ -n "${STREAMED:-}" ]; then
  b2=(--preset t2v-14b --size 1280x720 --frames 81 --batch 2 --offload blocks --weights fp8)
  t "Wan2.1-14B forward, 1280x720x81, batch 2, fp8 blocks streamed: weights cast, then the fp8 GEMM"
  step fp8_cast 130 /tmp/vdit bench "${warm[@]}" --json $OUT/fp8_cast.json transformer "${b2[@]}"
  step fp8_gemm 130 env VDIT_FP8_GEMM=1 /tmp/vdit bench "${warm[@]}" --json $OUT/fp8_gemm.json transformer "${b2[@]}"
fi
