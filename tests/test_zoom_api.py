"""Live zoom: a camera keeps its last decoded frames (bounded), and ``POST /api/v1/streams/{name}/zoom``
answers with the box fused x4 from them, its provenance, or a clear JSON refusal. A real Service
(a file camera; a looping RTSP camera for the latency and frame-rate check), real HTTP (httpx
against HttpServer)."""
from __future__ import annotations

import io
import statistics
import threading
import time

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import free_port, panning_scene_clip, wait_for
from ultrares_stream.config import parse_config
from ultrares_stream.fusion.history import FrameHistory
from ultrares_stream.fusion.registration import translation
from ultrares_stream.service import HttpServer, Service, make_app
from ultrares_stream.sources import Frame

pytestmark = pytest.mark.timeout(180)

TOKEN = "zoom-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VELOCITY = (0.65, 0.3)  # LR pixels per frame the scene pans


def panning_clip(path, frames: int):
    """An H.264 clip (160x120) of the demo scene (HR 640x480, x1/4) panning by VELOCITY per frame;
    the HR picture and its plate boxes in frame 0 (LR pixels)."""
    return panning_scene_clip(path, frames, VELOCITY, tune="zerolatency", crf="20")


def pan(k: int) -> np.ndarray:
    return translation(-VELOCITY[0] * 4 * k, -VELOCITY[1] * 4 * k)


def box_at(box, k: int):
    x, y, w, h = box
    return x + round(VELOCITY[0] * k), y + round(VELOCITY[1] * k), w, h


def truth(picture: np.ndarray, k: int, box) -> np.ndarray:
    """The HR ground truth of ``box`` (LR pixels) in frame ``k``."""
    import cv2

    moved = cv2.warpAffine(picture, pan(k)[:2], (640, 480), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REFLECT)
    x, y, w, h = box
    return moved[y * 4: (y + h) * 4, x * 4: (x + w) * 4]


def luma_psnr(a: np.ndarray, b: np.ndarray) -> float:
    w = np.array([0.299, 0.587, 0.114])
    d = a.astype(float) @ w - b.astype(float) @ w
    return float(10 * np.log10(255.0 ** 2 / np.mean(d * d)))


def service(model: str, cams: list[dict], port: int = 1) -> Service:
    return Service(parse_config({
        "server": {"port": port},
        "inference": {"device": "cpu", "precision": "fp32", "engine": "eager", "max_batch": 2, "max_wait_ms": 5},
        "defaults": {"model": model, "alpha": 0.5}, "cameras": cams}))


# ----------------------------------------------------------------------------- the history
def frame(k: int, w: int = 16, h: int = 8, received: float | None = None) -> Frame:
    return Frame(np.full((h * 3 // 2, w), k % 256, np.uint8), w, h, k, k / 25,
                 received=time.monotonic() if received is None else received)


def test_the_history_keeps_the_last_frames_within_its_bounds():
    by_count = FrameHistory(seconds=60, max_frames=5)
    for k in range(12):
        by_count.push(frame(k))
    assert [f.index for f in by_count.frames()] == [7, 8, 9, 10, 11]
    by_bytes = FrameHistory(seconds=60, max_frames=64, max_bytes=3 * 16 * 12)
    for k in range(10):
        by_bytes.push(frame(k))
    assert len(by_bytes) == 3 and by_bytes.nbytes == 3 * 16 * 12
    by_time = FrameHistory(seconds=1.0)
    for k in range(50):
        by_time.push(frame(k, received=100 + k * 0.1))  # 10 fps: 1 s is 11 frames
    assert [f.index for f in by_time.frames()][0] == 39 and len(by_time) == 11
    by_time.push(frame(50, w=32, received=105.0))  # a new input size: older frames show another picture
    assert [f.index for f in by_time.frames()] == [50]


def test_a_window_is_centred_on_its_reference_where_frames_allow():
    history = FrameHistory(seconds=60)
    for k in range(20):
        history.push(frame(k))
    frames, at = history.window(6)
    assert [f.index for f in frames] == list(range(14, 20)) and at == 5  # the latest: all before it
    frames, at = history.window(6, reference=10)
    assert [f.index for f in frames] == list(range(7, 13)) and frames[at].index == 10
    frames, at = history.window(6, reference=1)
    assert [f.index for f in frames] == list(range(0, 6)) and frames[at].index == 1
    with pytest.raises(KeyError):
        history.window(6, reference=99)
    assert FrameHistory().window(4) == ([], -1)


def test_held_frames_convert_to_the_decoders_rgb(tmp_path):
    path, _, _ = panning_clip(tmp_path / "c.mp4", 3)
    from ultrares_stream.sources import frame_to_yuv420p

    history = FrameHistory()
    with av.open(str(path)) as c:
        for k, f in enumerate(c.decode(video=0)):
            data, w, h = frame_to_yuv420p(f)
            history.push(Frame(data, w, h, k, None))
            expected = f.to_ndarray(format="rgb24").astype(int)
    assert np.abs(history.frames()[-1].rgb().astype(int) - expected).mean() < 1.5


# ----------------------------------------------------------------------------- the endpoint
@pytest.fixture(scope="module")
def file_camera(tmp_path_factory, tiny_model):
    """A Service that enhanced a 40-frame panning clip (its history holds all 40), with its HTTP
    server (token set); (base URL, service, HR picture, plate boxes in frame 0)."""
    tmp = tmp_path_factory.mktemp("zoom")
    path, picture, boxes = panning_clip(tmp / "pass.mp4", 40)
    svc = service(tiny_model, [{"name": "gate", "input": str(path), "output": str(tmp / "out.mkv")}])
    http = HttpServer(make_app(svc, api_token=TOKEN), "127.0.0.1", free_port()).start()
    svc.start()
    try:
        assert wait_for(lambda: svc.cameras["gate"].finished, 90), svc.status()
        yield http.url, svc, picture, boxes
    finally:
        svc.stop(10)
        http.stop()


def post_zoom(base: str, body: dict, name: str = "gate", headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{base}/api/v1/streams/{name}/zoom", json=body, headers=AUTH if headers is None else headers, timeout=30)


def png_info(data: bytes) -> tuple[np.ndarray, dict]:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")), dict(im.info)


def test_a_zoom_is_the_box_fused_x4_with_its_provenance(file_camera):
    base, svc, picture, boxes = file_camera
    box = box_at(boxes[0], 39)  # the plate in the latest frame
    started = time.perf_counter()
    fused = post_zoom(base, {"box": list(box), "frames": 16})
    elapsed = time.perf_counter() - started
    assert fused.status_code == 200, fused.text
    assert elapsed < 1.0, f"a 16-frame zoom took {elapsed:.2f} s"
    image, info = png_info(fused.content)
    assert image.shape == (box[3] * 4, box[2] * 4, 3)
    assert info["Comment"].startswith("Machine-fused from 16 frames") and "Not an original recording" in info["Comment"]
    assert info["ultrares:frame-indices"] == ",".join(map(str, range(24, 40)))
    assert info["ultrares:verdict"] == "fused" and len(info["ultrares:timestamps"].split(",")) == 16
    assert info["ultrares:reference"] == f"{39 / 25:.3f}"  # the source's own timestamps
    assert info["ultrares:quantiser"].startswith("h264 QP ")  # the camera's encoder, as decoded
    h = fused.headers
    assert h["x-ultrares-frames"] == "16 of 16" and h["x-ultrares-reference-index"] == "39"
    assert h["x-ultrares-box"] == ",".join(map(str, box)) and h["x-ultrares-output-size"] == f"{box[2] * 4}x{box[3] * 4}"
    assert h["x-ultrares-model"] == "multi-frame fusion" and h["x-ultrares-comment"] == info["Comment"]
    assert h["x-ultrares-quantiser"] == info["ultrares:quantiser"]
    assert "gate-zoom-39-" in h["content-disposition"]

    single = post_zoom(base, {"box": list(box), "method": "single"})
    assert single.status_code == 200, single.text
    one, one_info = png_info(single.content)
    assert one.shape == image.shape and one_info["ultrares:verdict"] == "single frame"
    assert "bicubic" in one_info["Comment"] and single.headers["x-ultrares-frames"] == "1 of 1"
    # fusion is closer to the scene than the one frame it is compared with
    hr = truth(picture, 39, box)
    assert luma_psnr(image, hr) > luma_psnr(one, hr) + 0.5, (luma_psnr(image, hr), luma_psnr(one, hr))


def test_a_zoom_on_the_frame_a_snapshot_shows(file_camera):
    base, svc, _, boxes = file_camera
    snap = httpx.get(f"{base}/api/v1/streams/gate/snapshot.jpg", headers=AUTH, timeout=10)
    assert snap.status_code == 200
    index = int(snap.headers["x-ultrares-frame-index"])
    resp = post_zoom(base, {"box": list(box_at(boxes[0], index)), "frames": 8, "reference": index})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-ultrares-reference-index"] == str(index)
    indices = [int(i) for i in png_info(resp.content)[1]["ultrares:frame-indices"].split(",")]
    assert len(indices) == 8 and index in indices


@pytest.mark.parametrize("body, status, words", [
    ({"box": [150, 100, 30, 10]}, 422, ["outside the camera's 160x120 frame"]),
    ({"box": [-1, 0, 20, 8]}, 422, ["outside"]),
    ({"box": [10, 10, 30]}, 422, ["box"]),
    ({"box": [10, 10, 30, 10], "frames": 0}, 422, ["frames"]),
    ({"box": [10, 10, 30, 10], "frames": 64}, 409, ["holds 40 decoded frame", "fewer frames"]),
    ({"box": [10, 10, 30, 10], "reference": 12345}, 409, ["frame 12345 is no longer held"]),
    ({"box": [10, 10, 30, 10], "colour": "red"}, 422, ["colour"]),
])
def test_a_zoom_that_cannot_be_made_says_why(file_camera, body, status, words):
    resp = post_zoom(file_camera[0], body)
    assert resp.status_code == status, resp.text
    message = resp.json()["error"]
    assert all(w in message for w in words), message


def test_an_unreadable_zoom_returns_the_verdict_instead_of_an_image(file_camera):
    base, _, _, boxes = file_camera
    x, y, _, _ = box_at(boxes[0], 39)
    resp = post_zoom(base, {"box": [x, y, 8, 4]})
    assert resp.status_code == 422 and resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["verdict"] == "unreadable" and "under 12x6" in body["reasons"][0]
    assert body["error"].startswith("unreadable:") and body["frames"].endswith("of 16")
    assert body["quantiser"].startswith("h264 QP ")


def test_zoom_follows_the_access_rules(file_camera):
    base = file_camera[0]
    body = {"box": [10, 10, 30, 10]}
    assert post_zoom(base, body, headers={}).status_code == 401
    cross = post_zoom(base, body, headers={**AUTH, "Origin": "http://evil.example"})
    assert cross.status_code == 403 and "cross-origin" in cross.json()["error"]
    assert post_zoom(base, body, name="nowhere").status_code == 404
    schema = httpx.get(f"{base}/openapi.json", headers=AUTH, timeout=10).json()
    op = schema["paths"]["/api/v1/streams/{name}/zoom"]["post"]
    assert "image/png" in op["responses"]["200"]["content"]
    assert op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("ZoomUnreadable")


# ----------------------------------------------------------------------------- a live camera
def fps_out(base: str) -> float:
    """The camera's published frames per second (over the last 5 s)."""
    return httpx.get(f"{base}/api/v1/streams/cam", timeout=10).json()["fps_out"]


def test_live_zooms_answer_within_a_second_and_the_camera_keeps_its_frame_rate(tmp_path, tiny_model, gst_rtsp):
    from ultrares_stream.demo.server import RtspServer

    clip, _, boxes = panning_clip(tmp_path / "cam.mp4", 100)
    with RtspServer(port=0, video=clip).start(timeout=30) as cam:
        port = free_port()
        svc = service(tiny_model, [{"name": "cam", "input": cam.camera_url, "output": str(tmp_path / "cam.mkv")}],
                      port)
        http = HttpServer(make_app(svc), "127.0.0.1", port).start()
        svc.start()
        try:
            assert wait_for(lambda: svc.cameras["cam"].state == "running" and len(svc.cameras["cam"].history) >= 64,
                            60), svc.status()
            time.sleep(5.5)  # a full rate window of steady state
            before = fps_out(http.url)
            seconds, during = live_zooms(http.url, 8.0)
            after = fps_out(http.url)
        finally:
            svc.stop(10)
            http.stop()
    print(f"zoom p50 {statistics.median(seconds):.3f} s, max {max(seconds):.3f} s over {len(seconds)} zooms; "
          f"fps_out {before:.1f} before, {min(during):.1f}-{max(during):.1f} during, {after:.1f} after")
    assert len(seconds) >= 4 and sorted(seconds)[-2] < 1.0 and max(seconds) < 2.0, seconds  # one outlier allowed
    assert min(during) >= 0.9 * before, (before, during)


def live_zooms(base: str, duration: float) -> tuple[list[float], list[float]]:
    """Zooms back to back on the box around where the plate was last seen, for ``duration``
    seconds, while sampling the camera's published frame rate: (each zoom's seconds, fps samples)."""
    seconds, during, stop = [], [], threading.Event()

    def sample():
        time.sleep(5.0)  # the 5 s rate window is then all "during"
        while not stop.is_set():
            during.append(fps_out(base))
            stop.wait(0.5)

    sampler = threading.Thread(target=sample)
    sampler.start()
    end = time.monotonic() + duration
    while time.monotonic() < end:
        started = time.perf_counter()
        resp = post_zoom(base, {"box": [60, 40, 30, 8], "frames": 16}, name="cam", headers={})
        seconds.append(time.perf_counter() - started)
        assert resp.status_code in (200, 422), resp.text  # fused, or unreadable where the scene shows no detail
    stop.set()
    sampler.join()
    return seconds, during


# ----------------------------------------------------------------------------- an uploaded clip
CLIP_LIMIT = 512 * 1024  # the clip app's upload limit (bytes)


@pytest.fixture(scope="module")
def clip_app(tmp_path_factory):
    """The app alone (no cameras; token set; uploads up to CLIP_LIMIT bytes and 200x150 pixels) over
    real HTTP, and a 40-frame H.264 clip of the demo scene panning: (base URL, clip, HR picture, boxes).
    Temporary files go to a folder of this module's own while it runs."""
    import tempfile

    from ultrares_stream.web.app import create_app

    path, picture, boxes = panning_clip(tmp_path_factory.mktemp("clip") / "pass.mp4", 40)
    app = create_app(device="cpu", api_token=TOKEN, max_upload_bytes=CLIP_LIMIT, max_pixels=200 * 150)
    http = HttpServer(app, "127.0.0.1", free_port()).start()
    saved, tempfile.tempdir = tempfile.tempdir, str(tmp_path_factory.mktemp("tmp"))
    try:
        yield http.url, path, picture, boxes
    finally:
        tempfile.tempdir = saved
        http.stop()


def post_clip(base: str, clip: bytes, fields: dict, headers: dict | None = None, name: str = "pass.mp4") -> httpx.Response:
    return httpx.post(f"{base}/api/v1/zoom", files={"clip": (name, clip, "video/mp4")}, data=fields,
                      headers=AUTH if headers is None else headers, timeout=30)


def grey_clip(path, width: int, height: int) -> bytes:
    """Two grey H.264 frames of ``width`` x ``height``: the file's bytes."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in range(2):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 100, np.uint8), format="rgb24")
            frame.pts = k
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path.read_bytes()


def clip_folders() -> set:
    import tempfile
    from pathlib import Path

    return set(Path(tempfile.gettempdir()).glob("ultrares-clip-*"))


def test_a_clip_zoom_is_what_ultrares_zoom_writes_beside_the_single_frame(clip_app, tmp_path):
    from ultrares_stream.cli import main

    base, path, picture, boxes = clip_app
    box, at = box_at(boxes[0], 20), 20 / 25
    fields = {"at": str(at), "box": ",".join(map(str, box)), "frames": "16"}
    fused = post_clip(base, path.read_bytes(), fields)
    assert fused.status_code == 200, fused.text
    image, info = png_info(fused.content)
    assert image.shape == (box[3] * 4, box[2] * 4, 3)
    assert info["Comment"].startswith("Machine-fused from 16 frames") and "Not an original recording" in info["Comment"]
    assert info["ultrares:verdict"] == "fused" and info["ultrares:reference"] == f"{at:.3f}"
    assert len(info["ultrares:timestamps"].split(",")) == 16 and info["ultrares:box"] == fields["box"]
    h = fused.headers
    assert h["x-ultrares-frames"] == "16 of 16" and h["x-ultrares-model"] == "multi-frame fusion"
    assert h["x-ultrares-reference-time"] == f"{at:.3f}" and h["x-ultrares-comment"] == info["Comment"]
    assert h["x-ultrares-output-size"] == f"{box[2] * 4}x{box[3] * 4}" and float(h["x-ultrares-residual"]) >= 0
    assert 'filename="pass-zoom-0.800s-' in h["content-disposition"] and h["content-disposition"].endswith('-fused.png"')
    # the command line's crop of the same box, pixel for pixel, with the same provenance
    assert main(["zoom", str(path), "--at", str(at), "--box", fields["box"], "-o", str(tmp_path / "cli.png")]) == 0
    cli_image, cli_info = png_info((tmp_path / "cli.png").read_bytes())
    assert np.array_equal(image, cli_image) and cli_info == info

    single = post_clip(base, path.read_bytes(), {**fields, "method": "single"})
    assert single.status_code == 200, single.text
    one, one_info = png_info(single.content)
    assert one.shape == image.shape and one_info["ultrares:verdict"] == "single frame"
    assert "One frame of pass.mp4" in one_info["Comment"] and single.headers["x-ultrares-frames"] == "1 of 1"
    hr = truth(picture, 20, box)
    assert luma_psnr(image, hr) > luma_psnr(one, hr) + 0.5, (luma_psnr(image, hr), luma_psnr(one, hr))


@pytest.mark.parametrize("fields, status, words", [
    ({"at": "0.8", "box": "150,100,30,10"}, 422, ["box 150,100,30,10 is outside the 160x120 frame"]),
    ({"at": "0.8", "box": "-1,0,20,8"}, 422, ["box -1,0,20,8 is outside"]),
    ({"at": "0.8", "box": "10,10,30"}, 422, ["box must be X,Y,W,H"]),
    ({"at": "0.8", "box": "10,10,1,8"}, 422, ["at least 2 pixels"]),
    ({"at": "9", "box": "10,10,30,10"}, 422, ["at 9 s is past the end of pass.mp4", "last frame is at 1.560 s"]),
    ({"at": "-1", "box": "10,10,30,10"}, 422, ["at: "]),
    ({"at": "nan", "box": "10,10,30,10"}, 422, ["at: ", "finite"]),
    ({"box": "10,10,30,10"}, 422, ["at: "]),
    ({"at": "0.8", "box": "10,10,30,10", "frames": "0"}, 422, ["frames: "]),
    ({"at": "0.8", "box": "10,10,30,10", "frames": "65"}, 422, ["frames: "]),
    ({"at": "0.8", "box": "10,10,30,10", "method": "sharpest"}, 422, ["method: "]),
])
def test_a_clip_zoom_that_cannot_be_made_says_why(clip_app, fields, status, words):
    before = clip_folders()
    resp = post_clip(clip_app[0], clip_app[1].read_bytes(), fields)
    assert resp.status_code == status and resp.headers["content-type"] == "application/json", resp.text
    message = resp.json()["error"]
    assert all(w in message for w in words) and "Traceback" not in message, message
    assert clip_folders() <= before  # the upload's temporary folder is gone


def test_a_bad_or_oversized_clip_is_refused_with_nothing_left_behind(clip_app, tmp_path):
    base, path = clip_app[0], clip_app[1]
    data, fields, before = path.read_bytes(), {"at": "0.5", "box": "10,10,30,10"}, clip_folders()
    for blob, status, words in [
        (b"shopping list, not a video\n" * 40, 400, ["notes.mp4: cannot decode the video"]),
        (data[: len(data) // 3], 400, ["notes.mp4: cannot decode the video"]),  # cut short: no index
        (b"", 400, ["empty"]),
        (data + bytes(CLIP_LIMIT), 413, [f"over {CLIP_LIMIT:,} bytes"]),  # within the form's overhead
    ]:
        resp = post_clip(base, blob, fields, name="notes.mp4")
        assert resp.status_code == status, (status, resp.text)
        message = resp.json()["error"]
        assert all(w in message for w in words) and "/" not in message.replace("X,Y,W,H", ""), message
    resp = post_clip(base, grey_clip(tmp_path / "big.mp4", 256, 192), fields)
    assert resp.status_code == 413 and "256x192 = 49,152 pixels; the limit is 30,000" in resp.json()["error"], resp.text
    assert clip_folders() <= before
    assert post_clip(base, data, {**fields, "box": "75,42,29,6"}).status_code == 200  # the server is fine
    from fastapi.testclient import TestClient

    from ultrares_stream.web.app import create_app

    with TestClient(create_app(device="cpu", max_upload_bytes=CLIP_LIMIT)) as client:  # in-process: the
        resp = client.post("/api/v1/zoom", files={"clip": ("big.mp4", bytes(3 * CLIP_LIMIT))}, data=fields)
        # body is sent whole before the early answer, which over a socket may cut the client's sending short
    assert resp.status_code == 413 and "request body is over" in resp.json()["error"], resp.text


def test_an_unreadable_clip_zoom_returns_the_verdict_instead_of_an_image(clip_app):
    base, path, _, boxes = clip_app
    x, y, _, _ = box_at(boxes[0], 20)
    resp = post_clip(base, path.read_bytes(), {"at": "0.8", "box": f"{x},{y},8,4"})
    assert resp.status_code == 422 and resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["verdict"] == "unreadable" and "under 12x6" in body["reasons"][0]
    assert body["error"].startswith("unreadable:") and body["frames"].endswith("of 16")


def test_clip_zoom_follows_the_access_rules(clip_app):
    base, path = clip_app[0], clip_app[1]
    fields = {"at": "0.8", "box": "75,42,29,6"}
    assert post_clip(base, path.read_bytes(), fields, headers={}).status_code == 401
    cross = post_clip(base, path.read_bytes(), fields, headers={**AUTH, "Origin": "http://evil.example"})
    assert cross.status_code == 403 and "cross-origin" in cross.json()["error"]
    same = post_clip(base, path.read_bytes(), fields, headers={**AUTH, "Origin": base})
    assert same.status_code == 200, same.text
    schema = httpx.get(f"{base}/openapi.json", headers=AUTH, timeout=10).json()
    op = schema["paths"]["/api/v1/zoom"]["post"]
    assert "image/png" in op["responses"]["200"]["content"]
    assert op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("ZoomUnreadable")
