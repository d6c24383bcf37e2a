"""The package's shape, measured: functions short enough to read (none over MAX_LINES, decorators
included), constructors that take few parameters (none over MAX_PARAMS: related settings travel as
one small settings object), no import circles (function-level imports counted), --help without torch."""
import ast
from pathlib import Path

import ultrares_stream

MAX_LINES = 60
MAX_PARAMS = 8  # of a class's __init__, self not counted, keyword-only ones counted


def function_lengths(source: str) -> dict[str, int]:
    """``qualified name -> lines`` of every function (nested ones too) in ``source``."""
    lengths: dict[str, int] = {}

    def visit(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    first = child.decorator_list[0].lineno if child.decorator_list else child.lineno
                    lengths[name] = child.end_lineno - first + 1
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return lengths


def constructor_sizes(source: str) -> dict[str, int]:
    """``class name -> parameters`` of every ``__init__`` in ``source`` (``self`` not counted;
    positional-only, keyword-only, ``*args`` and ``**kwargs`` counted)."""
    sizes: dict[str, int] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for child in node.body:
                if isinstance(child, ast.FunctionDef) and child.name == "__init__":
                    a = child.args
                    named = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
                    sizes[node.name] = named - 1 + (a.vararg is not None) + (a.kwarg is not None)
    return sizes


def test_function_lengths_are_measured():
    src = "class A:\n    @staticmethod\n    def f():\n        def g():\n            pass\n        return g\n"
    assert function_lengths(src) == {"A.f": 5, "A.f.g": 2}  # f from its decorator


def test_no_function_is_over_the_limit():
    root = Path(ultrares_stream.__file__).parent
    long = {f"{path.relative_to(root)}:{name}": n for path in sorted(root.rglob("*.py"))
            for name, n in function_lengths(path.read_text()).items() if n > MAX_LINES}
    assert not long, long


def test_constructor_sizes_are_measured():
    src = ("class A:\n    def __init__(self, a, /, b, *c, d, **e):\n        pass\n"
           "class B:\n    def __init__(self):\n        pass\n    def f(self, a, b):\n        pass\n")
    assert constructor_sizes(src) == {"A": 5, "B": 0}


def test_no_constructor_takes_over_the_limit():
    root = Path(ultrares_stream.__file__).parent
    big = {f"{path.relative_to(root)}:{name}": n for path in sorted(root.rglob("*.py"))
           for name, n in constructor_sizes(path.read_text()).items() if n > MAX_PARAMS}
    assert not big, f"constructors over {MAX_PARAMS} parameters (group related settings in one settings object): {big}"


def test_help_does_not_import_torch():
    """``ultrares COMMAND --help`` answers without importing torch (seconds on a loaded machine)."""
    import subprocess
    import sys

    from ultrares_stream.cli import COMMANDS

    code = ("import sys; from ultrares_stream.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", (out.stdout, out.stderr[-500:])
    assert COMMANDS  # every command module is imported by build_parser


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """``module -> modules of the package it imports``, function-level imports included;
    ``from . import x`` counts as importing ``x`` (not the package's ``__init__``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = (package, *path.relative_to(root).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                names = [f"{base}.{a.name}" for a in node.names]
                targets = [n for n in names if n in modules] or [base]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[module].update(t for t in targets if t in modules and t != module)
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while (w := stack.pop()) != v:
                group.append(w)
            if group:
                circles.append(sorted([v, *group]))

    for v in graph:
        if v not in index:
            visit(v)
    return circles


def test_import_circles_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_circles(graph) == [["a", "b", "c"]]


def test_no_import_circles_counting_function_level_imports():
    root = Path(ultrares_stream.__file__).parent
    assert import_circles(import_graph(root, "ultrares_stream")) == []


def name_literals(source: str, names: set[str]) -> list[tuple[int, str]]:
    """``(line, text)`` of every string literal in ``source`` equal, case-insensitively, to one of
    ``names`` (lower case); docstrings and other bare string statements are not code and are skipped."""
    tree = ast.parse(source)
    prose = {id(node.value) for node in ast.walk(tree)
             if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
             and isinstance(node.value.value, str)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose
            and node.value.lower() in names]


def test_name_literals_are_found():
    src = '"""RLFN: a docstring."""\nx = "rlfn"\nif arch == "SPAN":\n    """An RLFN note."""\ny = f"{x}SPAN"\n'
    assert name_literals(src, {"rlfn", "span"}) == [(2, "rlfn"), (3, "SPAN"), (5, "SPAN")]  # f-string parts too


def test_no_architecture_name_outside_models_archs():
    """Architecture knowledge lives in its descriptor (``models/archs/``, one file each): nothing else
    decides by an architecture's name."""
    from ultrares_stream.models.archs import ARCHS

    names = {arch.name.lower() for arch in ARCHS}
    root = Path(ultrares_stream.__file__).parent
    found = {f"{path.relative_to(root)}:{line}": text for path in sorted(root.rglob("*.py"))
             if (root / "models" / "archs") not in path.parents
             for line, text in name_literals(path.read_text(), names)}
    assert not found, f"architecture names outside models/archs/ (ask the descriptor instead): {found}"
