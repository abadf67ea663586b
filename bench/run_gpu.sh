#!/usr/bin/env bash
# All GPU benchmarks in one `device` call (the device image has torch but not diffusers):
#   here:   .host/venv/bin/pip download --no-deps diffusers==0.35.2 -d bench/wheels
#   device: run(command="bash bench/run_gpu.sh", carry=["bench/wheels"])
# Prints Markdown rows for bench/RESULTS.md (device name and date in each row).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python -c "import diffusers" 2>/dev/null || pip install --no-deps --quiet bench/wheels/diffusers-*.whl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python bench/bench_vl_score.py --device cuda
python bench/bench_vl_score.py --device cuda --encode 24 512
for frames_size in "8 256" "24 512"; do
  set -- $frames_size
  python bench/bench_tune.py --model sd15 --device cuda --frames "$1" --size "$2"
  python bench/bench_tune.py --model sd15 --device cuda --frames "$1" --size "$2" --gradient-checkpointing
done
# DDIM inversion + 50-step CFG sampling with Eq. 5 (about 3.5 PFLOP of UNet forwards at 24 x 512 px:
# ~4 s at the H100's dense bf16 peak); the FLOP count runs on the CPU with fake tensors (~10 s).
python bench/bench_invert_sample.py --model sd15 --device cuda --frames 24 --size 512 --steps 50
# Optimisation variants of the 24 x 512 px step, for before/after rows on the same card
# (the default row above is "before"); compile may take minutes or fail: it does not stop the rest.
python bench/bench_tune.py --model sd15 --device cuda --frames 24 --size 512 --frozen-dtype bf16
python bench/bench_tune.py --model sd15 --device cuda --frames 24 --size 512 --frozen-dtype bf16 --gradient-checkpointing
python bench/bench_tune.py --model sd15 --device cuda --frames 24 --size 512 --frozen-dtype bf16 --channels-last
timeout 300 python bench/bench_tune.py --model sd15 --device cuda --frames 24 --size 512 --frozen-dtype bf16 --compile \
  || echo "| torch.compile variant failed or took over 300 s |"
