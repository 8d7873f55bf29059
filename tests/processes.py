"""Real process control for the crash tests: run a medai command, kill it and its Ray tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path


class MarkedCommand:
    """A ``python -m medai.cli ...`` child whose every descendant carries a marker variable.

    Ray's processes (GCS, raylet, workers) inherit the environment of the driver that started
    them, so the marker finds the whole tree even where Ray moved processes to other sessions.
    """

    def __init__(self, args: Sequence[str]):
        self.name = f"MEDAI_TEST_{uuid.uuid4().hex[:12].upper()}"
        self.env = {**os.environ, self.name: "1"}
        self.env.pop("RAY_ADDRESS", None)
        self.args = [sys.executable, "-m", "medai.cli", *args]

    def _matches(self, pid: str, needle: bytes | None = None) -> bool:
        try:
            if f"{self.name}=1".encode() not in Path(f"/proc/{pid}/environ").read_bytes():
                return False
            return needle is None or needle in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    def pids(self, needle: bytes | None = None) -> list[int]:
        """Live processes of this command's tree (optionally whose command line has ``needle``)."""
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and self._matches(p, needle)]

    def kill_all(self) -> None:
        """SIGKILL every process of the tree: a crash of the machine, as far as medai can tell."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue

    def start(self, capture: bool = False) -> subprocess.Popen:
        """Start the command in its own session."""
        output = subprocess.PIPE if capture else subprocess.DEVNULL
        return subprocess.Popen(
            self.args,
            env=self.env,
            start_new_session=True,
            stdout=output,
            stderr=subprocess.STDOUT if capture else subprocess.DEVNULL,
            text=capture,
        )

    def run(self, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run to completion, capturing output."""
        return subprocess.run(
            self.args,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )

    def kill_when(self, ready: Callable[[], bool], timeout: float = 240) -> None:
        """Start, wait until ``ready()``, then kill the whole tree (``kill -9``)."""
        process = self.start()
        try:
            deadline = time.time() + timeout
            while not ready():
                assert process.poll() is None, "the command finished before it could be killed"
                assert time.time() < deadline, "the command never became ready to be killed"
                time.sleep(0.1)
        finally:
            self.kill_all()
            process.wait(timeout=30)
