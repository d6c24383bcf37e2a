"""``ultrares shard``: which replica (pod / GPU) serves which camera."""
from __future__ import annotations

import argparse
import json
import logging

from .options import positive_int

log = logging.getLogger("ultrares.shard")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "shard", help="print which replica serves which camera",
        description="Print the assignment of the config's enabled cameras to N replicas, exactly as "
                    "`ultrares serve --shard-index I --shard-count N` applies it: rendezvous hashing of "
                    "the camera name with bounded loads, so each camera has one owner, replicas differ "
                    "by at most one camera, and adding a camera moves only a few others.")
    p.add_argument("--config", required=True, metavar="FILE", help="service config (YAML) with the cameras")
    p.add_argument("--replicas", required=True, type=positive_int, metavar="N",
                   help="number of replicas (StatefulSet replicas, usually one per GPU)")
    p.add_argument("--name", default="ultrares", metavar="NAME",
                   help="StatefulSet name, to show pod names NAME-I (default ultrares)")
    p.add_argument("--json", action="store_true", help="print JSON {pod: [cameras]} instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..shard import assign

    config = load_config(args.config)
    enabled = [c.name for c in config.cameras if c.enabled]
    disabled = len(config.cameras) - len(enabled)
    plan = assign(enabled, args.replicas)
    log.debug("%d cameras on %d replicas (%d disabled, not assigned)", len(enabled), args.replicas, disabled)
    if args.json:
        print(json.dumps({f"{args.name}-{r}": names for r, names in plan.items()}, indent=2))
        return 0

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(enabled)} cameras on {args.replicas} replicas"
                        + (f" ({disabled} disabled, not assigned)" if disabled else ""))
    table.add_column("shard", justify="right")
    table.add_column("pod")
    table.add_column("cameras", justify="right")
    table.add_column("names")
    for r, names in plan.items():
        table.add_row(str(r), f"{args.name}-{r}", str(len(names)), ", ".join(names) or "-")
    Console(width=max(100, Console().width)).print(table)
    return 0
