#!/usr/bin/env bash
# fp8 layers on cuBLASLt's fp8 GEMM (VDIT_FP8_GEMM=1: activations rounded to e4m3 by a per-call scale) against the
# default, each layer's fp8 weight cast to bf16 for a bf16 GEMM, in one GPU run:
#   1. cuda_kernels' fp8_linear test (against the f32 product) and cuda_block_stream (the fp8 fixture on the fp8
#      GEMM against diffusers, after the streaming cases);
#   2. the Wan2.1-14B forward, 1280x720x81, batch 2, blocks streamed as scaled fp8: cast (the default), then the fp8
#      GEMM, each after one warm-up forward.
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
warm=(--device cuda --warmup 1 --iters 1)
b2=(--preset t2v-14b --size 1280x720 --frames 81 --batch 2 --offload blocks --weights fp8)
t "Wan2.1-14B forward, 1280x720x81, batch 2, fp8 blocks streamed: weights cast, then the fp8 GEMM"
step fp8_cast 130 /tmp/vdit bench "${warm[@]}" --json $OUT/fp8_cast.json transformer "${b2[@]}"
step fp8_gemm 130 env VDIT_FP8_GEMM=1 /tmp/vdit bench "${warm[@]}" --json $OUT/fp8_gemm.json transformer "${b2[@]}"
