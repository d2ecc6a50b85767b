#!/usr/bin/env bash
# Weight streaming on the 24 GB issue's shape: the Wan2.1-14B forward at 1280x720x81, batch 2, bf16, random weights,
# all resident (the baseline row), with the blocks streamed from pinned host memory (--offload blocks: block i+1
# copied on a second stream while block i runs), the same with the synchronous copy (VDIT_OFFLOAD_SYNC=1), and
# streamed as Q8_0 blocks; peak device memory and time of each (vdit bench's side-thread sampler: device used,
# total - free). ROWS="resident blocks" runs those rows alone.
#
# Here: build vdit with `cargo build --release -p vdit --features vdit/cuda,vdit/cudnn --target-dir
# /work/target-cuda` and stage it (scripts/gpu/stage.sh). GPU run:
#     STAGED=.gpu/run bash scripts/gpu/run_offload.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
FINAL_OUT="$OUT"; OUT=/tmp/results-offload; mkdir -p $OUT
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C $OUT . ; cp $OUT/*.json "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
BUDGET=${BUDGET:-300}
STEP_SHOW='^\||^offload|rror|Killed|panicked'; STEP_LINES=8

once=(--device cuda --warmup 1 --iters 1)
big=(--preset t2v-14b --size 1280x720 --frames 81 --batch 2)
# ROWS picks the rows (default: all, in this order); each is one process with one warm-up forward.
t "vdit: Wan2.1-14B forward, 1280x720x81, batch 2: resident, blocks streamed (overlapped copy), blocks streamed with"
t "the synchronous copy (VDIT_OFFLOAD_SYNC=1), blocks streamed as Q8_0"
for row in ${ROWS:-resident blocks blocks_sync blocks_q8}; do
  case $row in
    resident) step resident 150 /tmp/vdit bench "${once[@]}" --json $OUT/offload_none.json transformer "${big[@]}" \
      --offload none ;;
    blocks) step blocks 150 /tmp/vdit bench "${once[@]}" --json $OUT/offload_blocks.json transformer "${big[@]}" \
      --offload blocks ;;
    blocks_sync) step blocks_sync 150 env VDIT_OFFLOAD_SYNC=1 /tmp/vdit bench "${once[@]}" \
      --json $OUT/offload_blocks_sync.json transformer "${big[@]}" --offload blocks ;;
    blocks_q8) step blocks_q8 240 /tmp/vdit bench "${once[@]}" --json $OUT/offload_blocks_q8.json transformer \
      "${big[@]}" --offload blocks --weights q8_0 ;;
  esac
done
