#!/usr/bin/env bash
# Step caching on the whole run a user waits for: the full-size Wan2.1 1.3B with random weights
# (scripts/gpu/make_random_model.py), 832x480x81, 50 steps, guidance 5, `vdit bench pipeline` (loads, encode,
# denoise, decode, mp4): dense, MagCache at its default threshold (0.12, K 2, the published Wan2.1-1.3B ratios),
# MagCache with RainFusion 0.8, and RainFusion 0.8 alone. MagCache decides from calibrated ratios, not from the
# weights, so random weights skip the passes the real model skips. A one-step run first fills the driver's JIT
# cache, so every timed run is a new process with the kernels compiled, as a user's second run is.
#
# Here: STAGE_TESTS=none bash scripts/gpu/stage.sh, then copy vdit.xz into .gpu/cache; .whl holds the trimmed
# diffusers wheel (make_random_model.py needs it). GPU run:
#     STAGED=.gpu/cache bash scripts/gpu/run_step_cache.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
FINAL_OUT="$OUT"; OUT=/tmp/results; mkdir -p $OUT /tmp/videos
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C /tmp/results . ; cp /tmp/results/table.md /tmp/results/*.json "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
BUDGET=${BUDGET:-540}
MODEL=/tmp/wan13

# what step (scripts/gpu/device_env.sh) shows of each log
STEP_SHOW='^\||skipped|rror|Killed|panicked'; STEP_LINES=8

t "random-weight Wan2.1 1.3B model folder ($MODEL), naming the built-in MagCache calibration"
[ -f $MODEL/model_index.json ] || step make_model 150 python3 scripts/gpu/make_random_model.py $MODEL
echo '{"cache_calibration": "wan2.1-t2v-1.3b"}' > $MODEL/vdit.json

run=(-m $MODEL --device cuda --size 832x480 --frames 81 --seed 0 --steps 50 --guidance-scale 5 --runs 1)
t "fill the JIT cache (one step)"
step jit 60 /tmp/vdit bench pipeline -m $MODEL --device cuda --size 832x480 --frames 81 --steps 1 --runs 1 \
  -o /tmp/videos/jit
t "vdit: dense"
step dense 110 /tmp/vdit bench pipeline "${run[@]}" -o /tmp/videos/dense --json $OUT/dense.json
t "vdit: MagCache (default threshold)"
step magcache 90 /tmp/vdit bench pipeline "${run[@]}" --step-cache magcache -o /tmp/videos/magcache \
  --json $OUT/magcache.json
t "vdit: MagCache + RainFusion 0.8"
step magcache_rf 90 /tmp/vdit bench pipeline "${run[@]}" --step-cache magcache --attention rainfusion \
  --sparsity 0.8 -o /tmp/videos/magcache_rf --json $OUT/magcache_rf.json
t "vdit: RainFusion 0.8"
step rf 90 /tmp/vdit bench pipeline "${run[@]}" --attention rainfusion --sparsity 0.8 -o /tmp/videos/rf \
  --json $OUT/rf.json
grep -h "transformer passes skipped" $OUT/*.log | head -4

t "one table (${SECONDS}s)"
# the runs that finished within the budget (RainFusion alone comes last and is the first left out)
mapfile -t done_runs < <(ls $OUT/{dense,magcache,magcache_rf,rf}.json 2>/dev/null)
REPORT_LABEL_FILES=1 python3 scripts/gpu/report.py "${done_runs[@]}" | tee $OUT/table.md
