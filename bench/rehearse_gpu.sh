#!/usr/bin/env bash
# Rehearses bench/run_gpu.sh part 1 (the node path) end to end on this CPU, so that the first lent GPU
# spends its minutes measuring: a venv with only the packages the device image has that ComfyUI uses
# (torch, torchvision, numpy, einops, transformers, tokenizers, sentencepiece, safetensors, aiohttp,
# yarl, pyyaml, pillow, scipy, tqdm, psutil, requests: the device tool's KINDS.md), the carry made by
# bench/gpu_carry.sh for this Python, and run_gpu.sh 1 with BENCH_DEVICE=cpu at the tiny size.
#   bash bench/rehearse_gpu.sh       # the venv (.host/rehearse-venv, ~6 GB) is made once
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv=.host/rehearse-venv
if [[ ! -x $venv/bin/python3 ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1" numpy einops transformers tokenizers \
    sentencepiece safetensors aiohttp yarl pyyaml pillow scipy tqdm psutil requests
fi
python_version=$("$venv/bin/python3" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
bash bench/gpu_carry.sh --python-version "$python_version" --out .host/rehearse-carry
rm -rf out/rehearse_gpu
PATH=$PWD/$venv/bin:$PATH BENCH_DEVICE=cpu GPU_CARRY=.host/rehearse-carry NODE_HOST=/tmp/smoothvideo-rehearse-host \
  BENCH_SMALL=4x80 BENCH_BIG=4x96 BENCH_CHECKPOINT=smoothvideo_tiny_sd15.safetensors OUT=out/rehearse_gpu \
  bash bench/run_gpu.sh 1
echo "rehearse_gpu: rows in out/rehearse_gpu/gpu_results.md"
grep -c "^| tuning step" out/rehearse_gpu/gpu_results.md
