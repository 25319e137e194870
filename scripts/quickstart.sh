#!/usr/bin/env bash
# One entry point for the README's Quick start:
#   bash scripts/quickstart.sh napari   # set everything up, open napari with the plugin and a sample
#   bash scripts/quickstart.sh test     # set everything up, check the package, run the whole test suite
# Works on a fresh Debian machine with Python 3.11 and root (system packages come from apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-napari}"
shift || true
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

apt_packages=(
  xvfb xauth
  libgl1 libegl1 libgl1-mesa-dri libglib2.0-0 libdbus-1-3 libfontconfig1 libxrender1 libxi6
  libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0
  libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xfixes0 libxcb-xkb1
)

setup_system() {
  local missing=()
  for p in "${apt_packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "[quickstart] installing system packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

setup_python() {
  if [ ! -x .venv/bin/python ]; then
    echo "[quickstart] creating .venv"
    "$PY" -m venv .venv
  fi
  # The stamp skips pip when nothing changed.
  local stamp=.venv/.duet-installed
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "[quickstart] installing napari-duet and its dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    # The CPU build of torch before the package: pyproject.toml declares a range, which a bare
    # pip would fill with the multi-GB CUDA build.
    bash scripts/install_cpu_torch.sh .venv/bin/python
    .venv/bin/python -m pip install -q -e ".[testing]"
    touch "$stamp"
  fi
}

setup_system
setup_python

case "$mode" in
  napari)
    if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]; then
      echo "[quickstart] no display found: running napari on a virtual screen (xvfb-run)."
      exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/launch_napari.py "$@"
    fi
    exec .venv/bin/python scripts/launch_napari.py "$@"
    ;;
  test)
    .venv/bin/ruff check src tests benchmarks scripts docs
    .venv/bin/npe2 validate napari-duet
    # Architecture contracts (pyproject.toml [tool.importlinter]): Qt-free core, independent
    # method packages, shared modules that never reach into a method package.
    .venv/bin/lint-imports
    # The package a user installs: sdist + wheel, twine check, the wheel in a fresh venv outside
    # the tree (samples, manifest, demo model). Skipped when pytest gets arguments (a targeted run).
    if [ $# -eq 0 ]; then bash scripts/check_package.sh .venv/bin/python; fi
    # pytest-xvfb starts a virtual screen for the GUI tests (offscreen Qt cannot draw layers).
    exec .venv/bin/python -m pytest "$@"
    ;;
  *)
    echo "usage: bash scripts/quickstart.sh napari|test [args]" >&2
    exit 2
    ;;
esac
