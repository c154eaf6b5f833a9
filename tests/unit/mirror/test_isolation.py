"""The mirror runs anywhere: it imports nothing of hostkvm but hostkvm.errors."""

from __future__ import annotations

import subprocess
import sys


def test_mirror_imports_only_errors() -> None:
    code = "import sys, hostkvm.mirror; print(' '.join(sorted(m for m in sys.modules if m.startswith('hostkvm'))))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    outside = [m for m in out if m not in ("hostkvm", "hostkvm.errors") and not m.startswith("hostkvm.mirror")]
    assert outside == []
    assert "hostkvm.mirror._model" in out
