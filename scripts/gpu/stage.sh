#!/usr/bin/env bash
# Builds the CUDA binaries here (no GPU needed) and stages them, xz-compressed, in .gpu/run for
# scripts/gpu/run_all.sh: vdit (features cuda + cudnn) and the CUDA test binaries.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
target="${CARGO_TARGET_DIR_CUDA:-/work/target-cuda}"
cd "$repo"
# shellcheck disable=SC1091
source ../shared/tools/cuda-toolchain.sh >/dev/null
# shellcheck disable=SC1091
source scripts/gpu/cudnn.sh >/dev/null
features="vdit/cuda,vdit/cudnn"
nice cargo build --release -p vdit --features "$features" --target-dir "$target"
# The test binaries that hold CUDA tests (STAGE_TESTS overrides; each is ~6 MB compressed, and a GPU run
# carries 64 MiB with the tree).
test_args=()
for name in ${STAGE_TESTS:-cuda_dit cuda_kernels cuda_policy dit22_parity cuda_load}; do
  ls crates/*/tests/"$name".rs >/dev/null 2>&1 && test_args+=(--test "$name")
done
# (no test binary named: none is built; `cargo test --no-run` without --test would build them all)
tests=""
(( ${#test_args[@]} )) && tests=$(nice cargo test --release -p vdit -p vdit-models -p rainfusion --features "$features" --target-dir "$target" \
  "${test_args[@]}" --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])')
mkdir -p .gpu/run
strip -o /tmp/vdit.stripped "$target/release/vdit" && xz -T2 -6 -c /tmp/vdit.stripped > .gpu/run/vdit.xz
while read -r name exe; do
  [ -n "$name" ] || continue
  strip -o "/tmp/$name.stripped" "$exe" && xz -T2 -6 -c "/tmp/$name.stripped" > ".gpu/run/$name.xz"
done <<< "$tests"
du -ch .gpu/run/* | tail -5
