#!/usr/bin/env bash
# The HunyuanVideo 1.5 transformer rows (issue 21), ours against diffusers in the same GPU run, random weights at the
# real size (8.3B text-to-video: 54 dual-stream blocks, 16 heads × 128), dense and (vdit) RainFusion 0.8, batch 1 (the pipeline runs each
# guidance branch as its own forward), one timed forward after a warm-up:
#   848x480x121  (latent 31×30×53: 49,290 video tokens)
#   1280x720x121 (latent 31×45×80: 111,600 video tokens)
# Text on both sides: Qwen prompt states padded to 1000 rows with 256 valid, ByT5 glyph states padded to 256 with
# none valid, and (diffusers) 729 all-zero image tokens; vdit attends over the valid tokens, diffusers over all of
# them with a mask. TFLOP/s on both sides count the same useful work (bench.rs hunyuan15_flops). Then the VAE rows:
# one decode of latents [1, 32, 31, 30, 53] (848x480x121) by the released VAE's decoder (diffusers'
# AutoencoderKLHunyuanVideo15 defaults, random bf16 weights), whole frames and with diffusers' default tiling
# (256-pixel tiles, overlap 0.25), vdit's two rows then diffusers' two. Peak memory: the
# device's used memory sampled (both sides) and PyTorch's max_memory_allocated; a memory table is printed last.
#
# Here: bash scripts/gpu/stage.sh (→ .gpu/run/vdit.xz, built with cuda + cudnn), the trimmed diffusers wheel in
# .whl. Device call:
#     run(command="bash scripts/gpu/run_hunyuan15.sh", carry=[".gpu/run", ".whl"])
# NO_TORCH=1 leaves out diffusers' VAE rows (when they were measured in an earlier call).
# ONLY=transformer or ONLY=vae runs those rows alone (all of them may not fit one command's BUDGET: a step that
# would get less than half its limit is skipped and says so).
# Each command has its own limit, all inside BUDGET (default 560 s). The table comes back as table.md, the JSON
# files beside it, the logs in logs.tar.gz.
set -uo pipefail
export PYTHONUNBUFFERED=1
FINAL_OUT="$OUT"; OUT=/tmp/results; mkdir -p $OUT
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C /tmp/results . ; cp /tmp/results/table.md /tmp/results/*.json "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
BUDGET=${BUDGET:-560}

# what step (scripts/gpu/device_env.sh) shows of each log
STEP_SHOW='^\| transformer|^\| vae|^diffusers|rror|Killed|panicked'; STEP_LINES=20

once=(--device cuda --warmup 1 --iters 1)
hy=(transformer --preset hunyuanvideo-1.5)
files=()
if [ "${ONLY:-}" != vae ]; then
  t "vdit: HunyuanVideo 1.5 forward, 848x480x121, dense"
  step vdit_480p 120 /tmp/vdit bench "${once[@]}" --json "$OUT/vdit_480p.json" "${hy[@]}" --size 848x480 --frames 121
  t "vdit: HunyuanVideo 1.5 forward, 1280x720x121, dense"
  step vdit_720p 200 /tmp/vdit bench "${once[@]}" --json "$OUT/vdit_720p.json" "${hy[@]}" --size 1280x720 --frames 121
  t "vdit: the same forwards with RainFusion 0.8 (video blocks sparse, text band dense)"
  step vdit_480p_rf 120 /tmp/vdit bench "${once[@]}" --json "$OUT/vdit_480p_rf.json" "${hy[@]}" --size 848x480 \
    --frames 121 --attention rainfusion --sparsity 0.8
  step vdit_720p_rf 150 /tmp/vdit bench "${once[@]}" --json "$OUT/vdit_720p_rf.json" "${hy[@]}" --size 1280x720 \
    --frames 121 --attention rainfusion --sparsity 0.8
  t "vdit: the dense forwards with the blocks streamed from host memory (--offload blocks)"
  step vdit_480p_blocks 120 /tmp/vdit bench "${once[@]}" --json "$OUT/vdit_480p_blocks.json" "${hy[@]}" \
    --size 848x480 --frames 121 --offload blocks
  step vdit_720p_blocks 200 /tmp/vdit bench "${once[@]}" --json "$OUT/vdit_720p_blocks.json" "${hy[@]}" \
    --size 1280x720 --frames 121 --offload blocks
  t "diffusers: the same forwards (an out-of-memory size gives a row that says so)"
  step torch_hy15 240 python3 scripts/gpu/torch_bench.py --hunyuan15 --sizes 848x480,1280x720 --frames 121 \
    --warmup 1 --iters 1 --out "$OUT/torch_hy15.json"
  files+=("$OUT/vdit_480p.json" "$OUT/vdit_720p.json" "$OUT/vdit_480p_rf.json" "$OUT/vdit_720p_rf.json"
    "$OUT/vdit_480p_blocks.json" "$OUT/vdit_720p_blocks.json" "$OUT/torch_hy15.json")
fi

if [ "${ONLY:-}" != transformer ]; then
  vae=(vae --vae hunyuanvideo-1.5 --latent 31x30x53)
  t "vdit: HunyuanVideo 1.5 VAE decode, latent 31x30x53 (848x480x121), whole frames"
  step vdit_vae 120 /tmp/vdit bench "${once[@]}" --json "$OUT/vdit_vae.json" "${vae[@]}"
  t "vdit: the same decode with diffusers' default tiles"
  step vdit_vae_tiled 120 /tmp/vdit bench "${once[@]}" --json "$OUT/vdit_vae_tiled.json" "${vae[@]}" --tiling
  t "diffusers: the same decodes, whole then enable_tiling() (an out-of-memory decode gives a row that says so)"
  [ -n "${NO_TORCH:-}" ] || step torch_hy15_vae 200 python3 scripts/gpu/torch_bench.py --hunyuan15-vae --latent 31x30x53 \
    --warmup 1 --iters 1 --out "$OUT/torch_hy15_vae.json"
  files+=("$OUT/vdit_vae.json" "$OUT/vdit_vae_tiled.json" "$OUT/torch_hy15_vae.json")
fi

t "one table (${SECONDS}s)"
python3 scripts/gpu/report.py "${files[@]}" | tee $OUT/table.md
# Peak memory of each row: the device's used memory (sampled; before the work in brackets) and, for PyTorch, its
# allocator's peak.
python3 - "${files[@]}" <<'PY' | tee -a $OUT/table.md
import json, sys
gib = lambda v: f"{v / 2**30:.2f} GiB" if v else ""
print("\n| implementation | case | shape | device used, peak | device used before | allocated, peak |\n|---|---|---|---|---|---|")
for path in sys.argv[1:]:
    try:
        data = json.load(open(path))
    except (OSError, ValueError) as err:
        print(f"| (missing {path}: {err}) | | | | | |")
        continue
    for r in data["rows"]:
        allocated = r.get("peak_gpu_bytes") if r.get("impl") == "pytorch" else None
        print(f"| {r.get('impl', data.get('impl', 'vdit'))} | {r['case']} | {r['shape']} | {gib(r.get('peak_device_bytes'))}"
              f" | {gib(r.get('resident_device_bytes'))} | {gib(allocated)} |")
PY
