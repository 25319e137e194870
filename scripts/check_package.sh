#!/usr/bin/env bash
# The package a user installs: build the sdist and the wheel, check their metadata (twine), then
# install the wheel into a fresh venv outside the source tree and run what a user would run:
# `duet --help`, `npe2 validate napari-duet` and every sample of the napari manifest. This proves
# napari.yaml and the bundled demo model ship, and that installing the plugin keeps the torch
# already in the environment (torch is a range in pyproject.toml).
#   bash scripts/check_package.sh [PYTHON]     # PYTHON builds (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
py="${1:-.venv/bin/python}"

work="$(mktemp -d -t duet-package.XXXXXX)"
trap 'rm -rf "$work"' EXIT

echo "[package] building the sdist and the wheel"
# python -m build makes the sdist, then the wheel from that sdist: a file missing from the sdist
# is missing from the wheel too.
"$py" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
"$py" -m twine check --strict "$work/dist"/*
"$py" - "$work/dist" <<'PY'
import sys, tarfile, zipfile
from pathlib import Path

dist = Path(sys.argv[1])
(wheel,), (sdist,) = dist.glob("*.whl"), dist.glob("*.tar.gz")
in_wheel = zipfile.ZipFile(wheel).namelist()
in_sdist = tarfile.open(sdist).getnames()
for pattern in ("napari.yaml", "split_demo.safetensors"):
    for name, files in ((wheel.name, in_wheel), (sdist.name, in_sdist)):
        hits = [f for f in files if f.endswith("/" + pattern) and "napari_duet/" in f]
        assert hits, f"{pattern} is missing from {name}"
        print(f"[package] {name}: {', '.join(hits)}")
assert not any(f.startswith(("tests/", "benchmarks/")) for f in in_wheel), "tests leaked into the wheel"
PY

echo "[package] installing the wheel into a fresh venv (outside the source tree)"
"$py" -m venv "$work/venv"
vpy="$work/venv/bin/python"
# The CPU torch first (pip's cache or a local wheel: no second download), then the wheel.
bash scripts/install_cpu_torch.sh "$vpy"
torch_version() { "$vpy" -c 'from importlib.metadata import version; print(version("torch"))'; }
torch_before="$(torch_version)"
"$vpy" -m pip install -q "$work"/dist/*.whl npe2

cd "$work"   # nothing of the source tree on the path from here on
unset PYTHONPATH
torch_after="$(torch_version)"
[ "$torch_before" = "$torch_after" ] \
  || { echo "[package] installing the wheel replaced torch $torch_before by $torch_after" >&2; exit 1; }
"$work/venv/bin/duet" --help >/dev/null
echo "[package] duet --help: ok"
"$work/venv/bin/npe2" validate napari-duet
# -I: isolated mode, neither the script's folder nor PYTHONPATH on sys.path.
QT_QPA_PLATFORM=offscreen "$vpy" -I "$repo/scripts/check_installed.py" "$repo"
echo "[package] ok"
