#!/usr/bin/env bash
# TAEHV's tiny decoders against the full Wan VAEs on the GPU, on the same latents with random weights at the real
# shapes (`vdit bench vae --tiny`): taew2_1 against the Wan2.1 VAE at 832x480x81 (21x60x104 latents) and at
# 1280x720x81, taew2_2 against the Wan2.2 VAE at 1280x704x121 (31x44x80). Peak device memory beside each.
#
# Here: the CUDA vdit (features cuda, cudnn), stripped and xz-compressed, in a staged folder. GPU run:
#     STAGED=.gpu/memory bash scripts/gpu/run_tiny_decoder.sh
set -uo pipefail
FINAL_OUT="$OUT"; OUT=/tmp/results_tiny; mkdir -p $OUT
trap 'tar czf "$FINAL_OUT/logs_tiny_decoder.tar.gz" -C $OUT . ; cp $OUT/*.json "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
t() { echo; echo "== $* ($(date +%T))"; }
run() {
  local log=$1; shift
  timeout 150 "$@" > "$OUT/$log.log" 2>&1 || echo "exit status $? (124: timed out): $*"
  grep -E "^\||rror|panicked" "$OUT/$log.log" | tail -8
}
t "Wan2.1 VAE vs taew2_1, 832x480x81"
run tiny21_480 /tmp/vdit bench --device cuda --warmup 1 --iters 3 --json $OUT/tiny21_480.json vae --tiny
t "Wan2.1 VAE vs taew2_1, 1280x720x81"
run tiny21_720 /tmp/vdit bench --device cuda --warmup 1 --iters 2 --json $OUT/tiny21_720.json vae --tiny \
  --latent 21x90x160
t "Wan2.2 VAE vs taew2_2, 1280x704x121"
run tiny22 /tmp/vdit bench --device cuda --warmup 1 --iters 2 --json $OUT/tiny22.json vae --vae wan2.2 --tiny
