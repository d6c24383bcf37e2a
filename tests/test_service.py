"""The service: cameras from a config, real HTTP (/metrics, /healthz, /readyz, streams API), counters that
agree with what was actually published, graceful stop, and the serve command's config errors."""

import av
import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ultrares_stream.demo.server import free_port
from ultrares_stream.cli import main
from ultrares_stream.config import parse_config
from ultrares_stream.service import HttpServer, Service, make_app

pytestmark = pytest.mark.timeout(180)


def scrape(url):
    text = httpx.get(url + "/metrics", timeout=10).text
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def config(tmp_path, model, port, cams):
    return parse_config({
        "server": {"port": port},
        "inference": {"device": "cpu", "precision": "fp32", "engine": "eager", "max_batch": 3, "max_wait_ms": 5},
        "defaults": {"model": model, "alpha": 0.5},
        "cameras": cams,
    })


def test_metrics_agree_with_frames_published(tmp_path, tiny_model, make_clip):
    clips = [make_clip(tmp_path / f"c{i}.mp4", frames=n, w=48, h=32) for i, n in enumerate((12, 7))]
    cams = [{"name": f"cam{i}", "input": str(c), "output": str(tmp_path / f"out{i}.mkv")}
            for i, c in enumerate(clips)]
    cams[1]["output_size"] = "64x44"
    port = free_port()
    svc = Service(config(tmp_path, tiny_model, port, cams))
    app = make_app(svc)
    http = HttpServer(app, "127.0.0.1", port).start()
    try:
        assert httpx.get(http.url + "/readyz", timeout=5).status_code == 503  # nothing published yet
        svc.start()
        svc.wait(60)
        assert all(s.finished for s in svc.cameras.values()), svc.status()
        text, m = scrape(http.url)
        for i, n in enumerate((12, 7)):
            with av.open(str(tmp_path / f"out{i}.mkv")) as c:
                published = list(c.decode(video=0))
            assert len(published) == n
            cam = (("camera", f"cam{i}"),)
            assert m[("ultrares_frames_out_total", cam)] == n == m[("ultrares_frames_in_total", cam)]
            assert m[("ultrares_frames_dropped_total", cam)] == 0
            assert m[("ultrares_end_to_end_seconds_count", cam)] == n
            for stage in ("decode", "queue", "inference", "encode", "publish"):
                assert m[("ultrares_stage_seconds_count", (("camera", f"cam{i}"), ("stage", stage)))] == n
        assert (published[0].width, published[0].height) == (64, 42)  # 48x32 fitted inside 64x44, even
        assert m[("ultrares_batch_size_sum", (("device", "cpu"),))] == 19
        assert m[("ultrares_alpha", (("camera", "cam0"),))] == 0.5
        assert 'ultrares_model_info{' in text and "tiny-x2" in text
        assert "c0.mp4" not in text  # labels carry names, never URLs or paths
        assert httpx.get(http.url + "/healthz", timeout=5).status_code == 200
        assert httpx.get(http.url + "/readyz", timeout=5).status_code == 200
        streams = httpx.get(http.url + "/api/v1/streams", timeout=5).json()["streams"]
        assert {s["name"] for s in streams} == {"cam0", "cam1"}
        assert all(s["state"] == "finished" for s in streams)
        r = httpx.patch(http.url + "/api/v1/streams/cam0", json={"alpha": 0.25}, timeout=10)
        assert r.status_code == 200 and r.json()["alpha"] == 0.25
        assert scrape(http.url)[1][("ultrares_alpha", (("camera", "cam0"),))] == 0.25
    finally:
        svc.stop()
        http.stop()
    assert not svc.healthy()


def test_set_alpha_applies_without_restarting(tmp_path, tiny_model, make_clip):
    src = make_clip(tmp_path / "c.mp4", frames=3, w=48, h=32)
    svc = Service(config(tmp_path, tiny_model, 1, [{"name": "a", "input": str(src), "output": str(tmp_path / "o.mkv")}]))
    cam = svc.cameras["a"]
    up = cam.upscaler
    cam.set_alpha(0.5)
    assert cam.upscaler is up  # same model and alpha: nothing reloaded
    cam.set_alpha(0.9)
    assert cam.alpha == 0.9 and cam.route().upscaler is not up
    from ultrares_stream.errors import UserError

    with pytest.raises(UserError):
        cam.set_alpha(1.5)
    with pytest.raises(UserError):
        cam.set_model(str(tmp_path / "missing.pth"))
    assert cam.alpha == 0.9  # a failed change leaves the stream as it was


def test_cameras_are_built_from_their_config_with_the_defaults_filled_in(tmp_path, tiny_model, make_clip):
    src = make_clip(tmp_path / "c.mp4", frames=3, w=48, h=32)
    cams = [{"name": "a", "input": str(src), "output": str(tmp_path / "a.mkv")},
            {"name": "b", "input": str(src), "output": str(tmp_path / "b.mkv"), "alpha": 1.0, "output_size": "64x44",
             "queue": {"size": 3}, "encoder": {"crf": 30}, "stabilise": {"enabled": False}, "ensemble": 4}]
    cfg = config(tmp_path, tiny_model, 1, cams)
    a, b = (cfg.resolved_camera(c) for c in cfg.cameras)
    assert (a.model, a.alpha, a.output_size, a.encoder, a.stabilise) == (tiny_model, 0.5, None, cfg.defaults.encoder,
                                                                         cfg.defaults.stabilise)
    assert (b.alpha, b.output_size, b.encoder.crf, b.stabilise.enabled) == (1.0, "64x44", 30, False)
    svc = Service(cfg)
    sa, sb = svc.cameras["a"], svc.cameras["b"]
    assert (sa.alpha, sb.alpha) == (0.5, 1.0) and sa.stabiliser is not None and sb.stabiliser is None
    assert (sa.queue.maxsize, sb.queue.maxsize, sb.out_queue.maxsize) == (8, 3, 6)
    assert sa.queue.policy == "block" and not sa.live  # a file: nothing dropped
    assert (sa.encoder.crf, sb.encoder.crf, sb.encoder.tune) == (23, 30, None)
    assert sa.encoder.resolved_preset() == "ultrafast", "inference on the CPU keeps the encoder light"
    assert (sa.upscaler.ensemble, sb.upscaler.ensemble, sb.status()["ensemble"]) == (1, 4, 4)
    assert sb.upscaler.shares_engine_with(sa.upscaler)  # four passes a frame, one engine
    assert sa.sink.watchdog_s == cfg.reconnect.timeout_s
    rc = cfg.reconnect  # as plain values, the same for the source and the publisher
    assert sa.source.reconnect is sa.sink.reconnect
    assert (sa.source.reconnect.initial_s, sa.source.reconnect.max_s, sa.source.reconnect.timeout_s) == \
        (rc.initial_s, rc.max_s, rc.timeout_s)
    for s in (sa, sb):
        svc.pool.release(s.upscaler)


def test_serve_check_and_config_errors(tmp_path, capsys, tiny_model):
    good = tmp_path / "cams.yaml"
    good.write_text(yaml.safe_dump({"cameras": [{"name": "a", "input": "rtsp://u:pw@h/x", "output": "/tmp/o.mkv"}]}))
    assert main(["serve", "--config", str(good), "--check"]) == 0
    assert "valid (1 enabled camera" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"cameras": [{"name": "a", "input": "x", "output": "y", "alpha": 3}]}))
    assert main(["serve", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "cameras[0].alpha" in err and "Traceback" not in err
    bad.write_text(yaml.safe_dump({"cameras": [{"name": "a", "input": "x", "output": "y", "ensemble": 3}]}))
    assert main(["serve", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "cameras[0].ensemble" in err and "Traceback" not in err


def test_shipped_example_configs_are_valid():
    from pathlib import Path

    from ultrares_stream.config import load_config

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert configs, "configs/*.yaml missing"
    for path in configs:
        assert load_config(path).cameras, path
