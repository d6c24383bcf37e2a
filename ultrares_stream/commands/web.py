"""``ultrares web``: the web page and HTTP API on their own (no cameras)."""
from __future__ import annotations

import argparse
import logging

from ..errors import UserError
from .options import add_device

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "web", help="serve the upscaling web page and HTTP API",
        description="Serve the web page (upload an image, choose alpha and output size, compare before/after, "
                    "download) and the HTTP API (/api/v1/..., schema at /docs), plus /metrics, /healthz and "
                    "/readyz. For cameras too, use `ultrares serve`, which serves the same app.",
        epilog="Binds 127.0.0.1 by default. Another address needs an API token (--token, --token-file, "
               "ULTRARES_API_TOKEN or ULTRARES_API_TOKEN_FILE), or --insecure: with a token every endpoint but "
               "/healthz and /readyz asks for 'Authorization: Bearer TOKEN'.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--token", default=None,
                   help="API token every endpoint but the probes then needs (default: $ULTRARES_API_TOKEN, "
                        "else the file $ULTRARES_API_TOKEN_FILE, else none); --token-file keeps it out of `ps`")
    p.add_argument("--token-file", default=None, metavar="FILE", help="read the API token from FILE")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name clients use to reach this server (Host header), besides localhost and IP "
                        "addresses; '.example.com' for a domain and its subdomains; repeatable")
    p.add_argument("--metrics-public", action="store_true", help="serve /metrics without the token")
    p.add_argument("--insecure", action="store_true",
                   help="serve beyond 127.0.0.1 without a token (anyone on the network can use it); refused otherwise")
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
    token = _token(args)
    from ..service import check_exposure

    check_exposure(args.host, token, args.insecure, "pass --token-file (or set ULTRARES_API_TOKEN_FILE)")
    import uvicorn

    from ..web import slow_clients
    from ..web.app import create_app

    if args.model:
        from ..models.registry import resolve

        resolve(args.model)  # a bad --model is a one-line error now, not on the first upload
    app = create_app(api_token=token, allowed_hosts=_allowed_hosts(args),
                     metrics_public=args.metrics_public, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                     max_pixels=args.max_pixels, default_model=args.model, device=args.device,
                     workers=args.workers, queue_size=args.queue, request_timeout=args.timeout)
    host = f"[{args.host}]" if ":" in args.host else args.host
    log.info("web page on http://%s:%d/ (API docs at /docs, token %s)", host, args.port,
             "required" if token else "off")
    uvicorn.run(app, host=args.host, port=args.port, log_level=logging.getLevelName(log.getEffectiveLevel()).lower(),
                access_log=False, http=slow_clients.protocol())
    return 0


def _token(args: argparse.Namespace) -> str | None:
    """--token, else --token-file, else the environment (ULTRARES_API_TOKEN, ULTRARES_API_TOKEN_FILE)."""
    from ..config import ServerConfig

    if args.token and args.token_file:
        raise UserError("give --token or --token-file, not both")
    if args.token:
        return args.token.strip() or None
    if args.token_file:
        return ServerConfig.read_token_file(args.token_file, "--token-file")
    return ServerConfig().resolve_token()


def _allowed_hosts(args: argparse.Namespace) -> list[str]:
    """--allowed-host names (checked as server.allowed_hosts is) and the bind host."""
    from pydantic import ValidationError

    from ..config import ServerConfig

    try:
        names = ServerConfig(allowed_hosts=args.allowed_host).allowed_hosts
    except ValidationError as exc:
        raise UserError(f"--allowed-host: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    return [*names, args.host]
