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
        write_lines(["\t".join(row) for row in (COLUMNS, *rows)])
        return 0
    lines = layout(rows, console.width)
    console.print(lines[0], style="bold", markup=False, highlight=False, soft_wrap=True)
    for text in lines[1:]:
        note = text.startswith(NOTE_INDENT)
        console.print(text, style="dim" if note else None, markup=False, highlight=False, soft_wrap=True)
    return 0


COLUMNS = ("name", "kind", "architecture", "scale", "local", "notes")
#: what starts a line of notes beneath its model, when they do not fit beside it
NOTE_INDENT = "    "
#: spaces between two columns
GAP = "  "


def layout(rows: list[tuple[str, ...]], width: int) -> list[str]:
    """Terminal lines for ``rows`` (cells in :data:`COLUMNS` order): a header and one line a model,
    in aligned columns with whole names. The notes are the last column when every line then fits
    in ``width``; otherwise they go on lines of their own beneath each model, indented and wrapped."""
    import textwrap

    widths = [max(len(r[i]) for r in (COLUMNS, *rows)) for i in range(len(COLUMNS))]
    if sum(widths) + len(GAP) * (len(widths) - 1) <= width:
        return [_line(r, widths) for r in (COLUMNS, *rows)]
    lines = [_line(COLUMNS[:-1], widths)]
    for row in rows:
        lines.append(_line(row[:-1], widths))
        lines += textwrap.wrap(row[-1], max(20, width - 1), initial_indent=NOTE_INDENT,
                               subsequent_indent=NOTE_INDENT)
    return lines


def _line(cells, widths) -> str:
    return GAP.join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()


def write_lines(lines: list[str]) -> None:
    """Print ``lines`` to stdout; a reader that stops early (``| head``) ends the output quietly."""
    import os
    import sys

    try:
        for text in lines:
            print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # the interpreter flushes stdout again at exit: point it at /dev/null so that cannot fail
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _where(entry) -> str:
    """Where a present entry's file is: shipped in the package, or found on this machine."""
    return "shipped" if entry.url is None else "yes"
