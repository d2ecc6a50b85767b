#!/usr/bin/env bash
# Runs several of the device-side scripts in one GPU call (a call brings back at most 8 files, and each script
# brings back its own): each script gets its own $OUT folder and a budget, and everything comes back as one
# many.tar.gz plus summary.md (each script's printed output, in order).
#
#     run(command="bash scripts/gpu/run_many.sh 'step_cache:280:STAGED=.gpu/run scripts/gpu/run_step_cache.sh' \
#                  'offload:270:scripts/gpu/run_offload.sh'", carry=[".gpu/run", ".whl"])
#
# Each argument is NAME:BUDGET:[VAR=VALUE ...] SCRIPT; BUDGET (seconds) becomes the script's BUDGET.
set -uo pipefail
FINAL_OUT="$OUT"
all=/tmp/many; mkdir -p $all
trap 'tar czf "$FINAL_OUT/many.tar.gz" -C $all . ; cp $all/summary.md "$FINAL_OUT/" 2>/dev/null' EXIT
for spec in "$@"; do
  name=${spec%%:*}; rest=${spec#*:}
  budget=${rest%%:*}; cmd=${rest#*:}
  mkdir -p "$all/$name"
  # the scripts keep their logs in these folders; clear them so one script's files do not land in the next one's
  rm -rf /tmp/results /tmp/results-offload
  echo "## $name (budget ${budget}s, $(date +%T)): $cmd" | tee -a $all/summary.md
  # shellcheck disable=SC2086
  env OUT="$all/$name" BUDGET="$budget" $cmd 2>&1 | tee -a $all/summary.md
  echo | tee -a $all/summary.md
done
