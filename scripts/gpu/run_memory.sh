#!/usr/bin/env bash
# Where vdit's device memory goes, against diffusers in the same GPU run (the 24 GB issue's first item): the
# Wan2.1-14B forward at 1280x720x81, batch 1, dense and RainFusion 0.8, and the Wan2.1 VAE decode at 720p x 81.
# Each side is measured the same way (the device's used memory sampled on a side thread, total - free, with the
# memory in use before the work beside it) and PyTorch also by its allocator (max_memory_allocated/reserved).
# A VDIT_PROFILE=1 pass of each prints the device memory in use after every stage (the live tensors at each
# stage boundary).
#
# Here: build vdit with `cargo build --release -p vdit --features vdit/cuda,vdit/cudnn --target-dir
# /work/target-cuda` and put it, stripped and xz-compressed, in .gpu/memory/vdit.xz; .whl holds the trimmed
# diffusers wheel. GPU run:
#     STAGED=.gpu/memory bash scripts/gpu/run_memory.sh
# ONLY=vae runs the VAE rows alone (vdit's, at 720p and 480p, without the profile pass and diffusers): taps in
# place (the default), stacked taps (VDIT_VAE_TAPS=0), VDIT_VAE_CONV_FRAMES=1, and stacked with one frame per call.
# ONLY=vaeprobe: the 720p decode as is, with the joined cache stream (VDIT_VAE_SPLIT_TAPS=0), with VDIT_VAE_TRIM=1 and profiled (VDIT_PROFILE=1), then 480p; every row
# with the memory pool's allocated and reserved peaks.
# ONLY=vaevs: the Wan2.1 VAE decode at 720p and 480p, vdit then diffusers, time and memory.
# ONLY=small: the whole 1.3B run at 480p (4 steps) with umT5 on the GPU, then with --text-encoder-cpu; peak memory.
# ONLY=pair: vdit's 14B forward (dense, RainFusion 0.8) and 720p decode as they are by default, then diffusers' same two.
# ONLY=sync runs the dense 14B forward without and with
# VDIT_BLOCK_SYNC=1.
# A vdit_before.xz beside it (an earlier build) is run on the same dense forward and decode, for the change.
set -uo pipefail
export PYTHONUNBUFFERED=1
FINAL_OUT="$OUT"; OUT=/tmp/results; mkdir -p $OUT
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C /tmp/results . ; cp /tmp/results/*.json "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
BUDGET=${BUDGET:-560}

# what step (scripts/gpu/device_env.sh) shows of each log
STEP_SHOW='^\||^test |^diffusers|^cuDNN|rror|Killed|panicked'; STEP_LINES=45

once=(--device cuda --warmup 0 --iters 1)
vae=(vae --latent 21x90x160)
big=(--preset t2v-14b --size 1280x720 --frames 81 --batch 1)
if [ "${ONLY:-}" = vae ]; then
  t "vdit: Wan2.1 VAE decode at 1280x720x81 and 832x480x81: taps accumulated in place (the default), stacked taps"
  t "(VDIT_VAE_TAPS=0: one cuDNN call per conv), at most 1 frame per call, and stacked with 1 frame per call"
  warm=(--device cuda --warmup 1 --iters 1)
  # the taps-in-place path against diffusers' decode of the vae fixture first (cuda_dit, when staged)
  [ -x /tmp/cuda_dit ] && step taps_parity 60 /tmp/cuda_dit --test-threads=1 vae_decode
  variants=("vae:" "vae_stacked:VDIT_VAE_TAPS=0" "vae_frames1:VDIT_VAE_CONV_FRAMES=1"
    "vae_stacked_frames1:VDIT_VAE_TAPS=0 VDIT_VAE_CONV_FRAMES=1")
  for v in "${variants[@]}"; do  # 720p first: the memory target is there
    name=${v%%:*}; vars=${v#*:}
    # shellcheck disable=SC2086
    step "vdit_$name" 50 env $vars /tmp/vdit bench "${warm[@]}" --json "$OUT/vdit_$name.json" "${vae[@]}"
  done
  for v in "${variants[@]}"; do
    name=${v%%:*}; vars=${v#*:}
    # shellcheck disable=SC2086
    step "vdit_${name}_480p" 30 env $vars /tmp/vdit bench "${warm[@]}" --json "$OUT/vdit_${name}_480p.json" vae
  done
  exit 0
fi
if [ "${ONLY:-}" = vaeprobe ]; then
  t "vdit: Wan2.1 VAE decode at 1280x720x81: as is, queue drained after each chunk (VDIT_VAE_TRIM=1), and with the"
  t "device memory after each stage (VDIT_PROFILE=1); then 832x480x81. Rows show the pool's allocated and reserved peaks"
  warm=(--device cuda --warmup 1 --iters 1)
  step vdit_vae 50 /tmp/vdit bench "${warm[@]}" --json "$OUT/vdit_vae.json" "${vae[@]}"
  step vdit_vae_joined 50 env VDIT_VAE_SPLIT_TAPS=0 /tmp/vdit bench "${warm[@]}" --json "$OUT/vdit_vae_joined.json" \
    "${vae[@]}"
  step vdit_vae_trim 50 env VDIT_VAE_TRIM=1 /tmp/vdit bench "${warm[@]}" --json "$OUT/vdit_vae_trim.json" "${vae[@]}"
  step vdit_vae_stages 60 env VDIT_PROFILE=1 /tmp/vdit bench "${once[@]}" "${vae[@]}"
  step vdit_vae_480p 30 /tmp/vdit bench "${warm[@]}" --json "$OUT/vdit_vae_480p.json" vae
  exit 0
fi
if [ "${ONLY:-}" = vaevs ]; then
  t "Wan2.1 VAE decode, 81 frames at 1280x720 and 832x480: vdit (one warm-up, 3 timed) then diffusers (the same)"
  warm=(--device cuda --warmup 1 --iters 3)
  step vdit_vae_720p 60 /tmp/vdit bench "${warm[@]}" --json "$OUT/vdit_vae_720p.json" "${vae[@]}"
  step vdit_vae_480p 40 /tmp/vdit bench "${warm[@]}" --json "$OUT/vdit_vae_480p.json" vae
  step torch_vae 150 python3 scripts/gpu/torch_bench.py --wan-vae 1280x720,832x480 --iters 3 \
    --out "$OUT/torch_vae.json"
  exit 0
fi
if [ "${ONLY:-}" = small ]; then
  t "vdit: the whole Wan2.1-1.3B run at 832x480x81 (random full-size folder, 4 steps, guidance 5): peak device memory"
  t "with umT5-XXL on the GPU (the default) and with --text-encoder-cpu (the issue's <= 8 GiB case)"
  MODEL=/tmp/wan13
  [ -f $MODEL/model_index.json ] || step make_model 150 python3 scripts/gpu/make_random_model.py $MODEL
  run=(-m $MODEL --device cuda --size 832x480 --frames 81 --seed 0 --steps 4 --guidance-scale 5 --runs 1)
  step small_gpu_te 120 /tmp/vdit bench pipeline "${run[@]}" -o /tmp/videos/small --json "$OUT/small.json"
  step small_cpu_te 180 /tmp/vdit bench pipeline "${run[@]}" --text-encoder-cpu -o /tmp/videos/small_cpu \
    --json "$OUT/small_cpu.json"
  exit 0
fi
if [ "${ONLY:-}" = pair ]; then
  t "vdit then diffusers: Wan2.1-14B forward, 1280x720x81, batch 1 (dense, RainFusion 0.8), VAE decode at 720p"
  step vdit_dense 90 /tmp/vdit bench "${once[@]}" --json $OUT/vdit_dense.json transformer "${big[@]}"
  step vdit_rf 90 /tmp/vdit bench "${once[@]}" --json $OUT/vdit_rf.json transformer "${big[@]}" \
    --attention rainfusion --sparsity 0.8
  step vdit_vae 60 /tmp/vdit bench "${once[@]}" --json $OUT/vdit_vae.json "${vae[@]}"
  step torch_memory 200 python3 scripts/gpu/torch_bench.py --memory --width 1280 --height 720 --frames 81 \
    --batch 1 --iters 1 --out $OUT/torch_memory.json
  exit 0
fi
if [ "${ONLY:-}" = sync ]; then
  t "vdit: Wan2.1-14B forward, 1280x720x81, batch 1, dense: without and with the queue drained after each block"
  step vdit_dense 90 env VDIT_BLOCK_SYNC=0 /tmp/vdit bench "${once[@]}" --json $OUT/vdit_dense.json transformer "${big[@]}"
  step vdit_dense_sync 90 env VDIT_BLOCK_SYNC=1 /tmp/vdit bench "${once[@]}" --json $OUT/vdit_dense_sync.json \
    transformer "${big[@]}"
  exit 0
fi
t "vdit: Wan2.1-14B forward, 1280x720x81, batch 1: dense, RainFusion 0.8; dense before the block frees its temporaries"
step vdit_dense 90 /tmp/vdit bench "${once[@]}" --json $OUT/vdit_dense.json transformer "${big[@]}"
step vdit_rf 90 /tmp/vdit bench "${once[@]}" --json $OUT/vdit_rf.json transformer "${big[@]}" \
  --attention rainfusion --sparsity 0.8
[ -x /tmp/vdit_before ] && step vdit_before_dense 90 /tmp/vdit_before bench "${once[@]}" \
  --json $OUT/vdit_before_dense.json transformer "${big[@]}"
t "vdit: the same dense forward, device memory after each stage (VDIT_PROFILE=1)"
step vdit_dense_stages 90 env VDIT_PROFILE=1 /tmp/vdit bench "${once[@]}" transformer "${big[@]}"
t "vdit: Wan2.1 VAE decode, 21x90x160 latents -> 81 frames 1280x720 (now, before, at most 2 frames per cuDNN call)"
step vdit_vae 60 /tmp/vdit bench "${once[@]}" --json $OUT/vdit_vae.json "${vae[@]}"
[ -x /tmp/vdit_before ] && step vdit_before_vae 60 /tmp/vdit_before bench "${once[@]}" \
  --json $OUT/vdit_before_vae.json "${vae[@]}"
step vdit_vae_frames2 60 env VDIT_VAE_CONV_FRAMES=2 /tmp/vdit bench "${once[@]}" \
  --json $OUT/vdit_vae_frames2.json "${vae[@]}"
step vdit_vae_stages 60 env VDIT_PROFILE=1 /tmp/vdit bench "${once[@]}" "${vae[@]}"
t "diffusers: the same forward and decode"
step torch_memory 200 python3 scripts/gpu/torch_bench.py --memory --width 1280 --height 720 --frames 81 --batch 1 \
  --iters 1 --out $OUT/torch_memory.json
