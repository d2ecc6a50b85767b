#!/usr/bin/env bash
# The 4-step LoRA run of run_lora.sh again, as a user's second process on a machine: a throwaway vdit process
# first fills the driver's JIT cache (the first process on a fresh machine compiles candle's PTX, about 13 s; see
# results/h100-2026-12-06-pipeline), then vdit (LoRA merged; dense, and RainFusion 0.8 with one dense step) and
# diffusers (LoRA unfused), each in its own new process.
#     run(command="STAGED=.gpu/lora bash scripts/gpu/run_lora_again.sh", carry=[".gpu/lora", ".whl"])
set -uo pipefail
source scripts/gpu/device_env.sh
MODEL=/tmp/wan13; LORA=/tmp/lora_rank64.safetensors
[ -f $MODEL/model_index.json ] || python3 scripts/gpu/make_random_model.py $MODEL > /dev/null 2>&1
[ -f $LORA ] || python3 scripts/gpu/make_random_lora.py $MODEL $LORA
few=(-m $MODEL --device cuda --size 832x480 --frames 81 --seed 0 --timesteps 1000,750,500,250 --shift 5 --sampler euler --guidance-scale 1)
t "a throwaway process fills the driver's JIT cache, as any earlier run on a machine does"
/tmp/vdit bench pipeline "${few[@]}" --runs 1 --json /tmp/warmup.json 2>&1 | grep "^| vdit"
t "vdit: LoRA merged, dense, new process"
/tmp/vdit bench pipeline "${few[@]}" --lora $LORA --runs 2 --json $OUT/vdit_lora_dense_process2.json 2>&1 | grep "^| vdit"
t "vdit: LoRA merged, RainFusion 0.8, one dense step, new process"
/tmp/vdit bench pipeline "${few[@]}" --lora $LORA --runs 2 --attention rainfusion --sparsity 0.8 --dense-steps 1 --json $OUT/vdit_lora_rf1_process2.json 2>&1 | grep "^| vdit"
t "diffusers: LoRA unfused, new process"
python3 scripts/gpu/torch_bench.py --pipeline $MODEL --steps 4 --guidance 1 --lora $LORA --step-list 1000,750,500,250 --shift 5 --out $OUT/torch_lora_process2.json 2>&1 | grep "^diffusers"
