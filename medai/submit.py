"""Submit medai jobs to a running Ray cluster with Ray's Job Submission SDK.

``medai submit {train,score,report,nightly} --address http://HEAD:8265 -- ARGS...`` ships the
project directory to the cluster as the job's ``working_dir`` (minus ``.git``, virtualenvs, data
and outputs), runs ``python jobs/<job>.py ARGS...`` there, streams the job's logs and exits with
the job's status: 0 when it SUCCEEDED, 1 otherwise. ``--no-wait`` prints the job id instead.

The token (:mod:`medai.cluster_token`) is passed to
:class:`ray.job_submission.JobSubmissionClient` as an explicit ``Authorization: Bearer`` header
(a public constructor argument; used for the HTTP requests and the log-tailing websocket alike);
``os.environ`` is left untouched, so nothing leaks into other Ray clients in the same process.
What is shipped, and what never is, is :mod:`medai.working_dir`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, TextIO

from medai.cluster_token import TokenLookup, find_auth_token, plain_http_warning
from medai.configs import CheckedConfig, config_from
from medai.errors import MedaiError, run_reported
from medai.working_dir import (
    MAX_WORKING_DIR_BYTES,
    WORKING_DIR_EXCLUDES,
    SubmitError,
    check_working_dir,
    find_project_root,
    working_dir_size,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ray.job_submission import JobSubmissionClient

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_ENV_VARS",
    "JOBS",
    "MAX_WORKING_DIR_BYTES",
    "WORKING_DIR_EXCLUDES",
    "SubmitConfig",
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


DEFAULT_ENV_VARS = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # Unbuffered output so that the streamed logs follow the job as it runs.
    "PYTHONUNBUFFERED": "1",
}

_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


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


@dataclass(frozen=True)
class SubmitConfig(CheckedConfig):
    """The options of ``medai submit`` (see :func:`submit_job`)."""

    job: str
    job_args: tuple[str, ...] = ()
    address: str | None = None
    no_wait: bool = False
    working_dir: str | None = None

    error: ClassVar[type[MedaiError]] = SubmitError

    def problems(self) -> list[str]:
        """Every option that cannot work, before anything is contacted."""
        return [] if self.job in JOBS else [f"the job must be one of {', '.join(JOBS)}"]


def run_submit(args: argparse.Namespace | SubmitConfig) -> int:
    """Run ``medai submit`` for arguments parsed by :func:`add_submit_arguments`.

    Args:
        args: Parsed arguments, or their :class:`SubmitConfig`.

    Returns:
        The process exit status: 0 success, 1 job failed.

    Raises:
        SubmitError: When the job could not be submitted (the command line prints it as one
            line and exits 2, see :func:`medai.errors.run_reported`).
    """
    config = args if isinstance(args, SubmitConfig) else config_from(SubmitConfig, args)
    address = config.address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    working_dir = Path(config.working_dir) if config.working_dir else None
    config.check()
    return submit_job(
        config.job,
        list(config.job_args),
        address,
        wait=not config.no_wait,
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
