#!/usr/bin/env bash
# RainFusion's mask prediction in fewer launches, and the masks kept between steps as bits, in one GPU run:
#   1. cuda_kernels (the selection rule at 16 and 587 key blocks and with ties, q and k pooled in one launch, masks
#      packed to bits and back) and cuda_policy (a cached mask reused at the next step);
#   2. `vdit bench attention` (the mask prediction row: B1 h12 L32760, sparsity 0.8);
#   3. the Wan2.1-1.3B forward, batch 2, 832x480x81: dense and RainFusion 0.8;
#   4. the Wan2.1-14B forward, 1280x720x81, batch 1, peak memory: dense and RainFusion 0.8 (the defaults: the queue
#      drained per block).
#
# Here: STAGE_TESTS="cuda_kernels cuda_policy" bash scripts/gpu/stage.sh. GPU run:
#     bash scripts/gpu/run_mask.sh        (carry .gpu/run)
set -uo pipefail
FINAL_OUT="$OUT"; OUT=/tmp/results-mask; mkdir -p $OUT
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C $OUT . ; cp $OUT/*.json "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
BUDGET=${BUDGET:-420}
STEP_SHOW='^\||^test |test result|rror|Killed|panicked'; STEP_LINES=40

t "CUDA tests"
for name in cuda_kernels cuda_policy; do
  [ -x /tmp/$name ] && step $name 120 /tmp/$name --test-threads=1
done
t "vdit bench attention (B1 h12 L32760 d128)"
step attention 60 /tmp/vdit bench --device cuda --json $OUT/attention.json attention
warm=(--device cuda --warmup 1 --iters 3)
t "Wan2.1-1.3B forward, batch 2, 832x480x81: RainFusion 0.8, dense"
step small_rf 60 /tmp/vdit bench "${warm[@]}" --json $OUT/small_rf.json transformer --attention rainfusion \
  --sparsity 0.8
step small_dense 60 /tmp/vdit bench "${warm[@]}" --json $OUT/small_dense.json transformer
once=(--device cuda --warmup 0 --iters 1)
big=(--preset t2v-14b --size 1280x720 --frames 81 --batch 1)
t "Wan2.1-14B forward, 1280x720x81, batch 1: peak memory, dense and RainFusion 0.8"
step big_dense 60 /tmp/vdit bench "${once[@]}" --json $OUT/big_dense.json transformer "${big[@]}"
step big_rf 50 /tmp/vdit bench "${once[@]}" --json $OUT/big_rf.json transformer "${big[@]}" --attention rainfusion \
  --sparsity 0.8
