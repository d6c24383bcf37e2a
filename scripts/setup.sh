#!/usr/bin/env bash
# Set up everything UltraRes Stream needs on a Debian machine, idempotently:
#  - system packages: GStreamer RTSP server (demo camera + tests), Chromium (web tests),
#    promtool (alert-rule checks);
#  - a Python 3.11 virtual environment in .venv with the package and its test tools.
# On CPU-only machines torch is pinned to the 2.13.0 CPU build (an unpinned torch pulls
# a multi-GB CUDA build). Set ULTRARES_TORCH to override, e.g. ULTRARES_TORCH="torch==2.14.1".
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-x
  gstreamer1.0-libav python3-gi chromium chromium-driver prometheus fonts-dejavu-core)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "setup: installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
stamp=.venv/.ultrares-setup
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  if [ -z "${ULTRARES_TORCH:-}" ]; then
    if command -v nvidia-smi >/dev/null 2>&1; then ULTRARES_TORCH="torch>=2.13,<2.15"; else ULTRARES_TORCH="torch==2.13.0"; fi
  fi
  .venv/bin/pip install -q "$ULTRARES_TORCH"
  .venv/bin/pip install -q -e ".[dev]"
  touch "$stamp"
fi
echo "setup: ready (.venv/bin/ultrares)"
