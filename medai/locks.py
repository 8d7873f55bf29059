"""One run at a time: an exclusive, non-blocking ``flock`` on a lock file.

``flock`` is released by the kernel when its holder dies, so a killed run never leaves a stale
lock behind, and refusing at once (rather than waiting) suits schedulers: the next scheduled run
picks up whatever is left. The lock file records who holds it, for the refusal message.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["exclusive_lock"]


@contextmanager
def exclusive_lock(path: Path, refuse: Callable[[str], Exception]) -> Iterator[None]:
    """Hold the lock at ``path`` for the ``with`` block; refuse at once if it is held.

    Args:
        path: The lock file (created, with its folder, if needed).
        refuse: Builds the exception to raise from the holder's description
            (``pid N on HOST since T``, or ``holder unknown``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 -- held open for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "holder unknown"
        handle.close()
        raise refuse(holder) from None
    try:
        handle.seek(0)
        handle.truncate()
        since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {since}")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
