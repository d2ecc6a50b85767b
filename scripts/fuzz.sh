#!/usr/bin/env bash
# Runs vdit's byte-mutation fuzz targets (proptest, crates/*/tests/fuzz_inputs.rs) for longer than
# CI does, one target at a time, and prints for each the executions, the crashes (a panic or a
# failed property; proptest stops a target at its first one and prints the shrunk input) and the
# time taken.
#
#   bash scripts/fuzz.sh                       # 5,000 cases per target
#   VDIT_FUZZ_CASES=50000 bash scripts/fuzz.sh # longer
#
# Not part of CI (CI runs the same targets at their small default case counts through
# `cargo test`). Uses $CARGO_TARGET_DIR like any cargo command.
set -u
cd "$(dirname "$0")/.."
export VDIT_FUZZ_CASES="${VDIT_FUZZ_CASES:-5000}"

targets=(
  "vdit-models fuzz_safetensors_header"
  "vdit-models fuzz_shard_index"
  "vdit-models fuzz_transformer_config"
  "vdit-models fuzz_vae_config"
  "vdit-models fuzz_umt5_config"
  "vdit-models fuzz_tokenizer_file"
  "vdit-models fuzz_prompt_text"
  "vdit-pipeline fuzz_model_defaults_file"
  "vdit-pipeline fuzz_registry_entry"
  "vdit-pipeline fuzz_video_writers"
  "vdit-pipeline fuzz_video_readers"
  "vdit-pipeline fuzz_frames_from_tensor"
  "vdit-pipeline fuzz_video_sink_chunks"
)

for package in vdit-models vdit-pipeline; do
  cargo test --release -q -p "$package" --test fuzz_inputs --no-run 2>&1 | tail -n 3
done

log="$(mktemp)"
total_exec=0
total_crashes=0
printf '%-40s %12s %8s %9s\n' target executions crashes seconds
for entry in "${targets[@]}"; do
  read -r package test <<<"$entry"
  start=$(date +%s.%N)
  cargo test --release -q -p "$package" --test fuzz_inputs -- --exact "$test" --nocapture \
    >"$log" 2>&1
  status=$?
  end=$(date +%s.%N)
  executions=$(grep -E '^fuzz .*: [0-9]+ executions' "$log" | awk '{s += $(NF-1)} END {print s + 0}')
  crashes=0
  if [ $status -ne 0 ]; then
    crashes=1
    # A failed target prints no count: it ran until its first crash.
    [ "$executions" -eq 0 ] && executions="?"
    echo "---- $test failed:" >&2
    grep -E 'panicked|minimal failing input|Test failed' -A6 "$log" | head -n 30 >&2
  fi
  printf '%-40s %12s %8d %9.1f\n' "$package/$test" "$executions" "$crashes" "$(echo "$end - $start" | bc)"
  [ "$executions" != "?" ] && total_exec=$((total_exec + executions))
  total_crashes=$((total_crashes + crashes))
done
rm -f "$log"
echo "total: $total_exec executions, $total_crashes crashes (VDIT_FUZZ_CASES=$VDIT_FUZZ_CASES per target)"
[ "$total_crashes" -eq 0 ]
