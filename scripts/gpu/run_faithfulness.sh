#!/usr/bin/env bash
# vdit-tiny's faithfulness counts measured again with the current analyser (`vdit eval --builtin`, the shipped Rust
# analyser with its count-consistency and size-stability rules), on the GPU: 256x256x49 over seeds 42-77 (the 18
# built-in prompts twice), dense and RainFusion 0.8, as the README's sparse-quality section; 128x128x17 over seeds
# 0-17 and 100-117, as the model card. Each run's eval.md comes back in logs.tar.gz.
#     STAGED=.gpu/i2v bash scripts/gpu/run_faithfulness.sh
set -uo pipefail
FINAL_OUT="$OUT"; OUT=/tmp/results; mkdir -p $OUT /tmp/eval
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C /tmp/results .' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
ev=(-m models/vdit-tiny --builtin --device cuda --steps 30 -n "")
run() {
  local name=$1; shift
  timeout 100 /tmp/vdit eval "${ev[@]}" "$@" -o /tmp/eval/$name > $OUT/eval_$name.log 2>&1 || echo "exit $?: $name"
  cp /tmp/eval/$name/eval.md $OUT/eval_$name.md 2>/dev/null
  echo "== $name ($SECONDS s)"; grep -iE "accuracy|colour|^\|.*%|total" /tmp/eval/$name/eval.md 2>/dev/null | tail -4
}
run d42 --size 256x256 --frames 49 --seed 42
run d60 --size 256x256 --frames 49 --seed 60
run r42 --size 256x256 --frames 49 --seed 42 --attention rainfusion --sparsity 0.8
run r60 --size 256x256 --frames 49 --seed 60 --attention rainfusion --sparsity 0.8
run s0 --size 128x128 --frames 17 --seed 0
run s100 --size 128x128 --frames 17 --seed 100
