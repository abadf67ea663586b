#!/usr/bin/env bash
# The test suite, from a fresh machine: set up the host (idempotent), then run every test
# (unit tests of the core, and integration tests against a real ComfyUI server).
# Extra arguments go to pytest. pytest's exit code is the script's (5, "no tests ran", fails too).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/scripts/setup_host.sh"
cd "$repo"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$repo/.host/venv/bin/python" -m pytest -q "$@"
