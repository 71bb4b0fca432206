#!/usr/bin/env bash
# Install everything edgecompress needs on a Debian/Ubuntu machine:
#  - Debian's dataset-fashion-mnist (the real Fashion-MNIST IDX files, MIT licence)
#  - openssh-server/client (SSH device checks and their tests)
#  - qemu-user-static, binfmt-support (update-binfmts registers qemu; apt may leave this recommended package out)
#    and debootstrap: the emulated aarch64 device that mobile-cpu and raspberry-pi compare their candidates'
#    outputs on (edgecompress device prepare --arch aarch64 builds it once, as root)
#  - a virtual environment .venv with the package and its pinned dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist openssh-server openssh-client \
    qemu-user-static binfmt-support debootstrap >/dev/null
else
  echo "no apt-get: put the four Fashion-MNIST IDX files in a folder and set data.path in params.yaml" >&2
fi
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: an unpinned resolution would pull multi-GB CUDA wheels.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
echo "installed: $(.venv/bin/python -c 'import torch, onnxruntime, ai_edge_litert; print("torch", torch.__version__, "| onnxruntime", onnxruntime.__version__)')"
