#!/usr/bin/env bash
# Image-to-video at the real sizes, ours against diffusers in one GPU run, plus the faithfulness counts of the
# shipped model measured again with the current analyser:
# - the Wan2.1 VAE encode of an 81-frame 832x480 video (what image-to-video encodes per run);
# - one Wan2.1-I2V-14B forward at 832x480x81, batch 2 (36 channels in, 257 CLIP image tokens), dense and
#   RainFusion 0.8;
# - the CUDA test of the image cross-attention on the fused path against the candle-ops path and diffusers;
# - `vdit eval --builtin` on models/vdit-tiny: 256x256x49 (seeds 42-77, dense and RainFusion 0.8) and 128x128x17
#   (seeds 0-17 and 100-117), as in the README and the model card.
#
# Here: STAGE_TESTS=i2v_parity bash scripts/gpu/stage.sh, then copy vdit.xz and i2v_parity.xz into .gpu/i2v; .whl
# holds the trimmed diffusers wheel only (the tree, these and it fit the 64 MiB a GPU run takes). GPU run:
#     STAGED=.gpu/i2v bash scripts/gpu/run_i2v.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
FINAL_OUT="$OUT"; OUT=/tmp/results; mkdir -p $OUT /tmp/eval
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C /tmp/results . ; cp /tmp/results/table.md /tmp/results/*.json "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
BUDGET=${BUDGET:-560}

# what step (scripts/gpu/device_env.sh) shows of each log
STEP_SHOW='^\||^diffusers|^vae|^transformer|relative error|test result|rror|Killed|panicked|colour|motion|count'; STEP_LINES=12

t "CUDA: image cross-attention, fused and candle-ops paths against diffusers"
step cuda_i2v 60 /tmp/i2v_parity image_cross_attention --test-threads 1 --nocapture

t "vdit: Wan2.1 VAE encode, 81 frames 832x480"
step vdit_encode 90 /tmp/vdit bench --device cuda --warmup 1 --iters 2 --json $OUT/vdit_encode.json vae --encode
t "vdit: Wan2.1-I2V-14B forward, 832x480x81, batch 2, dense and RainFusion 0.8"
step vdit_i2v_dense 120 /tmp/vdit bench --device cuda --warmup 1 --iters 3 --json $OUT/vdit_i2v_dense.json \
  transformer --preset i2v-14b
step vdit_i2v_rf 100 /tmp/vdit bench --device cuda --warmup 1 --iters 3 --json $OUT/vdit_i2v_rf.json \
  transformer --preset i2v-14b --attention rainfusion --sparsity 0.8
t "diffusers: the same encode and forward"
step torch_i2v 200 python3 scripts/gpu/torch_bench.py --i2v --warmup 1 --iters 3 --out $OUT/torch_i2v.json

t "faithfulness of vdit-tiny with the current analyser (vdit eval --builtin)"
ev=(-m models/vdit-tiny --builtin --device cuda --steps 30 -n "")
step eval_256_dense_42 90 /tmp/vdit eval "${ev[@]}" --size 256x256 --frames 49 --seed 42 -o /tmp/eval/d42
step eval_256_dense_60 90 /tmp/vdit eval "${ev[@]}" --size 256x256 --frames 49 --seed 60 -o /tmp/eval/d60
step eval_256_rf_42 90 /tmp/vdit eval "${ev[@]}" --size 256x256 --frames 49 --seed 42 --attention rainfusion \
  --sparsity 0.8 -o /tmp/eval/r42
step eval_256_rf_60 90 /tmp/vdit eval "${ev[@]}" --size 256x256 --frames 49 --seed 60 --attention rainfusion \
  --sparsity 0.8 -o /tmp/eval/r60
step eval_128_0 60 /tmp/vdit eval "${ev[@]}" --size 128x128 --frames 17 --seed 0 -o /tmp/eval/s0
step eval_128_100 60 /tmp/vdit eval "${ev[@]}" --size 128x128 --frames 17 --seed 100 -o /tmp/eval/s100
for d in d42 d60 r42 r60 s0 s100; do
  [ -f /tmp/eval/$d/eval.md ] && cp /tmp/eval/$d/eval.md $OUT/eval_$d.md && cp /tmp/eval/$d/eval.json $OUT/eval_$d.jsonl
done

t "one table (${SECONDS}s)"
REPORT_LABEL_FILES=1 python3 scripts/gpu/report.py $OUT/vdit_encode.json $OUT/vdit_i2v_dense.json \
  $OUT/vdit_i2v_rf.json $OUT/torch_i2v.json | tee $OUT/table.md
