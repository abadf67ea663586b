#!/usr/bin/env bash
# The batch evaluation (scripts/evaluate.py --help): sets up the host (idempotent), then runs it.
# Every argument goes to scripts/evaluate.py, e.g.
#   bash scripts/evaluate.sh --sample --out out/eval
#   bash scripts/evaluate.sh --videos DATA --prompts DATA/LOVEU-TGVE-2023_Dataset.csv --out OUT --settings paper --clip CLIP
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$repo/scripts/setup_host.sh" > "${TMPDIR:-/tmp}/smoothvideo-setup.log" 2>&1 \
  || { cat "${TMPDIR:-/tmp}/smoothvideo-setup.log" >&2; exit 1; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$repo/.host/venv/bin/python" "$repo/scripts/evaluate.py" "$@"
