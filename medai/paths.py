"""Checks of the paths a job is given, shared by the jobs and their configs (below the CLI)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["folder_problem"]


def folder_problem(flag: str, path: str | Path) -> str | None:
    """What stops ``path`` from being (or becoming) an output folder, or ``None``.

    A file at ``path``, or at a folder above it, would otherwise surface only when the job
    first writes there, as an ``OSError`` traceback after its work has started.
    """
    path = Path(path)
    for existing in (path, *path.parents):
        if existing.exists():
            if existing.is_dir():
                return None
            if existing == path:
                return f"{flag} must be a folder, but {path} is a file"
            return f"{flag} {path}: {existing} is a file, not a folder"
    return None
