#!/usr/bin/env bash
# The 24 GB issue's Wan2.2-A14B target: a whole text-to-video run, both experts, at 1280x720x81 with the transformer
# blocks streamed from host memory (--offload blocks), peak device memory reported by `vdit bench pipeline`.
# The random-weight folder (scripts/gpu/make_random_model.py --model wan2.2-t2v-a14b --fp8) keeps the experts' block
# linear weights in float8_e4m3fn, so that umT5-XXL and both experts fit the GPU machine's 64 GB disk (bf16: 69 GB).
# 4 steps (2 per expert at the boundary 0.875 of a 4-step schedule), guidance 4 / 3 (the model's), CFG batch 2.
#
# Here: the staged binaries (scripts/gpu/stage.sh) and the trimmed diffusers wheel in .whl. GPU run:
#     bash scripts/gpu/run_a14b.sh        (carry .gpu/run and .whl)
set -uo pipefail
export PYTHONUNBUFFERED=1
FINAL_OUT="$OUT"; OUT=/tmp/results-a14b; mkdir -p $OUT
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C $OUT . ; cp $OUT/*.json "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
BUDGET=${BUDGET:-560}
STEP_SHOW='^\||^wrote|params|offload|peak|rror|Killed|panicked'; STEP_LINES=20
MODEL=/tmp/a14b
t "random Wan2.2-A14B folder (umT5-XXL bf16, two 14B experts with fp8 block weights, VAE)"
[ -f $MODEL/model_index.json ] || step make_model 240 python3 scripts/gpu/make_random_model.py $MODEL \
  --model wan2.2-t2v-a14b --fp8
df -h /tmp | tail -1; free -g | head -2
t "vdit: whole run, 1280x720x81, 4 steps, --offload blocks"
step a14b_blocks ${A14B_LIMIT:-330} /tmp/vdit bench pipeline -m $MODEL --device cuda --runs 1 --steps 4 \
  --offload blocks -o /tmp/videos/a14b --json $OUT/a14b_blocks.json
