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


def test_no_module_over_800_lines():
    """A module a newcomer can read: the daemon was one class of 1,311 lines, the local
    server one file of 2,674 (issue 17); parts split at their seams stay split."""
    big = {str(p.relative_to(ROOT)): n for p in (ROOT / "device" / "voxbox").rglob("*.py")
           if (n := len(p.read_text().splitlines())) > 800}
    assert not big, big
