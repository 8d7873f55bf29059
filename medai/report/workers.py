"""Worker processes for a report's findings, whose bootstraps and figures are independent.

At archive scale (14 findings over 112,120 images) a report spends most of its time in the
findings' bootstraps and figures; they run in a pool of worker processes, by default one per
CPU the process may use (its affinity mask, capped by a container's CPU limit). Processes
rather than threads: Matplotlib draws in Python under the GIL. The pool starts its workers by
``spawn``, because the parent may hold TensorFlow's threads (``--model``), which a forked
child does not survive. Work goes out in input order and comes back in it, so the report is
the same with any number of processes.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

__all__ = ["CGROUP", "cgroup_cpu_limit", "finding_pool", "pool_map", "usable_cpus"]

CGROUP = Path("/sys/fs/cgroup")


def usable_cpus(cgroup: Path = CGROUP) -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup's CPU limit.

    A container (a Kubernetes pod's CPU limit) sees the host's cores in its affinity mask but
    may use only its quota: on a 64-core host a 2-CPU pod would otherwise start 14 workers.

    Args:
        cgroup: Where the cgroup filesystem is mounted.
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


@contextmanager
def finding_pool(processes: int, findings: int) -> Iterator[Executor | None]:
    """A process pool for ``findings`` independent findings, or ``None`` to work in-process.

    Args:
        processes: Requested worker processes; ``0``: :func:`usable_cpus` (affinity and
            the cgroup's CPU limit).
        findings: How many findings there are to share out (no more workers than that).
    """
    workers = min(processes or usable_cpus(), findings)
    if workers <= 1:
        yield None
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield pool


def pool_map(pool: Executor | None, function: Callable, calls: Iterable[tuple]) -> list:
    """``function(*arguments)`` for each tuple of ``calls``, in order: in ``pool``, or here."""
    if pool is None:
        return [function(*arguments) for arguments in calls]
    futures = [pool.submit(function, *arguments) for arguments in calls]
    return [future.result() for future in futures]
