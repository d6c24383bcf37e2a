"""The HTTP API through the real FastAPI app: real images decoded and encoded with Pillow,
real networks (two tiny SRVGGNetCompact checkpoints that differ, and the published
realesr-animevideov3 weights when the shared data is present)."""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import free_port, need_data
from ultrares_stream.colour import float_to_uint8, uint8_to_float
from ultrares_stream.images import Picture, encode_image, read_image
from ultrares_stream.metrics import Metrics
from ultrares_stream.models.archs import SRVGGNetCompact
from ultrares_stream.models.checkpoint import build_model, read_checkpoint, save_checkpoint
from ultrares_stream.web.app import create_app
from ultrares_stream.tiling import Cancelled
from ultrares_stream.web import uploads
from ultrares_stream.web.jobs import JobQueue, JobTimeout, QueueFull
from ultrares_stream.web.upscaling import UpscalerCache, upscale_upload


# ----------------------------------------------------------------------------- fixtures
def _tiny_net(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = SRVGGNetCompact(num_feat=8, num_conv=2, upscale=4, act_type="prelu")
    return net.state_dict()


@pytest.fixture(scope="module")
def pair_spec(tmp_path_factory) -> str:
    """An ad-hoc PSNR+GAN pair: two different tiny compact x4 networks."""
    folder = tmp_path_factory.mktemp("weights")
    a, b = folder / "psnr.safetensors", folder / "gan.safetensors"
    save_checkpoint(_tiny_net(1), a)
    save_checkpoint(_tiny_net(2), b)
    return f"{a}+{b}"


@pytest.fixture(scope="module")
def client(pair_spec):
    with TestClient(create_app(default_model=pair_spec, device="cpu")) as c:
        yield c


def png_bytes(w: int, h: int, mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (h, w) if mode == "L" else (h, w, len(mode))
    img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def upscale(client, data: bytes, name: str = "x.png", content_type: str = "image/png", **fields):
    return client.post("/api/v1/upscale", files={"image": (name, data, content_type)},
                       data={k: str(v) for k, v in fields.items()})


def assert_json_error(resp, status: int, *words: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    message = resp.json()["error"]
    for word in words:
        assert word.lower() in message.lower(), message


# ----------------------------------------------------------------------------- upscaling
def test_set5_image_is_upscaled_x4_and_alpha_0_is_the_psnr_network(client, pair_spec):
    path = need_data("sr", "Set5", "LR_bicubic", "X4", "birdx4.png")
    data = path.read_bytes()
    resp = upscale(client, data, "birdx4.png", alpha=0)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    w, h = Image.open(path).size
    out = decode(resp.content)
    assert out.size == (4 * w, 4 * h) and out.mode == "RGB"
    assert resp.headers["x-ultrares-output-size"] == f"{4 * w}x{4 * h}"
    assert resp.headers["x-ultrares-input-size"] == f"{w}x{h}"
    assert 'filename="birdx4-ultrares-' in resp.headers["content-disposition"]
    # the same numbers as running the PSNR network directly
    net = build_model(read_checkpoint(pair_spec.split("+")[0]))
    x = uint8_to_float(torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()))
    with torch.inference_mode():
        expected = float_to_uint8(net(x).clamp(0, 1))[0].numpy().astype(int)
    assert np.abs(np.asarray(out).astype(int) - expected).max() <= 1


def test_alpha_0_and_1_differ_when_the_two_networks_differ(client):
    data = need_data("sr", "Set5", "LR_bicubic", "X4", "headx4.png").read_bytes()
    r0, r1, r0_again = (upscale(client, data, alpha=a) for a in (0, 1, 0))
    assert r0.status_code == r1.status_code == 200
    a0, a1 = np.asarray(decode(r0.content)).astype(int), np.asarray(decode(r1.content)).astype(int)
    assert a0.shape == a1.shape
    assert np.abs(a0 - a1).mean() > 1.0  # different networks, visibly different output
    assert np.array_equal(a0, np.asarray(decode(r0_again.content)))  # alpha really goes back
    assert r1.headers["x-ultrares-alpha"] == "1"


def test_an_upscale_with_eight_passes_is_the_averaged_network_and_says_so(client, pair_spec):
    from ultrares_stream.upscaler import Upscaler

    data = png_bytes(24, 16, seed=3)
    resp = upscale(client, data, alpha=0, ensemble=8)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-ultrares-ensemble"] == "8"
    out = decode(resp.content)
    assert out.text["ultrares:ensemble"] == "8" and "self-ensemble of 8" in out.text["Comment"]
    direct = Upscaler(pair_spec, alpha=0.0, device="cpu", precision="fp32", tile=0, ensemble=8)
    x = uint8_to_float(torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()))
    with torch.inference_mode():
        expected = float_to_uint8(direct.upscale(x))[0].numpy().astype(int)
    assert np.abs(np.asarray(out).astype(int) - expected).max() <= 1
    plain = np.asarray(decode(upscale(client, data, alpha=0).content)).astype(int)
    assert np.abs(plain - expected).max() > 1  # one pass is not the same picture
    assert_json_error(upscale(client, data, ensemble=3), 400, "1, 2, 4, 8")


@pytest.mark.parametrize("size, source, expected", [
    ("720p", (64, 48), (960, 720)),  # fits inside 1280x720, aspect kept
    ("4k", (40, 40), (2160, 2160)),
    ("100x50", (64, 48), (67, 50)),
    ("", (20, 10), (80, 40)),  # empty: the network's x4
])
def test_output_size_fits_the_requested_box(client, size, source, expected):
    resp = upscale(client, png_bytes(*source), size=size, format="jpeg")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/jpeg"
    img = decode(resp.content)
    assert img.format == "JPEG" and img.size == expected


def test_webp_output_and_alpha_channel_kept(client):
    resp = upscale(client, png_bytes(16, 12, "RGBA"), format="webp")
    assert resp.status_code == 200, resp.text
    img = decode(resp.content)
    assert img.format == "WEBP" and img.size == (64, 48) and img.mode == "RGBA"


def test_grey_and_16_bit_uploads_keep_their_kind(client):
    grey = io.BytesIO()
    Image.fromarray(np.tile(np.arange(0, 240, 15, dtype=np.uint8), (12, 1)), "L").save(grey, "PNG")
    resp = upscale(client, grey.getvalue(), alpha=0)
    assert resp.status_code == 200, resp.text
    assert decode(resp.content).mode == "L" and decode(resp.content).size == (64, 48)
    # a 16-bit ramp over 1 % of the range: 656 levels at 16 bits, 3 at 8 bits
    ramp = np.linspace(0.50, 0.51, 24 * 32, dtype=np.float32).reshape(1, 1, 24, 32).repeat(3, 1)
    png16 = encode_image(Picture(torch.from_numpy(ramp), bits=16), "PNG")
    resp = upscale(client, png16, alpha=0)
    assert resp.status_code == 200, resp.text
    out = read_image(resp.content)
    assert out.bits == 16 and (out.width, out.height) == (128, 96)
    levels = np.unique(np.round(out.colour.numpy() * 65535))
    assert len(levels) > 20, len(levels)  # more than 8 bits could carry


def test_content_decides_the_type_not_the_name(client):
    buf = io.BytesIO()
    Image.fromarray(np.full((10, 14, 3), 128, np.uint8)).save(buf, "JPEG")
    resp = upscale(client, buf.getvalue(), name="photo.png", content_type="image/png")  # a JPEG named .png
    assert resp.status_code == 200, resp.text
    assert decode(resp.content).size == (56, 40)


def test_published_animevideov3_weights_by_registry_name(monkeypatch):
    weights = need_data("weights", "realesr-animevideov3.pth")
    monkeypatch.setenv("ULTRARES_WEIGHTS_DIR", str(weights.parent))
    with TestClient(create_app(device="cpu")) as c:
        models = {m["name"]: m for m in c.get("/api/v1/models").json()["models"]}
        assert models["realesr-animevideov3"]["available"] is True
        resp = upscale(c, png_bytes(24, 16), model="realesr-animevideov3")
        assert resp.status_code == 200, resp.text
        assert decode(resp.content).size == (96, 64)
        assert resp.headers["x-ultrares-model"] == "realesr-animevideov3"


# ----------------------------------------------------------------------------- models, info, probes
def test_models_list(client, pair_spec):
    body = client.get("/api/v1/models").json()
    assert body["default"] == "default"  # the server's own files, by a name without their paths
    assert str(pair_spec.split("+")[0]) not in str(body)
    by_name = {m["name"]: m for m in body["models"]}
    custom = by_name["default"]
    assert custom["kind"] == "custom" and custom["available"] and custom["scale"] == 4
    assert (custom["psnr"], custom["gan"]) == ("psnr.safetensors", "gan.safetensors")
    assert custom["label"] == "psnr.safetensors + gan.safetensors"
    assert upscale(client, png_bytes(8, 8), model="default").headers["x-ultrares-model"] == "default"
    pair = by_name["ultrares-compact-x4"]
    assert pair["kind"] == "pair" and pair["psnr"] == "ultrares-compact-x4-psnr"
    assert by_name["RRDB_ESRGAN_x4"]["architecture"] == "RRDBNet"


def test_upscale_requests_are_counted_by_status_on_metrics(pair_spec):
    from prometheus_client.parser import text_string_to_metric_families

    def scrape(c):
        samples = {}
        for fam in text_string_to_metric_families(c.get("/metrics").text):
            for s in fam.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    with TestClient(create_app(default_model=pair_spec, device="cpu", max_upload_bytes=10_000)) as c:
        assert upscale(c, png_bytes(8, 8)).status_code == 200
        assert upscale(c, png_bytes(8, 6), size="1080p").status_code == 200
        assert upscale(c, b"not an image").status_code == 415
        assert upscale(c, png_bytes(8, 8), size="huge").status_code == 400
        assert upscale(c, png_bytes(80, 80)).status_code == 413  # over 10,000 bytes: the handler refuses it
        assert upscale(c, png_bytes(200, 200)).status_code == 413  # past the form allowance: the middleware does
        got = scrape(c)
    assert got[("ultrares_web_upscales_total", (("status", "200"),))] == 2
    assert got[("ultrares_web_upscales_total", (("status", "415"),))] == 1
    assert got[("ultrares_web_upscales_total", (("status", "400"),))] == 1
    assert got[("ultrares_web_upscales_total", (("status", "413"),))] == 2
    assert got[("ultrares_web_upscale_seconds_count", ())] == 2
    assert got[("ultrares_web_upscale_seconds_sum", ())] > 0


def test_info_metrics_and_probes(client):
    info = client.get("/api/v1/info").json()
    assert info["sizes"]["1080p"] == [1920, 1080] and info["formats"] == ["png", "jpeg", "webp"]
    assert info["token_required"] is False and info["cameras"] is False
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and "ultrares_frames_in_total" in metrics.text
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "UltraRes" in page.text
    assert client.get("/static/app.js").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/api/v1/upscale", "/api/v1/models", "/api/v1/streams", "/api/v1/streams/{name}"} <= set(schema["paths"])
    # multipart cannot send null, so no form field may claim it accepts one
    form = schema["components"]["schemas"]["Body_upscale_api_v1_upscale_post"]["properties"]
    assert "null" not in json.dumps(form), form
    assert form["model"]["default"] == "default" and form["size"]["default"] == ""


# ----------------------------------------------------------------------------- bad input -> 4xx JSON
def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (a decompression bomb's signature)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fields, status, words", [
    ({"alpha": 2}, 422, ["alpha", "less than or equal to 1"]),
    ({"alpha": "abc"}, 422, ["alpha"]),
    ({"alpha": "nan"}, 422, ["alpha"]),
    ({"size": "huge"}, 400, ["size", "1080p"]),
    ({"size": "10x99999"}, 400, ["WIDTHxHEIGHT"]),
    ({"format": "gif"}, 422, ["format"]),
    ({"model": "no-such-model"}, 400, ["unknown model"]),
    ({"model": "/etc/passwd"}, 400, ["unknown model"]),  # never a path from a client
    ({"model": "RRDB_ESRGAN_x4"}, 409, ["not available"]),
])
def test_bad_fields_get_4xx_json(client, fields, status, words):
    assert_json_error(upscale(client, png_bytes(8, 8), **fields), status, *words)


def test_missing_image_is_422(client):
    assert_json_error(client.post("/api/v1/upscale", data={"alpha": "0.5"}), 422, "image")


def test_malformed_upscales_are_counted(pair_spec):
    metrics = Metrics()
    with TestClient(create_app(default_model=pair_spec, device="cpu", metrics=metrics)) as c:
        for _ in range(2):
            c.post("/api/v1/upscale", data={"alpha": "0.5"})
    assert metrics.registry.get_sample_value("ultrares_web_upscales_total", {"status": "422"}) == 2


def test_api_docs_need_no_internet(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text.lower() and "http://" not in page.text and "https://" not in page.text.replace(
        "https://fastapi.tiangolo.com", "")
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert client.get(f"/docs-assets/{asset}").status_code == 200


def test_docs_read_an_openapi_30_rewrite_of_the_schema(client):
    """Swagger UI 4.15 renders OpenAPI 3.0 only (tests/test_web_browser.py loads the page)."""
    assert "url: '/docs/openapi.json'" in client.get("/docs").text
    full, docs = client.get("/openapi.json").json(), client.get("/docs/openapi.json").json()
    assert full["openapi"].startswith("3.1") and docs["openapi"] == "3.0.3"
    assert set(docs["paths"]) == set(full["paths"])
    text = json.dumps(docs)
    assert '"type": "null"' not in text and '"examples": [' not in text and "contentMediaType" not in text
    info = docs["components"]["schemas"]["ModelInfo"]["properties"]
    assert info["scale"] == {"type": "integer", "title": "Scale", "nullable": True}
    image = docs["components"]["schemas"]["Body_upscale_api_v1_upscale_post"]["properties"]["image"]
    assert image["type"] == "string" and image["format"] == "binary"  # a file picker in Swagger UI
    assert docs["components"]["schemas"]["StreamPatch"]["example"] == {"alpha": 0.3}


def test_page_slider_starts_at_the_web_default_alpha(client):
    from ultrares_stream.config import WEB_ALPHA

    page = client.get("/").text
    assert f'id="alpha" type="range" min="0" max="1" step="0.05" value="{WEB_ALPHA:g}"' in page
    assert f'<output id="alpha-value" for="alpha">{WEB_ALPHA:.2f}</output>' in page


def test_security_headers(client):
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "object-src 'none'" in csp and "frame-ancestors 'none'" in csp
    for path in ("/", "/static/app.js", "/api/v1/models", "/healthz", "/no-such-page"):
        assert client.get(path).headers.get("x-content-type-options") == "nosniff", path


def test_bad_files_get_4xx_json(client):
    assert_json_error(upscale(client, b"", name="e.png"), 400, "empty")
    assert_json_error(upscale(client, b"this is not a picture" * 10, name="fake.png"), 415, "not a png")
    good = png_bytes(64, 64, seed=3)
    assert_json_error(upscale(client, good[: len(good) // 2], name="cut.png"), 400, "truncated")
    # the header says 60000 x 60000: refused before decoding, from a 100-byte file
    assert_json_error(upscale(client, _png_claiming(60000, 60000)), 413, "pixels")
    assert_json_error(upscale(client, _png_claiming(3000, 3000)), 413, "limit is 4,194,304")
    # still serving afterwards
    assert upscale(client, png_bytes(8, 8)).status_code == 200


def test_oversized_upload_and_result_are_413(pair_spec):
    with TestClient(create_app(default_model=pair_spec, device="cpu", max_upload_bytes=10_000,
                               max_output_pixels=300 * 300)) as c:
        # refused by Content-Length, before the body is read
        assert_json_error(upscale(c, png_bytes(100, 100) + b"\0" * 100_000), 413, "request body is over")
        assert_json_error(upscale(c, png_bytes(100, 100)), 413, "over 10,000 bytes")
        assert_json_error(upscale(c, png_bytes(40, 40), size="4k"), 413, "limit is 90,000")
        assert upscale(c, png_bytes(40, 40), size="200x200").status_code == 200


def test_api_token_protects_reads_and_writes(pair_spec):
    service = FakeService()
    with TestClient(create_app(service, default_model=pair_spec, device="cpu", api_token="s3cret")) as c:
        assert_json_error(upscale(c, png_bytes(8, 8)), 401, "token")
        bad = c.post("/api/v1/upscale", files={"image": ("x.png", png_bytes(8, 8))},
                     headers={"Authorization": "Bearer wrong"})
        assert_json_error(bad, 401, "token")
        assert bad.headers["www-authenticate"] == "Bearer"
        ok = c.post("/api/v1/upscale", files={"image": ("x.png", png_bytes(8, 8))},
                    headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert_json_error(c.patch("/api/v1/streams/north", json={"alpha": 0.1}), 401, "token")
        assert c.patch("/api/v1/streams/north", json={"alpha": 0.1}, headers={"X-API-Token": "s3cret"}).json()["alpha"] == 0.1
        assert_json_error(c.get("/api/v1/streams"), 401, "token")  # reads too (tests/test_control_plane.py)
        assert c.get("/api/v1/streams", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/api/v1/info", headers={"Authorization": "Bearer s3cret"}).json()["token_required"] is True


# ----------------------------------------------------------------------------- busy and slow
def test_job_queue_refuses_when_full_and_recovers():
    queue = JobQueue(workers=1, waiting=1)
    release = threading.Event()

    async def scenario():
        first = asyncio.ensure_future(queue.run(release.wait))
        second = asyncio.ensure_future(queue.run(lambda: "second"))
        await asyncio.sleep(0.05)
        assert queue.admitted == 2
        with pytest.raises(QueueFull) as info:
            await queue.run(lambda: "third")
        assert info.value.retry_after >= 1
        release.set()
        assert await first is True and await second == "second"
        assert queue.admitted == 0
        assert await queue.run(lambda: 42) == 42

    asyncio.run(asyncio.wait_for(scenario(), 10))
    queue.shutdown()


def test_a_timed_out_job_is_told_to_stop_and_frees_its_worker():
    queue = JobQueue(workers=1, waiting=1)
    cancel = threading.Event()

    def long_job():  # works in steps, like tiles, and stops when told
        for _ in range(1000):
            if cancel.is_set():
                raise Cancelled("stopped")
            time.sleep(0.01)
        return "finished"

    async def scenario():
        with pytest.raises(JobTimeout):
            await queue.run(long_job, timeout=0.1, cancel=cancel)
        assert cancel.is_set()
        # the next job gets the worker long before the 10 s the first would have taken
        return await asyncio.wait_for(queue.run(lambda: "next", timeout=5), 3)

    assert asyncio.run(scenario()) == "next"
    assert queue.admitted == 0
    queue.shutdown()


def test_a_cancelled_upload_stops_before_its_tiles_and_releases_the_model(pair_spec):
    cache = UpscalerCache(device="cpu")
    upload = uploads.identify(png_bytes(300, 280), 10_000_000)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        upscale_upload(cache, upload, pair_spec, 0.5, None, "png", 10_000_000, stop)
    assert not cache.get(pair_spec)._gate.busy  # the next request can use the model
    assert cache.pool.models() == [pair_spec] and not cache.pool._views  # the view was given back
    result = upscale_upload(cache, upload, pair_spec, 0.5, None, "png", 10_000_000, threading.Event())
    assert result.output_size == (1200, 1120)


@contextlib.contextmanager
def held_worker(jobs):
    """The job queue's only worker busy (a job waiting on an event) until the block ends."""
    release = threading.Event()
    blocker = threading.Thread(target=lambda: asyncio.run(jobs.run(lambda: release.wait(10))), daemon=True)
    blocker.start()
    deadline = time.monotonic() + 5
    while jobs.admitted == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield
    finally:
        release.set()
        blocker.join(5)


def test_full_queue_is_429_with_retry_after_and_timeout_is_503(pair_spec):
    app = create_app(default_model=pair_spec, device="cpu", workers=1, queue_size=0)
    with TestClient(app) as c:
        with held_worker(app.state.ultrares.jobs):
            resp = upscale(c, png_bytes(8, 8))
        assert_json_error(resp, 429, "busy")
        assert int(resp.headers["retry-after"]) >= 1
        assert upscale(c, png_bytes(8, 8)).status_code == 200
    # a request still waiting for the worker when its time is up gets 503 (the worker is held, so
    # the outcome does not depend on how fast an 8x8 upscale is: 0.1 ms was once fast enough)
    app = create_app(default_model=pair_spec, device="cpu", workers=1, queue_size=1, request_timeout=0.2)
    with TestClient(app) as c:
        with held_worker(app.state.ultrares.jobs):
            resp = upscale(c, png_bytes(8, 8))
        assert_json_error(resp, 503, "longer than")
        assert "retry-after" in resp.headers
        assert upscale(c, png_bytes(8, 8)).status_code == 200  # and its slot was given back


# ----------------------------------------------------------------------------- cameras
class FakeStream:
    """A minimal in-test object implementing the documented Stream contract."""

    def __init__(self, name: str, alpha: float = 0.5):
        self.name, self.alpha, self.model, self.frames = name, alpha, "ultrares-compact-x4", 0

    def status(self) -> dict:
        return {"state": "running", "input_resolution": [320, 240], "output_resolution": [1280, 960],
                "fps_in": 25.0, "fps_out": 24.8, "latency_p50_s": 0.04, "latency_p95_s": 0.06, "latency_p99_s": 0.08,
                "drops": 3, "alpha": self.alpha, "model": self.model}

    def set_alpha(self, alpha: float) -> None:
        self.alpha = alpha

    def set_model(self, model: str) -> None:
        self.model = model

    def snapshot_jpeg(self) -> bytes | None:
        if self.name == "cold":
            return None
        buf = io.BytesIO()
        Image.fromarray(np.full((24, 32, 3), int(self.alpha * 255), np.uint8)).save(buf, "JPEG")
        return buf.getvalue()


class FakeService:
    def __init__(self):
        self.cameras = {n: FakeStream(n) for n in ("north", "cold")}
        self.metrics = Metrics()
        self.is_ready = False

    def healthy(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.is_ready


def test_streams_list_patch_and_snapshot(pair_spec):
    service = FakeService()
    service.metrics.frames_in.labels("north").inc(7)
    with TestClient(create_app(service, default_model=pair_spec, device="cpu")) as c:
        streams = {s["name"]: s for s in c.get("/api/v1/streams").json()["streams"]}
        assert set(streams) == {"north", "cold"}
        assert streams["north"]["fps_in"] == 25.0 and streams["north"]["drops"] == 3
        resp = c.patch("/api/v1/streams/north", json={"alpha": 0.3})
        assert resp.status_code == 200 and resp.json()["alpha"] == 0.3
        assert service.cameras["north"].alpha == 0.3
        resp = c.patch("/api/v1/streams/north", json={"model": pair_spec, "alpha": 1})
        assert service.cameras["north"].model == pair_spec and service.cameras["north"].alpha == 1.0
        assert resp.json()["model"] == "default"  # the server's own checkpoints: never their path
        assert_json_error(c.patch("/api/v1/streams/north", json={"alpha": 1.5}), 422, "alpha")
        assert_json_error(c.patch("/api/v1/streams/north", json={}), 422, "nothing to change")
        assert_json_error(c.patch("/api/v1/streams/north", json={"model": "../x.pth"}), 400, "unknown model")
        assert_json_error(c.patch("/api/v1/streams/south", json={"alpha": 0.2}), 404, "north")
        assert_json_error(c.patch("/api/v1/streams/north", content=b"{", headers={"content-type": "application/json"}),
                          422, "json")
        wrong = c.delete("/api/v1/streams/north")
        assert_json_error(wrong, 405, "GET or PATCH")
        assert wrong.headers["allow"] == "GET, PATCH"
        snap = c.get("/api/v1/streams/north/snapshot.jpg")
        assert snap.status_code == 200 and decode(snap.content).format == "JPEG"
        assert_json_error(c.get("/api/v1/streams/cold/snapshot.jpg"), 404, "not produced a frame")
        assert "ultrares_frames_in_total{camera=\"north\"} 7.0" in c.get("/metrics").text  # the service's metrics
        assert c.get("/readyz").status_code == 503
        service.is_ready = True
        assert c.get("/readyz").status_code == 200


def test_streams_api_against_the_real_service(pair_spec, tmp_path):
    """The pipeline's Service (ultrares_stream.service) enhancing a real clip, steered over HTTP."""
    from ultrares_stream.config import CameraConfig, Defaults, InferenceConfig, ServiceConfig
    from ultrares_stream.service import Service

    clip = need_data("video", "cctv-motorway-320x240.avi")
    config = ServiceConfig(defaults=Defaults(model=pair_spec, alpha=0.5),
                           inference=InferenceConfig(device="cpu", engine="eager", max_batch=2),
                           cameras=[CameraConfig(name="cctv", input=str(clip), output=str(tmp_path / "out.mp4"),
                                                 output_size="640x480")])
    service = Service(config).start()
    try:
        with TestClient(create_app(service, service.metrics, default_model=pair_spec, device="cpu")) as c:
            deadline = time.monotonic() + 60
            while c.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the camera produced no output within 60 s"
                time.sleep(0.2)
            (cam,) = c.get("/api/v1/streams").json()["streams"]
            assert cam["name"] == "cctv" and cam["input_resolution"] == [320, 240]
            assert cam["alpha"] == 0.5
            resp = c.patch("/api/v1/streams/cctv", json={"alpha": 0.2})
            assert resp.status_code == 200, resp.text
            assert resp.json()["alpha"] == 0.2 and service.cameras["cctv"].alpha == 0.2
            snap = c.get("/api/v1/streams/cctv/snapshot.jpg")
            assert snap.status_code == 200
            assert decode(snap.content).size == (640, 480)
            assert 'ultrares_frames_out_total{camera="cctv"}' in c.get("/metrics").text
    finally:
        service.stop(10)


# ----------------------------------------------------------------------------- the command
def test_ultrares_web_command_serves(tmp_path):
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ultrares_stream", "web", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "ultrares web did not start within 60 s"
                time.sleep(0.3)
        assert resp.json() == {"status": "ok"}
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/models", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)


def test_slow_clients_are_dropped_and_others_still_served(pair_spec):
    """Slowloris: connections trickling their headers or body a byte at a time are closed at
    their deadline (the headers' here 1 s) while normal requests keep being answered."""
    import httpx

    from ultrares_stream.service import HttpServer
    from ultrares_stream.web import slow_clients

    server = HttpServer(create_app(default_model=pair_spec, device="cpu"), port=free_port())
    server.server.config.http = slow_clients.protocol(header_s=1.0, min_rate=100_000)
    server.start()
    slow = []
    try:
        for i in range(20):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" if i % 2 else
                      b"POST /api/v1/upscale HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            slow.append(s)
        started = time.monotonic()
        closed = [False] * len(slow)
        while not all(closed) and time.monotonic() - started < 8:
            for i, s in enumerate(slow):
                if closed[i]:
                    continue
                try:
                    s.sendall(b"x")  # one byte every 0.2 s: far below any deadline's rate
                    s.settimeout(0.01)
                    closed[i] = s.recv(1024) == b""
                except socket.timeout:
                    pass
                except OSError:
                    closed[i] = True
            assert httpx.get(f"{server.url}/healthz", timeout=5).json() == {"status": "ok"}
            time.sleep(0.2)
        assert all(closed), f"{closed.count(False)} slow connections still open after 8 s"
        # the GETs' headers had 1 s; the POSTs' 100,000-byte bodies 1 s + 100,000 / 100,000 B/s
        assert slow_clients.body_deadline_s(100_000, 1.0, 100_000, 600) == pytest.approx(2.0)
        assert slow_clients.body_deadline_s(None, 1.0, 100_000, 600) == 600
    finally:
        for s in slow:
            s.close()
        server.stop()


def test_ultrares_web_refuses_bad_options():
    from ultrares_stream.cli import main

    assert main(["web", "--port", "70000"]) == 2
    assert main(["web", "--max-upload-mb", "0"]) == 2
