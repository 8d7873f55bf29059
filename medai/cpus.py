"""How many CPUs this process may use: its affinity mask, capped by its container's CPU limit.

A container (a Kubernetes pod with a CPU limit) sees the host's cores in its affinity mask and in
``os.cpu_count()`` but may use only its quota. Sizing thread pools, process pools or Ray's warm
worker pool by the host's cores would start, on a 64-core host, thirty times what a 2-CPU pod
can run. Ray's own CPU detection reads the same cgroup limit.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["CGROUP", "cgroup_cpu_limit", "usable_cpus"]

CGROUP = Path("/sys/fs/cgroup")


def usable_cpus(cgroup: Path = CGROUP) -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup's CPU limit.

    Args:
        cgroup: Where the cgroup filesystem is mounted.

    Returns:
        At least 1; a fractional limit rounds up (1.5 CPUs keep two threads busy part-time).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity masks
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup)
    return max(1, min(cpus, math.ceil(limit))) if limit else cpus


def cgroup_cpu_limit(cgroup: Path = CGROUP) -> float | None:
    """The CPU limit of this process's cgroup in CPUs, ``None`` when there is none.

    Reads cgroup v2's ``cpu.max`` (``"200000 100000"``: 2 CPUs; ``"max 100000"``: no limit),
    else cgroup v1's ``cpu/cpu.cfs_quota_us`` over ``cpu/cpu.cfs_period_us`` (-1: no limit).

    Args:
        cgroup: Where the cgroup filesystem is mounted.
    """
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
