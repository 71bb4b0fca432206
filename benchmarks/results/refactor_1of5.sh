#!/bin/bash
# 1/5-size dvc repro of one commit in an isolated copy; shared measurement cache.
set -e
COMMIT=$1; LABEL=$2
D=/tmp/r15/$LABEL
rm -rf $D && mkdir -p $D
cd /work/main && git archive $COMMIT | tar -x -C $D
cd $D
sed -i 's/^  limit: null .*/  limit: 10000/' params.yaml
grep -n "^  limit" params.yaml
git init -q . && git add -A && git -c user.email=a@b -c user.name=r15 commit -qm snapshot
/work/main/.venv/bin/dvc init -q 2>/dev/null || true
/work/main/.venv/bin/dvc config core.no_scm true || true
/work/main/.venv/bin/dvc config core.autostage false || true
export PATH=/work/main/.venv/bin:$PATH PYTHONPATH=$D/src EDGECOMPRESS_CACHE=/tmp/r15/cache
start=$(date +%s)
dvc repro > $D.log 2>&1; rc=$?
echo "$LABEL rc=$rc seconds=$(( $(date +%s) - start ))" >> /tmp/r15/summary.txt
