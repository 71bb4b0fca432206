#!/usr/bin/env bash
# The README's run command: install everything, then run the whole pipeline with DVC.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"  # dvc.yaml runs `python`: make it the venv's
.venv/bin/dvc repro "$@"
.venv/bin/dvc metrics show
