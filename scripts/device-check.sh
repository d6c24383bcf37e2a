#!/usr/bin/env bash
# Everything a GPU must prove, in one run of at most 8 minutes on a lent device machine:
#   1. the card (nvidia-smi, torch)                                            ~5 s
#   2. the GPU tests (pytest -m gpu tests/)                                    <= 120 s
#   3. `bench --matrix` eager fp16: ultrares-compact-x4, ultrares-wide-x4, RRDB (random weights),
#      480x270 -> 1920x1080 and 960x540 -> 3840x2160, batch 1/4/8          <= 90 s
#   4. the same matrix for compile (and tensorrt where torch-tensorrt imports),
#      the target cases first; rows are written as they finish                 <= 150 s
#   5. a 4-camera `ultrares serve` for 60 s with an alpha change on one camera
#      (HTTP time of the PATCH, frames in / out / dropped around it, /metrics)   <= 95 s
# One results file: $OUT/device-check.json (default ./device-check-out), with the logs beside it.
# Each step has its own time limit, so one that hangs does not cost the others. Needs the wheels
# that scripts/device-wheels.sh puts in .whl/ (name .whl in the device tool's carry).
# DEVICE=cpu runs the same steps on the CPU, to try the script itself anywhere (slowly).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device-check-out}
DEVICE=${DEVICE:-cuda}
WORK=$(mktemp -d /tmp/device-check.XXXXXX)
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the carried wheels failed" >&2; exit 2; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 DEVICE OUT WORK
START=$(date +%s)
step() { echo "== $1 (t=$(( $(date +%s) - START )) s)"; }

step "card"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
              torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"; } >"$WORK/card.txt" 2>&1
cat "$WORK/card.txt"

step "GPU tests"
timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider -rs tests/ >"$OUT/pytest-gpu.log" 2>&1
echo "exit $?"; tail -n 5 "$OUT/pytest-gpu.log"

# matrix.py ENGINES OUTFILE: one JSON row per line, the target cases first, flushed as they finish
cat >"$WORK/matrix.py" <<'PY'
import json, os, sys
from ultrares_stream.engine.matrix import cases, run_matrix

engines, out = sys.argv[1].split(","), sys.argv[2]
order = cases(("ultrares-compact-x4",), ((960, 540),)) + cases(("RRDB",), ((480, 270),)) + \
        cases(("ultrares-wide-x4",), ((960, 540), (480, 270))) + cases(("ultrares-compact-x4",), ((480, 270),)) + \
        cases(("RRDB",), ((960, 540),))
with open(out, "a") as fh:
    for case in order:
        for engine in engines:
            for row in run_matrix([engine], batches=(1, 4, 8), device=os.environ["DEVICE"], cases=(case,),
                                  warmup=2, iters=6):
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                print(row, flush=True)
PY
step "bench --matrix: eager"
: >"$WORK/matrix.jsonl"
timeout 90 python3 "$WORK/matrix.py" eager "$WORK/matrix.jsonl" >>"$OUT/bench.log" 2>&1
echo "exit $? ($(wc -l <"$WORK/matrix.jsonl") rows)"

step "bench --matrix: compile (tensorrt where installed)"
ENGINES=compile
python3 -c "from ultrares_stream.engine.tensorrt import tensorrt_available as a; raise SystemExit(0 if a()[0] else 1)" \
  2>/dev/null && ENGINES=compile,tensorrt
timeout 150 python3 "$WORK/matrix.py" "$ENGINES" "$WORK/matrix.jsonl" >>"$OUT/bench.log" 2>&1
echo "exit $? ($(wc -l <"$WORK/matrix.jsonl") rows)"

step "serve: 4 cameras for 60 s, an alpha change at about 25 s"
timeout 95 python3 - >"$OUT/serve.log" 2>&1 <<'PY'
import json, os, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import av
import numpy as np

work = Path(os.environ["WORK"])
clip = work / "cam.mkv"
with av.open(str(clip), "w") as c:  # 480x270, 25 fps, 100 s: a moving bar over noise (files are read unpaced)
    v = c.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
    v.width, v.height, v.pix_fmt = 480, 270, "yuv420p"
    base = np.random.default_rng(0).integers(0, 256, (270, 480, 3), dtype=np.uint8)
    for i in range(2500):
        img = base.copy()
        img[:, (4 * i) % 480:(4 * i) % 480 + 16] = 255
        for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(p)
    for p in v.encode(None):
        c.mux(p)
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
result = {"cameras": 4, "input": "480x270", "output": "1920x1080", "model": "ultrares-compact-x4"}
try:  # a paced live camera (the demo RTSP server looping the clip): drops are then measurable
    from ultrares_stream.demo.server import RtspServer

    camera = RtspServer(port=0, video=clip).start(timeout=30)
    source, result["input_kind"] = camera.camera_url, "rtsp (live, paced)"
except Exception as exc:  # no GStreamer RTSP server on this host: files, read unpaced, never drop
    camera, source, result["input_kind"] = None, clip, f"file (unpaced, drops not measurable: {exc})"
cams = "\n".join(f"  - {{name: cam{i}, input: '{source}', output: {work}/out{i}.mkv}}" for i in range(4))
cfg = work / "serve.yaml"
cfg.write_text(f"server: {{host: 127.0.0.1, port: {port}}}\ninference: {{device: {os.environ['DEVICE']}}}\n"
               f"defaults: {{model: ultrares-compact-x4, alpha: 0.0, output_size: 1080p}}\ncameras:\n{cams}\n")
url = f"http://127.0.0.1:{port}"


def get(path):
    with urllib.request.urlopen(url + path, timeout=5) as r:
        body = r.read()
        return json.loads(body) if path.startswith("/api") else body.decode()


t0 = time.monotonic()
serve = subprocess.Popen([sys.executable, "-m", "ultrares_stream", "serve", "--config", str(cfg), "--duration", "60"])
try:
    while time.monotonic() - t0 < 45:
        try:
            urllib.request.urlopen(url + "/readyz", timeout=2)
            break
        except Exception:
            time.sleep(0.5)
    result["ready_s"] = round(time.monotonic() - t0, 2)
    time.sleep(max(0.0, 25 - (time.monotonic() - t0)))
    before = get("/api/v1/streams")["streams"]
    req = urllib.request.Request(url + "/api/v1/streams/cam0", data=b'{"alpha": 0.5}', method="PATCH",
                                 headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()
    result["alpha_change_http_ms"] = round((time.perf_counter() - t) * 1e3, 2)
    time.sleep(10)
    after = get("/api/v1/streams")["streams"]
    result["around_alpha_change"] = [
        {"camera": a["name"], "alpha": b["alpha"], "fps_out_before": a["fps_out"], "fps_out_after": b["fps_out"],
         "frames_out_10s": b["frames_out"] - a["frames_out"], "drops_10s": b["drops"] - a["drops"],
         "latency_p95_s": b["latency_p95_s"]} for a, b in zip(before, after)]
    (work / "metrics.txt").write_text(get("/metrics"))
    result["metrics"] = [ln for ln in (work / "metrics.txt").read_text().splitlines()
                         if ln.startswith(("ultrares_batch_inference_seconds_sum", "ultrares_batch_inference_seconds_count",
                                           "ultrares_frames_out_total", "ultrares_frames_dropped_total"))]
except Exception as exc:  # e.g. serve ended early: still write what was measured
    result["error"] = f"{type(exc).__name__}: {exc}"
finally:
    result["serve_exit"] = serve.wait(40) if serve.poll() is None else serve.returncode
    if camera is not None:
        camera.stop()
    (work / "serve.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
PY
echo "exit $?"; tail -n 25 "$OUT/serve.log"

step "results"
python3 - <<'PY'
import json, os
from pathlib import Path

work, out = Path(os.environ["WORK"]), Path(os.environ["OUT"])
def read(name, parse):
    p = work / name
    return parse(p.read_text()) if p.exists() and p.stat().st_size else None
log = (out / "pytest-gpu.log").read_text().splitlines() if (out / "pytest-gpu.log").exists() else []
results = {"card": read("card.txt", str.strip), "gpu_tests": log[-1] if log else None,
           "matrix": read("matrix.jsonl", lambda t: [json.loads(x) for x in t.splitlines() if x.strip()]),
           "serve": read("serve.json", json.loads)}
(out / "device-check.json").write_text(json.dumps(results, indent=1))
print(f"{out}/device-check.json: {len(results['matrix'] or [])} matrix rows, serve "
      f"{'ok' if results['serve'] else 'missing'}, tests: {results['gpu_tests']}")
PY
step "done"
rm -rf "$WORK"
