"""The project directory ``medai submit`` ships to a cluster as the job's ``working_dir``.

Its excludes (:data:`WORKING_DIR_EXCLUDES`, plus the root's ``.gitignore`` and ``.rayignore``)
are gitwildmatch patterns matched with ``pathspec``, the library Ray itself uses; they keep
environments, data, outputs and secrets (``.env``, keys, credentials) off the cluster, and the
upload under Ray's request limit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pathspec

from medai.errors import MedaiError

__all__ = [
    "MAX_WORKING_DIR_BYTES",
    "WORKING_DIR_EXCLUDES",
    "SubmitError",
    "check_working_dir",
    "find_project_root",
    "working_dir_size",
]

# Ray's dashboard refuses request bodies over 100 MiB (``DASHBOARD_CLIENT_MAX_SIZE``), and the
# working_dir is uploaded as one zip in one request.
MAX_WORKING_DIR_BYTES = 100 * 1024**2

# gitwildmatch-style patterns relative to the working dir (Ray's ``excludes`` syntax). Ray also
# honours the working dir's own .gitignore / .rayignore.
WORKING_DIR_EXCLUDES = (
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
    "/build/",
    "/dist/",
    "/data/",
    "medai-out/",
    "medai-demo/",
    "*.parquet",
    "*.keras",
    "*.h5",
    "*.tar.gz",
    "*.tgz",
    "*.tar",
    # Secrets: never ship them to a cluster (its nodes, logs and object store are shared).
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".ssh/",
    ".aws/",
    ".netrc",
    ".git-credentials",
    "credentials",
    "credentials.*",
    "*-credentials.json",
    "auth_token",
)


class SubmitError(MedaiError, RuntimeError):
    """A job could not be submitted (bad working dir, unreachable cluster, missing token...)."""


def _is_project_root(path: Path) -> bool:
    return (path / "medai").is_dir() and (path / "jobs").is_dir()


def find_project_root(start: Path | None = None) -> Path:
    """Locate the medai project root (the directory holding ``medai/`` and ``jobs/``).

    Looks at ``start`` (default: the current directory) and its parents, then at the checkout
    this module was imported from.

    Args:
        start: Where to start looking.

    Returns:
        The project root.

    Raises:
        SubmitError: If no such directory is found.
    """
    here = (start or Path.cwd()).resolve()
    candidates = [here, *here.parents, Path(__file__).resolve().parents[1]]
    for candidate in candidates:
        if _is_project_root(candidate):
            return candidate
    raise SubmitError(
        f"cannot find the medai project root (a directory with medai/ and jobs/) from {here}; "
        "pass --working-dir"
    )


def _ignore_spec(root: Path, excludes: Iterable[str]) -> pathspec.GitIgnoreSpec:
    """``excludes`` plus the root's ``.gitignore`` and ``.rayignore``, with git's semantics."""
    lines = list(excludes)
    for name in (".gitignore", ".rayignore"):
        ignore_file = root / name
        if ignore_file.is_file():
            lines += ignore_file.read_text(encoding="utf-8", errors="replace").splitlines()
    return pathspec.GitIgnoreSpec.from_lines(lines)


def working_dir_size(
    root: Path, excludes: Iterable[str] = WORKING_DIR_EXCLUDES
) -> tuple[int, list[tuple[int, str]]]:
    """Add up the bytes Ray would upload for ``root`` as a working_dir.

    Applies ``excludes`` plus the patterns of the root's ``.gitignore``/``.rayignore``.
    The sum is of uncompressed file sizes, so it is an upper bound of the zip Ray uploads.

    Args:
        root: The working dir.
        excludes: Patterns to leave out (Ray ``excludes`` syntax).

    Returns:
        ``(total_bytes, largest)`` where ``largest`` lists up to five ``(bytes, relative
        path)`` of the biggest files, biggest first.
    """
    spec = _ignore_spec(root, excludes)

    def excluded(rel_path: str, is_dir: bool) -> bool:
        return spec.match_file(rel_path + "/" if is_dir else rel_path)

    total = 0
    files: list[tuple[int, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        dirnames[:] = [d for d in dirnames if not excluded(prefix + d, True)]
        for filename in filenames:
            rel = prefix + filename
            if excluded(rel, False):
                continue
            try:
                size = os.lstat(os.path.join(dirpath, filename)).st_size
            except OSError:
                continue
            total += size
            files.append((size, rel))
    files.sort(reverse=True)
    return total, files[:5]


def check_working_dir(root: Path, job: str, excludes: Iterable[str] = WORKING_DIR_EXCLUDES) -> None:
    """Check that ``root`` can be shipped as the working_dir of ``job``.

    Args:
        root: The working dir.
        job: Job name; ``root/jobs/<job>.py`` must exist.
        excludes: Patterns left out of the upload.

    Raises:
        SubmitError: If ``medai/`` or the job script is missing, or the upload would exceed
            Ray's 100 MiB limit.
    """
    if not root.is_dir():
        raise SubmitError(f"working dir {root} does not exist")
    if not (root / "medai").is_dir():
        raise SubmitError(f"working dir {root} has no medai/ package; the jobs import medai")
    script = root / "jobs" / f"{job}.py"
    if not script.is_file():
        raise SubmitError(f"working dir {root} has no jobs/{job}.py")
    total, largest = working_dir_size(root, excludes)
    if total >= MAX_WORKING_DIR_BYTES:
        biggest = ", ".join(f"{path} ({size / 1024**2:.1f} MiB)" for size, path in largest)
        raise SubmitError(
            f"working dir {root} holds {total / 1024**2:.1f} MiB after excludes; Ray refuses "
            f"working dirs over {MAX_WORKING_DIR_BYTES // 1024**2} MiB. Largest files: "
            f"{biggest}. Move data and outputs out of the project or list them in .rayignore."
        )
