"""``ultrares web``: the web page and HTTP API on their own (no cameras)."""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os

from ..errors import UserError
from .options import add_device

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "web", help="serve the upscaling web page and HTTP API",
        description="Serve the web page (upload an image, choose alpha and output size, compare before/after, "
                    "download) and the HTTP API (/api/v1/..., schema at /docs), plus /metrics, /healthz and "
                    "/readyz. For cameras too, use `ultrares serve`, which serves the same app.",
        epilog="Binds 127.0.0.1 by default. Before binding another address, set a token (--token or "
               "ULTRARES_API_TOKEN): upload and camera changes then need 'Authorization: Bearer TOKEN'.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--token", default=os.environ.get("ULTRARES_API_TOKEN"),
                   help="API token required for uploads and changes (default: $ULTRARES_API_TOKEN, else none)")
    p.add_argument("--model", default=None,
                   help="default model: a registry name (see `ultrares models`) or checkpoint path(s), "
                        "'psnr.pth+gan.pth' for a pair (default ultrares-compact-x4)")
    add_device(p)
    p.add_argument("--max-upload-mb", type=float, default=25.0, help="largest upload in MiB (default 25)")
    p.add_argument("--max-pixels", type=int, default=2048 * 2048,
                   help="largest input image in pixels (default 4194304 = 2048x2048)")
    p.add_argument("--workers", type=int, default=1, help="images upscaled at once (default 1)")
    p.add_argument("--queue", type=int, default=4, help="uploads allowed to wait; more get HTTP 429 (default 4)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per upload (default 120)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is not a TCP port (1-65535)")
    if args.max_upload_mb <= 0 or args.max_pixels <= 0 or args.workers < 1 or args.queue < 0 or args.timeout <= 0:
        raise UserError("--max-upload-mb, --max-pixels, --workers and --timeout must be positive, --queue >= 0")
    if not _is_loopback(args.host) and not args.token:
        log.warning("binding %s without an API token: anyone who can reach it can upload images "
                    "(set --token or ULTRARES_API_TOKEN)", args.host)
    import uvicorn

    from ..web import slow_clients
    from ..web.app import create_app

    if args.model:
        from ..models.registry import resolve

        resolve(args.model)  # a bad --model is a one-line error now, not on the first upload
    app = create_app(api_token=args.token, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                     max_pixels=args.max_pixels, default_model=args.model, device=args.device,
                     workers=args.workers, queue_size=args.queue, request_timeout=args.timeout)
    log.info("web page on http://%s:%d/ (API docs at /docs, token %s)", args.host, args.port,
             "required for changes" if args.token else "off")
    uvicorn.run(app, host=args.host, port=args.port, log_level=logging.getLevelName(log.getEffectiveLevel()).lower(),
                access_log=False, http=slow_clients.protocol())
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
