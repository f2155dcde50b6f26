#!/bin/bash
# Build a reduced FlashAttention-3 wheel (hopper/: forward only, head dims 64, 128 and 256, BF16 and FP8 e4m3,
# sm_90a) for GPU nodes without internet, so that `experiments.paper`'s `fa3` / `fa3-fp8` peers run there:
#   bash experiments/fa3_wheel.sh FLASH_ATTENTION_DIR OUT_DIR
# FLASH_ATTENTION_DIR: a Dao-AILab/flash-attention checkout with csrc/cutlass populated (the submodule).
# Needs: the node's torch version (a CUDA build; nvcc of the same CUDA major), nvcc under CUDA_HOME (default
# /usr/local/cuda), ninja, wheel. The extension is limited-API (cp310-abi3), so any Python >= 3.10 builds it.
# Without a CUDA install, PyPI has all of it (session 35, for a cu130 node): `pip install torch==2.11.0
# "cuda-toolkit[nvcc,cccl,crt,nvvm,cudart]==13.0.2" ninja wheel`, then a CUDA_HOME whose bin, include and nvvm
# link to site-packages/nvidia/cu13/'s and whose lib64 holds links to its lib/ files plus libcudart.so ->
# libcudart.so.13. Built on a 2-core CPU machine in 3-7 minutes; install on the node with
# `pip install --no-deps --no-index`.
set -euo pipefail
if [ $# -ne 2 ]; then
    echo "usage: bash experiments/fa3_wheel.sh FLASH_ATTENTION_DIR OUT_DIR" >&2
    exit 2
fi
fa=$(cd "$1" && pwd)
out=$(mkdir -p "$2" && cd "$2" && pwd)
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH=$CUDA_HOME/bin:$PATH MAX_JOBS=${MAX_JOBS:-2} NVCC_THREADS=1
export FLASH_ATTENTION_FORCE_BUILD=TRUE  # never download a prebuilt wheel
# Everything the forward benchmarks do not call.
for f in BACKWARD SPLIT PAGEDKV APPENDKV LOCAL SOFTCAP PACKGQA FP16 VARLEN CLUSTER HDIM96 HDIM192 SM80 \
         HDIMDIFF64 HDIMDIFF192; do
    export FLASH_ATTENTION_DISABLE_$f=TRUE
done
cd "$fa/hopper"
rm -rf build dist
python setup.py bdist_wheel
# Debug sections are most of the extension's size (7.0 -> 4.1 MB).
tmp=$(mktemp -d)
python -m wheel unpack -d "$tmp" dist/*.whl
strip --strip-debug "$tmp"/*/flash_attn_3/_C*.so
python -m wheel pack -d "$out" "$tmp"/*
rm -rf "$tmp"
ls -l "$out"
