#!/usr/bin/env bash
# RainFusion's window order read in place ("Gathered window order" in NOTES.md) and the per-block drain of the
# device queue, measured beside what they replace in one GPU run:
#   1. the CUDA tests of the kernels, the policy and block streaming (cuda_kernels, cuda_policy, cuda_block_stream);
#   2. `vdit bench attention` (dense, block-sparse, mask prediction with the 16-byte block means);
#   3. the Wan2.1-1.3B forward, batch 2, 832x480x81, RainFusion 0.8: order in place, then permuted copies
#      (RAINFUSION_CUDA_NO_GATHER=1), then dense;
#   4. the Wan2.1-14B forward, 1280x720x81, batch 1, peak device memory and the pool's peaks: dense as is, dense with
#      VDIT_BLOCK_SYNC=1, RainFusion 0.8 in place, with copies, and in place with VDIT_BLOCK_SYNC=1.
#
# Here: STAGE_TESTS="cuda_kernels cuda_policy cuda_block_stream" bash scripts/gpu/stage.sh. GPU run:
#     bash scripts/gpu/run_gather.sh        (carry .gpu/run)
# (The rows "as is" pass VDIT_BLOCK_SYNC=0: since these runs the queue is drained after each block by default when
# the residual stream is 1 GiB or more, as for the 14B at 720p.)
set -uo pipefail
FINAL_OUT="$OUT"; OUT=/tmp/results-gather; mkdir -p $OUT
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C $OUT . ; cp $OUT/*.json "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
BUDGET=${BUDGET:-450}
STEP_SHOW='^\||^test |test result|rror|Killed|panicked'; STEP_LINES=30

t "CUDA tests"
for name in cuda_kernels cuda_policy cuda_block_stream; do
  [ -x /tmp/$name ] && step $name 120 /tmp/$name --test-threads=1
done
t "vdit bench attention (B1 h12 L32760 d128)"
step attention 60 /tmp/vdit bench --device cuda --json $OUT/attention.json attention
warm=(--device cuda --warmup 1 --iters 3)
t "Wan2.1-1.3B forward, batch 2, 832x480x81: RainFusion 0.8 in place, with copies, dense"
step small_rf 60 /tmp/vdit bench "${warm[@]}" --json $OUT/small_rf.json transformer --attention rainfusion \
  --sparsity 0.8
step small_rf_copies 60 env RAINFUSION_CUDA_NO_GATHER=1 /tmp/vdit bench "${warm[@]}" --json $OUT/small_rf_copies.json \
  transformer --attention rainfusion --sparsity 0.8
step small_dense 60 /tmp/vdit bench "${warm[@]}" --json $OUT/small_dense.json transformer
once=(--device cuda --warmup 0 --iters 1)
big=(--preset t2v-14b --size 1280x720 --frames 81 --batch 1)
t "Wan2.1-14B forward, 1280x720x81, batch 1: peak memory"
step big_dense 90 env VDIT_BLOCK_SYNC=0 /tmp/vdit bench "${once[@]}" --json $OUT/big_dense.json transformer "${big[@]}"
step big_rf 70 env VDIT_BLOCK_SYNC=0 /tmp/vdit bench "${once[@]}" --json $OUT/big_rf.json transformer "${big[@]}" --attention rainfusion \
  --sparsity 0.8
step big_dense_sync 90 env VDIT_BLOCK_SYNC=1 /tmp/vdit bench "${once[@]}" --json $OUT/big_dense_sync.json \
  transformer "${big[@]}"
step big_rf_copies 70 env VDIT_BLOCK_SYNC=0 RAINFUSION_CUDA_NO_GATHER=1 /tmp/vdit bench "${once[@]}" --json $OUT/big_rf_copies.json \
  transformer "${big[@]}" --attention rainfusion --sparsity 0.8
step big_rf_sync 70 env VDIT_BLOCK_SYNC=1 /tmp/vdit bench "${once[@]}" --json $OUT/big_rf_sync.json transformer \
  "${big[@]}" --attention rainfusion --sparsity 0.8
