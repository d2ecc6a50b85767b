#!/usr/bin/env bash
# The final attention kernel tree checked on the GPU in one run, then how the driver's JIT of candle's PTX behaves:
#   1. the CUDA tests: cuda_kernels with TMA loads (the default) and with RAINFUSION_CUDA_TMA=0, cuda_policy when
#      staged (the generic candle-ops RainFusion path included), cuda_dit, cuda_load (the overlapped read-back);
#   2. the full-size Wan2.1-1.3B transformer parity against diffusers (bf16, ≤ 5e-3);
#   3. scripts/gpu/jit_probe.py: candle's PTX modules compiled by the driver one after another in one process,
#      against one process per module at once, each from an empty JIT cache;
#   4. the 1.3B forward, batch 2, 832x480x81, dense and RainFusion 0.8, with this binary.
#
# Here: STAGE_TESTS="cuda_dit cuda_kernels cuda_load cuda_policy" bash scripts/gpu/stage.sh; candle's PTX (from the CUDA
# build's candle-kernels out dir) as .gpu/probe/ptx.tar.xz. GPU run (carry .gpu/run, .gpu/probe, .whl):
#     bash scripts/gpu/run_verify.sh
# LITE=1 runs the tests only (not the cp.async pass), for a run that goes on to scripts/gpu/run_pipeline.sh.
set -uo pipefail
export PYTHONUNBUFFERED=1
FINAL_OUT="$OUT"; OUT=/tmp/results-verify; mkdir -p $OUT
trap 'tar czf "$FINAL_OUT/logs-verify.tar.gz" -C $OUT . ; cp $OUT/jit.json "$FINAL_OUT/" 2>/dev/null' EXIT
# shellcheck disable=SC1091
source scripts/gpu/device_env.sh
BUDGET=${BUDGET:-500}
STEP_SHOW='^\||test result|FAILED|failed|rror|Killed|panicked|relative error|wall'; STEP_LINES=20

t "CUDA tests: cuda_kernels with TMA loads, then with cp.async loads; cuda_policy; cuda_dit"
step tests_tma 150 /tmp/cuda_kernels --test-threads=1
[ "${LITE:-0}" = 1 ] || step tests_cp_async 120 env RAINFUSION_CUDA_TMA=0 /tmp/cuda_kernels --test-threads=1
[ -x /tmp/cuda_policy ] && step tests_policy 120 /tmp/cuda_policy --test-threads=1
step tests_dit 150 /tmp/cuda_dit --test-threads=1
step tests_load 120 /tmp/cuda_load --test-threads=1
if [ "${LITE:-0}" = 1 ]; then t "LITE=1: the cp.async tests, the JIT probe, the parity and the forwards left out (${SECONDS}s)"; exit 0; fi
t "candle's PTX: the driver's JIT in one process against one process per module"
mkdir -p /tmp/probe && tar xJf .gpu/probe/ptx.tar.xz -C /tmp/probe
step jit 90 python3 scripts/gpu/jit_probe.py /tmp/probe/ptx --out $OUT/jit.json
t "full-size transformer parity against diffusers"
step parity_model 150 python3 scripts/gpu/full_parity.py /tmp/wan_full
step parity 90 env VDIT_FULL_DIR=/tmp/wan_full /tmp/cuda_dit --ignored --nocapture full_size
t "the 1.3B forward, batch 2, 832x480x81: dense, RainFusion 0.8"
step dense 60 /tmp/vdit bench transformer --device cuda --warmup 1 --iters 3
step rf 60 /tmp/vdit bench transformer --device cuda --warmup 1 --iters 3 --attention rainfusion --sparsity 0.8
t "done (${SECONDS}s)"
