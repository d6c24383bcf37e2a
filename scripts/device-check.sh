#!/usr/bin/env bash
# The GPU checks of docs/gpu.md in one run, for a lent device machine (at most about 9 minutes):
#   1. the card (nvidia-smi), 2. the GPU tests (-m gpu), 3. `ultrares bench` (model alone and
#   pipeline side by side), 4. `ultrares bench --matrix` (engines x batch sizes).
# Results go to $OUT (default ./device-check-out): gpu.txt, pytest-gpu.log, bench.json,
# bench-matrix-eager.json, bench-matrix-compile.json and bench.log. Each step has its own time
# limit, so one that hangs does not cost the others. Needs the wheels that
# scripts/device-wheels.sh puts in .whl/ (name .whl in the device tool's carry).
# DEVICE=cpu runs the same steps on the CPU, to try the script itself anywhere.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device-check-out}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the carried wheels failed" >&2; exit 2; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
ultrares() { python3 -m ultrares_stream "$@"; }

step() { echo "== $1 ($(date +%T))"; }
step "card"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
              torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"; } | tee "$OUT/gpu.txt"

step "GPU tests"
timeout 240 python3 -m pytest -m gpu -q -p no:cacheprovider -rs tests/test_engine_gpu.py tests/test_sources.py \
  2>&1 | tee "$OUT/pytest-gpu.log" | tail -n 25

step "bench: model alone and pipeline"
timeout 120 ultrares bench --frames 300 --device "$DEVICE" --json >"$OUT/bench.json" 2>"$OUT/bench.log"
echo "exit $?"; tail -n 3 "$OUT/bench.log"

for engine in eager compile; do  # one run each, so that a slow compile cannot cost the eager figures
  step "bench: $engine engine x batch sizes"
  timeout 150 ultrares bench --matrix --engine "$engine" --batches 1,4,8 --frames 64 --device "$DEVICE" --json \
    >"$OUT/bench-matrix-$engine.json" 2>>"$OUT/bench.log"
  echo "exit $?"
done
step "done"
