"""``ultrares models``: list the registry, what is present locally, and fetch weights."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list known models and which are present locally",
                       description="List the model registry: pairs (alpha interpolates PSNR -> GAN), single "
                                   "networks, their architecture and scale, and whether the weights are on this "
                                   "machine. Third-party weights are looked up in ULTRARES_WEIGHTS_DIR, then "
                                   "the download cache (ULTRARES_CACHE).")
    p.add_argument("--fetch", metavar="NAME", action="append", default=[],
                   help="download a model (or both networks of a pair) into the cache, with hash checks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..models.registry import ENTRIES, PAIRS, entry_path, local_path

    for name in args.fetch:
        for member in PAIRS.get(name, (name,)):
            print(f"{member}: {entry_path(member, download=True)}")
    table = Table(title="UltraRes models")
    for col in ("name", "kind", "architecture", "scale", "local", "notes"):
        table.add_column(col)
    for name, (a, b) in PAIRS.items():
        present = all(local_path(ENTRIES[m]) for m in (a, b))
        table.add_row(name, "pair", ENTRIES[a].arch, f"x{ENTRIES[a].scale}", "yes" if present else "no",
                      f"alpha 0 = {a}, alpha 1 = {b}")
    for e in ENTRIES.values():
        path = local_path(e)
        table.add_row(e.name, "single", e.arch, f"x{e.scale}", str(path) if path else "no", e.note)
    Console().print(table)
    return 0
