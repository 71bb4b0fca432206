#!/usr/bin/env bash
# The README's test command: install everything, then run the whole test suite (slow e2e included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# The emulated aarch64 device (about 4 minutes, mostly one core), prepared beside the tests: the tests that run on
# it wait for it (one lock), or skip saying why when this machine cannot emulate (no root, no binfmt_misc).
mkdir -p .cache
( .venv/bin/edgecompress device prepare --arch aarch64 > .cache/prepare-aarch64.log 2>&1 \
  || echo "the emulated aarch64 device was not prepared: see .cache/prepare-aarch64.log" >&2 ) &
# The layering (pyproject.toml [tool.importlinter]): wings over the ground, no cycles, a standalone runner.
.venv/bin/lint-imports
status=0
# Both cores (pytest-xdist): the serial suite took 34 min on a 2-core AVX2 VM, over CI's 30-minute aim.
.venv/bin/python -m pytest -q -n 2 || status=$?
wait  # the device preparation, if still running: nothing outlives the test command
exit "$status"
