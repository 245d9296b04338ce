"""The package's shape: the import rules in ``.importlinter`` (layers, no cycles, pure
cores that import no adapter, no production code importing the local server or the rigs),
checked with import-linter on every test run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    # a child process: import-linter configures logging, which would leak into later tests
    lint = Path(sys.executable).parent / "lint-imports"
    res = subprocess.run([str(lint), "--config", str(ROOT / ".importlinter"), "--no-cache"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout and "Layers" in res.stdout
