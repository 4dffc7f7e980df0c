"""The package's dependency rules (import-linter contracts in pyproject.toml) hold: a violation fails here."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from partdistill.paths import CHECKOUT


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=CHECKOUT, capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(CHECKOUT), "PATH": str(lint.parent)})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Contracts: 6 kept, 0 broken." in result.stdout
