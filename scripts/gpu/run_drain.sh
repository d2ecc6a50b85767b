#!/usr/bin/env bash
# After run_formats.sh: HunyuanVideo 1.5's block loop drains the queue like Wan's, and the CUDA launch helper
# (cuda/launch.rs) under the fused kernels, in one GPU run:
#   1. HunyuanVideo 1.5 forward, 1280x720x121, batch 1, dense: VDIT_BLOCK_SYNC=0 against VDIT_BLOCK_SYNC=1 (its
#      residual stream, 0.9 GB, is under the 1 GiB from which the drain is on by default);
#   2. the Wan2.1-1.3B forward, batch 2, 832x480x81, dense and RainFusion 0.8 (the fused kernels behind the helper).
#
# Here: bash scripts/gpu/stage.sh. GPU run:
#     bash scripts/gpu/run_drain.sh        (carry .gpu/run)
set -uo pipefail
FINAL_OUT="$OUT"; OUT=/tmp/results-drain; mkdir -p $OUT
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C $OUT . ; cp $OUT/*.json "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
BUDGET=${BUDGET:-400}
STEP_SHOW='^\||rror|Killed|panicked'; STEP_LINES=8
warm=(--device cuda --warmup 1 --iters 3)
t "Wan2.1-1.3B forward, batch 2, 832x480x81: dense, RainFusion 0.8"
step small_dense 60 /tmp/vdit bench "${warm[@]}" --json $OUT/small_dense.json transformer
step small_rf 60 /tmp/vdit bench "${warm[@]}" --json $OUT/small_rf.json transformer --attention rainfusion --sparsity 0.8
once=(--device cuda --warmup 0 --iters 1)
hy=(transformer --preset hunyuanvideo-1.5 --size 1280x720 --frames 121)
t "HunyuanVideo 1.5 forward, 1280x720x121, dense: no drain, drained per block"
step hy_nodrain 150 env VDIT_BLOCK_SYNC=0 /tmp/vdit bench "${once[@]}" --json $OUT/hy_nodrain.json "${hy[@]}"
step hy_drain 150 env VDIT_BLOCK_SYNC=1 /tmp/vdit bench "${once[@]}" --json $OUT/hy_drain.json "${hy[@]}"
