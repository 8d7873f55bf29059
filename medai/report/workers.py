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

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager

from medai.cpus import usable_cpus

__all__ = ["finding_pool", "pool_map"]


@contextmanager
def finding_pool(processes: int, findings: int) -> Iterator[Executor | None]:
    """A process pool for ``findings`` independent findings, or ``None`` to work in-process.

    Args:
        processes: Requested worker processes; ``0``: :func:`medai.cpus.usable_cpus` (affinity
            and the cgroup's CPU limit).
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
