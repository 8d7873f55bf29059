"""Tests for ``medai submit`` (medai/submit.py) against a real, token-protected Ray head.

The head is started once per module with ``ray start --head --block`` in its own session, on
127.0.0.1 with free ports, its own short ``--temp-dir`` and its own token file, and with
``RAY_ADDRESS`` removed from its environment. This process never calls ``ray.init()`` for it and
talks to it only over HTTP, so the in-process Ray that other test modules start is not
disturbed (a ``ray.init()`` without an address looks for ``/tmp/ray/ray_current_cluster``, which
this head does not write). Tear-down kills every process of that head, found by session id,
parentage and temp dir, and asserts that none survives.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from medai.submit import (
    MAX_WORKING_DIR_BYTES,
    SubmitError,
    add_submit_arguments,
    build_entrypoint,
    check_working_dir,
    find_auth_token,
    main,
    plain_http_warning,
    submit_job,
    working_dir_size,
)

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
HEAD_START_TIMEOUT = 90.0

ECHO_JOB = '''\
"""Test job: echo the arguments, check that medai and ray work on the cluster, exit."""
import os
import sys

import medai
import ray


@ray.remote
def medai_on_worker():
    import medai

    return list(medai.__path__)[0]


message, code = sys.argv[1], int(sys.argv[2])
SECRETS = (".env", "deploy.pem", "tls.key", "id_rsa", "credentials.json", ".ssh/config")
print("ECHO-ARG", message)
ray.init()
print("ECHO-DRIVER-MEDAI", list(medai.__path__)[0])
print("ECHO-WORKER-MEDAI", ray.get(medai_on_worker.remote()))
print("ECHO-ENV", os.environ.get("TF_CPP_MIN_LOG_LEVEL"), os.environ.get("MEDAI_TEST_VAR"))
shipped = sorted(name for name in SECRETS if os.path.exists(name))
print("ECHO-SECRETS", " ".join(shipped) or "none")
sys.exit(code)
'''


# ------------------------------------------------------------------------------------------
# Processes of the test head
# ------------------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, int, str] | None:
    """Return ``(ppid, session id, state)`` of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[3]), fields[0]


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _head_processes(head_pid: int, marker: str, known: set[int]) -> set[int]:
    """Live (non-zombie) processes of the head: its session, descendants and marked ones.

    Ray's job supervisor starts each job driver in a new session, so sessions of processes
    already known are followed too. Processes of this test's own session are never included.
    """
    own_sid = os.getsid(0)
    table = {pid: st for pid in _all_pids() if (st := _proc_stat(pid)) is not None}
    tracked = {pid for pid in known if pid in table} | {head_pid}
    while True:
        sids = {table[pid][1] for pid in tracked if pid in table} | {head_pid}
        sids -= {own_sid, 0, 1}
        grown = {
            pid
            for pid, (ppid, sid, _) in table.items()
            if sid in sids or ppid in tracked or marker in _cmdline(pid)
        }
        grown -= {os.getpid(), 1}
        grown = {pid for pid in grown if table[pid][1] != own_sid}
        if grown <= tracked:
            break
        tracked |= grown
    return {pid for pid in tracked if pid in table and table[pid][2] != "Z"}


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _stop_head(proc: subprocess.Popen[bytes], marker: str) -> set[int]:
    """Stop the head and everything it started; return the processes still alive after."""
    known = _head_processes(proc.pid, marker, set())
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        known = _head_processes(proc.pid, marker, known)
        if not known:
            return set()
        _signal_all(known, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _head_processes(proc.pid, marker, known):
            time.sleep(0.2)
    return _head_processes(proc.pid, marker, known)


# ------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------


@dataclass
class RayHead:
    """A running test head."""

    address: str
    token: str
    token_path: Path
    temp_dir: Path
    pid: int


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _get(url: str, token: str | None) -> int:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


def _wait_for_dashboard(proc: subprocess.Popen[bytes], head: RayHead, log: Path) -> None:
    deadline = time.monotonic() + HEAD_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray head exited with {proc.returncode}:\n{log.read_text()}")
        if _get(f"{head.address}/api/version", head.token) == 200:
            return
        time.sleep(0.5)
    raise RuntimeError(f"ray dashboard did not answer in {HEAD_START_TIMEOUT}s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    """A token-protected Ray head on 127.0.0.1 with free ports, stopped completely after."""
    # Unix socket paths are limited to ~107 bytes: keep the temp dir short.
    temp_dir = Path(tempfile.mkdtemp(prefix="mdr", dir="/tmp"))
    token = secrets.token_hex(32)
    token_path = temp_dir / "auth_token"
    token_path.write_text(token)
    ports = _free_ports(9)
    address = f"http://127.0.0.1:{ports[1]}"
    head = RayHead(address, token, token_path, temp_dir, pid=-1)

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.pop("PYTHONPATH", None)  # medai must come from the shipped working_dir only
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",  # `python` in entrypoints
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_path),
        RAY_USAGE_STATS_ENABLED="0",
    )
    command = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={ports[0]}",
        f"--dashboard-port={ports[1]}",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=2",
        "--object-store-memory=300000000",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        f"--dashboard-agent-listen-port={ports[2]}",
        f"--dashboard-agent-grpc-port={ports[3]}",
        f"--runtime-env-agent-port={ports[4]}",
        f"--metrics-export-port={ports[5]}",
        f"--ray-client-server-port={ports[6]}",
        f"--node-manager-port={ports[7]}",
        f"--object-manager-port={ports[8]}",
    ]
    log = temp_dir / "head.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=temp_dir,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    head.pid = proc.pid
    try:
        _wait_for_dashboard(proc, head, log)
        yield head
    finally:
        survivors = _stop_head(proc, str(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not survivors, f"Ray processes outlived the test head: {sorted(survivors)}"


@pytest.fixture
def with_token(ray_head: RayHead, monkeypatch: pytest.MonkeyPatch) -> RayHead:
    """Point this process's token lookup at the test head's token file."""
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(ray_head.token_path))
    return ray_head


@pytest.fixture(scope="module")
def echo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working dir with a copy of the medai package and jobs/echo.py (and a stub train)."""
    root = tmp_path_factory.mktemp("echo-wd")
    shutil.copytree(REPO / "medai", root / "medai", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "jobs").mkdir()
    (root / "jobs" / "echo.py").write_text(ECHO_JOB)
    (root / "jobs" / "train.py").write_text("print('stub train')\n")
    # Secrets beside the code: the upload must leave every one of them out.
    for name in (".env", "deploy.pem", "tls.key", "id_rsa", "credentials.json", ".ssh/config"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("SECRET=1\n")
    return root


def _client(head: RayHead) -> JobSubmissionClient:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(head.address, headers={"Authorization": f"Bearer {head.token}"})


# ------------------------------------------------------------------------------------------
# Without a cluster
# ------------------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    return add_submit_arguments(argparse.ArgumentParser()).parse_args(argv)


def test_cli_arguments() -> None:
    args = _parse(["score", "--address", "http://h:8265", "--", "--model", "m", "--out", "o p"])
    assert (args.job, args.address, args.no_wait) == ("score", "http://h:8265", False)
    assert args.job_args == ["--model", "m", "--out", "o p"]

    args = _parse(["--no-wait", "train", "--", "--finding", "Mass"])
    assert args.no_wait and args.job == "train" and args.job_args == ["--finding", "Mass"]

    args = _parse(["report", "--working-dir=/x", "--no-wait", "--", "--out", "r"])
    assert args.working_dir == Path("/x") and args.no_wait and args.job_args == ["--out", "r"]

    args = _parse(["nightly"])
    assert args.job_args == [] and args.address is None and args.working_dir is None

    with pytest.raises(SystemExit):
        _parse(["score", "--bogus", "--", "--model", "m"])
    with pytest.raises(SystemExit):
        _parse(["predict"])


def test_entrypoint_is_shell_quoted() -> None:
    entrypoint = build_entrypoint("score", ["--out", "a b", "--note", "it's; rm -rf /"])
    assert entrypoint == "python jobs/score.py --out 'a b' --note 'it'\"'\"'s; rm -rf /'"


def test_token_lookup_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-home\n")
    token_file = tmp_path / "token"
    token_file.write_text("  from-path\n")

    assert find_auth_token({"RAY_AUTH_TOKEN": "from-env"}, home).token == "from-env"
    found = find_auth_token({"RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": str(token_file)}, home)
    assert (found.token, str(token_file) in (found.source or "")) == ("from-path", True)
    assert find_auth_token({}, home).token == "from-home"

    # An explicit RAY_AUTH_TOKEN_PATH that does not exist is not silently skipped (as in Ray).
    missing = find_auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "nope")}, home)
    assert missing.token is None
    assert any("nope: the file does not exist" in line for line in missing.checked)

    empty_home = tmp_path / "empty"
    nothing = find_auth_token({}, empty_home)
    assert nothing.token is None
    message = nothing.missing_message("http://h:8265")
    assert "RAY_AUTH_TOKEN is not set" in message
    assert "RAY_AUTH_TOKEN_PATH is not set" in message
    assert f"{empty_home}/.ray/auth_token does not exist" in message


def _project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "medai").mkdir(parents=True)
    (root / "medai" / "__init__.py").write_text("")
    (root / "jobs").mkdir()
    (root / "jobs" / "score.py").write_text("print('x')\n")
    return root


def test_working_dir_checks(tmp_path: Path) -> None:
    root = _project(tmp_path)
    check_working_dir(root, "score")
    with pytest.raises(SubmitError, match=r"no jobs/train\.py"):
        check_working_dir(root, "train")

    # Excluded data and outputs do not count ...
    (root / "medai-out").mkdir()
    for name in ("medai-out/preds.bin", "images_001.tar.gz", "model.keras", "p.parquet"):
        with open(root / name, "wb") as fh:
            fh.truncate(MAX_WORKING_DIR_BYTES + 1)  # sparse: no real disk use
    (root / ".gitignore").write_text("/scratch/\n")
    (root / "scratch").mkdir()
    with open(root / "scratch" / "big.bin", "wb") as fh:
        fh.truncate(MAX_WORKING_DIR_BYTES + 1)
    total, _ = working_dir_size(root)
    assert total < 1024 * 1024
    check_working_dir(root, "score")

    # ... but anything else that is too big stops the submission with a clear message.
    with open(root / "weights.bin", "wb") as fh:
        fh.truncate(MAX_WORKING_DIR_BYTES + 1)
    with pytest.raises(SubmitError, match=r"100 MiB.*weights\.bin"):
        check_working_dir(root, "score")

    shutil.rmtree(root / "medai")
    with pytest.raises(SubmitError, match="no medai/ package"):
        check_working_dir(root, "score")


def test_excludes_use_gitignore_semantics_and_leave_secrets_out(tmp_path: Path) -> None:
    root = _project(tmp_path)
    base, _ = working_dir_size(root)
    files = {
        # path: (size, shipped?)
        "README.md": (101, True),
        "keep.bin": (103, True),  # re-included by "!keep.bin" after "*.bin"
        "other.bin": (107, False),
        "logs/run.txt": (109, False),
        "docs/logs.md": (113, True),  # "logs/" only matches directories
        ".env": (127, False),
        ".env.production": (131, False),
        "deploy/server.pem": (137, False),
        "tls.key": (139, False),
        "id_rsa": (149, False),
        "id_ed25519.pub": (151, False),
        "credentials.json": (157, False),
        "gcp-credentials.json": (163, False),
        ".ssh/config": (167, False),
        ".aws/credentials": (173, False),
        "keys/auth_token": (179, False),
    }
    for name, (size, _) in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
    (root / ".gitignore").write_text("*.bin\n!keep.bin\nlogs/\n")
    gitignore = (root / ".gitignore").stat().st_size
    total, _ = working_dir_size(root)
    shipped = sum(size for size, ship in files.values() if ship)
    assert total == base + gitignore + shipped


@pytest.mark.parametrize(
    ("address", "warned"),
    [
        ("http://10.0.0.5:8265", True),
        ("head.example.org:8265", True),  # no scheme: Ray uses http
        ("http://[2001:db8::1]:8265", True),
        ("http://127.0.0.1:8265", False),
        ("http://localhost:8265", False),
        ("http://[::1]:8265", False),
        ("https://head.example.org", False),
    ],
)
def test_plain_http_warning(address: str, warned: bool) -> None:
    warning = plain_http_warning(address, "~/.ray/auth_token")
    assert (warning is not None) == warned
    if warned:
        assert "plain http" in warning and "~/.ray/auth_token" in warning


def test_token_over_plain_http_is_warned_before_sending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "a-token")
    (port,) = _free_ports(1)
    err = io.StringIO()
    # 0.0.0.0 is not a loopback address; nothing listens there, so the connection then fails.
    with pytest.raises(SubmitError, match="cannot reach the Ray dashboard"):
        submit_job("score", [], f"http://0.0.0.0:{port}", working_dir=_project(tmp_path), err=err)
    assert "warning: sending the Ray token from $RAY_AUTH_TOKEN over plain http" in err.getvalue()


# ------------------------------------------------------------------------------------------
# Against the test head
# ------------------------------------------------------------------------------------------


def test_submit_streams_logs_and_succeeds(with_token: RayHead, echo_dir: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = submit_job(
        "echo",
        ["hello 'quoted' world", "0"],
        with_token.address,
        working_dir=echo_dir,
        env_vars={"MEDAI_TEST_VAR": "seen"},
        out=out,
        err=err,
    )
    logs = out.getvalue()
    assert code == 0, logs + err.getvalue()
    assert "ECHO-ARG hello 'quoted' world" in logs
    assert "ECHO-ENV 2 seen" in logs
    assert "ECHO-SECRETS none" in logs  # .env, keys and credentials were not uploaded
    assert "plain http" not in err.getvalue()  # loopback: no warning
    # medai was imported from the shipped working dir, on the driver and on a worker.
    for tag in ("ECHO-DRIVER-MEDAI", "ECHO-WORKER-MEDAI"):
        line = next(line for line in logs.splitlines() if line.startswith(tag))
        path = line.split(maxsplit=1)[1]
        assert str(with_token.temp_dir) in path and "_ray_pkg_" in path, line
    assert "SUCCEEDED" in err.getvalue()


def test_submit_reports_failure(with_token: RayHead, echo_dir: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = submit_job(
        "echo", ["failing", "3"], with_token.address, working_dir=echo_dir, out=out, err=err
    )
    assert code == 1
    assert "ECHO-ARG failing" in out.getvalue()
    assert "FAILED" in err.getvalue() and "exit code 3" in err.getvalue()


def test_submit_no_wait_prints_job_id(
    with_token: RayHead, echo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["train", "--address", with_token.address, "--working-dir", str(echo_dir), "--no-wait"]
    )
    job_id = capsys.readouterr().out.strip()
    assert code == 0 and job_id.startswith("medai-train-")
    client = _client(with_token)
    deadline = time.monotonic() + 60
    while str(client.get_job_status(job_id).value) not in {"SUCCEEDED", "FAILED", "STOPPED"}:
        assert time.monotonic() < deadline, "job did not finish"
        time.sleep(0.5)
    assert str(client.get_job_status(job_id).value) == "SUCCEEDED"
    assert "stub train" in client.get_job_logs(job_id)


def test_wrong_token_is_rejected_clearly(
    ray_head: RayHead, echo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    with pytest.raises(SubmitError, match=r"rejected the authentication token from \$RAY_AUTH"):
        submit_job("echo", ["x", "0"], ray_head.address, working_dir=echo_dir)


@pytest.mark.parametrize("token_path_set", [True, False], ids=["missing-path", "empty-home"])
def test_missing_token_says_what_is_missing(
    ray_head: RayHead, echo_dir: Path, tmp_path: Path, token_path_set: bool
) -> None:
    # A fresh process, so that no token cached by Ray in this process can interfere.
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(home)
    if token_path_set:
        env["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "missing-token")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "medai.submit",
            "train",
            "--address",
            ray_head.address,
            "--working-dir",
            str(echo_dir),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "requires token authentication" in result.stderr
    assert "RAY_AUTH_TOKEN is not set" in result.stderr
    if token_path_set:
        assert (
            f"RAY_AUTH_TOKEN_PATH={tmp_path / 'missing-token'}: the file does not exist"
            in result.stderr
        )
    else:
        assert "RAY_AUTH_TOKEN_PATH is not set" in result.stderr
        assert f"{home}/.ray/auth_token does not exist" in result.stderr


@pytest.mark.slow  # 84 s on a 2-core AVX2 host: a scoring job through a second Ray head
def test_submit_score_job(
    with_token: RayHead,
    tiny_model_dir: Path,
    phantom_archive: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The real score job, shipped from the project root, writes Parquet predictions."""
    import tarfile

    import pandas as pd

    out_dir = tmp_path / "predictions"
    code = main(
        [
            "score",
            "--address",
            with_token.address,
            "--",
            "--model",
            str(tiny_model_dir),
            "--images",
            str(phantom_archive),
            "--out",
            str(out_dir),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.out[-5000:] + captured.err[-2000:]

    files = sorted(out_dir.glob("*.parquet"))
    assert files, f"no Parquet under {out_dir}"
    table = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    assert {"image_id", "score", "error", "model_id"} <= set(table.columns)

    archive_dir = phantom_archive if phantom_archive.is_dir() else phantom_archive.parent
    images = set()
    for archive in archive_dir.glob("images_*.tar.gz"):
        with tarfile.open(archive) as tar:
            images |= {
                Path(m.name).name
                for m in tar.getmembers()
                if m.isfile() and m.name.lower().endswith(".png")
            }
    assert len(table) == len(images) > 0
    assert set(table["image_id"]) == images
    assert (table["error"].isna() | (table["error"] == "")).all()
    assert table["score"].between(0.0, 1.0).all()
    assert table["model_id"].nunique() == 1
