#!/usr/bin/env bash
# After run_gather.sh: the cached RainFusion masks compacted to their kept entries, fp8 blocks streamed as fp8 by
# default, and a second sample of the per-block queue drain, in one GPU run:
#   1. cuda_kernels (the compacted mask test) and cuda_block_stream (fp8 streamed as fp8 first, then cast at load);
#   2. the Wan2.1-14B forward, 1280x720x81, batch 1, peak memory: dense and RainFusion 0.8, each as is and with
#      VDIT_BLOCK_SYNC=1;
#   3. the 24 GB issue's streaming rows at batch 2: resident bf16, then blocks streamed as Q8_0.
#
# Here: STAGE_TESTS="cuda_kernels cuda_block_stream" bash scripts/gpu/stage.sh. GPU run:
#     bash scripts/gpu/run_compact.sh        (carry .gpu/run)
# (The rows "as is" pass VDIT_BLOCK_SYNC=0: since these runs the queue is drained after each block by default when
# the residual stream is 1 GiB or more, as for the 14B at 720p.)
set -uo pipefail
FINAL_OUT="$OUT"; OUT=/tmp/results-compact; mkdir -p $OUT
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C $OUT . ; cp $OUT/*.json "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
BUDGET=${BUDGET:-330}
STEP_SHOW='^\||^test |test result|rror|Killed|panicked'; STEP_LINES=30

t "CUDA tests"
for name in cuda_kernels cuda_block_stream; do
  [ -x /tmp/$name ] && step $name 90 /tmp/$name --test-threads=1
done
once=(--device cuda --warmup 0 --iters 1)
big=(--preset t2v-14b --size 1280x720 --frames 81 --batch 1)
t "Wan2.1-14B forward, 1280x720x81, batch 1: peak memory"
step big_dense 60 env VDIT_BLOCK_SYNC=0 /tmp/vdit bench "${once[@]}" --json $OUT/big_dense.json transformer "${big[@]}"
step big_dense_sync 60 env VDIT_BLOCK_SYNC=1 /tmp/vdit bench "${once[@]}" --json $OUT/big_dense_sync.json \
  transformer "${big[@]}"
step big_rf 50 env VDIT_BLOCK_SYNC=0 /tmp/vdit bench "${once[@]}" --json $OUT/big_rf.json transformer "${big[@]}" --attention rainfusion \
  --sparsity 0.8
step big_rf_sync 50 env VDIT_BLOCK_SYNC=1 /tmp/vdit bench "${once[@]}" --json $OUT/big_rf_sync.json transformer \
  "${big[@]}" --attention rainfusion --sparsity 0.8
warm=(--device cuda --warmup 1 --iters 1)
b2=(--preset t2v-14b --size 1280x720 --frames 81 --batch 2)
t "Wan2.1-14B forward, 1280x720x81, batch 2: resident bf16, blocks streamed as Q8_0"
step resident 100 /tmp/vdit bench "${warm[@]}" --json $OUT/offload_none.json transformer "${b2[@]}" --offload none
step blocks_q8 150 /tmp/vdit bench "${warm[@]}" --json $OUT/offload_blocks_q8.json transformer "${b2[@]}" \
  --offload blocks --weights q8_0
