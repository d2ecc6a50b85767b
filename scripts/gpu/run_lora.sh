#!/usr/bin/env bash
# The few-step LoRA run a user waits for, ours against diffusers: the full-size Wan2.1 1.3B with random weights
# (scripts/gpu/make_random_model.py) and a random rank-64 LoRA in lightx2v's form (make_random_lora.py), at
# 832x480x81, 4 steps on the step list 1000,750,500,250 with shift 5, guidance 1 (one pass per step), Euler
# on both sides. vdit: `vdit bench pipeline` (a first run from a fresh process, then a warm run), LoRA merged,
# dense and RainFusion 0.8 with one dense step and with none; the LoRA unmerged (runtime); no LoRA.
# diffusers: WanPipeline with load_lora_weights, unfused (its default) and fused.
#
# Then the CUDA LoRA tests (cuda_dit: LoRAs on the fused path, merged and unmerged, against diffusers), and the
# training of the shipped model's example LoRA (scripts/train/train_lora.py; the file comes back in $OUT).
#
# Here: STAGE_TESTS=cuda_dit bash scripts/gpu/stage.sh, then copy vdit.xz and cuda_dit.xz into .gpu/lora (the
# tree with models/vdit-tiny and these fit the 64 MiB a GPU run takes); .whl holds the trimmed diffusers wheel and
# the peft, accelerate and psutil wheels (pip download --no-deps). GPU run, on the GPU machine with .gpu/lora and
# .whl next to the tree:
#     STAGED=.gpu/lora bash scripts/gpu/run_lora.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
FINAL_OUT="$OUT"; OUT=/tmp/results; mkdir -p $OUT /tmp/videos
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C /tmp/results . ; cp /tmp/results/table.md /tmp/results/*.json "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
BUDGET=${BUDGET:-560}
MODEL=/tmp/wan13
LORA=/tmp/lora_rank64.safetensors
export CUDA_CACHE_PATH=/tmp/jit_cache_fresh; rm -rf "$CUDA_CACHE_PATH"

# what step (scripts/gpu/device_env.sh) shows of each log
STEP_SHOW='^\||^diffusers|^lora|rror|Killed|panicked|MiB'; STEP_LINES=12

t "random-weight Wan2.1 1.3B model folder ($MODEL) and a random rank-64 LoRA"
[ -f $MODEL/model_index.json ] || step make_model 150 python3 scripts/gpu/make_random_model.py $MODEL
step make_lora 60 python3 scripts/gpu/make_random_lora.py $MODEL $LORA

few=(-m $MODEL --device cuda --size 832x480 --frames 81 --seed 0 --timesteps 1000,750,500,250 --shift 5
     --sampler euler --guidance-scale 1)
t "vdit: 4 steps, guidance 1, LoRA merged, dense (first and warm run)"
step vdit_lora_dense 90 /tmp/vdit bench pipeline "${few[@]}" --lora $LORA --runs 2 -o /tmp/videos/lora_dense \
  --json $OUT/vdit_lora_dense.json
t "diffusers: the same, LoRA unfused (first and warm run)"
step torch_lora 120 python3 scripts/gpu/torch_bench.py --pipeline $MODEL --steps 4 --guidance 1 --lora $LORA \
  --step-list 1000,750,500,250 --shift 5 --out $OUT/torch_lora.json
t "vdit: RainFusion 0.8 with one dense step, and with none"
step vdit_lora_rf1 80 /tmp/vdit bench pipeline "${few[@]}" --lora $LORA --runs 2 --attention rainfusion \
  --sparsity 0.8 --dense-steps 1 -o /tmp/videos/lora_rf1 --json $OUT/vdit_lora_rf1.json
step vdit_lora_rf0 80 /tmp/vdit bench pipeline "${few[@]}" --lora $LORA --runs 2 --attention rainfusion \
  --sparsity 0.8 --dense-steps 0 -o /tmp/videos/lora_rf0 --json $OUT/vdit_lora_rf0.json
t "diffusers: LoRA fused"
step torch_lora_fused 120 python3 scripts/gpu/torch_bench.py --pipeline $MODEL --steps 4 --guidance 1 \
  --lora $LORA --fuse-lora --step-list 1000,750,500,250 --shift 5 --out $OUT/torch_lora_fused.json
t "vdit: LoRA unmerged (runtime), and no LoRA"
step vdit_lora_runtime 80 /tmp/vdit bench pipeline "${few[@]}" --lora $LORA --lora-mode runtime --runs 2 \
  -o /tmp/videos/lora_runtime --json $OUT/vdit_lora_runtime.json
step vdit_nolora 80 /tmp/vdit bench pipeline "${few[@]}" --runs 2 -o /tmp/videos/nolora --json $OUT/vdit_nolora.json

t "CUDA: LoRAs on the fused path against diffusers"
step cuda_lora 60 /tmp/cuda_dit loras_on_the_fused_path both_paths --test-threads 1 --nocapture
grep -E "relative error|test result" $OUT/cuda_lora.log

t "train the shipped model's example LoRA (red objects come out blue)"
step train_lora 170 python3 scripts/train/train_lora.py --out "$FINAL_OUT/vdit-tiny-red-to-blue.safetensors"
grep -E "^step|^data|^wrote" $OUT/train_lora.log | tail -8

t "one table (${SECONDS}s)"
REPORT_LABEL_FILES=1 python3 scripts/gpu/report.py $OUT/vdit_lora_dense.json $OUT/torch_lora.json $OUT/torch_lora_fused.json \
  $OUT/vdit_lora_rf1.json $OUT/vdit_lora_rf0.json $OUT/vdit_lora_runtime.json $OUT/vdit_nolora.json \
  | tee $OUT/table.md
