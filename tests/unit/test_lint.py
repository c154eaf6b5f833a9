"""The tree passes ruff (pyflakes errors, syntax errors, bugbear) as configured in pyproject."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    assert Path(ruff).exists(), "ruff is a test dependency: pip install -e '.[test]'"
    r = subprocess.run([ruff, "check", "--output-format", "concise", "hostkvm", "tests", "scripts"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
