#!/usr/bin/env bash
# A first look in a few minutes: the whole chain (teacher, 2-member ensemble, distill, prune with a
# two-level ladder, calibrate, export, the candidate pool, a build and check on this machine, the report) on 5,000 Fashion-MNIST images with short training,
# in a throwaway copy: your params.yaml, models/, metrics/ and dvc.lock are not touched.
# Its numbers are a QUICK LOOK, far below the README's: use `bash scripts/setup-and-run.sh` for those.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then bash scripts/install.sh; fi
export PATH="$PWD/.venv/bin:$PATH"  # dvc.yaml runs `python`: make it the venv's
work="$(mktemp -d -t edgecompress-quick-look.XXXXXX)"
cp -r dvc.yaml params.yaml stages targets src user "$work"/  # src, user: the stages depend on the code they run
mkdir -p "$work/models/members"
python - "$work" <<'PY'
import sys
from pathlib import Path

import yaml

work = Path(sys.argv[1])
p = yaml.safe_load((work / "params.yaml").read_text())
p["data"]["limit"] = 5000
p["train_teacher"].update(ensemble_size=2, members=[1], member_epochs=2)
p["train_teacher"]["train"]["epochs"] = 5
p["distill"]["train"]["epochs"] = 5
p["prune"].update(steps=1, latency_runs=20, ladder=[0.5])
# Three formats instead of six: the candidate pool exports every model in each of them.
p["export"]["formats"] = ["fp32.onnx", "int8.onnx", "int8.tflite"]
p["prune"]["finetune"]["epochs"] = 2
p["calibrate"].update(samples=128, val_samples=200)
p["check"]["targets"] = ["quick-look"]
(work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
# This machine, with budgets only a broken build misses: a quick look checks that the chain works.
(work / "targets/quick-look.yaml").write_text("""\
name: quick-look
description: QUICK LOOK on this machine (5,000 images, short training); not a real target
hardware: {arch: any}
build: {models: all, precisions: [int8, fp32], engines: [onnxruntime, litert]}
runtime: {threads: 1, providers: [CPUExecutionProvider]}
device: local
bench: {warmup: 5, runs: 50, batch: 1, max_seconds: 10}
budgets:
  latency_ms: {p50: 100.0}
  min_accuracy: 0.5
""")
PY
repo="$PWD"
cd "$work"
dvc init --no-scm -q
cp -r "$repo/.dvc/plots" "$repo/.dvc/plots.html" .dvc/  # the plot templates; the page with vega inlined
dvc config plots.html_template plots.html  # (offline, DVC's own page loads vega from a CDN: a blank page)
start=$SECONDS
dvc repro
echo
cat reports/summary.md
echo "QUICK LOOK done in $((SECONDS - start)) s, in $work (5,000 images, short training: not the README's results)"
echo "charts: cd $work && dvc plots show"
