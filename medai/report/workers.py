"""Worker processes for a report's findings, whose bootstraps and figures are independent.

At archive scale (14 findings over 112,120 images) a report spends most of its time in the
findings' bootstraps and figures; they run in a pool of worker processes, one per usable CPU
by default. Processes rather than threads: NumPy's ``bincount`` and Matplotlib's drawing hold
the GIL. The pool starts its workers by ``spawn``, because the parent may hold TensorFlow's
threads (``--model``), which a forked child does not survive. Work goes out in input order
and comes back in it, so the report is the same with any number of processes.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager

__all__ = ["finding_pool", "pool_map", "usable_cpus"]


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity masks
        return os.cpu_count() or 1


@contextmanager
def finding_pool(processes: int, findings: int) -> Iterator[Executor | None]:
    """A process pool for ``findings`` independent findings, or ``None`` to work in-process.

    Args:
        processes: Requested worker processes; ``0``: :func:`usable_cpus`.
        findings: How many findings there are to share out (no more workers than that).
    """
    workers = min(processes or usable_cpus(), findings)
    if workers <= 1:
        yield None
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield pool


def pool_map(pool: Executor | None, function: Callable, *iterables: Iterable) -> list:
    """``function`` over the zipped ``iterables``, in order: in ``pool``, or here without one."""
    if pool is None:
        return list(map(function, *iterables))
    return list(pool.map(function, *iterables))
