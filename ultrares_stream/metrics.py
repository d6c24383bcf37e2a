"""Prometheus metrics for every stage of the pipeline (prometheus-client).

Naming follows Prometheus conventions: ``ultrares_`` prefix, base units
(``_seconds``), counters end in ``_total``. The only per-camera label is the
camera's configured *name*, never its URL (URLs can carry passwords).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# Latency buckets from 1 ms to 10 s: per-frame stages on CPU and GPU alike.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
                   0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
STAGES = ("decode", "queue", "inference", "encode", "publish")


class Metrics:
    """All metrics of one process, in their own registry (so tests can run several)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry or CollectorRegistry()
        cam = ["camera"]
        self.frames_in = Counter("ultrares_frames_in_total", "Frames decoded from the source", cam, registry=r)
        self.frames_out = Counter("ultrares_frames_out_total", "Enhanced frames published", cam, registry=r)
        self.frames_dropped = Counter("ultrares_frames_dropped_total",
                                      "Frames dropped because the camera's queue was full", cam, registry=r)
        self.reconnects = Counter("ultrares_reconnects_total", "Reconnections, by side (source or sink)",
                                  ["camera", "side"], registry=r)
        self.errors = Counter("ultrares_errors_total", "Errors, by stage", ["camera", "stage"], registry=r)
        self.stage_seconds = Histogram("ultrares_stage_seconds", "Per-frame time spent in each stage",
                                       ["camera", "stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.end_to_end_seconds = Histogram("ultrares_end_to_end_seconds",
                                            "Frame received from the source to frame published",
                                            cam, buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("ultrares_batch_size", "Frames per inference batch", ["device"],
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32), registry=r)
        self.fps = Gauge("ultrares_fps", "Current frame rate, by direction (in or out)",
                         ["camera", "direction"], registry=r)
        self.drop_ratio = Gauge("ultrares_drop_ratio", "Share of the camera's frames dropped over the last 10 s "
                                "(it falls behind when this stays above 0)", cam, registry=r)
        self.queue_depth = Gauge("ultrares_queue_depth", "Frames waiting in the camera's queue", cam, registry=r)
        self.queue_capacity = Gauge("ultrares_queue_capacity", "Bound of the camera's queue", cam, registry=r)
        self.last_frame_age = Gauge("ultrares_last_frame_age_seconds",
                                    "Seconds since the camera's last decoded frame", cam, registry=r)
        self.up = Gauge("ultrares_camera_up", "1 while the camera's source is connected and delivering", cam,
                        registry=r)
        self.camera_state = Gauge("ultrares_camera_state", "1 for the camera's current state (running, degraded, "
                                  "disk-full, output-error, ...: docs/recording.md), 0 for the others",
                                  ["camera", "state"], registry=r)
        self.alpha = Gauge("ultrares_alpha", "Network interpolation weight in use (0 faithful, 1 detailed)", cam,
                           registry=r)
        self.model = Info("ultrares_model", "Model, alpha, engine and output size per camera", cam, registry=r)
        self.gpu_memory_bytes = Gauge("ultrares_gpu_memory_bytes", "CUDA memory, by kind (allocated, reserved)",
                                      ["device", "kind"], registry=r)
        self.web_upscales = Counter("ultrares_web_upscales_total",
                                    "Image upscale requests of the web page and API, by HTTP status",
                                    ["status"], registry=r)
        self.web_upscale_seconds = Histogram("ultrares_web_upscale_seconds",
                                             "Upload received to upscaled image ready (queue wait included)",
                                             buckets=LATENCY_BUCKETS + (20.0, 30.0, 60.0, 120.0), registry=r)
        self.inference_seconds = Histogram("ultrares_batch_inference_seconds", "Time for one inference batch",
                                           ["device"], buckets=LATENCY_BUCKETS, registry=r)

    def observe_stage(self, camera: str, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(camera, stage).observe(seconds)

    def update_gpu_memory(self) -> None:
        import torch

        if not torch.cuda.is_available():
            return
        for i in range(torch.cuda.device_count()):
            dev = f"cuda:{i}"
            self.gpu_memory_bytes.labels(dev, "allocated").set(torch.cuda.memory_allocated(i))
            self.gpu_memory_bytes.labels(dev, "reserved").set(torch.cuda.memory_reserved(i))
