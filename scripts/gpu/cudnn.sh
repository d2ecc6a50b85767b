#!/usr/bin/env bash
# Build-time cuDNN 9 for the `cudnn` feature (cuDNN convolutions in the VAE decoder). Source it
# after cuda-toolchain.sh; idempotent (installs once, ~830 MB, then only exports):
#
#   source /work/shared/tools/cuda-toolchain.sh; source scripts/gpu/cudnn.sh
#   cargo build --release -p vdit --features cuda,cudnn --target-dir /work/target-cuda
#
# cudarc 0.19.10 (feature cudnn = cudnn-09021) binds the cuDNN 9.21 API and links libcudnn
# dynamically; its symbols are versioned "libcudnn.so.9", so any cuDNN 9.x that has the calls
# candle makes (descriptors, cudnnGetConvolutionForwardAlgorithm_v7, cudnnConvolutionForward)
# serves at run time. On the GPU machine that is PyTorch's; the device command puts it first:
#
#   export LD_LIBRARY_PATH="$(python3 -c 'import nvidia.cudnn as m; print(m.__path__[0])')/lib:/usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
#
# (the binary needs libcudnn.so.9: `ldd vdit | grep cudnn`).
set -u
CUDA_VENV="${CUDA_VENV:-$HOME/.cache/cuda-13.0-wheels}"
CUDNN_WHEEL="${CUDNN_WHEEL:-nvidia-cudnn-cu13==9.21.1.3}"
_site=$(ls -d "$CUDA_VENV"/lib/python3*/site-packages 2>/dev/null | head -1)
if [ -z "$_site" ]; then
  echo "cudnn.sh: no CUDA venv at $CUDA_VENV: source cuda-toolchain.sh first" >&2
  return 1 2>/dev/null || exit 1
fi
CUDNN_LIB="$_site/nvidia/cudnn/lib"
if [ ! -e "$CUDNN_LIB/libcudnn.so.9" ]; then
  echo "installing $CUDNN_WHEEL into $CUDA_VENV ..." >&2
  # --no-deps: its cuBLAS dependency would replace the toolkit's pinned one
  "$CUDA_VENV/bin/pip" install -q --no-deps "$CUDNN_WHEEL" || { return 1 2>/dev/null || exit 1; }
fi
# the linker looks for the unversioned name
[ -e "$CUDNN_LIB/libcudnn.so" ] || ln -sf libcudnn.so.9 "$CUDNN_LIB/libcudnn.so"
case ":${LIBRARY_PATH:-}:" in
  *":$CUDNN_LIB:"*) ;;
  *) export LIBRARY_PATH="$CUDNN_LIB${LIBRARY_PATH:+:$LIBRARY_PATH}" ;;
esac
export CUDNN_LIB
echo "cuDNN build env ready: $CUDNN_LIB" >&2
unset _site
