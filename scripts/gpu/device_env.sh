#!/usr/bin/env bash
# Sourced at the start of every device-side script (run_all.sh, run_pipeline.sh): installs the carried Python
# wheels (.whl, e.g. the trimmed diffusers), puts PyTorch's cuDNN and the CUDA runtime on the library path, and
# unpacks the staged binaries of .gpu/run (scripts/gpu/stage.sh; STAGED=DIR names another folder) into /tmp.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl &&
  export PYTHONPATH=/tmp/site
cudnn="$(python3 -c 'import nvidia.cudnn as m; print(m.__path__[0])')/lib"
export LD_LIBRARY_PATH="$cudnn:/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/local/nvidia/lib64"
for f in "${STAGED:-.gpu/run}"/*.xz; do
  [ -f "$f" ] || continue
  name=$(basename "$f" .xz)
  xz -dc "$f" > "/tmp/$name" && chmod +x "/tmp/$name"
done
# The test binaries find their fixtures under the path they were built in.
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.total --format=csv,noheader
t() { echo; echo "== $* ($(date +%T))"; }

# step LOG LIMIT CMD...: runs CMD with its output in $OUT/LOG.log, under a time limit that the script's $BUDGET (seconds
# since the script started) cuts short; skipped when less than half of LIMIT is left. Shows the log's lines matching
# $STEP_SHOW (the last $STEP_LINES of them, OpenH264's banner left out) and a non-zero exit status.
step() {
  local log=$1 limit=$2; shift 2
  local left=$(( BUDGET - SECONDS ))
  if (( left < limit / 2 )); then
    echo "skipped (budget: ${SECONDS}s used of ${BUDGET}s): $*" | tee -a "$OUT/skipped.log"
    return 0
  fi
  (( limit > left )) && limit=$left
  timeout "$limit" "$@" > "$OUT/$log.log" 2>&1
  local rc=$?
  grep -v OpenH264 "$OUT/$log.log" | grep -E "${STEP_SHOW:-^\||rror|Killed|panicked}" | tail -"${STEP_LINES:-12}"
  (( rc != 0 )) && echo "exit status $rc (124: timed out): $*"
  return 0
}
