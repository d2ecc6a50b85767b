#!/usr/bin/env bash
# The README's GPU table in one device call: our engine (`vdit bench`) and PyTorch/diffusers
# (scripts/gpu/torch_bench.py) on the same shapes, then end-to-end CUDA runs on vdit-tiny.
#
# Here (no GPU):  source ../shared/tools/cuda-toolchain.sh
#                 cargo build --release -p vdit --features cuda --target-dir /work/target-cuda
#                 mkdir -p .gpu/run && xz -T2 -3 -c /work/target-cuda/release/vdit > .gpu/run/vdit.xz
#                 cp scripts/gpu/run_all.sh .gpu/run/go.sh   # and the diffusers wheel in .whl (device README)
# Device call:    run(command="bash .gpu/run/go.sh", carry=[".gpu/run", ".whl"])
# Results of the 2026-11-23 run are in scripts/gpu/results/run19/.
# One device call: our engine and PyTorch on the same shapes, then end-to-end CUDA runs on vdit-tiny.
set -uo pipefail
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/local/nvidia/lib64 PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
xz -dc .gpu/run/vdit.xz > /tmp/vdit && chmod +x /tmp/vdit
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
echo "== vdit bench (ours)"; date +%T
timeout 240 /tmp/vdit bench --device cuda --warmup 1 --iters 2 --json $OUT/vdit.json 2>&1 | tail -14
echo "== torch / diffusers"; date +%T
timeout 200 python3 scripts/gpu/torch_bench.py --out $OUT/torch.json 2>&1 | tail -8
echo "== compare on vdit-tiny, CUDA, 256x256x49"; date +%T
timeout 150 /tmp/vdit compare --device cuda -m models/vdit-tiny -p "a red circle moving right" --size 256x256 --frames 49 --steps 30 --seed 1 --sparsities 0.5,0.8,0.9 -o /tmp/cmp 2>&1 | grep -v OpenH264 | tail -14
cp /tmp/cmp/compare.md /tmp/cmp/compare.json /tmp/cmp/side_by_side.mp4 $OUT/ 2>/dev/null
echo "== generate --device cuda --attention rainfusion"; date +%T
timeout 60 /tmp/vdit generate --device cuda --attention rainfusion --sparsity 0.8 -m models/vdit-tiny -p "a blue square moving left" --size 256x256 --frames 49 --seed 2 -o $OUT/cuda_rf.mp4 2>&1 | grep -v OpenH264 | tail -6
date +%T
echo "== one table"; python3 scripts/gpu/report.py $OUT/vdit.json $OUT/torch.json | tee $OUT/table.md
