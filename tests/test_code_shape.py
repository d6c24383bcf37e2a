"""The package stays made of functions short enough to read: none over MAX_LINES (decorators included)."""
import ast
from pathlib import Path

import ultrares_stream

MAX_LINES = 120


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


def test_function_lengths_are_measured():
    src = "class A:\n    @staticmethod\n    def f():\n        def g():\n            pass\n        return g\n"
    assert function_lengths(src) == {"A.f": 5, "A.f.g": 2}  # f from its decorator


def test_no_function_is_over_the_limit():
    root = Path(ultrares_stream.__file__).parent
    long = {f"{path.relative_to(root)}:{name}": n for path in sorted(root.rglob("*.py"))
            for name, n in function_lengths(path.read_text()).items() if n > MAX_LINES}
    assert not long, long
