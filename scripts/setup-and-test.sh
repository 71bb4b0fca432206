#!/usr/bin/env bash
# The README's test command: install everything, then run the whole test suite (slow e2e included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# The layering (pyproject.toml [tool.importlinter]): wings over the ground, no cycles, a standalone runner.
.venv/bin/lint-imports
.venv/bin/python -m pytest -q
