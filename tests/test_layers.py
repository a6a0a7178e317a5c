"""The package's layers import one way (pyproject.toml [tool.importlinter]): cli > tools > training >
inference > model > kernels > data > config > metrics/figures/atomic > errors. Function-level imports
count too (import-linter reads every import statement), so no cycle can hide inside a function."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_imports_point_down_the_layers():
    pytest.importorskip("importlinter")
    out = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command;"
                          "sys.exit(lint_imports_command())"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "1 kept, 0 broken" in out.stdout
