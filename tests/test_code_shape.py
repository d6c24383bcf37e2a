"""The package stays made of functions short enough to read: none over MAX_LINES (decorators included),
and of constructors that take their settings as config objects: none with over MAX_PARAMS parameters."""
import ast
from pathlib import Path

import ultrares_stream

MAX_LINES = 120
MAX_PARAMS = 10  # of a class's __init__, self not counted, keyword-only ones counted


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
    assert not big, f"constructors over {MAX_PARAMS} parameters (pass config objects whole): {big}"


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
