"""``ultrares demo``: the whole pipeline with no camera: local RTSP camera -> enhance -> republish."""
from __future__ import annotations

import argparse
import logging
import threading

from .options import add_device, add_threads

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run the whole pipeline on a simulated traffic camera (no camera needed)",
        description="Start a local RTSP server playing a traffic scene (a real clip from the shared data if "
                    "present, else a generated one) at rtsp://127.0.0.1:PORT/cam, enhance it live and publish "
                    "the result to the same server. Watch it with ffplay or VLC at the printed URL; metrics "
                    "and the page are on the HTTP port. Stops on Ctrl-C or after --duration.",
        epilog="Example: ultrares demo --duration 60   then   ffplay rtsp://127.0.0.1:8554/enhanced")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: until Ctrl-C)")
    p.add_argument("--port", type=int, default=8554, help="RTSP port (default 8554; 0 = any free port)")
    p.add_argument("--http-port", type=int, default=8080, help="HTTP port for /metrics and the page (default 8080)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve RTSP and HTTP on (default 127.0.0.1); another address needs an API token "
                        "in ULTRARES_API_TOKEN or ULTRARES_API_TOKEN_FILE, or --insecure")
    p.add_argument("--insecure", action="store_true",
                   help="serve HTTP beyond 127.0.0.1 without an API token (anyone on the network can use it)")
    p.add_argument("--model", default=None, help="model name or checkpoint (default: ultrares-compact-x4)")
    p.add_argument("--alpha", type=float, default=None, help="0 = faithful, 1 = detailed (default 0: reads plates best, docs/model_card.md)")
    p.add_argument("--video", default=None, help="play this clip as the camera instead of the default scene")
    p.add_argument("--output-size", default=None, help="720p, 1080p, 4k or WxH (default: the model's scale)")
    add_device(p)
    add_threads(p)
    p.set_defaults(func=run)


def announce_watch_url(console, camera, url: str, stopped: threading.Event) -> threading.Thread:
    """Say "starting" now and print the watch command once ``camera`` has published its first
    enhanced frame (its ``first_output`` event): until then the RTSP server answers the URL with
    404 Not Found. Gives up quietly when ``stopped`` is set first."""
    console.print("[bold green]watch[/]     starting… (the URL to watch follows once the first enhanced frame "
                  "is published)")

    def wait() -> None:
        while not camera.first_output.wait(0.2):
            if stopped.is_set():
                return
        console.print(f"[bold green]watch[/]     ffplay -rtsp_transport tcp {url}   (or open it in VLC)")

    thread = threading.Thread(target=wait, name="demo-watch-url", daemon=True)
    thread.start()
    return thread


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from ..config import parse_config
    from ..demo.server import RtspServer
    from ..service import HttpServer, Service, check_exposure, make_app
    from .serve import run_until_stopped

    camera = {"name": "demo", "input": "rtsp://placeholder/cam", "output": "rtsp://placeholder/push/enhanced",
              "queue": {"size": 4}}
    if args.alpha is not None:
        camera["alpha"] = args.alpha
    if args.output_size:
        camera["output_size"] = args.output_size
    data = {"server": {"host": args.host, "port": args.http_port},
            "inference": {"device": args.device, "threads": args.threads},
            "cameras": [camera]}
    if args.model:
        data["defaults"] = {"model": args.model}
    cfg = parse_config(data, "demo options")  # validates alpha/size with the same messages as the YAML
    token = cfg.server.resolve_token()
    check_exposure(args.host, token, args.insecure, "set ULTRARES_API_TOKEN or ULTRARES_API_TOKEN_FILE")
    console = Console()
    from ..engine import pick_device
    from ..stream import UpscalerPool

    inf = cfg.inference
    pool = UpscalerPool.from_config(inf, pick_device(inf.device))
    # load the model first: a missing or bad model is reported before anything starts
    preloaded = pool.get(cfg.camera_model(cfg.cameras[0]), cfg.camera_alpha(cfg.cameras[0]))
    with RtspServer(port=args.port, host=args.host, video=Path(args.video) if args.video else None) as srv:
        cfg.cameras[0].input = srv.camera_url
        cfg.cameras[0].output = srv.record_url("enhanced")
        service = Service(cfg, pool=pool)  # the camera shares the preloaded model
        pool.release(preloaded)
        http = HttpServer(make_app(service, token), args.host, args.http_port).start()
        service.start()
        console.print(f"[bold]camera[/]    {srv.camera_url}")
        console.print(f"[bold]page[/]      {http.url}/" + ("   (API token required)" if token else ""))
        console.print(f"[bold]metrics[/]   {http.url}/metrics")
        console.print("Ctrl-C to stop" + (f" (stops by itself after {args.duration:g} s)" if args.duration else ""))
        stopped = threading.Event()
        announce_watch_url(console, service.cameras["demo"], srv.watch_url("enhanced"), stopped)
        try:
            run_until_stopped(service, http, args.duration)
        finally:
            stopped.set()
        st = service.cameras["demo"].status()
        console.print(f"demo: {st['frames_in']} frames in, {st['frames_out']} enhanced and published, "
                      f"{st['drops']} dropped (queue full), latency p50 "
                      f"{(st['latency_p50_s'] or 0):.2f} s")
    return 0
