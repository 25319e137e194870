#!/usr/bin/env bash
# Install the pinned CPU build of PyTorch into the environment of a Python interpreter, before
# napari-duet itself. pyproject.toml declares torch as a range (so installing the plugin keeps a
# user's own CUDA torch); on a fresh machine a bare `pip install` would pick the multi-GB CUDA
# build, so the Quick start and the packaging check install this CPU build first.
#   bash scripts/install_cpu_torch.sh PYTHON
set -euo pipefail

TORCH_VERSION="2.13.0"        # the CPU build every test and benchmark in this repository ran on
py="${1:?usage: install_cpu_torch.sh PYTHON}"

have="$("$py" -c 'from importlib.metadata import version; print(version("torch"))' 2>/dev/null || true)"
[ "$have" = "${TORCH_VERSION}+cpu" ] && exit 0

echo "[torch] installing torch==${TORCH_VERSION}+cpu"
# A local wheel (pip's find-links or a mirror in pip.conf) first; then PyTorch's CPU index.
# pip's cache keeps the wheel, so a second environment does not download it again.
"$py" -m pip install -q "torch==${TORCH_VERSION}+cpu" 2>/dev/null \
  || "$py" -m pip install -q "torch==${TORCH_VERSION}+cpu" \
       --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
