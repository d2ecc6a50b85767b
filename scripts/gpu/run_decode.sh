#!/usr/bin/env bash
# Where the whole run's decode stage spends its time (832x480x81: 2.8-3.2 s in the pipeline against 1.5 s for the VAE
# alone), in one GPU run: `vdit bench vae` (the VAE alone), then `vdit bench pipeline` on the full-size random
# Wan2.1-1.3B folder at 4 steps, guidance 1, a first and a warm run, whose rows now split the decode stage into the
# chunks turned into frame bytes (with the wait for the device's work behind them) and the wait for the mp4 encoder.
#
# Here: bash scripts/gpu/stage.sh. GPU run (after run_mask_profile.sh in the same call is fine):
#     bash scripts/gpu/run_decode.sh        (carry .gpu/run)
set -uo pipefail
FINAL_OUT="$OUT"; OUT=/tmp/results-decode; mkdir -p $OUT /tmp/videos
trap 'tar czf "$FINAL_OUT/logs-decode.tar.gz" -C $OUT . ; cp $OUT/*.json "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
BUDGET=${BUDGET:-240}
STEP_SHOW='^\||rror|Killed|panicked|decode  |write  '; STEP_LINES=20
MODEL=/tmp/wan13
t "random-weight Wan2.1 1.3B model folder ($MODEL)"
[ -f $MODEL/model_index.json ] || step make_model 150 python3 scripts/gpu/make_random_model.py $MODEL
t "VAE decode alone, 480p"
step vae 60 /tmp/vdit bench --device cuda --warmup 1 --iters 3 --json $OUT/vae.json vae
run4=(-m $MODEL --device cuda --size 832x480 --frames 81 --seed 0 --runs 2 --steps 4 --guidance-scale 1)
t "whole run, 4 steps, guidance 1: first and warm; the mp4's groups encoded in parallel (default), then one at a time"
step pipeline_4g1 90 /tmp/vdit bench pipeline "${run4[@]}" -o /tmp/videos/4g1 --json $OUT/pipeline_4g1.json
step pipeline_4g1_serial 90 env VDIT_MP4_THREADS=1 /tmp/vdit bench pipeline "${run4[@]}" -o /tmp/videos/4g1s \
  --json $OUT/pipeline_4g1_serial.json
python3 - $OUT/pipeline_4g1.json $OUT/pipeline_4g1_serial.json <<'PY'
import json, sys
for f in sys.argv[1:]:
  print(f)
  for r in json.load(open(f))["rows"]:
    s = r["stages"]
    print(" ", r["case"], {k: round(s[k], 3) for k in ("total_s", "load_s", "denoise_s", "decode_s", "decode_to_bytes_s",
                                                  "decode_push_s", "write_s")})
PY
