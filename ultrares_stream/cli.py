"""``ultrares`` command line: one sub-command per module in :mod:`ultrares_stream.commands`."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from . import __version__
from .errors import UserError

#: sub-command name -> module in ultrares_stream.commands defining ``register(subparsers)``
COMMANDS = {
    "enhance": "enhance",
    "serve": "serve",
    "demo": "demo",
    "web": "web",
    "models": "models",
    "eval": "eval",
    "train": "train",
    "bench": "bench",
    "engine": "engine",
    "shard": "shard",
    "zoom": "zoom",
}

log = logging.getLogger("ultrares")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ultrares",
        description="UltraRes Stream: real-time ESRGAN-family super-resolution for traffic-camera video.",
        epilog="Run `ultrares COMMAND --help` for a command's options. "
               "Start with `ultrares demo` (no camera needed).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="how much to log (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        importlib.import_module(f".commands.{module}", __package__).register(sub)
    return parser


def setup_logging(level: str) -> None:
    """Logs go to stderr, so stdout carries only results (tables, ``--json``)."""
    from rich.console import Console
    from rich.logging import RichHandler

    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False,
                                              rich_tracebacks=False, markup=False)])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    from .allocator import keep_freed_memory

    if os.environ.get("ULTRARES_KEEP_FREED_MEMORY", "1") != "0":  # 0: glibc's defaults
        keep_freed_memory()
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"ultrares {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM where a command handles it; it may say what was kept
        print(f"ultrares {args.command}: {exc or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
