"""Dependencies point one way: what ships to a worker imports only itself, the client needs no torch, and nothing
but the commands and benches reaches into the training loop."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(folder: Path) -> dict[str, set[str]]:
    """Each Python file of a folder -> the dotted modules it imports (at any depth)."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("training/inference", ("training.learning", "training.preparation", "training.renderer", "training.serving",
                                "training.cli", "training.reports", "handler", "client", "bench", "web")),
        ("handler", ("training.learning", "training.preparation", "training.renderer", "training.serving",
                     "training.cli", "training.reports", "client", "bench", "web")),
        ("client", ("training.learning.train", "training.learning.evaluate", "training.learning.quantize", "torch",
                    "handler", "bench")),
        ("training/serving", ("training.learning", "training.cli", "bench")),
        ("web", ("training.learning", "torch", "bench")),
    ],
)  # fmt: skip
def test_no_package_imports_what_it_must_not(folder, forbidden):
    wrong = {
        path: sorted(n for n in names if n.startswith(forbidden))
        for path, names in _imports(ROOT / folder).items()
        if any(n.startswith(forbidden) for n in names)
    }
    assert not wrong, f"{folder} must not import {forbidden}: {wrong}"


def test_the_factory_client_runs_without_torch():
    probe = "import sys, client.__main__, client.batch, client.ab_report; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
