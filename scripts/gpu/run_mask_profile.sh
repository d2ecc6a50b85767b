#!/usr/bin/env bash
# Where RainFusion's mask prediction spends its time, and what caching the kernel lookups gives, in one GPU run:
#   1. ncu's duration of each kernel the mask prediction launches (`vdit bench attention --densities 0.1`, whose
#      last row predicts masks: block means, the score GEMM, select, scan, compaction, the offsets' copy);
#   2. `vdit bench attention` without the profiler (the mask prediction row against run_mask.sh's 0.301 ms);
#   3. cuda_kernels and cuda_policy again (every launch now goes through the cached lookup);
#   4. the Wan2.1-1.3B forward, batch 2, 832x480x81, dense and RainFusion 0.8, and the VAE decode at 480p (each of our
#      launches used to query the driver for its kernel).
#
# Here: STAGE_TESTS="cuda_kernels cuda_policy" bash scripts/gpu/stage.sh. GPU run:
#     bash scripts/gpu/run_mask_profile.sh        (carry .gpu/run)
set -uo pipefail
FINAL_OUT="$OUT"; OUT=/tmp/results-mask-profile; mkdir -p $OUT
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C $OUT . ; cp $OUT/*.json $OUT/*.csv "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
BUDGET=${BUDGET:-300}
STEP_SHOW='^\||^test |test result|rror|Killed|panicked|^"'; STEP_LINES=40

t "ncu: the mask prediction's kernels (durations in ns)"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
step ncu_mask 120 "$NCU" --clock-control none --csv --metrics gpu__time_duration.sum \
  --kernel-name regex:'rf_block|rf_counts|rf_compact|gemm|gemv|Kernel|ucopy_u32' --launch-count 40 \
  --log-file $OUT/ncu_mask.csv /tmp/vdit bench --device cuda --warmup 1 --iters 3 attention --densities 0.1
python3 - $OUT/ncu_mask.csv <<'PY' | tee $OUT/ncu_summary.txt
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 14 and r[12] == "gpu__time_duration.sum"]
by = collections.defaultdict(list)
for r in rows:
    by[r[4][:90]].append(float(r[14].replace(",", "")))
for name, v in by.items():
    v.sort()
    print(f"{len(v):3d} x  median {v[len(v)//2]/1e3:8.1f} us  {name}")
PY
t "vdit bench attention (B1 h12 L32760 d128)"
step attention 60 /tmp/vdit bench --device cuda --json $OUT/attention.json attention
t "CUDA tests"
for name in cuda_kernels cuda_policy; do
  [ -x /tmp/$name ] && step $name 90 /tmp/$name --test-threads=1
done
warm=(--device cuda --warmup 1 --iters 3)
t "Wan2.1-1.3B forward, batch 2, 832x480x81: RainFusion 0.8, dense; VAE decode 480p"
step small_rf 60 /tmp/vdit bench "${warm[@]}" --json $OUT/small_rf.json transformer --attention rainfusion \
  --sparsity 0.8
step small_dense 60 /tmp/vdit bench "${warm[@]}" --json $OUT/small_dense.json transformer
step vae 60 /tmp/vdit bench "${warm[@]}" --json $OUT/vae.json vae
