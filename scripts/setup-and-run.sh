#!/usr/bin/env bash
# The README's run command: install everything, then run the whole pipeline with DVC.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"  # dvc.yaml runs `python`: make it the venv's
# params.yaml and the checked profiles first, with a line naming the bad key: DVC expands check.targets into
# stage paths before any stage runs, so a name like ../x stops there with an "overlapping outputs" error.
.venv/bin/edgecompress validate
# The emulated aarch64 device the phone and Pi profiles compare outputs on (once; a no-op after). Where this machine
# cannot emulate, one line says why and how, and the pipeline goes on without it.
.venv/bin/edgecompress -q device prepare --arch aarch64 \
  || echo "edgecompress: no emulated aarch64 device (above); builds go on without comparing outputs on it" >&2
.venv/bin/dvc repro "$@"
# The run's overview (a plain `dvc metrics show` puts every stage's keys in one table thousands of columns wide).
cat reports/summary.md
