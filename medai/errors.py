"""medai's own error base class, and how a command reports the errors a user can act on.

Every error that means "the user's input or options are unusable" derives from
:class:`MedaiError`, so the command line can print such errors as one line and exit 2 while
a genuine bug (any other exception) keeps its traceback. :func:`run_reported` is that one
place; a full or read-only output disk and Ctrl-C end a job there too, with one line saying
what is kept and how to go on.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Callable

__all__ = ["MedaiError", "run_reported", "storage_fault"]

# OSErrors that say the output cannot be written (the disk, not medai): what each means.
_STORAGE_FAULTS = {
    errno.ENOSPC: "no space left on the output disk",
    errno.EDQUOT: "the disk quota of the output is used up",
    errno.EROFS: "the output is on a read-only file system",
    errno.EFBIG: "a file reached the largest size this system allows",
}


class MedaiError(Exception):
    """A problem with medai's inputs or options; the message names it."""


def storage_fault(exc: BaseException) -> OSError | None:
    """The OSError of a full, read-only or size-capped output disk behind ``exc``, or ``None``.

    Ray raises a task's or actor's exception in the driver wrapped (a ``RayTaskError`` that
    keeps it as ``cause``, Ray Data's ``UserCodeException`` raised from it), so the chain of
    causes, contexts and Ray's ``cause`` is searched.
    """
    seen: dict[int, BaseException] = {}
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen[id(current)] = current
        if isinstance(current, OSError) and current.errno in _STORAGE_FAULTS:
            return current
        pending += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    found = (_ray_storage_fault(e) for e in seen.values())
    return next((fault for fault in found if fault is not None), None)


# How an OSError's number reads in a traceback: Python's "[Errno 28]", pyarrow's "[errno 28]".
_ERRNO_TEXT = re.compile(r"\[errno (\d+)\]", re.IGNORECASE)


def _ray_storage_fault(exc: BaseException) -> OSError | None:
    """The storage OSError a Ray task raised, read from the worker's traceback text.

    A task's exception reaches the driver pickled, and pickling keeps no ``__cause__``: Ray
    Data's ``UserCodeException`` arrives without the OSError it was raised from, whose number
    survives only in the text Ray carries along.
    """
    if "ray" not in sys.modules:
        return None
    from ray.exceptions import RayError

    if not isinstance(exc, RayError):
        return None
    for match in _ERRNO_TEXT.finditer(str(exc)):
        number = int(match.group(1))
        if number in _STORAGE_FAULTS:
            return OSError(number, os.strerror(number))
    return None


def run_reported(command: str, job: Callable[[], int], resume: str = "") -> int:
    """Run ``job`` as ``medai <command>``, reporting what the user can act on in one line.

    Args:
        command: The sub-command's name, for the message.
        job: Runs the job; returns the exit status.
        resume: What the job keeps when stopped and how to go on, as ``"; ..."``.

    Returns:
        The job's status; 2 on a :class:`MedaiError` (the user's input or options), 1 when
        the output disk is full or read-only, 130 on Ctrl-C. Any other exception is a bug
        and propagates with its traceback.
    """
    try:
        return job()
    except MedaiError as exc:
        print(f"medai {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what the user can do next, not a traceback
        print(f"medai {command}: interrupted{resume}", file=sys.stderr)
        return 130
    except Exception as exc:
        fault = storage_fault(exc)
        if fault is None:
            raise
        where = f" ({fault.filename})" if fault.filename else ""
        go_on = resume or "; run the same command again to go on"
        print(
            f"medai {command}: stopped: {_STORAGE_FAULTS[fault.errno]}{where}{go_on}",
            file=sys.stderr,
        )
        return 1
