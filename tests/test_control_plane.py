"""The HTTP control plane is protected: the API token on every endpoint but the probes (found by
walking the app's routes, so a new route is covered without naming it), the token from the config,
the environment or a file, `serve` refusing to listen beyond loopback without one, the Host
allow-list (DNS rebinding), the same-origin rule on state-changing requests, and no server
file path in any answer. Real HTTP: the app through TestClient, and `ultrares serve` as a process."""
from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Mount

from tests.conftest import free_port
from tests.test_web_api import FakeService, png_bytes
from ultrares_stream.cli import main
from ultrares_stream.config import ServerConfig, parse_config
from ultrares_stream.errors import UserError
from ultrares_stream.web.app import create_app

pytestmark = pytest.mark.timeout(180)

TOKEN = "cp-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: what answers without the token: the probes, and the page's static files (no data in them)
PUBLIC = {"/healthz", "/readyz", "/", "/static", "/docs-assets"}
#: an absolute file path in a text (a URL's path has ':' or '/' before its first '/'; not this API's paths)
ABS_PATH = re.compile(r"(?<![\w:/.#])/(?!api/v1/|docs/|static/)(?:[\w.+-]+/)+[\w.+-]+")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from tests.test_web_api import _tiny_net
    from ultrares_stream.models.checkpoint import save_checkpoint

    folder = tmp_path_factory.mktemp("server-only-weights")
    save_checkpoint(_tiny_net(1), folder / "psnr.safetensors")
    save_checkpoint(_tiny_net(2), folder / "gan.safetensors")
    return folder


def protected_app(weights: Path, **kw):
    kw.setdefault("api_token", TOKEN)
    kw.setdefault("allowed_hosts", ["127.0.0.1", "cameras.example.com"])
    return create_app(FakeService(), default_model=f"{weights / 'psnr.safetensors'}+{weights / 'gan.safetensors'}",
                      device="cpu", **kw)


def client(app) -> TestClient:
    return TestClient(app, base_url="http://127.0.0.1:8080")


def route_requests(app) -> list[tuple[str, str, str]]:
    """(route path, method, concrete URL) for every route of the app, mounts included."""
    out = []
    for route in app.routes:
        if isinstance(route, Mount):
            first = next(iter(sorted(os.listdir(route.app.directory or route.app.all_directories[0]))))
            out.append((route.path, "GET", f"{route.path}/{first}"))
            continue
        url = re.sub(r"\{[^}]+\}", "north", route.path)
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method != "HEAD":
                out.append((route.path, method, url))
    return out


def request(c: TestClient, method: str, url: str, headers: dict | None = None):
    if method == "POST":
        return c.post(url, files={"image": ("x.png", png_bytes(8, 8), "image/png")}, headers=headers)
    if method == "PATCH":
        return c.patch(url, json={"alpha": 0.1}, headers=headers)
    return c.request(method, url, headers=headers)


# ----------------------------------------------------------------------------- the token
def test_no_route_but_the_probes_and_static_files_answers_without_the_token(weights):
    app = protected_app(weights)
    with client(app) as c:
        routes = route_requests(app)
        paths = {path for path, _, _ in routes}
        # not vacuous: the endpoints that leaked before are among those walked
        assert {"/api/v1/streams", "/api/v1/streams/{name}", "/api/v1/streams/{name}/snapshot.jpg", "/metrics",
                "/api/v1/info", "/api/v1/models", "/docs", "/openapi.json", "/api/v1/upscale"} <= paths
        answered = {}
        for path, method, url in routes:
            anonymous = request(c, method, url)
            wrong = request(c, method, url, {"Authorization": "Bearer not-the-token"})
            if anonymous.status_code != 401 or wrong.status_code != 401:
                answered[f"{method} {path}"] = (anonymous.status_code, wrong.status_code)
            else:
                assert anonymous.json()["error"].startswith("this server needs its API token")
                assert "Bearer" in anonymous.headers.get_list("www-authenticate")
            with_token = request(c, method, url, AUTH)
            assert with_token.status_code not in (401, 403, 421), (method, path, with_token.text)
        assert {p.split(" ", 1)[1] for p in answered} == PUBLIC, answered
        assert all(m == "GET" for m in (p.split(" ", 1)[0] for p in answered))
        assert c.get("/").headers["content-type"].startswith("text/html")  # static: the page asks for the token


def test_a_route_added_later_is_protected_without_naming_it(weights):
    app = protected_app(weights)

    @app.get("/api/v1/new-thing")
    def new_thing() -> dict:
        return {"secret": "camera list"}

    with client(app) as c:
        assert c.get("/api/v1/new-thing").status_code == 401
        assert c.get("/api/v1/new-thing", headers=AUTH).json() == {"secret": "camera list"}
        assert c.get("/api/v1/new-thing", headers={"X-Api-Token": TOKEN}).status_code == 200


def test_docs_ask_a_browser_for_basic_credentials_with_the_token_as_password(weights):
    with client(protected_app(weights)) as c:
        refused = c.get("/docs")
        assert refused.status_code == 401
        assert any(v.startswith("Basic ") for v in refused.headers.get_list("www-authenticate"))
        # the API's own 401s do not (a browser prompt would pop up over the page)
        assert refused.headers.get_list("www-authenticate") != c.get("/api/v1/info").headers.get_list(
            "www-authenticate") == ["Bearer"]
        basic = {"Authorization": "Basic " + base64.b64encode(f"anyone:{TOKEN}".encode()).decode()}
        assert c.get("/docs", headers=basic).status_code == 200
        schema = c.get("/docs/openapi.json", headers=basic).json()
        assert schema["openapi"].startswith("3.0") and schema["security"] == [{"apiToken": []}]
        wrong = {"Authorization": "Basic " + base64.b64encode(b"anyone:nope").decode()}
        assert c.get("/docs", headers=wrong).status_code == 401


def test_metrics_can_be_left_public_for_a_scraping_network(weights):
    with client(protected_app(weights, metrics_public=True)) as c:
        assert c.get("/metrics").status_code == 200
        assert c.get("/api/v1/streams").status_code == 401
        assert c.get("/api/v1/streams/north/snapshot.jpg").status_code == 401


def test_token_from_config_env_and_file(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")  # a Kubernetes Secret or `echo` leaves a trailing newline
    assert ServerConfig(api_token="from-config").resolve_token({}) == "from-config"
    assert ServerConfig(api_token_file=str(token_file)).resolve_token({}) == "from-file"
    assert ServerConfig(api_token="from-config").resolve_token({"ULTRARES_API_TOKEN": "from-env"}) == "from-env"
    assert ServerConfig().resolve_token({"ULTRARES_API_TOKEN_FILE": str(token_file)}) == "from-file"
    assert ServerConfig().resolve_token({}) is None
    with pytest.raises(UserError, match=r"^ULTRARES_API_TOKEN_FILE: cannot read the API token file .*missing"):
        ServerConfig().resolve_token({"ULTRARES_API_TOKEN_FILE": str(tmp_path / "missing")})
    with pytest.raises(UserError, match=r"^server.api_token_file: .* is empty"):
        (tmp_path / "empty").write_text("\n")
        ServerConfig(api_token_file=str(tmp_path / "empty")).resolve_token({})
    with pytest.raises(UserError, match="not both"):
        ServerConfig().resolve_token({"ULTRARES_API_TOKEN": "a", "ULTRARES_API_TOKEN_FILE": str(token_file)})
    with pytest.raises(UserError, match=r"server.api_token.*not both|not both"):
        parse_config({"server": {"api_token": "a", "api_token_file": str(token_file)}})
    with pytest.raises(UserError, match=r"server.allowed_hosts"):
        parse_config({"server": {"allowed_hosts": ["http://x/"]}})


# ----------------------------------------------------------------------------- serve beyond loopback
def _config(tmp_path: Path, model: str, **server) -> Path:
    """One camera at an address nothing listens on: serve starts and keeps reconnecting to it."""
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({
        "server": {"port": free_port(), **server},
        "inference": {"device": "cpu", "engine": "eager", "max_batch": 1},
        "defaults": {"model": model},
        "reconnect": {"initial_s": 0.5, "max_s": 2, "timeout_s": 2},
        "cameras": [{"name": "gate", "input": "rtsp://127.0.0.1:9/nothing", "output": str(tmp_path / "gate.mp4")}]}))
    return path


def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ULTRARES_API_TOKEN")}
    return {**env, "ULTRARES_OFFLINE": "1", **extra}


def test_serve_on_every_interface_without_a_token_exits_2_with_one_line(tmp_path, tiny_model):
    config = _config(tmp_path, tiny_model)
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "ultrares_stream", "serve", "--config", str(config), "--host", "0.0.0.0"],
                       capture_output=True, text=True, timeout=120, env=_env())
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "0.0.0.0" in lines[0] and "API token" in lines[0] and "--insecure" in lines[0]
    assert "ULTRARES_API_TOKEN" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "gate.mp4").exists() and time.monotonic() - started < 120


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", ""])
def test_serve_refuses_every_non_loopback_address_until_told(host, tmp_path, tiny_model, capsys, caplog, monkeypatch):
    for name in ("ULTRARES_API_TOKEN", "ULTRARES_API_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    config = _config(tmp_path, tiny_model, host=host)
    assert main(["serve", "--config", str(config), "--check"]) == 2
    assert "without an API token" in capsys.readouterr().err
    assert main(["serve", "--config", str(config), "--check", "--insecure"]) == 0
    assert "INSECURE" in caplog.text and "NO API token" in caplog.text  # said loudly
    monkeypatch.setenv("ULTRARES_API_TOKEN", "env-token")
    assert main(["serve", "--config", str(config), "--check"]) == 0
    monkeypatch.setenv("ULTRARES_API_TOKEN_FILE", str(tmp_path / "missing"))
    monkeypatch.delenv("ULTRARES_API_TOKEN")
    assert main(["serve", "--config", str(config), "--check"]) == 2
    err = capsys.readouterr().err
    assert "ULTRARES_API_TOKEN_FILE: cannot read" in err and len(err.strip().splitlines()) == 1


def test_loopback_needs_no_token_and_web_and_demo_refuse_too(tmp_path, tiny_model, monkeypatch, capsys):
    for name in ("ULTRARES_API_TOKEN", "ULTRARES_API_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    for host in ("127.0.0.1", "localhost", "::1"):
        assert main(["serve", "--config", str(_config(tmp_path, tiny_model, host=host)), "--check"]) == 0
    assert main(["web", "--host", "0.0.0.0"]) == 2
    assert main(["demo", "--host", "0.0.0.0"]) == 2
    assert main(["web", "--host", "0.0.0.0", "--token-file", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("without an API token") == 2 and "--token-file: cannot read" in err


def test_serve_with_a_token_file_on_every_interface(tmp_path, tiny_model):
    """The real `ultrares serve` on 0.0.0.0 with ULTRARES_API_TOKEN_FILE: it logs the address it
    really binds, probes answer, the rest needs the token, foreign Host names and cross-origin
    changes are refused, and no answer names a server path."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    config = _config(tmp_path, tiny_model, host="0.0.0.0")
    port = yaml.safe_load(config.read_text())["server"]["port"]
    proc = subprocess.Popen([sys.executable, "-m", "ultrares_stream", "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(ULTRARES_API_TOKEN_FILE=str(token_file), COLUMNS="200"))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                assert httpx.get(f"{base}/healthz", timeout=2).status_code == 200
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "serve did not start within 120 s"
                time.sleep(0.3)
        assert httpx.get(f"{base}/healthz", headers={"Host": "10.1.2.3:8080"}, timeout=5).status_code == 200
        for path in ("/api/v1/streams", "/api/v1/streams/gate", "/api/v1/streams/gate/snapshot.jpg", "/metrics",
                     "/api/v1/info", "/docs", "/openapi.json"):
            assert httpx.get(base + path, timeout=5).status_code == 401, path
        streams = httpx.get(f"{base}/api/v1/streams", headers=AUTH, timeout=5)
        assert streams.status_code == 200 and streams.json()["streams"][0]["name"] == "gate"
        assert httpx.get(f"{base}/metrics", headers=AUTH, timeout=5).status_code == 200
        for answer in (streams.text, httpx.get(f"{base}/api/v1/info", headers=AUTH, timeout=5).text):
            assert str(tmp_path) not in answer and not ABS_PATH.search(answer), answer
        assert httpx.get(f"{base}/api/v1/streams", headers={**AUTH, "Host": "rebind.attacker.example"},
                         timeout=5).status_code == 421
        patch = httpx.patch(f"{base}/api/v1/streams/gate", json={"alpha": 0.9}, timeout=10,
                            headers={**AUTH, "Origin": "http://rebind.attacker.example"})
        assert patch.status_code == 403
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert re.search(rf"HTTP listening on http://0\.0\.0\.0:{port}", out), out
    assert "http://0.0.0.0" in out and "token required" in out, out


# ----------------------------------------------------------------------------- Host allow-list
def test_host_allow_list_defends_dns_rebinding(weights):
    # no token at all (a loopback install): a rebinding page's requests carry its own name
    app = protected_app(weights, api_token=None, allowed_hosts=["127.0.0.1", "cameras.example.com", ".corp.example"])
    with client(app) as c:
        for host in ("rebind.attacker.example", "rebind.attacker.example:8080", "127.0.0.1.attacker.example",
                     "corp.example.attacker.example", "cameras.example.com.evil.example"):
            r = c.get("/api/v1/streams", headers={"Host": host})
            assert r.status_code == 421, (host, r.status_code)
            assert "server.allowed_hosts" in r.json()["error"]
            assert c.post("/api/v1/upscale", headers={"Host": host},
                          files={"image": ("x.png", png_bytes(8, 8))}).status_code == 421
        for host in ("localhost:8080", "127.0.0.1:8080", "[::1]:8080", "10.20.30.40:8080", "[fd00::5]",
                     "cameras.example.com", "CAMERAS.example.com.", "corp.example", "gate.site.corp.example"):
            assert c.get("/api/v1/streams", headers={"Host": host}).status_code == 200, host
        # Kubernetes probes send the pod IP, anything else a name: the probes answer whatever the Host
        for path in ("/healthz", "/readyz"):
            assert c.get(path, headers={"Host": "whatever.example"}).status_code in (200, 503)


def test_the_commands_apply_the_allow_list(tmp_path, tiny_model):
    """make_app (serve, demo) takes the Host names from the server config, with the bind host."""
    from ultrares_stream.service import Service, make_app

    config = parse_config({"server": {"host": "0.0.0.0", "allowed_hosts": ["ultrares"]},
                           "inference": {"device": "cpu", "engine": "eager"}, "defaults": {"model": tiny_model}})
    with TestClient(make_app(Service(config), TOKEN), base_url="http://ultrares:8080") as c:
        assert c.get("/api/v1/streams", headers=AUTH).status_code == 200
        assert c.get("/api/v1/streams", headers={**AUTH, "Host": "evil.example"}).status_code == 421
        assert c.get("/api/v1/streams").status_code == 401


# ----------------------------------------------------------------------------- same origin
def test_cross_origin_changes_and_uploads_are_refused(weights):
    app = protected_app(weights, api_token=None)
    service = app.state.ultrares.service
    with client(app) as c:
        uploads_before = app.state.ultrares.metrics.registry.get_sample_value(
            "ultrares_web_upscales_total", {"status": "200"}) or 0
        for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Origin": "http://127.0.0.1:9999"},
                        {"Origin": "http://localhost:8080"}, {"Origin": "file://"},
                        {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
            r = c.post("/api/v1/upscale", files={"image": ("x.png", png_bytes(8, 8), "image/png")}, headers=headers)
            assert r.status_code == 403 and "cross-origin" in r.json()["error"], (headers, r.text)
            assert c.patch("/api/v1/streams/north", json={"alpha": 0.9}, headers=headers).status_code == 403
        assert service.cameras["north"].alpha == 0.5  # nothing changed
        assert (app.state.ultrares.metrics.registry.get_sample_value(
            "ultrares_web_upscales_total", {"status": "200"}) or 0) == uploads_before  # nothing processed
        # the page's own requests, and clients that are not browsers, pass
        for headers in ({"Origin": "http://127.0.0.1:8080"}, {"Sec-Fetch-Site": "same-origin"}, {}):
            assert c.patch("/api/v1/streams/north", json={"alpha": 0.2}, headers=headers).status_code == 200
        assert c.post("/api/v1/upscale", files={"image": ("x.png", png_bytes(8, 8), "image/png")},
                      headers={"Origin": "http://127.0.0.1:8080"}).status_code == 200
        # reads from another origin are not changes (and the browser keeps their answers from the page)
        assert c.get("/api/v1/models", headers={"Origin": "http://evil.example"}).status_code == 200


# ----------------------------------------------------------------------------- no server paths
class _PathyStream:
    """A camera whose status is full of server paths: a file input and output, a checkpoint
    path as its model, and an error naming a file."""

    def __init__(self, folder: Path):
        self.name, self.alpha, self.folder = "north", 0.5, folder

    def status(self) -> dict:
        f = self.folder
        return {"state": "error", "input": str(f / "in" / "clip.mp4"), "output": str(f / "out" / "clip-x4.mp4"),
                "model": str(f / "cam-model.safetensors"),
                "pending": {"model": f"{f / 'a.safetensors'}+{f / 'b.safetensors'}", "alpha": 0.3},
                "error": f"cannot write {f / 'out' / 'clip-x4.mp4'}: [Errno 28] No space left on device",
                "segments": [str(f / "out" / "2026-12-07T10-00-00.mp4"), {"path": str(f / "out" / "b.mp4")}],
                "alpha": self.alpha}

    def snapshot_jpeg(self):
        return None


def test_no_answer_carries_a_server_path(weights, tmp_path):
    service = FakeService()
    service.cameras = {"north": _PathyStream(tmp_path)}
    broken = tmp_path / "models" / "broken.safetensors"
    broken.parent.mkdir()
    broken.write_bytes(b"not a checkpoint at all" * 10)
    with client(create_app(service, default_model=f"{weights / 'psnr.safetensors'}+{weights / 'gan.safetensors'}",
                           device="cpu")) as c:
        answers = {path: c.get(path) for path in ("/api/v1/info", "/api/v1/models", "/api/v1/streams",
                                                    "/api/v1/streams/north", "/openapi.json")}
        assert answers["/api/v1/info"].json()["default_model"] == "default"
        cam = answers["/api/v1/streams/north"].json()
        assert (cam["input"], cam["output"], cam["model"]) == ("clip.mp4", "clip-x4.mp4", "cam-model.safetensors")
        assert "clip-x4.mp4: [Errno 28]" in cam["error"]
        upscaled = c.post("/api/v1/upscale", files={"image": ("x.png", png_bytes(8, 8), "image/png")})
        answers["upscale headers"] = upscaled
    with client(create_app(default_model=str(broken), device="cpu")) as c:  # an error naming the checkpoint
        answers["upscale error"] = c.post("/api/v1/upscale", files={"image": ("x.png", png_bytes(8, 8), "image/png")})
        answers["models, broken default"] = c.get("/api/v1/models")
        assert answers["upscale error"].status_code >= 400
    for what, r in answers.items():
        text = r.text + " " + " ".join(f"{k}: {v}" for k, v in r.headers.items())
        assert str(tmp_path) not in text and str(weights) not in text, (what, text[:300])
        assert not ABS_PATH.search(text), (what, ABS_PATH.search(text).group(0))
