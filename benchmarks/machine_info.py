"""Facts about the machine a benchmark ran on, printed beside its numbers."""

from __future__ import annotations

import os
import platform
from importlib.metadata import version
from pathlib import Path


def machine() -> str:
    """``nproc``, the CPU model, Python and the versions that matter."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = ", ".join(f"{n} {version(n)}" for n in ("ray", "tensorflow", "keras"))
    nproc = len(os.sched_getaffinity(0))
    return f"nproc {nproc}, {model}, Python {platform.python_version()}, {versions}"
