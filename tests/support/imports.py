"""What a fresh interpreter loads: for the tests that keep heavy packages out of a process."""

from __future__ import annotations

import subprocess
import sys

__all__ = ["loaded_by"]


def loaded_by(modules: list[str], packages: set[str]) -> list[str]:
    """Import ``modules`` in a fresh interpreter (this one has imported everything for other
    tests) and return which of ``packages`` it loaded, sorted."""
    code = (
        "import sys\n"
        f"import {', '.join(modules)}\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & "
        f"set({sorted(packages)!r}))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return out.stdout.split()
