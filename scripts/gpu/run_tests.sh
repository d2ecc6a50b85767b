#!/usr/bin/env bash
# Runs staged CUDA test binaries on the GPU machine (scripts/gpu/stage.sh puts them, xz-compressed, in .gpu/run; STAGED
# names another folder): each argument is BINARY[:FILTER,FILTER...], run single-threaded with its output shown.
#     run(command="bash scripts/gpu/run_tests.sh cuda_kernels:joint_attention,key_masked cuda_dit", carry=[".gpu/run"])
set -uo pipefail
FINAL_OUT="$OUT"; OUT=/tmp/results-tests; mkdir -p $OUT
trap 'tar czf "$FINAL_OUT/logs.tar.gz" -C $OUT . 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
for spec in "$@"; do
  name=${spec%%:*}; filters=""
  [ "$name" != "$spec" ] && filters=${spec#*:}
  t "$name ${filters:-(all)}"
  # shellcheck disable=SC2086
  "/tmp/$name" --test-threads=1 --nocapture ${filters//,/ } 2>&1 | tee "$OUT/$name.log" |
    grep -E "^test |test result|rel err|rror|panicked|: [0-9.]+e-"
done
