"""Deployment files (deploy/): compose stack, images, Prometheus rules, Grafana dashboard, Kubernetes.

No Docker engine or cluster here, so: the compose files go through a compose-spec parser, the
Kubernetes manifests through `kubectl kustomize` (when kubectl is installed) and the Kubernetes
JSON schemas (kubernetes-validate), the alert rules through promtool (check + unit tests), and
every PromQL query of the dashboard and the alerts is checked against the metric names the
service exports - and run for real on a Prometheus server scraping a live exporter.
"""
from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ultrares_stream.config import load_config, parse_config
from ultrares_stream.metrics import Metrics
from ultrares_stream.shard import assign

from conftest import free_port, need_data

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose"
K8S = DEPLOY / "kubernetes"
PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "ultrares.json"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
KUBECTL = shutil.which("kubectl")
KUSTOMIZATIONS = ["base", "overlays/cpu", "overlays/gpu", "reprocess"]
#: metric names PromQL may use that Prometheus itself makes (not exported by the service)
PROMETHEUS_MADE = {"up"}


def _yaml(path: Path):
    return yaml.safe_load(path.read_text())


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)


# --------------------------------------------------------------------------------------------
# PromQL: metric names used by a query


_PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                    "unless", "offset", "inf", "nan", "atan2"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (Grafana variables allowed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    s = re.sub(r"\$\{?\w+\}?", "1m", s)                                # $__rate_interval, $camera
    s = re.sub(r"\{[^}]*\}", "", s)                                    # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)                                   # range / subquery windows
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)\s*(\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def test_promql_name_extraction():
    assert promql_metric_names(
        'histogram_quantile(0.99, sum by (camera, le) (rate(ultrares_end_to_end_seconds_bucket'
        '{camera=~"$camera", stage="decode"}[$__rate_interval]))) > 0.5') == {"ultrares_end_to_end_seconds_bucket"}
    assert promql_metric_names('a_total / on (camera) group_left b > 1 unless c offset 5m') == {"a_total", "b", "c"}
    assert promql_metric_names('label_values(ultrares_frames_in_total, camera)') == {"ultrares_frames_in_total",
                                                                                    "camera"}


# --------------------------------------------------------------------------------------------
# What the service exports


def _touch_all(metrics: Metrics, cameras=("cam-a",)) -> None:
    """Give every labelled metric of ``metrics`` a child, so the exposition shows its samples."""
    from prometheus_client import Counter, Gauge, Histogram, Info

    for metric in vars(metrics).values():
        if not hasattr(metric, "_labelnames"):
            continue
        for cam in cameras:
            values = {"camera": cam, "stage": "decode", "side": "source", "direction": "in",
                      "device": "cuda:0", "kind": "allocated", "status": "200", "state": "running"}
            child = metric.labels(**{n: values[n] for n in metric._labelnames}) if metric._labelnames else metric
            if isinstance(metric, Counter):
                child.inc()
            elif isinstance(metric, Histogram):
                child.observe(0.01)
            elif isinstance(metric, Gauge):
                child.set(1)
            elif isinstance(metric, Info):
                child.info({"model": "ultrares-compact-x4", "alpha": "0.5"})


def sample_names_from_exposition(text: str) -> set[str]:
    """Every sample name a /metrics page can carry, from its families (empty families included)."""
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"],
                "summary": ["_sum", "_count", "_created", ""], "info": ["_info"], "gauge": [""],
                "stateset": [""], "gaugehistogram": ["_bucket", "_gsum", "_gcount"], "unknown": [""]}
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + s for s in suffixes[family.type])
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture(scope="module")
def exported_names() -> set[str]:
    from prometheus_client import generate_latest

    metrics = Metrics()
    _touch_all(metrics)
    names = sample_names_from_exposition(generate_latest(metrics.registry).decode())
    assert "ultrares_end_to_end_seconds_bucket" in names and "ultrares_model_info" in names
    return names


def dashboard_queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for var in dash["templating"]["list"]:
        q = var.get("query")
        exprs.append(q["query"] if isinstance(q, dict) else q)
    return exprs


def alert_rules() -> list[dict]:
    return [r for g in _yaml(PROM / "alerts.yml")["groups"] for r in g["rules"]]


def test_dashboard_and_alerts_use_only_exported_metric_names(exported_names):
    bad = {}
    for expr in dashboard_queries() + [r["expr"] for r in alert_rules()]:
        names = promql_metric_names(expr)
        if expr.startswith("label_values("):
            names = promql_metric_names(expr[len("label_values("):].split(",")[0])
        unknown = names - exported_names - PROMETHEUS_MADE
        if unknown:
            bad[expr] = sorted(unknown)
    assert not bad, f"queries use metric names the service does not export: {bad}"


def test_dashboard_shows_everything_the_issue_asks_for():
    used = set().union(*(promql_metric_names(e) for e in dashboard_queries()))
    text = DASHBOARD.read_text()
    wanted = {"fps in/out": "ultrares_fps", "end-to-end latency": "ultrares_end_to_end_seconds_bucket",
              "stage latency": "ultrares_stage_seconds_bucket", "drops": "ultrares_frames_dropped_total",
              "queue depth": "ultrares_queue_depth", "reconnects": "ultrares_reconnects_total",
              "batch size": "ultrares_batch_size_bucket", "alpha": "ultrares_alpha",
              "GPU memory": "ultrares_gpu_memory_bytes"}
    missing = [what for what, name in wanted.items() if name not in used]
    assert not missing, missing
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (stage, le) (rate(ultrares_stage_seconds_bucket" in text
        assert f"histogram_quantile({quantile}, sum by (camera, le) (rate(ultrares_end_to_end_seconds_bucket" in text
    dash = json.loads(text)
    assert any(p.get("repeat") == "camera" for p in dash["panels"]), "no per-camera row"
    uids = {json.dumps(p.get("datasource")) for p in dash["panels"] if p["type"] != "row"}
    assert uids == {json.dumps({"type": "prometheus", "uid": "prometheus"})}
    ds = _yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yaml")["datasources"]
    assert [d["uid"] for d in ds] == ["prometheus"]
    assert ds[0]["url"] == "http://prometheus:9090"
    prov = _yaml(DEPLOY / "grafana/provisioning/dashboards/ultrares.yaml")["providers"][0]
    compose = _yaml(COMPOSE / "compose.yaml")
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"../grafana/ultrares.json:{prov['options']['path']}/ultrares.json:ro" in mounts


def test_a_query_with_an_unknown_metric_is_caught(exported_names):
    assert promql_metric_names("rate(ultrares_frames_total[5m])") - exported_names == {"ultrares_frames_total"}


def test_real_service_exports_what_the_dashboard_needs(tmp_path, exported_names):
    """Start `ultrares serve` with one file camera, scrape /metrics, compare with the dashboard."""
    from ultrares_stream.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    if "serve" not in commands:
        pytest.skip("`ultrares serve` is not in this checkout yet (names checked against Metrics instead)")
    weights = need_data("weights", "realesr-animevideov3.pth")  # a real x4 network, small enough for CPU
    import av
    import httpx
    import numpy as np

    clip = tmp_path / "in.mp4"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(300):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i % 250, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    port = free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"host": "127.0.0.1", "port": port},
        "inference": {"device": "cpu", "engine": "eager", "max_batch": 2},
        "cameras": [{"name": "file-cam", "input": str(clip), "output": str(tmp_path / "out.mp4"),
                     "model": str(weights)}]}))
    proc = subprocess.Popen([sys.executable, "-m", "ultrares_stream", "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        text = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
                if r.status_code == 200 and "ultrares_frames_in_total" in r.text:
                    text = r.text
                    if 'ultrares_frames_out_total{camera="file-cam"}' in r.text:
                        break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert text, f"no /metrics from `ultrares serve`: {proc.stdout.read() if proc.poll() is not None else ''}"
    finally:
        _stop(proc, 30)
    served = sample_names_from_exposition(text)
    used = set().union(*(promql_metric_names(e) for e in dashboard_queries() + [r["expr"] for r in alert_rules()]))
    used = {n for n in used if n.startswith("ultrares_")}
    assert used - served == set(), f"the running service lacks {sorted(used - served)}"


# --------------------------------------------------------------------------------------------
# Prometheus: config and rules through promtool, queries on a real Prometheus


needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")


def _prometheus_config_with_token_file(tmp_path: Path) -> Path:
    """The shipped prometheus.yml with its bearer-token file pointed at a real file (promtool and
    Prometheus open it) and its rules beside it."""
    prom = _yaml(PROM / "prometheus.yml")
    token = tmp_path / "api-token"
    token.write_text("test-token\n")
    for job in prom["scrape_configs"]:
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(token)
    shutil.copy(PROM / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom))
    return tmp_path / "prometheus.yml"


@needs_promtool
def test_promtool_checks_config_and_rules(tmp_path):
    r = _run([PROMTOOL, "check", "config", str(_prometheus_config_with_token_file(tmp_path))])
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run([PROMTOOL, "check", "rules", str(PROM / "alerts.yml")])
    assert r.returncode == 0 and f"SUCCESS: {len(alert_rules())} rules found" in r.stdout, r.stdout + r.stderr


@needs_promtool
def test_alerts_fire_on_bad_series_and_stay_quiet_on_good_ones():
    r = _run([PROMTOOL, "test", "rules", str(PROM / "alerts.test.yml")])
    assert r.returncode == 0, r.stdout + r.stderr
    tested = set(re.findall(r"alertname: (\w+)", (PROM / "alerts.test.yml").read_text()))
    assert tested == {r["alert"] for r in alert_rules()}, "every alert needs a promtool unit test"


@needs_promtool
def test_promtool_rejects_a_broken_rule(tmp_path):
    # The check above is not a rubber stamp.
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"alert": "Broken", "expr": "sum by (camera (ultrares_camera_up)"}]}]}))
    assert _run([PROMTOOL, "check", "rules", str(broken)]).returncode != 0


def test_alerts_have_severity_runbook_and_the_issue_topics():
    rules = alert_rules()
    ops = (REPO / "docs" / "operations.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", ops, re.M)}
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        anchor = rule["annotations"]["runbook"].split("#")[1]
        assert anchor in anchors, f"{rule['alert']}: runbook anchor #{anchor} not a heading in docs/operations.md"
    exprs = {r["alert"]: r["expr"] for r in rules}
    assert "ultrares_camera_up" in exprs["UltraResCameraDown"]
    assert "ultrares_end_to_end_seconds_bucket" in exprs["UltraResLatencyP99OverBudget"]
    assert "ultrares_frames_dropped_total" in exprs["UltraResFrameDrops"]
    assert "ultrares_reconnects_total" in exprs["UltraResReconnectStorm"]


def _stop(proc: subprocess.Popen, timeout: float) -> None:
    """Terminate a server process we started; kill it if it does not exit in time."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus server not installed (Debian package prometheus)")
def test_every_dashboard_query_returns_data_on_a_real_prometheus(tmp_path):
    """A live exporter (the service's Metrics, two cameras) scraped by a real Prometheus; every
    dashboard query must come back non-empty, so label names and values are right, not just names."""
    import httpx
    from prometheus_client import start_http_server

    metrics = Metrics()
    cams = ("cam-a", "cam-b")
    _touch_all(metrics, cams)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
    exporter_port = server.server_port
    prom_port = free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "ultrares", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}]}))
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}",
                             "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    api = f"http://127.0.0.1:{prom_port}/api/v1"
    try:
        def query(expr):
            r = httpx.get(f"{api}/query", params={"query": expr}, timeout=10)
            body = r.json()
            assert body["status"] == "success", (expr, body)
            return body["data"]["result"]

        deadline = time.monotonic() + 60
        scrapes = 0
        while time.monotonic() < deadline:
            for cam in cams:  # the pipeline keeps running between scrapes
                metrics.frames_in.labels(cam).inc(25)
                metrics.frames_out.labels(cam).inc(24)
                metrics.frames_dropped.labels(cam).inc(1)
                metrics.reconnects.labels(cam, "sink").inc()
                metrics.errors.labels(cam, "encode").inc()
                metrics.end_to_end_seconds.labels(cam).observe(0.12)
                metrics.fps.labels(cam, "out").set(24)
                for stage in ("decode", "queue", "inference", "encode", "publish"):
                    metrics.observe_stage(cam, stage, 0.02)
            metrics.batch_size.labels("cuda:0").observe(2)
            metrics.inference_seconds.labels("cuda:0").observe(0.05)
            metrics.gpu_memory_bytes.labels("cuda:0", "reserved").set(2**30)
            time.sleep(0.5)
            try:
                if scrapes < 4:
                    scrapes = int(float(query('count_over_time(up{job="ultrares"}[1m])')[0]["value"][1]))
                else:
                    break
            except (httpx.HTTPError, IndexError, KeyError):
                assert proc.poll() is None, f"prometheus exited: {proc.stderr.read()}"
        assert scrapes >= 4, "prometheus did not scrape the exporter"
        empty = []
        for expr in dashboard_queries():
            if expr.startswith("label_values("):
                r = httpx.get(f"{api}/label/camera/values", timeout=10).json()["data"]
                assert set(cams) <= set(r)
                continue
            concrete = expr.replace("$__rate_interval", "30s").replace("$camera", "cam-a")
            if not query(concrete):
                empty.append(expr)
        assert not empty, f"dashboard queries with no data: {empty}"
        for rule in alert_rules():  # alert expressions run too (their thresholds are unit-tested above)
            query(rule["expr"])
    finally:
        _stop(proc, 20)
        server.shutdown()


# --------------------------------------------------------------------------------------------
# Compose


def _compose_files():
    return [COMPOSE / "compose.yaml", COMPOSE / "compose.gpu.yaml"]


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose variable interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, $$ for a literal $."""
    def sub(m):
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group(1) or m.group(4), m.group(2), m.group(3)
        value = env.get(name)
        if op == ":-" and not value or op == "-" and value is None:
            return default
        if value is None:
            raise KeyError(f"compose variable {name} is not set and has no default")
        return value
    return re.sub(r"\$\$|\$\{(\w+)(?:(:?-)([^}]*))?\}|\$(\w+)", sub, text)


def load_compose(path: Path, env: dict[str, str] | None = None):
    """A compose file as compose reads it: YAML, then every string value interpolated."""
    def walk(node):
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return interpolate(node, env or {}) if isinstance(node, str) else node
    return walk(_yaml(path))


def test_compose_interpolation():
    assert interpolate("a ${X:-d} ${Y} $$Z ${W-e}", {"Y": "y"}) == "a d y $Z e"
    with pytest.raises(KeyError):
        interpolate("${NOPE}", {})


def test_compose_files_follow_the_compose_spec():
    compose_spec = pytest.importorskip("compose_spec", reason="compose-spec (PyPI) not installed")
    for path in _compose_files():
        # Every variable has a default: the stack comes up with no .env file.
        project = compose_spec.PyCompose.from_yaml(yaml.safe_dump(load_compose(path)))
        project.validate()
    services = compose_spec.PyCompose.from_yaml(yaml.safe_dump(load_compose(COMPOSE / "compose.yaml"))).service_names()
    assert set(services) == {"api-token", "mediamtx", "camera", "ultrares", "prometheus", "grafana"}
    # The parser is strict: a misspelt key or a bad duration is rejected.
    data = load_compose(COMPOSE / "compose.yaml")
    bad = copy.deepcopy(data)
    bad["services"]["ultrares"]["stop_grace_peroid"] = "30s"
    with pytest.raises(ValueError, match="stop_grace_peroid"):
        compose_spec.PyCompose.from_yaml(yaml.safe_dump(bad))
    bad = copy.deepcopy(data)
    bad["services"]["ultrares"]["healthcheck"]["interval"] = "15q"
    with pytest.raises(ValueError, match="interval"):
        compose_spec.PyCompose.from_yaml(yaml.safe_dump(bad))


def test_compose_with_the_docker_cli_when_present():
    docker = shutil.which("docker")
    cmd = None
    if docker and _run([docker, "compose", "version"], timeout=30).returncode == 0:
        cmd = [docker, "compose"]
    elif shutil.which("docker-compose"):
        cmd = [shutil.which("docker-compose")]
    if cmd is None:
        pytest.skip("no docker compose CLI on this machine (compose checked with compose-spec instead)")
    args = [a for f in _compose_files() for a in ("-f", str(f))]
    r = _run(cmd + args + ["config", "--quiet"], timeout=60, env={**os.environ, "ULTRARES_CLIP_DIR": str(REPO)})
    assert r.returncode == 0, r.stderr


def test_compose_stack_is_wired_together():
    data = _yaml(COMPOSE / "compose.yaml")
    services = data["services"]
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith((".", "/")) and "$" not in src:
                assert (COMPOSE / src).resolve().exists(), f"{name}: bind mount {src} does not exist"
            elif "$" not in src:
                assert src in data["volumes"], f"{name}: named volume {src} not declared"
    build = services["ultrares"]["build"]
    assert (COMPOSE / build["context"] / build["dockerfile"]).resolve().is_file()
    gpu_build = _yaml(COMPOSE / "compose.gpu.yaml")["services"]["ultrares"]["build"]
    assert (COMPOSE / gpu_build["context"] / gpu_build["dockerfile"]).resolve().is_file()
    # The ultrares config parses with the service's own loader and points at MediaMTX paths.
    config = load_config(COMPOSE / "ultrares.yaml")
    assert config.server.host == "0.0.0.0"
    assert f"{config.server.port}:{config.server.port}" in services["ultrares"]["ports"]
    mtx = _yaml(COMPOSE / "mediamtx.yml")
    patterns = [re.compile(p[1:]) for p in mtx["paths"] if p.startswith("~")]
    published = re.search(r"rtsp://\S+", services["camera"]["command"]).group(0)
    cams = config.cameras
    assert [c.input for c in cams] == [published], "ultrares reads what the simulator publishes"
    for url in [published] + [c.output for c in cams]:
        host, path = re.fullmatch(r"rtsp://([^:/]+):8554/(.+)", url).groups()
        assert host == "mediamtx" and any(p.fullmatch(path) for p in patterns), url
    # Prometheus scrapes the ultrares service on its configured port; it loads the alert rules.
    prom = _yaml(PROM / "prometheus.yml")
    targets = {j["job_name"]: j["static_configs"][0]["targets"] for j in prom["scrape_configs"]}
    assert targets["ultrares"] == [f"ultrares:{config.server.port}"]
    assert targets["mediamtx"] == [mtx["metricsAddress"].replace(":", "mediamtx:", 1)]
    assert prom["rule_files"] == ["alerts.yml"]
    assert "../prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in services["prometheus"]["volumes"]
    assert services["ultrares"]["stop_grace_period"] == "30s"
    assert "/healthz" in " ".join(services["ultrares"]["healthcheck"]["test"])


# --------------------------------------------------------------------------------------------
# Docker images


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def _ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins (a '!' pattern re-includes)."""
    ignored = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        regex = fnmatch.translate(pat).replace(".*", "[^/]*").replace("[^/]*[^/]*", ".*")
        parts = rel.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)) or pat == "**":
            ignored = not neg
    return ignored


# ids avoid the bare word "gpu": conftest skips tests with a "gpu" keyword on machines without CUDA.
@pytest.mark.parametrize("flavour", ["cpu", "gpu"], ids=["cpu-image", "cuda-image"])
def test_images_are_layered_non_root_with_a_healthcheck(flavour):
    dockerfile = DEPLOY / "docker" / f"Dockerfile.{flavour}"
    steps = _instructions(dockerfile)
    ops = [op for op, _ in steps]
    copies = [(i, rest) for i, (op, rest) in enumerate(steps) if op == "COPY" and "--from" not in rest]
    deps = next(i for i, rest in copies if "pyproject.toml" in rest)
    code = next(i for i, rest in copies if rest.startswith("ultrares_stream"))
    assert deps < code, "dependencies must be installed before the code is copied"
    assert any(op == "RUN" and "pip install" in rest for op, rest in steps[deps:code])
    assert [op for op, _ in steps[code + 1:code + 2]] == ["RUN"]
    user = [rest for op, rest in steps if op == "USER"][-1]
    assert user.split(":")[0] not in {"root", "0"}
    assert ops.index("USER") > max(i for i, (op, _) in enumerate(steps) if op == "FROM")  # in the final stage
    health = " ".join(rest for op, rest in steps if op == "HEALTHCHECK")
    assert "/healthz" in health
    text = dockerfile.read_text()
    if flavour == "cpu":
        assert re.search(r"FROM \$\{PYTHON_IMAGE\}", text) and "python:3.11-slim" in text
        assert "TORCH_VERSION=2.13.0" in text and "whl/cpu" in text
    else:
        assert "nvidia/cuda" in text and "[tensorrt]" in text and "python3.11" in text
    # Everything the Dockerfile copies from the context survives its .dockerignore, and junk does not.
    patterns = [p.strip() for p in (dockerfile.parent / f"{dockerfile.name}.dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for _, rest in copies:
        for src in rest.split()[:-1]:
            assert (REPO / src).exists(), src
            assert not _ignored(src, patterns), f"{src} is excluded by the .dockerignore"
    assert not _ignored("ultrares_stream/shard.py", patterns)
    for junk in (".venv/bin/python", ".git/HEAD", "tests/test_deploy.py", "engines/cache/x.engine",
                 "ultrares_stream/__pycache__/cli.cpython-311.pyc"):
        assert _ignored(junk, patterns), junk


# --------------------------------------------------------------------------------------------
# Kubernetes


def _resolve_kustomization(directory: Path) -> list[dict]:
    """The documents a kustomization refers to, checking that each reference exists."""
    k = _yaml(directory / "kustomization.yaml")
    docs = []
    for res in k.get("resources", []):
        target = (directory / res).resolve()
        assert target.exists(), f"{directory}: resource {res} does not exist"
        docs += _resolve_kustomization(target) if target.is_dir() else list(yaml.safe_load_all(target.read_text()))
    for gen in k.get("configMapGenerator", []):
        for f in gen.get("files", []):
            assert (directory / f.split("=")[-1]).is_file(), f"{directory}: configMap file {f} missing"
    for patch in k.get("patches", []):
        if "path" in patch:
            assert (directory / patch["path"]).is_file(), f"{directory}: patch {patch['path']} missing"
    return docs


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kustomization_references_resolve(kustomization):
    docs = _resolve_kustomization(K8S / kustomization)
    assert docs and all("apiVersion" in d and "kind" in d for d in docs)


def _built(kustomization: str) -> list[dict]:
    if KUBECTL is None:
        pytest.skip("kubectl (with built-in kustomize) not installed")
    r = _run([KUBECTL, "kustomize", str(K8S / kustomization)], timeout=60)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


# Structural schema of the Prometheus Operator ServiceMonitor fields used here (its CRD is not
# in the Kubernetes schemas); unknown fields are rejected, as the CRD's structural schema does.
SERVICEMONITOR_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {"type": "object", "required": ["selector", "endpoints"], "additionalProperties": False, "properties": {
            "selector": {"type": "object", "additionalProperties": False,
                         "properties": {"matchLabels": {"type": "object",
                                                        "additionalProperties": {"type": "string"}}}},
            "namespaceSelector": {"type": "object"}, "jobLabel": {"type": "string"},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "properties": {
                    "port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                    "scheme": {"enum": ["http", "https"]},
                    "interval": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                    "scrapeTimeout": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                    "honorLabels": {"type": "boolean"},
                    "authorization": {"type": "object", "additionalProperties": False, "required": ["credentials"],
                                      "properties": {"type": {"type": "string"}, "credentials": {
                                          "type": "object", "required": ["name", "key"], "additionalProperties": False,
                                          "properties": {"name": {"type": "string"}, "key": {"type": "string"},
                                                         "optional": {"type": "boolean"}}}}},
                    "relabelings": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                                               "properties": {
                                                                   "sourceLabels": {"type": "array"},
                                                                   "targetLabel": {"type": "string"},
                                                                   "regex": {"type": "string"},
                                                                   "replacement": {"type": "string"},
                                                                   "action": {"type": "string"}}}}}}}}}},
}


def _validate_k8s(doc: dict) -> None:
    import jsonschema
    import kubernetes_validate

    if doc["kind"] == "ServiceMonitor":
        jsonschema.validate(doc, SERVICEMONITOR_SCHEMA)
    else:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_built_manifests_validate_against_the_kubernetes_schemas(kustomization):
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed")
    docs = _built(kustomization)
    for doc in docs:
        _validate_k8s(doc)


def test_schema_validation_rejects_mistakes():
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed")
    import jsonschema
    import kubernetes_validate

    sts = next(d for d in _resolve_kustomization(K8S / "base") if d["kind"] == "StatefulSet")
    _validate_k8s(sts)
    bad = copy.deepcopy(sts)
    bad["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 60
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_k8s(bad)
    sm = next(d for d in _resolve_kustomization(K8S / "base") if d["kind"] == "ServiceMonitor")
    bad = copy.deepcopy(sm)
    bad["spec"]["endpoints"][0]["interval"] = "fast"
    with pytest.raises(jsonschema.ValidationError):
        _validate_k8s(bad)


def _by_kind(docs):
    return {d["kind"]: d for d in docs}


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_statefulset_shards_by_ordinal_and_terminates_gracefully(overlay):
    docs = _by_kind(_built(overlay))
    sts, svc, pdb, sm = docs["StatefulSet"], docs["Service"], docs["PodDisruptionBudget"], docs["ServiceMonitor"]
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    args = c.get("command", []) + c["args"]
    assert args[args.index("--shard-index") + 1] == "$(POD_INDEX)"
    assert args[args.index("--shard-count") + 1] == "$(SHARD_COUNT)"
    assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert int(env["SHARD_COUNT"]["value"]) == sts["spec"]["replicas"], "SHARD_COUNT must equal replicas"
    # The config the pods get parses, and every camera lands on exactly one of the replicas.
    cm = docs["ConfigMap"]
    assert any(v["configMap"]["name"] == cm["metadata"]["name"] for v in pod["volumes"] if "configMap" in v)
    config = parse_config(yaml.safe_load(cm["data"]["config.yaml"]))
    plan = assign([cam.name for cam in config.cameras], sts["spec"]["replicas"])
    assert sorted(n for names in plan.values() for n in names) == sorted(cam.name for cam in config.cameras)
    # Probes, graceful stop, headless service, PDB and ServiceMonitor agree on names and ports.
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert config.server.host == "0.0.0.0"
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["http"] == config.server.port
    assert c["lifecycle"]["preStop"]
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert svc["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == svc["metadata"]["name"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    for selector in (sts["spec"]["selector"]["matchLabels"], svc["spec"]["selector"],
                     pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    if overlay.endswith("gpu"):
        limits = c["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == 1 and c["image"].endswith(":gpu")


def test_reprocess_job_gives_each_index_one_file(tmp_path):
    docs = _by_kind(_built("reprocess"))
    job, cm = docs["Job"], docs["ConfigMap"]
    files = cm["data"]["files.txt"].splitlines()
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == len(files)
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    # Run the container's script for real with each index: a stand-in `ultrares` prints its args.
    etc, bin_ = tmp_path / "etc", tmp_path / "bin"
    etc.mkdir(), bin_.mkdir()
    (etc / "files.txt").write_text(cm["data"]["files.txt"])
    (bin_ / "ultrares").write_text("#!/bin/sh\necho \"ARGS $*\"\n")
    (bin_ / "ultrares").chmod(0o755)
    script = c["args"][0].replace("/etc/ultrares", str(etc)).replace("/outputs", str(tmp_path / "out"))
    assert c["command"] == ["/bin/sh", "-c"]
    for index, name in enumerate(files):
        r = _run(["/bin/sh", "-c", script], timeout=20,
                 env={"PATH": f"{bin_}:/usr/bin:/bin", "JOB_COMPLETION_INDEX": str(index)})
        assert r.returncode == 0, r.stderr
        assert f"ARGS enhance /recordings/{name} --output {tmp_path / 'out'}/{name}" in r.stdout
    r = _run(["/bin/sh", "-c", script], timeout=20,
             env={"PATH": f"{bin_}:/usr/bin:/bin", "JOB_COMPLETION_INDEX": str(len(files))})
    assert r.returncode == 1 and "no file for index" in r.stderr
    # The command it runs exists with these options.
    from ultrares_stream.cli import build_parser

    args = build_parser().parse_args(["enhance", "/recordings/a.mp4", "--output", "/outputs/a.mp4"])
    assert args.command == "enhance"


def test_base_config_and_compose_config_load():
    for path in (K8S / "base" / "config.yaml", COMPOSE / "ultrares.yaml"):
        assert load_config(path).cameras


# --------------------------------------------------------------------------------------------
# The API token: every shipped deployment binds 0.0.0.0, so each must give the service a token


def _token_script(token_dir: Path) -> str:
    """The compose api-token service's script, writing into ``token_dir`` instead of the volume."""
    service = load_compose(COMPOSE / "compose.yaml")["services"]["api-token"]
    assert service["command"][:2] == ["sh", "-c"]
    return service["command"][2].replace("/run/ultrares", str(token_dir))


def test_compose_gives_ultrares_and_prometheus_one_api_token(tmp_path):
    from ultrares_stream.errors import UserError
    from ultrares_stream.service import check_exposure

    services = load_compose(COMPOSE / "compose.yaml")["services"]
    ultrares, prometheus = services["ultrares"], services["prometheus"]
    assert ultrares["depends_on"]["api-token"]["condition"] == "service_completed_successfully"
    token_file = ultrares["environment"]["ULTRARES_API_TOKEN_FILE"]
    mount = next(v for v in ultrares["volumes"] if v.startswith("api-token:"))
    assert token_file.startswith(mount.split(":")[1] + "/") and mount.endswith(":ro")
    assert "ULTRARES_API_TOKEN" not in ultrares["environment"], "the token travels as a file, not in the env"
    assert "api-token:/run/ultrares" in services["api-token"]["volumes"]
    # Prometheus scrapes /metrics with the same file, mounted from the same volume.
    job = next(j for j in _yaml(PROM / "prometheus.yml")["scrape_configs"] if j["job_name"] == "ultrares")
    assert job["authorization"]["credentials_file"] == token_file
    assert any(v.startswith("api-token:/run/ultrares") for v in prometheus["volumes"])
    # The script for real: a random token made once and kept; ULTRARES_API_TOKEN chosen by the operator wins.
    token_dir = tmp_path / "run"
    token_dir.mkdir()
    script, path = _token_script(token_dir), token_dir / "api-token"
    env = {"PATH": "/usr/bin:/bin"}
    assert _run(["/bin/sh", "-c", script], env=env, timeout=20).returncode == 0
    first = path.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", first), first
    assert _run(["/bin/sh", "-c", script], env=env, timeout=20).returncode == 0
    assert path.read_text() == first, "a restart must keep the token"
    assert _run(["/bin/sh", "-c", script], env={**env, "ULTRARES_API_TOKEN": "chosen-token"}, timeout=20).returncode == 0
    assert path.read_text() == "chosen-token"
    # The service config binds 0.0.0.0: with the file it serves, without it it refuses to.
    server = load_config(COMPOSE / "ultrares.yaml").server
    token = server.resolve_token({"ULTRARES_API_TOKEN_FILE": str(path)})
    assert token == "chosen-token"
    check_exposure(server.host, token, insecure=False, how="-")
    with pytest.raises(UserError, match="without an API token"):
        check_exposure(server.host, server.resolve_token({}), insecure=False, how="-")
    assert "ultrares" in server.allowed_hosts, "Prometheus reaches it as ultrares:8080"


@pytest.mark.parametrize("overlay", ["overlays/cpu", "overlays/gpu"])
def test_kubernetes_pods_and_servicemonitor_use_the_token_secret(overlay):
    docs = _by_kind(_built(overlay))
    sts, sm = docs["StatefulSet"], docs["ServiceMonitor"]
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert "ULTRARES_API_TOKEN" not in env, "the token travels as a mounted Secret, not in the pod spec"
    token_file = env["ULTRARES_API_TOKEN_FILE"]["value"]
    mount = next(m for m in c["volumeMounts"] if token_file.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    secret = volume["secret"]
    item = next(i for i in secret["items"] if token_file == f"{mount['mountPath']}/{i['path']}")
    assert mount["readOnly"] is True and secret["defaultMode"] & 0o007 == 0, "not world-readable"
    # Prometheus (ServiceMonitor) sends the same Secret key as a bearer token.
    (endpoint,) = sm["spec"]["endpoints"]
    credentials = endpoint["authorization"]["credentials"]
    assert endpoint["authorization"]["type"] == "Bearer"
    assert (credentials["name"], credentials["key"]) == (secret["secretName"], item["key"])
    # The probes stay unauthenticated: /healthz and /readyz are exempt from the token and Host checks.
    assert {c["livenessProbe"]["httpGet"]["path"], c["readinessProbe"]["httpGet"]["path"]} == {"/healthz", "/readyz"}
    config = parse_config(yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"]))
    assert config.server.resolve_token({}) is None, "no token in the ConfigMap"
    assert config.server.api_token is None and config.server.api_token_file is None


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus server not installed (Debian package prometheus)")
def test_a_real_prometheus_scrapes_the_protected_metrics_with_the_shipped_job(tmp_path):
    """The shipped scrape job's authorization block, run by Prometheus against the real app with a
    token: it scrapes; the same job without the block is refused (up == 0)."""
    import httpx

    from ultrares_stream.service import HttpServer
    from ultrares_stream.web.app import create_app

    config_path = _prometheus_config_with_token_file(tmp_path)
    token = (tmp_path / "api-token").read_text().strip()
    http = HttpServer(create_app(api_token=token, allowed_hosts=["127.0.0.1"], device="cpu"), port=free_port()).start()
    prom = _yaml(config_path)
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "ultrares")
    job["static_configs"] = [{"targets": [f"127.0.0.1:{http.port}"]}]
    anonymous = {k: v for k, v in job.items() if k != "authorization"} | {"job_name": "anonymous"}
    prom.update({"global": {"scrape_interval": "1s"}, "scrape_configs": [job, anonymous], "rule_files": []})
    config_path.write_text(yaml.safe_dump(prom))
    prom_port = free_port()
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={config_path}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        up: dict[str, str] = {}
        deadline = time.monotonic() + 60
        while len(up) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                result = httpx.get(f"http://127.0.0.1:{prom_port}/api/v1/query", params={"query": "up"},
                                   timeout=5).json()["data"]["result"]
            except (httpx.HTTPError, KeyError, ValueError):
                assert proc.poll() is None, f"prometheus exited: {proc.stderr.read()}"
                continue
            up = {r["metric"]["job"]: r["value"][1] for r in result}
        assert up == {"ultrares": "1", "anonymous": "0"}, up
    finally:
        _stop(proc, 20)
        http.stop()
