#!/usr/bin/env bash
# All GPU benchmarks in one `device` call (the device image has torch but not diffusers):
#   here:   .host/venv/bin/pip download --no-deps diffusers==0.35.2 -d bench/wheels
#   device: run(command="bash bench/run_gpu.sh", carry=["bench/wheels"])
# Prints Markdown rows for bench/RESULTS.md (device name and date in each row) and keeps them in
# $OUT/gpu_results.md (the device tool's output folder; out/ elsewhere). One failing benchmark
# is reported as a row and does not stop the others: device time is scarce.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
results=${OUT:-out}/gpu_results.md
mkdir -p "$(dirname "$results")"
: > "$results"

bench() {  # bench [timeout seconds] script args...
  local limit=900
  if [[ $1 =~ ^[0-9]+$ ]]; then limit=$1; shift; fi
  echo "## $*" >&2
  if ! timeout "$limit" python "$@" | tee -a "$results"; then
    echo "| failed or over ${limit} s: $* |" | tee -a "$results"
  fi
}

python -c "import diffusers" 2>/dev/null || pip install --no-deps --quiet bench/wheels/diffusers-*.whl || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$results"
bench bench/bench_vl_score.py --device cuda
bench bench/bench_vl_score.py --device cuda --encode 24 512
for frames_size in "8 256" "24 512"; do
  set -- $frames_size
  bench bench/bench_tune.py --model sd15 --device cuda --frames "$1" --size "$2"
  bench bench/bench_tune.py --model sd15 --device cuda --frames "$1" --size "$2" --gradient-checkpointing
done
# DDIM inversion + 50-step CFG sampling with Eq. 5 (about 3.5 PFLOP of UNet forwards at 24 x 512 px:
# ~4 s at the H100's dense bf16 peak); the FLOP count runs on the CPU with fake tensors (~10 s).
bench bench/bench_invert_sample.py --model sd15 --device cuda --frames 24 --size 512 --steps 50 --eq5-overhead 3
# Optimisation variants of the 24 x 512 px step, for before/after rows on the same card
# (the default row above is "before"); compile may take minutes.
bench bench/bench_tune.py --model sd15 --device cuda --frames 24 --size 512 --frozen-dtype bf16
bench bench/bench_tune.py --model sd15 --device cuda --frames 24 --size 512 --frozen-dtype bf16 --gradient-checkpointing
bench bench/bench_tune.py --model sd15 --device cuda --frames 24 --size 512 --frozen-dtype bf16 --channels-last
bench 300 bench/bench_tune.py --model sd15 --device cuda --frames 24 --size 512 --frozen-dtype bf16 --compile
