#!/usr/bin/env bash
# The main job, from a fresh machine: set up the host (idempotent), then run the demo workflow.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/scripts/setup_host.sh"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
exec "$repo/.host/venv/bin/python" "$repo/scripts/run_demo.py" "$@"
