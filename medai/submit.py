"""Submit medai jobs to a running Ray cluster with Ray's Job Submission SDK.

``medai submit {train,score,report,nightly} --address http://HEAD:8265 -- ARGS...`` ships the
project directory to the cluster as the job's ``working_dir`` (minus ``.git``, virtualenvs, data
and outputs), runs ``python jobs/<job>.py ARGS...`` there, streams the job's logs and exits with
the job's status: 0 when it SUCCEEDED, 1 otherwise. ``--no-wait`` prints the job id instead.

Token authentication: Ray 2.52+ clusters started with ``RAY_AUTH_MODE=token`` (and, since Ray
2.59, local clusters whenever ``~/.ray/auth_token`` exists) reject unauthenticated requests. Ray's
own client only attaches a token when the *client* process runs with ``RAY_AUTH_MODE=token``, so
``ray job submit`` fails against such a head unless that variable is exported. This module looks
the token up itself, with Ray's precedence (``RAY_AUTH_TOKEN``, then the file named by
``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``), and passes it to
:class:`ray.job_submission.JobSubmissionClient` as an explicit ``Authorization: Bearer`` header
(a public constructor argument; used for the HTTP requests and the log-tailing websocket alike).
``os.environ`` is left untouched, so nothing leaks into other Ray clients in the same process.
The token travels in clear over ``http://``: to any address other than this machine's loopback
``medai submit`` warns first (use an SSH tunnel, ``kubectl port-forward`` or an HTTPS proxy).

The working dir's excludes (:data:`WORKING_DIR_EXCLUDES`, plus the root's ``.gitignore`` and
``.rayignore``) are gitwildmatch patterns matched with ``pathspec``, the library Ray itself
uses; they keep environments, data, outputs and secrets (``.env``, keys, credentials) off the
cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import shlex
import sys
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import pathspec

from medai.errors import MedaiError, run_reported

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ray.job_submission import JobSubmissionClient

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_ENV_VARS",
    "JOBS",
    "MAX_WORKING_DIR_BYTES",
    "WORKING_DIR_EXCLUDES",
    "SubmitError",
    "TokenLookup",
    "add_submit_arguments",
    "build_entrypoint",
    "build_runtime_env",
    "check_working_dir",
    "find_auth_token",
    "find_project_root",
    "main",
    "plain_http_warning",
    "run_submit",
    "submit_job",
    "working_dir_size",
]

JOBS = ("train", "score", "report", "nightly")
DEFAULT_ADDRESS = "http://127.0.0.1:8265"

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

DEFAULT_ENV_VARS = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # Unbuffered output so that the streamed logs follow the job as it runs.
    "PYTHONUNBUFFERED": "1",
}

_TOKEN_ENV = "RAY_AUTH_TOKEN"
_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class SubmitError(MedaiError, RuntimeError):
    """A job could not be submitted (bad working dir, unreachable cluster, missing token...)."""


# --------------------------------------------------------------------------------------------
# Token lookup
# --------------------------------------------------------------------------------------------


@dataclass
class TokenLookup:
    """Result of looking for a Ray authentication token.

    Attributes:
        token: The token, or ``None`` when none was found.
        source: Where the token came from (human readable), or ``None``.
        checked: One line per place that was looked at and why it gave no token.
    """

    token: str | None = None
    source: str | None = None
    checked: list[str] = field(default_factory=list)

    def missing_message(self, address: str) -> str:
        """Explain that the cluster wants a token and exactly where none was found."""
        lines = "\n".join(f"  - {line}" for line in self.checked)
        return (
            f"the Ray cluster at {address} requires token authentication, but no "
            f"authentication token was found:\n{lines}\n"
            "Copy the cluster's token (run `ray get-auth-token` on the head node, or read the "
            "cluster's token Secret) into ~/.ray/auth_token, or point RAY_AUTH_TOKEN_PATH at a "
            "file holding it, or export RAY_AUTH_TOKEN."
        )


def _read_token_file(path: Path) -> tuple[str | None, str | None]:
    """Return ``(token, None)`` or ``(None, why_not)`` for a token file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, "does not exist"
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    token = text.strip()
    if not token:
        return None, "is empty"
    return token, None


def find_auth_token(
    environ: Mapping[str, str] | None = None, home: Path | None = None
) -> TokenLookup:
    """Find the Ray authentication token the way Ray's own token loader does.

    Precedence: a non-empty ``RAY_AUTH_TOKEN``; else, when ``RAY_AUTH_TOKEN_PATH`` is set, that
    file (no fallback if it is missing or empty, as in Ray); else ``~/.ray/auth_token``.

    Args:
        environ: Environment to read (default ``os.environ``).
        home: Home directory (default: ``HOME`` from ``environ``, else ``Path.home()``).

    Returns:
        A :class:`TokenLookup`; ``token`` is ``None`` when nothing usable was found and
        ``checked`` says why for every place looked at.
    """
    env = os.environ if environ is None else environ
    lookup = TokenLookup()
    value = env.get(_TOKEN_ENV, "").strip()
    if value:
        lookup.token, lookup.source = value, f"${_TOKEN_ENV}"
        return lookup
    lookup.checked.append(f"{_TOKEN_ENV} is {'empty' if _TOKEN_ENV in env else 'not set'}")

    token_path = env.get(_TOKEN_PATH_ENV, "").strip()
    if token_path:
        path = Path(token_path).expanduser()
        token, why = _read_token_file(path)
        if token:
            lookup.token, lookup.source = token, f"{path} (${_TOKEN_PATH_ENV})"
        else:
            lookup.checked.append(f"{_TOKEN_PATH_ENV}={token_path}: the file {why}")
        return lookup
    lookup.checked.append(f"{_TOKEN_PATH_ENV} is not set")

    if home is None:
        home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    path = home / ".ray" / "auth_token"
    token, why = _read_token_file(path)
    if token:
        lookup.token, lookup.source = token, str(path)
    else:
        lookup.checked.append(f"{path} {why}")
    return lookup


# --------------------------------------------------------------------------------------------
# Working dir
# --------------------------------------------------------------------------------------------


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


def build_entrypoint(job: str, args: Sequence[str]) -> str:
    """Return the shell-quoted entrypoint ``python jobs/<job>.py ARGS...``."""
    return shlex.join(["python", f"jobs/{job}.py", *args])


def build_runtime_env(
    working_dir: Path, env_vars: Mapping[str, str] | None = None
) -> dict[str, object]:
    """Build the job's runtime_env: the working dir, its excludes and environment variables.

    Ray unpacks the working dir on every node, makes it the job's current directory and puts it
    first on ``PYTHONPATH``, so ``python jobs/x.py`` finds its script and ``import medai``
    resolves to the shipped package on the driver and on every worker.

    Args:
        working_dir: Directory to ship.
        env_vars: Extra environment variables; they override :data:`DEFAULT_ENV_VARS`.

    Returns:
        The runtime_env dictionary.
    """
    return {
        "working_dir": str(working_dir),
        "excludes": list(WORKING_DIR_EXCLUDES),
        "env_vars": {**DEFAULT_ENV_VARS, **(env_vars or {})},
    }


# --------------------------------------------------------------------------------------------
# Submission
# --------------------------------------------------------------------------------------------


def _is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def plain_http_warning(address: str, source: str) -> str | None:
    """The warning to print before a token goes in clear to ``address``, or ``None``.

    A bearer token sent over ``http://`` can be read by anyone on the network path and lets
    them run code on the cluster. Loopback addresses (SSH tunnels, ``kubectl port-forward``)
    and ``https://`` are fine.

    Args:
        address: The dashboard address (``http://host:port``; no scheme means http).
        source: Where the token came from, for the message.
    """
    parsed = urllib.parse.urlsplit(address if "://" in address else f"http://{address}")
    if parsed.scheme.lower() != "http" or _is_loopback_host(parsed.hostname or ""):
        return None
    return (
        f"medai submit: warning: sending the Ray token from {source} over plain http to "
        f"{parsed.hostname}; anyone on the network path can read it and run code on the "
        "cluster. Prefer an SSH tunnel or `kubectl port-forward` to http://127.0.0.1:8265, or "
        "an https:// address.\n"
    )


def _connect(address: str, lookup: TokenLookup) -> JobSubmissionClient:
    """Create a job client, turning connection and authentication failures into SubmitError."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {lookup.token}"} if lookup.token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError as exc:
        raise _auth_error(address, lookup, exc) from None
    except ConnectionError as exc:
        raise SubmitError(
            f"cannot reach the Ray dashboard at {address} ({exc}); is the head running, and is "
            "its dashboard port (8265 by default) reachable from here?"
        ) from None


def _auth_error(address: str, lookup: TokenLookup, exc: Exception) -> SubmitError:
    if lookup.token is None:
        return SubmitError(lookup.missing_message(address))
    return SubmitError(
        f"the Ray cluster at {address} rejected the authentication token from {lookup.source}; "
        f"it is not this cluster's token ({str(exc).splitlines()[0]})"
    )


async def _tail(client: JobSubmissionClient, job_id: str, out: TextIO) -> None:
    async for chunk in client.tail_job_logs(job_id):
        out.write(chunk)
        out.flush()


def _wait_for_status(client: JobSubmissionClient, job_id: str) -> str:
    """Poll until the job reaches a terminal status (the log stream may end a bit earlier)."""
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in _TERMINAL:
            return status
        time.sleep(1.0)


def _follow(client: JobSubmissionClient, job_id: str, out: TextIO, err: TextIO) -> int:
    """Stream the job's logs to ``out`` and return 0 if it SUCCEEDED, else 1."""
    try:
        asyncio.run(_tail(client, job_id, out))
    except KeyboardInterrupt:
        err.write(
            f"medai submit: stopped following; job {job_id} keeps running. Stop it with "
            f"`ray job stop {job_id}`.\n"
        )
        return 130
    except RuntimeError as exc:  # log stream broke off; the job itself may be fine
        err.write(f"medai submit: log stream interrupted ({exc}); waiting for the job to end\n")
    status = _wait_for_status(client, job_id)
    info = client.get_job_info(job_id)
    if status == "SUCCEEDED":
        err.write(f"medai submit: job {job_id} SUCCEEDED\n")
        return 0
    message = (info.message or "").strip().splitlines()
    detail = f": {message[0]}" if message else ""
    err.write(f"medai submit: job {job_id} {status}{detail}\n")
    return 1


def submit_job(
    job: str,
    args: Sequence[str],
    address: str,
    wait: bool = True,
    working_dir: Path | None = None,
    env_vars: Mapping[str, str] | None = None,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Submit ``python jobs/<job>.py ARGS...`` to the Ray cluster at ``address``.

    Args:
        job: Job name; ``<working_dir>/jobs/<job>.py`` must exist (the CLI limits it to
            :data:`JOBS`).
        args: Arguments for the job script.
        address: The Ray dashboard address, e.g. ``http://127.0.0.1:8265``.
        wait: Stream the logs and wait for the job; otherwise print the job id and return.
        working_dir: Directory shipped to the cluster (default: the project root).
        env_vars: Extra environment variables for the job.
        out: Where logs (or the job id) go (default ``sys.stdout``).
        err: Where status messages go (default ``sys.stderr``).

    Returns:
        0 if the job SUCCEEDED (or was submitted, with ``wait=False``), 1 if it FAILED or was
        STOPPED, 130 if following was interrupted.

    Raises:
        SubmitError: If the job could not be submitted; the message says what is wrong.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    root = (working_dir or find_project_root()).resolve()
    check_working_dir(root, job)
    lookup = find_auth_token()
    warning = plain_http_warning(address, lookup.source or "") if lookup.token else None
    if warning:
        err.write(warning)
        err.flush()
    client = _connect(address, lookup)

    from ray.exceptions import AuthenticationError

    submission_id = f"medai-{job}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    try:
        job_id = client.submit_job(
            entrypoint=build_entrypoint(job, args),
            submission_id=submission_id,
            runtime_env=build_runtime_env(root, env_vars),
            metadata={"medai_job": job},
        )
    except AuthenticationError as exc:
        raise _auth_error(address, lookup, exc) from None
    if not wait:
        out.write(f"{job_id}\n")
        out.flush()
        return 0
    err.write(f"medai submit: job {job_id} submitted to {address}\n")
    return _follow(client, job_id, out, err)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

_OPTIONS_WITH_VALUE: dict[str, tuple[str, Callable[[str], object]]] = {
    "--address": ("address", str),
    "--working-dir": ("working_dir", Path),
}
_FLAGS = {"--no-wait": "no_wait"}


class _JobArgs(argparse.Action):
    """Collect the job's arguments, accepting submit options placed between job and ``--``.

    argparse cannot both take options after a positional and keep everything after ``--``, so
    the remainder is split here: leading ``--address/--working-dir/--no-wait/-h`` belong to
    ``medai submit``; everything after the first ``--`` (or from the first other token on) is
    passed to the job untouched.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        tokens = [str(v) for v in (values or [])]
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if token == "--":
                i += 1
                break
            if token in ("-h", "--help"):
                parser.print_help()
                parser.exit()
            name, eq, inline = token.partition("=")
            if name in _OPTIONS_WITH_VALUE:
                if eq:
                    value = inline
                elif i + 1 < len(tokens):
                    i += 1
                    value = tokens[i]
                else:
                    parser.error(f"argument {name}: expected one argument")
                dest, convert = _OPTIONS_WITH_VALUE[name]
                setattr(namespace, dest, convert(value))
            elif token in _FLAGS:
                setattr(namespace, _FLAGS[token], True)
            elif "--" in tokens[i:]:
                parser.error(
                    f"unrecognized argument {token!r} before '--'; the job's own arguments go "
                    "after '--'"
                )
            else:
                break
            i += 1
        setattr(namespace, self.dest, tokens[i:])


def add_submit_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``medai submit`` arguments to ``parser``.

    Adds the positional ``job`` (one of :data:`JOBS`), ``--address`` (default: ``RAY_ADDRESS``
    or ``http://127.0.0.1:8265``), ``--no-wait``, ``--working-dir`` (default: the project root)
    and ``job_args``, everything after ``--``.

    Args:
        parser: The (sub)parser to extend.

    Returns:
        The same parser.
    """
    parser.add_argument("job", choices=JOBS, help="job to run: jobs/<job>.py")
    parser.add_argument(
        "--address",
        default=None,
        help=f"Ray dashboard address (default: $RAY_ADDRESS or {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="print the job id and return instead of streaming the logs",
    )
    parser.add_argument(
        "--working-dir",
        type=Path,
        default=None,
        help="directory shipped to the cluster (default: the medai project root)",
    )
    parser.add_argument(
        "job_args",
        nargs=argparse.REMAINDER,
        action=_JobArgs,
        metavar="-- ARGS",
        help="arguments passed to the job script",
    )
    return parser


def run_submit(args: argparse.Namespace) -> int:
    """Run ``medai submit`` for arguments parsed by :func:`add_submit_arguments`.

    Args:
        args: Parsed arguments.

    Returns:
        The process exit status: 0 success, 1 job failed.

    Raises:
        SubmitError: When the job could not be submitted (the command line prints it as one
            line and exits 2, see :func:`medai.errors.run_reported`).
    """
    address = args.address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    working_dir = Path(args.working_dir) if args.working_dir else None
    return submit_job(
        args.job,
        list(args.job_args or []),
        address,
        wait=not args.no_wait,
        working_dir=working_dir,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m medai.submit``."""
    parser = argparse.ArgumentParser(
        prog="medai submit", description="Submit a medai job to a Ray cluster."
    )
    add_submit_arguments(parser)
    args = parser.parse_args(argv)
    return run_reported("submit", lambda: run_submit(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
