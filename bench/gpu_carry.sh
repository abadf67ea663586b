#!/usr/bin/env bash
# What bench/run_gpu.sh carries to the lent GPU machine for the node path (the device image has
# torch but no ComfyUI), made here into bench/gpu/ (git-ignored), under the device tool's 64 MiB:
#   bench/gpu/wheels/          the packages the project's ComfyUI needs that the device image lacks:
#                              av (video IO; comfy_api imports it), torchsde and trampoline (k-diffusion),
#                              for the device's Python (3.12; --python-version for a rehearsal here)
#   bench/gpu/comfyui.tar.xz   the project's ComfyUI 0.3.75 source tree (.host/ComfyUI, made by
#                              scripts/setup_host.sh), without caches
# The web frontend (18 MB) stays behind: the bench drives ComfyUI over HTTP and gives the server an
# empty --front-end-root. Then: run(command="bash bench/run_gpu.sh 1", carry=["bench/gpu"]).
#   bash bench/gpu_carry.sh [--python-version 3.12] [--out bench/gpu]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python_version=3.12
out=bench/gpu
while (($#)); do
  case $1 in
    --python-version) python_version=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: bash bench/gpu_carry.sh [--python-version X.Y] [--out DIR]" >&2; exit 2 ;;
  esac
done
comfy=.host/ComfyUI
[[ -f $comfy/main.py ]] || { echo "gpu_carry: no $comfy: run bash scripts/setup_host.sh first" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out/wheels"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  "av==16.0.1" "torchsde==0.2.6" "trampoline==0.1.2" -d "$out/wheels"
tar -cJf "$out/comfyui.tar.xz" --exclude=__pycache__ --exclude='*.pyc' -C "$(dirname "$comfy")" "$(basename "$comfy")"
size=$(du -sb "$out" | cut -f1)
echo "gpu_carry: $out holds $((size / 1024 / 1024)) MiB: $(ls "$out/wheels" | tr '\n' ' ')"
# The working tree travels too (~4 MB); the device tool takes 64 MiB in all.
if ((size > 58 * 1024 * 1024)); then
  echo "gpu_carry: $out is over 58 MiB: the carry would not fit beside the working tree" >&2
  exit 1
fi
