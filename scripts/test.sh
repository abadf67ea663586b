#!/usr/bin/env bash
# The test suite, from a fresh machine: set up the hosts (idempotent), then run every test
# (unit tests of the core, and integration tests against real ComfyUI servers: each one on
# ComfyUI 0.3.75 and 0.33.0, and the every_host set on 0.17.2, the test id naming the version).
#
# With no arguments the unit tests run twice: first on plain CPU kernels (PyTorch's own with
# ATEN_CPU_CAPABILITY=default, oneDNN's and MKL's capped at SSE4), then, with everything else,
# on this CPU's best kernels (avx2, avx512). A tolerance that holds on one CPU's kernels only
# thus fails on every machine.
# Extra arguments go to pytest, in one run (ATEN_CPU_CAPABILITY=... picks its kernels).
# The exit code is pytest's (5, "no tests ran", fails too); the first failing run's, if any.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/scripts/setup_host.sh"
cd "$repo"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
pytest=("$repo/.host/venv/bin/python" -m pytest -q -rs)
if [ $# -gt 0 ]; then
  exec "${pytest[@]}" "$@"
fi
echo "test.sh: unit tests on plain CPU kernels (ATEN_CPU_CAPABILITY=default, oneDNN and MKL at SSE4)"
ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2 "${pytest[@]}" tests/unit
best=$("$repo/.host/venv/bin/python" -c "import torch; print(torch.backends.cpu.get_cpu_capability())")
echo "test.sh: the whole suite on this CPU's best kernels ($best)"
exec "${pytest[@]}"
