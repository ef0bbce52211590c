"""The package map of docs/architecture.md, checked by import-linter on every import
(including imports inside functions): the neutral ``yikatong`` base imports nothing else of
ours; edge, central, kiosk and firmware_tools never import each other; only the ``ykt`` entry
point and the site-in-a-box sit above them. The contracts are in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_package_map_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe is not None, "import-linter is part of the test extras"
    run = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "4 kept, 0 broken" in run.stdout
