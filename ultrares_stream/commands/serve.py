"""``ultrares serve``: run every camera of a YAML config, with /metrics and the API on one HTTP port."""
from __future__ import annotations

import argparse
import logging
import signal
import threading

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="enhance many live cameras from a YAML config",
        description="Read every camera in the config (RTSP/RTMP/HTTP/HLS/file/V4L2), enhance the frames in "
                    "batches on the device and publish them (RTSP push, file or HLS). Serves /metrics, /healthz, "
                    "/readyz and the API (PATCH /api/v1/streams/NAME to change alpha) on server.host:port. "
                    "SIGTERM or Ctrl-C stops gracefully, flushing every output.",
        epilog="Example: ultrares serve --config configs/cameras.yaml. Beyond 127.0.0.1 it needs an API token "
               "(server.api_token_file, ULTRARES_API_TOKEN or ULTRARES_API_TOKEN_FILE): every endpoint but "
               "/healthz and /readyz then asks for 'Authorization: Bearer TOKEN' (docs/operations.md, Security).")
    p.add_argument("--config", "-c", required=True, metavar="YAML", help="service config (see configs/cameras.yaml)")
    p.add_argument("--host", help="HTTP host (overrides server.host)")
    p.add_argument("--port", type=int, help="HTTP port (overrides server.port)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: run until stopped)")
    p.add_argument("--shard-index", type=int, default=0, metavar="I",
                   help="serve only shard I of --shard-count (a StatefulSet pod's ordinal; see `ultrares shard`)")
    p.add_argument("--shard-count", type=int, default=1, metavar="N", help="number of shards (replicas), default 1")
    p.add_argument("--insecure", action="store_true",
                   help="serve HTTP beyond 127.0.0.1 without an API token (anyone on the network can watch the "
                        "cameras and change them); refused otherwise")
    p.add_argument("--check", action="store_true", help="only validate the config and exit")
    p.set_defaults(func=run)


def run_until_stopped(service, http=None, duration: float | None = None) -> None:
    """Run until SIGTERM/Ctrl-C, ``duration`` or (file inputs) the end; then stop everything gracefully."""
    stop = threading.Event()
    main = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if main else None
    old_int = None
    try:
        service.wait(duration, stop)
        if stop.is_set():
            log.info("SIGTERM: stopping (flushing outputs)")
    except KeyboardInterrupt:
        log.info("interrupted: stopping (flushing outputs)")
    finally:
        if main:  # a second Ctrl-C/SIGTERM while flushing must not leave outputs half-written
            old_int = signal.signal(signal.SIGINT, lambda *_: log.warning("already stopping; please wait"))
            signal.signal(signal.SIGTERM, lambda *_: log.warning("already stopping; please wait"))
        try:
            service.stop()
        finally:
            if http is not None:
                http.stop()
            if main:
                signal.signal(signal.SIGINT, old_int)
                signal.signal(signal.SIGTERM, old_term)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..service import HttpServer, Service, check_exposure, describe, make_app

    cfg = load_config(args.config)
    if args.host:
        cfg.server.host = args.host
    if args.port:
        cfg.server.port = args.port
    token = cfg.server.resolve_token()
    check_exposure(cfg.server.host, token, args.insecure,
                   "set server.api_token_file (or ULTRARES_API_TOKEN / ULTRARES_API_TOKEN_FILE)")
    from ..shard import shard_of

    enabled = shard_of(cfg, args.shard_index, args.shard_count)
    if args.shard_count > 1:
        log.info("shard %d of %d: %d camera(s): %s", args.shard_index, args.shard_count, len(enabled),
                 ", ".join(c.name for c in enabled) or "none")
        cfg.cameras = enabled
    if not enabled:  # refused by --check too: it says what serve would do
        from ..errors import UserError

        where = f" in shard {args.shard_index} of {args.shard_count}" if args.shard_count > 1 else ""
        raise UserError(f"{args.config}: no enabled cameras{where} (add entries under 'cameras:')")
    if args.check:
        print(f"{args.config}: valid ({len(enabled)} enabled camera(s) of {len(cfg.cameras)})")
        return 0
    service = Service(cfg)
    http = HttpServer(make_app(service, token), cfg.server.host, cfg.server.port).start()
    service.start()
    for line in describe(service):
        print(line)
    print(f"HTTP on {http.bind_url}: /metrics, /api/v1/streams, token {'required' if token else 'off'}"
          f"{'' if http.url == http.bind_url else f' (this machine: {http.url})'}   (Ctrl-C to stop)")
    run_until_stopped(service, http, args.duration)
    failed = [name for name, s in service.cameras.items() if s.state == "failed"]
    if failed:
        log.error("%d of %d camera(s) failed: %s", len(failed), len(service.cameras), ", ".join(failed))
        return 1
    return 0
