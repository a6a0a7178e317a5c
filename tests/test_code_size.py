"""Size limits that keep the trainer, the search and the configuration readable: no module in those
packages over 500 lines and no function in them (or in the command line) over 80 lines. Counted with
`ast`, so docstrings and comments inside a function count too."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nmt"
LIMITED = ["training", "inference", "config", "cli.py"]
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules():
    for part in LIMITED:
        path = PACKAGE / part
        yield from (sorted(path.rglob("*.py")) if path.is_dir() else [path])


def _long_functions(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                yield f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)"


def test_the_limited_packages_exist():
    assert all((PACKAGE / part).exists() for part in LIMITED)


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_and_function_sizes(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_FILE_LINES, f"{path.relative_to(PACKAGE.parent)} has {lines} lines (limit {MAX_FILE_LINES})"
    assert list(_long_functions(path)) == []
