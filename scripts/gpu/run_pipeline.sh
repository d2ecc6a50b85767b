#!/usr/bin/env bash
# The whole run a user waits for, ours against diffusers, on the full-size Wan2.1 1.3B with random weights
# (scripts/gpu/make_random_model.py; umT5-XXL, DiT and VAE at their real sizes): `vdit bench pipeline` (a first
# run from a fresh process and a warm run, stage by stage: loads, encode, denoise, decode, write wait, peak GPU
# memory; the warm run keeps the networks the first loaded, `--keep-loaded`, as diffusers' warm run keeps its
# pipeline) and `torch_bench.py --pipeline` (diffusers' WanPipeline, the same stages) at 832x480x81,
# 50 steps with guidance 5 (dense, and RainFusion 0.8 once), and 4 steps with guidance 5 and 1. Beside them, in
# the same run: a first run from a second empty JIT cache with the kernel-compiling helpers off
# (VDIT_WARM_KERNELS=0), and the 4-step run with each decoded chunk read back synchronously
# (VDIT_ASYNC_READBACK=0), whose videos must be byte-identical to the default's (videos.md5).
#
# Here: bash scripts/gpu/stage.sh (→ .gpu/run/vdit.xz), the trimmed diffusers wheel in .whl. Device call:
#     run(command="bash scripts/gpu/run_pipeline.sh", carry=[".gpu/run", ".whl"])
# About 9 minutes on an H100: every command has its own timeout, and a command is skipped when the
# budget (BUDGET seconds, default 550) is nearly spent; skipped ones are named in skipped.log and the output.
# The table comes back as table.md, the logs and the JSON files in logs.tar.gz. RF_WARM=1 gives the RainFusion
# row a warm run too (--runs 2 --keep-loaded).
set -uo pipefail
export PYTHONUNBUFFERED=1
FINAL_OUT="$OUT"; OUT=/tmp/results; mkdir -p $OUT /tmp/videos
# The device returns at most 8 files: the table, and the logs with every JSON in one archive.
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C /tmp/results . ; cp /tmp/results/table.md "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
BUDGET=${BUDGET:-550}
MODEL=/tmp/wan13
# An empty driver JIT cache: the first vdit process pays what a first run on a new machine pays (candle's PTX is
# compiled by the driver; ours ships as cubins); later processes find the cache filled, as a user's would.
export CUDA_CACHE_PATH=/tmp/jit_cache_fresh; rm -rf "$CUDA_CACHE_PATH"

# step LOG LIMIT CMD...: runs CMD under a timeout of LIMIT seconds or what the budget has left, whichever is
# less; skipped when less than half of LIMIT is left (the commands are in order of importance).
# what step (scripts/gpu/device_env.sh) shows of each log
STEP_SHOW='^\||^diffusers|rror|Killed|panicked|test result|FAILED'; STEP_LINES=12

t "random-weight Wan2.1 1.3B model folder ($MODEL)"
[ -f $MODEL/model_index.json ] || step make_model 150 python3 scripts/gpu/make_random_model.py $MODEL

common=(-m $MODEL --device cuda --size 832x480 --frames 81 --seed 0)
# PART=short runs the 4-step rows only, PART=long the 50-step rows only (two device runs on one warm machine).
if [ "${PART:-all}" != long ]; then
t "vdit: 4 steps, guidance 1 (first run with an empty JIT cache, then warm); candle's kernels compiled by helpers"
step vdit_4g1 90 /tmp/vdit bench pipeline "${common[@]}" --runs 2 --keep-loaded --steps 4 --guidance-scale 1 \
  -o /tmp/videos/4g1 --json $OUT/vdit_4g1.json
t "the same first run from another empty JIT cache, helpers off (VDIT_WARM_KERNELS=0): candle compiles one by one"
export CUDA_CACHE_PATH=/tmp/jit_cache_fresh2; rm -rf "$CUDA_CACHE_PATH"
step vdit_4g1_nowarm 60 env VDIT_WARM_KERNELS=0 /tmp/vdit bench pipeline "${common[@]}" --runs 1 --steps 4 \
  --guidance-scale 1 -o /tmp/videos/4g1_nowarm --json $OUT/vdit_4g1_nowarm.json
t "the same 4 steps, each chunk read back synchronously (VDIT_ASYNC_READBACK=0)"
step vdit_4g1_sync 60 env VDIT_ASYNC_READBACK=0 /tmp/vdit bench pipeline "${common[@]}" --runs 2 --keep-loaded --steps 4 \
  --guidance-scale 1 -o /tmp/videos/4g1_sync --json $OUT/vdit_4g1_sync.json
md5sum /tmp/videos/4g1*/*.mp4 | tee $OUT/videos.md5
t "vdit: 4 steps, guidance 5"
step vdit_4g5 90 /tmp/vdit bench pipeline "${common[@]}" --runs 2 --keep-loaded --steps 4 --guidance-scale 5 \
  -o /tmp/videos/4g5 --json $OUT/vdit_4g5.json
t "diffusers: 4 steps, guidance 1 and 5"
step torch_4g1 100 python3 scripts/gpu/torch_bench.py --pipeline $MODEL --steps 4 --guidance 1 --out $OUT/torch_4g1.json
step torch_4g5 110 python3 scripts/gpu/torch_bench.py --pipeline $MODEL --steps 4 --guidance 5 --out $OUT/torch_4g5.json
fi
if [ "${PART:-all}" != short ]; then
if [ "${READBACK:-0}" = 1 ]; then
  # READBACK=1: the read-back's own check, then 4 steps with it and without (VDIT_ASYNC_READBACK=0), the JIT cache
  # filled; the four videos must be byte-identical.
  t "read-back: cuda_load's test; 4 steps, guidance 1, overlapped and synchronous (warm runs)"
  [ -x /tmp/cuda_load ] && step tests_load 90 /tmp/cuda_load --test-threads=1 readback
  step vdit_4g1_async 50 /tmp/vdit bench pipeline "${common[@]}" --runs 2 --keep-loaded --steps 4 --guidance-scale 1 \
    -o /tmp/videos/rb_async --json $OUT/vdit_4g1_async.json
  step vdit_4g1_sync2 50 env VDIT_ASYNC_READBACK=0 /tmp/vdit bench pipeline "${common[@]}" --runs 2 --keep-loaded \
    --steps 4 --guidance-scale 1 -o /tmp/videos/rb_sync --json $OUT/vdit_4g1_sync2.json
  md5sum /tmp/videos/rb_*/*.mp4 | tee $OUT/videos_readback.md5
fi
t "vdit: 50 steps, guidance 5, dense (first and warm run)"
step vdit_dense50 200 /tmp/vdit bench pipeline "${common[@]}" --runs 2 --keep-loaded --steps 50 --guidance-scale 5 \
  -o /tmp/videos/dense50 --json $OUT/vdit_dense50.json
t "diffusers: 50 steps, guidance 5 (first and warm run)"
step torch_dense50 240 python3 scripts/gpu/torch_bench.py --pipeline $MODEL --steps 50 --guidance 5 \
  --out $OUT/torch_dense50.json
if [ "${RF_WARM:-0}" = 1 ]; then
  t "vdit: 50 steps, guidance 5, RainFusion 0.8 (first and warm run)"
  step vdit_rf50 130 /tmp/vdit bench pipeline "${common[@]}" --runs 2 --keep-loaded --steps 50 --guidance-scale 5 \
    --attention rainfusion --sparsity 0.8 -o /tmp/videos/rf50 --json $OUT/vdit_rf50.json
else
  t "vdit: 50 steps, guidance 5, RainFusion 0.8 (one run: the first)"
  step vdit_rf50 80 /tmp/vdit bench pipeline "${common[@]}" --runs 1 --steps 50 --guidance-scale 5 \
    --attention rainfusion --sparsity 0.8 -o /tmp/videos/rf50 --json $OUT/vdit_rf50.json
fi
fi

t "one table (${SECONDS}s)"
REPORT_LABEL_FILES=1 python3 scripts/gpu/report.py $OUT/vdit_dense50.json $OUT/torch_dense50.json $OUT/vdit_rf50.json \
  $OUT/vdit_4g5.json $OUT/torch_4g5.json $OUT/vdit_4g1.json $OUT/vdit_4g1_nowarm.json $OUT/vdit_4g1_sync.json \
  $OUT/torch_4g1.json $OUT/vdit_4g1_async.json $OUT/vdit_4g1_sync2.json | tee $OUT/table.md
