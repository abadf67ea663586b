#!/usr/bin/env bash
# The GPU benchmarks, one `device` call a part (a call may run 600 s; a later call may get another card).
#
# Part 1, the node path users run: the pack's nodes inside ComfyUI (the project's ComfyUI 0.3.75, its
# model management, the UNet in fp16 under bf16 autocast), timed and measured stage by stage by
# bench/bench_scale.py over HTTP on the full-size random-weight SD1.5 checkpoint (written there):
#   here:   bash bench/gpu_carry.sh                     # bench/gpu/: ComfyUI's tree + 3 wheels, 43 MiB
#   device: run(command="bash bench/run_gpu.sh 1", carry=["bench/gpu"])
#   rehearsal on this CPU, the same steps at the tiny size in a venv with only what the device image
#   has: bash bench/rehearse_gpu.sh
# Parts 2-4, the core's diffusers path (smooth_core.Tuner, outside ComfyUI), before/after pairs:
#   here:   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 diffusers==0.42.1 -d bench/wheels
#   device: run(command="bash bench/run_gpu.sh 2", carry=["bench/wheels"])   # before/after, VL score, profile
#           run(command="bash bench/run_gpu.sh 3", carry=["bench/wheels"])   # torch.compile, channels-last
#           run(command="bash bench/run_gpu.sh 4", carry=["bench/wheels"])   # the core Tuner's targets
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

bench() {  # bench [timeout seconds] [--python P] script args...: no row may run past the call's deadline
  local limit=240 python=python3
  if [[ $1 =~ ^[0-9]+$ ]]; then limit=$1; shift; fi
  if [[ $1 == --python ]]; then python=$2; shift 2; fi
  local left=$((deadline - SECONDS))
  if ((left < 30)); then
    echo "| skipped, the call's time is spent: $* |" | tee -a "$results"
    return
  fi
  ((limit > left)) && limit=$left
  echo "## $*" >&2
  if ! timeout "$limit" "$python" "$@" | tee -a "$results"; then
    echo "| failed or over ${limit} s: $* |" | tee -a "$results"
  fi
}

node_host() {  # the node path's ComfyUI host (venv/ComfyUI/base, as setup_host.sh lays it out) from the carry
  local carry=${GPU_CARRY:-bench/gpu}
  host=${NODE_HOST:-/tmp/smoothvideo-host}
  [[ -f $carry/comfyui.tar.xz ]] || { echo "no $carry/comfyui.tar.xz: run bash bench/gpu_carry.sh here first" >&2; return 1; }
  rm -rf "$host" && mkdir -p "$host/venv/bin" "$host/frontend" "$host/base/models/checkpoints" "$host/base/models/smoothvideo"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$host/site" "$carry"/wheels/*.whl \
    || return 1
  tar -xJf "$carry/comfyui.tar.xz" -C "$host" || return 1
  printf '#!/bin/sh\nPYTHONPATH=%s${PYTHONPATH:+:$PYTHONPATH} exec %s "$@"\n' "$host/site" "$(command -v python3)" \
    > "$host/venv/bin/python"
  chmod +x "$host/venv/bin/python"
  echo '<!doctype html><title>SmoothVideo bench: no frontend</title>' > "$host/frontend/index.html"
  "$host/venv/bin/python" -c "import av, torchsde, torch; print('node host: torch', torch.__version__, 'av', av.__version__)"
}

core_path() {  # the core's diffusers path: diffusers from the carried wheel
  if ! python3 -c "import diffusers" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      bench/wheels/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  python3 -c "from diffusers import UNet2DConditionModel, AutoencoderKL; import torch; assert torch.cuda.is_available()" \
    || exit 1
}

device=${BENCH_DEVICE:-cuda}  # cpu only for the rehearsal (bench/rehearse_gpu.sh)
if [[ $device == cuda ]]; then
  echo "part $part: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)" | tee -a "$results"
fi
tune="bench/bench_tune.py --model sd15 --device cuda"
case $part in
1)
  # The node path: One-shot Tune, DDIM Invert Video and the sampler inside ComfyUI, per stage (seconds,
  # CUDA peak allocated / reserved, RSS) on a fresh server each, against txt2img of the same batch.
  # Targets (issue 32): a 24 x 512 px step <= 0.15 s; 24 x 512 px within 12 GB with checkpointing,
  # 8 x 256 px within 6 GB; inversion + 50-step CFG sampling at 24 x 512 px < 20 s.
  node_host || exit 1
  size_big=${BENCH_BIG:-24x512} size_small=${BENCH_SMALL:-8x256}
  scale() {  # scale FRAMESxSIZE [bench_scale options]
    local video=$1; shift
    bench 200 --python "$host/venv/bin/python" bench/bench_scale.py --host "$host" --device "$device" \
      --frames "${video%x*}" --size "${video#*x}" --server-arg=--front-end-root="$host/frontend" \
      ${BENCH_CHECKPOINT:+--checkpoint "$BENCH_CHECKPOINT"} \
      --json "$(dirname "$results")/scale_${video}_$RANDOM.json" "$@"
  }
  scale "$size_small" --steps 6 --sample-steps 2
  scale "$size_small" --steps 6 --sample-steps 2 --gradient-checkpointing
  scale "$size_small" --txt2img --sample-steps 2
  scale "$size_big" --steps 6 --sample-steps 50 --gradient-checkpointing
  scale "$size_big" --steps 6 --sample-steps 2
  scale "$size_big" --txt2img --sample-steps 2
  ;;
2)
  core_path
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
  core_path
  # torch.compile and channels-last on top of placement, against a baseline row on the same card
  # (compiling may take minutes).
  bench $tune --frames 24 --size 512
  bench 330 $tune --frames 24 --size 512 --compile
  bench $tune --frames 24 --size 512 --channels-last
  ;;
4)
  # The core Tuner's targets: a 24 x 512 px step (<= 0.15 s) and the low-memory peaks (24 x 512 <= 12 GB,
  # 8 x 256 <= 6 GB) with the frozen weights placed in bf16, the default mode beside each; then DDIM
  # inversion + 50-step CFG sampling with Eq. 5 (< 20 s; about 3.5 PFLOP of UNet forwards at 24 x 512
  # px, ~4 s at the dense bf16 peak) and Eq. 5 against stock DDIM.
  core_path
  bench $tune --frames 24 --size 512
  bench $tune --frames 24 --size 512 --gradient-checkpointing
  bench $tune --frames 8 --size 256 --gradient-checkpointing
  bench $tune --frames 8 --size 256
  bench 240 bench/bench_invert_sample.py --model sd15 --device cuda --frames 24 --size 512 --steps 50 --eq5-overhead 3
  ;;
*) echo "usage: bash bench/run_gpu.sh 1|2|3|4" >&2; exit 2 ;;
esac
