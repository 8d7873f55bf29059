"""A local Ray started by medai listens on loopback only and keeps token authentication.

The Ray is started by ``medai.runtime.init_ray`` in a child process (so the session's Ray and
other tests are untouched). Its listening TCP sockets are read from ``/proc`` (what
``ss -ltnp`` shows): every one of them, GCS, raylet, object manager, workers, agents and
dashboard, must be bound to a loopback address; the dashboard must refuse a request without
the token.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

START_TIMEOUT = 240.0

CHILD = """
import json, os, sys
from medai.runtime import init_ray
init_ray(num_cpus=1, dashboard=True)
import ray
print(json.dumps({
    "dashboard": ray._private.worker.get_dashboard_url(),
    "auth_mode": os.environ.get("RAY_AUTH_MODE"),
}), flush=True)
sys.stdin.read()  # until the test closes stdin
ray.shutdown()
"""


def _child_env() -> dict[str, str]:
    """This environment for a child that starts its own local Ray with Ray's defaults."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            parents[int(name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, grown = {root}, True
    while grown:
        grown = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grown = True
    return found


def _socket_inodes(pids: set[int]) -> dict[str, int]:
    inodes = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    return inodes


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_address)
    # /proc/net/tcp{,6} print each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def _listening(pids: set[int]) -> list[tuple[str, int, str]]:
    """``(address, port, process name)`` of every listening TCP socket of ``pids``."""
    inodes = _socket_inodes(pids)
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            host, port = local.split(":")
            name = Path(f"/proc/{inodes[inode]}/comm").read_text().strip()
            found.append((str(_address(host)), int(port, 16), name))
    return found


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def test_address_decoding() -> None:
    assert str(_address("0100007F")) == "127.0.0.1"
    assert str(_address("00000000")) == "0.0.0.0"
    assert _address("0000000000000000FFFF00000100007F") == ipaddress.ip_address("::ffff:127.0.0.1")
    assert _is_loopback("::ffff:127.0.0.1") and _is_loopback("::1")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("::")


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")
def test_local_ray_listens_on_loopback_only_with_token_auth(tmp_path: Path) -> None:
    env = _child_env()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "child.log", "wb"),  # noqa: SIM115 - closed with the child
        text=True,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        line = child.stdout.readline()
        assert line, f"the child's Ray did not start:\n{(tmp_path / 'child.log').read_text()}"
        info = json.loads(line)
        deadline = time.monotonic() + START_TIMEOUT
        sockets = _listening(_descendants(child.pid))
        names = {name for _, _, name in sockets}
        while not {"gcs_server", "raylet"} <= names and time.monotonic() < deadline:
            time.sleep(1.0)
            sockets = _listening(_descendants(child.pid))
            names = {name for _, _, name in sockets}
        assert {"gcs_server", "raylet"} <= names, sockets
        exposed = [s for s in sockets if not _is_loopback(s[0])]
        assert not exposed, f"listening beyond loopback: {exposed}"

        assert info["auth_mode"] == "token"
        url = info["dashboard"]
        url = url if url.startswith("http") else f"http://{url}"
        assert _is_loopback(url.split("//", 1)[1].rsplit(":", 1)[0])
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=10) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert status in (401, 403), f"the dashboard answered {status} without a token"
    finally:
        child.stdin.close()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=10)
        child.stdout.close()


WARM_CHILD = """
import json, os, time
from pathlib import Path
import ray
from medai.runtime import idle_workers, init_ray
init_ray(num_cpus=2, dashboard=False)
burst = 2 + 3

@ray.remote(num_cpus=0)
class Barrier:
    def __init__(self):
        self.arrived = 0

    def arrive(self):
        self.arrived += 1

    def count(self):
        return self.arrived


@ray.remote(num_cpus=0)
def pid_when_all_arrived(barrier, n):
    # Each task holds its worker until every task has one: one worker per task, however
    # slowly Ray starts them.
    ray.get(barrier.arrive.remote())
    while ray.get(barrier.count.remote()) < n:
        time.sleep(0.05)
    return os.getpid()


barrier = Barrier.remote()
tasks = [pid_when_all_arrived.remote(barrier, burst) for _ in range(burst)]
pids = set(ray.get(tasks, timeout=180))
time.sleep(4.0)  # well past Ray's 1 s idle-worker kill threshold
alive = {pid for pid in pids if Path(f"/proc/{pid}").exists()}
print(json.dumps({"burst": burst, "limit": idle_workers(2), "pids": sorted(pids),
                  "alive": sorted(alive)}), flush=True)
ray.shutdown()
"""


def test_local_ray_keeps_a_pipelines_workers_warm(tmp_path: Path) -> None:
    """Workers of a burst of tasks beyond the CPU count stay alive between pipeline stages
    (Ray's default kills idle workers above one per CPU after a second, and a scoring run
    then restarts a worker every few seconds). A fresh Ray in a child process: the session's
    Ray holds idle workers of earlier tests, which count against the same limit."""
    env = _child_env()
    done = subprocess.run(
        [sys.executable, "-c", WARM_CHILD],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=START_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["burst"] <= result["limit"]
    assert len(result["pids"]) == result["burst"]  # one worker per task (the barrier)
    assert result["alive"] == result["pids"]
