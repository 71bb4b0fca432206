#!/bin/bash
# Issue #28's cost: every default target built (from an empty measurement cache) and checked, with the code
# before #28 (c462147, a worktree) and with this code, A B A B on the same machine. The pool, teacher and test
# set are the committed run's (models/). This code runs without the emulated device (XDG_CACHE_HOME empty):
# #29's agreement compares are its own feature, timed in docs/results.md.
#   git worktree add /work/wt-old c462147
#   farm-bench -n 2 --warmup 0 --timeout 950 --vs 'deploy_all.sh /work/wt-old' -- env XDG_CACHE_HOME=/tmp/empty deploy_all.sh /work/main
# deploy_all.sh ROOT:
set -e
root=$1; out=$(mktemp -d)
cd "$root"
for t in mobile-cpu raspberry-pi iot-camera gpu-server host photo-sorter; do
  PYTHONPATH=$root/src /work/main/.venv/bin/python -m edgecompress.cli -q build --target targets/$t.yaml \
    --candidates /work/main/models/candidates --out $out/$t --out-md $out/$t-build.md --cache $out/cache
  PYTHONPATH=$root/src /work/main/.venv/bin/python -m edgecompress.cli -q check --target targets/$t.yaml \
    --artifacts $out/$t --testset /work/main/models/candidates/testset.npz --out-json $out/$t.json \
    --out-md $out/$t-check.md --teacher /work/main/models/teacher.pt || true
done
rm -rf "$out"
