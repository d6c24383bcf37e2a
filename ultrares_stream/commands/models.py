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
    rows = []
    for name, (a, b) in PAIRS.items():
        present = all(local_path(ENTRIES[m]) for m in (a, b))
        rows.append((name, "pair", ENTRIES[a].arch, f"x{ENTRIES[a].scale}", _where(ENTRIES[a]) if present else "no",
                     f"alpha 0 = {a}, alpha 1 = {b}"))
    for e in ENTRIES.values():
        rows.append((e.name, "single", e.arch, f"x{e.scale}", _where(e) if local_path(e) else "no", e.note))
    console = Console()
    if not console.is_terminal:  # a pipe: one tab-separated line per model, whole names, for grep/cut
        print("\t".join(COLUMNS))
        for row in rows:
            print("\t".join(row))
        return 0
    table = Table(title="UltraRes models")
    for col in COLUMNS:
        table.add_column(col, no_wrap=col in ("name", "kind", "scale", "local"))
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return 0


COLUMNS = ("name", "kind", "architecture", "scale", "local", "notes")


def _where(entry) -> str:
    """Where a present entry's file is: shipped in the package, or found on this machine."""
    return "shipped" if entry.url is None else "yes"
