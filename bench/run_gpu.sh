#!/usr/bin/env bash
# The GPU benchmarks. Part 1 measures every target of the issue in one `device` call (a call may
# run 600 s); parts 2 and 3 hold the before/after pairs of each optimisation, each pair in one call
# (a later call may get another card):
#   here:   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 diffusers==0.42.1 -d bench/wheels
#   device: run(command="bash bench/run_gpu.sh 1", carry=["bench/wheels"])   # the targets, ~5 min
#           run(command="bash bench/run_gpu.sh 2", carry=["bench/wheels"])   # before/after, VL score, profile
#           run(command="bash bench/run_gpu.sh 3", carry=["bench/wheels"])   # torch.compile, channels-last
# The device image (python3 3.12, torch 2.11, huggingface_hub 1.33, transformers 5.17; see the device
# tool's KINDS.md) has no diffusers, and this host's diffusers 0.35.2 refuses huggingface_hub >= 1.0
# (it fails at `from diffusers import UNet2DConditionModel`). diffusers 0.42.1 needs huggingface_hub
# >= 1.32 and nothing else the image lacks; tests/unit pass with it here (243, 2026-11-25, with
# huggingface_hub 1.33 and transformers 5.17 on the path), and each row names the versions it ran.
# Prints Markdown rows for bench/RESULTS.md (device name and date in each row) and appends them to
# $OUT/gpu_results.md (the device tool's output folder; out/ elsewhere) as each one ends, so a call
# cut off at its time limit still brings back the rows before. One failing benchmark is reported
# as a row and does not stop the others: device time is scarce.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
part=${1:-1}
results=${OUT:-out}/gpu_results.md
mkdir -p "$(dirname "$results")"

deadline=$((SECONDS + 570))  # a device call may run 600 s; what is left under $OUT comes back

bench() {  # bench [timeout seconds] script args...: no row may run past the call's deadline
  local limit=240
  if [[ $1 =~ ^[0-9]+$ ]]; then limit=$1; shift; fi
  local left=$((deadline - SECONDS))
  if ((left < 30)); then
    echo "| skipped, the call's time is spent: $* |" | tee -a "$results"
    return
  fi
  ((limit > left)) && limit=$left
  echo "## $*" >&2
  if ! timeout "$limit" python3 "$@" | tee -a "$results"; then
    echo "| failed or over ${limit} s: $* |" | tee -a "$results"
  fi
}

if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    bench/wheels/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "from diffusers import UNet2DConditionModel, AutoencoderKL; import torch; assert torch.cuda.is_available()" \
  || exit 1
echo "part $part: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)" | tee -a "$results"
tune="bench/bench_tune.py --model sd15 --device cuda"
case $part in
1)
  # The targets: a 24 x 512 px step (<= 0.15 s) and the low-memory peaks (24 x 512 <= 12 GB,
  # 8 x 256 <= 6 GB) on One-shot Tune's path (frozen weights placed in bf16), the default mode
  # beside each; then DDIM inversion + 50-step CFG sampling with Eq. 5 (< 20 s; about 3.5 PFLOP of
  # UNet forwards at 24 x 512 px, ~4 s at the dense bf16 peak) and Eq. 5 against stock DDIM.
  bench $tune --frames 24 --size 512
  bench $tune --frames 24 --size 512 --gradient-checkpointing
  bench $tune --frames 8 --size 256 --gradient-checkpointing
  bench $tune --frames 8 --size 256
  bench 240 bench/bench_invert_sample.py --model sd15 --device cuda --frames 24 --size 512 --steps 50 --eq5-overhead 3
  ;;
2)
  # Before/after, each against a row of the same call: the frozen weights as ComfyUI holds them
  # (fp16, cast by autocast at every forward) instead of placed in bf16; the Tuner's former two
  # host syncs per step; checkpointing only the highest-resolution levels (RESULTS.md: estimated
  # 19.7 / 12.5 GiB at +18% / +27% FLOPs, against 8.5 GiB at +36% for all and 31.8 GiB for none).
  bench $tune --frames 24 --size 512
  bench $tune --frames 24 --size 512 --frozen autocast
  bench $tune --frames 24 --size 512 --frozen autocast --gradient-checkpointing
  bench $tune --frames 24 --size 512 --extra-host-syncs
  bench $tune --frames 8 --size 256 --extra-host-syncs
  bench $tune --frames 24 --size 512 --checkpoint-blocks down_blocks.0,up_blocks.3
  bench $tune --frames 24 --size 512 --checkpoint-blocks down_blocks.0,down_blocks.1,up_blocks.2,up_blocks.3
  bench bench/bench_vl_score.py --device cuda
  bench bench/bench_vl_score.py --device cuda --encode 24 512
  # Where a 24 x 512 px step's time goes: device busy fraction and the top operators.
  bench $tune --frames 24 --size 512 --profile "$(dirname "$results")/profile_tune_24x512.md"
  ;;
3)
  # torch.compile and channels-last on top of placement, against a baseline row on the same card
  # (compiling may take minutes).
  bench $tune --frames 24 --size 512
  bench 330 $tune --frames 24 --size 512 --compile
  bench $tune --frames 24 --size 512 --channels-last
  ;;
*) echo "usage: bash bench/run_gpu.sh 1|2|3" >&2; exit 2 ;;
esac
