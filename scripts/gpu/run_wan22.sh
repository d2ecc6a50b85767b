#!/usr/bin/env bash
# The Wan2.2 rows, ours against diffusers, with random weights at the real sizes: one T2V-A14B expert (the
# 14B shape) at 1280x720x81 and the TI2V-5B transformer (48 channels, ×16 VAE) at 1280x704x121, each dense and
# RainFusion 0.8 (batch 2: guidance's two halves), the Wan2.2 VAE decode at 1280x704x121, and
# `torch_bench.py --wan22` (diffusers on the same shapes); one table last.
#
# Here: bash scripts/gpu/stage.sh (→ .gpu/run/vdit.xz), the trimmed diffusers wheel in .whl. Device call:
#     run(command="bash scripts/gpu/run_wan22.sh", carry=[".gpu/run", ".whl"])
# Every command has its own timeout (about 9 minutes in all at most). The table comes back as table.md, the
# JSON files beside it, the logs in logs.tar.gz.
set -uo pipefail
export PYTHONUNBUFFERED=1
FINAL_OUT="$OUT"; OUT=/tmp/results; mkdir -p $OUT
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C /tmp/results . ; cp /tmp/results/table.md /tmp/results/*.json "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh

# bench LOG TIMEOUT ARGS...: one `vdit bench` on the GPU, its rows shown, JSON in $OUT/LOG.json.
bench() {
  local log=$1 limit=$2; shift 2
  timeout "$limit" /tmp/vdit bench --device cuda --json "$OUT/$log.json" "$@" > "$OUT/$log.log" 2>&1 ||
    echo "exit status $?: vdit bench $*"
  grep -E "^\| (transformer|vae)|rror|panicked" "$OUT/$log.log"
}

t "T2V-A14B expert, 1280x720x81: dense and RainFusion 0.8"
bench a14b_dense 150 transformer --preset t2v-a14b --size 1280x720 --frames 81 --warmup 1 --iters 1
bench a14b_rf 150 transformer --preset t2v-a14b --size 1280x720 --frames 81 --warmup 1 --iters 1 \
  --attention rainfusion --sparsity 0.8
t "TI2V-5B, 1280x704x121: dense and RainFusion 0.8"
bench ti2v_dense 90 transformer --preset ti2v-5b --size 1280x704 --frames 121 --warmup 1 --iters 2
bench ti2v_rf 90 transformer --preset ti2v-5b --size 1280x704 --frames 121 --warmup 1 --iters 2 \
  --attention rainfusion --sparsity 0.8
t "Wan2.2 VAE, 1280x704x121"
bench vae22 90 vae --vae wan2.2 --warmup 1 --iters 1
t "diffusers on the same shapes"
timeout 200 python3 scripts/gpu/torch_bench.py --wan22 --out $OUT/torch_wan22.json 2>&1 | tail -8

t "one table (${SECONDS}s)"
python3 scripts/gpu/report.py $OUT/a14b_dense.json $OUT/a14b_rf.json $OUT/ti2v_dense.json $OUT/ti2v_rf.json \
  $OUT/vae22.json $OUT/torch_wan22.json | tee $OUT/table.md
