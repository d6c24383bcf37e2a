#!/usr/bin/env bash
# Fetch, into .whl/, the Python wheels that a lent GPU machine lacks for scripts/device-check.sh.
# That machine has Python 3.12 with PyTorch, numpy, safetensors, rich, pyyaml, prometheus-client
# and pytest, but no PyAV or pydantic, and it cannot reach a package index. Run this here (it
# needs the network), then name .whl in the device tool's `carry`. Versions: those of .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
[ -x "$py" ] || { echo "run scripts/setup.sh first (the versions come from .venv)" >&2; exit 2; }
pins=$("$py" - <<'PY'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in ("av", "pydantic", "pydantic-core", "annotated-types", "typing-inspection")))
PY
)
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl $pins
du -sh .whl && ls .whl
