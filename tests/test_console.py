"""The console: a job shows medai's lines; ``--verbose`` brings the libraries' logs back.

Real child processes (a real local Ray, real TensorFlow): what a user sees in a log file.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from processes import MarkedCommand

from medai.cli import parse_args
from medai.console import MEDAI_LINE, VERBOSE_ENV, console_env

# A line Ray forwarded from a worker starts with "(Name pid=123)", often in colour.
_RAY_PREFIX = re.compile(r"^(\x1b\[[0-9;]*m)*\(\S+ pid=\d+(, ip=\S+)?\)(\x1b\[[0-9;]*m)*\s*")
_ABSL = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] ")


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: none of the test session's quieting variables."""
    quieting = ("TF_CPP_MIN_LOG_LEVEL", VERBOSE_ENV, "RAY_ADDRESS")
    env = {k: v for k, v in os.environ.items() if k not in quieting}
    return {**env, **extra}


def split_console(output: str, result: str) -> tuple[list[str], list[str]]:
    """(medai's lines, the others) of a console; ``result`` starts the job's result line."""
    ours, others = [], []
    for line in filter(str.strip, output.splitlines()):
        text = _RAY_PREFIX.sub("", line)
        (ours if re.match(MEDAI_LINE, text) or text.startswith(result) else others).append(line)
    return ours, others


def test_ray_forwards_only_medai_lines_unless_verbose():
    skip = re.compile(console_env(verbose=False)["RAY_DEDUP_LOGS_SKIP_REGEX"])
    assert not skip.search("13:06:20 INFO medai.train: epoch 1/4: loss 1.06")
    assert not skip.search("13:06:20 WARNING medai.engines: this CPU has no bf16 support")
    for library in (
        "Progress bars disabled. To enable, set `ray.data.DataContext...`",
        "I0000 00:00:1796475951.172681    8255 port.cc:153] oneDNN custom operations are on.",
        "Requesting resources: {'CPU': 0.75} * 2",
        "13:06:20 INFO ray.data: medai-looking but Ray's",
        "",
    ):
        assert skip.search(library), library
    assert console_env(verbose=True) == {}


def test_verbose_is_a_global_or_a_job_flag():
    base = ["score", "--model", "m", "--images", "i", "--out", "o"]
    assert parse_args(base).verbose is False
    assert parse_args(["--verbose", *base]).verbose is True
    assert parse_args(["-v", *base]).verbose is True
    assert parse_args([*base, "--verbose"]).verbose is True
    assert parse_args(["-v", "runs", "store"]).verbose is True


QUIET_IMPORT = """
import sys
from medai.console import setup_console
setup_console()
print("written while TensorFlow loads", file=sys.stderr)
import tensorflow as tf
tf.config.list_physical_devices("GPU")  # the CUDA probe: cuInit fails on a CPU-only host
print("gpus visible:", tf.config.list_physical_devices("GPU") is not None)
"""


def test_tensorflow_loads_without_its_native_banners_unless_verbose():
    def run(env):
        return subprocess.run(
            [sys.executable, "-c", QUIET_IMPORT],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    quiet = run(user_env())
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "gpus visible: True" in quiet.stdout
    lines = quiet.stderr.splitlines()
    assert "written while TensorFlow loads" in lines  # Python's own stderr is kept
    assert not [line for line in lines if _ABSL.match(line) or "absl::InitializeLog" in line]
    verbose = run(user_env(**{VERBOSE_ENV: "1"}))
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert [line for line in verbose.stderr.splitlines() if _ABSL.match(line)]


@pytest.mark.slow  # two scoring runs with a local Ray each: ~2 min on a shared 2-core host
def test_a_score_run_shows_medai_lines_and_verbose_the_libraries(
    tiny_model_dir, phantom_archive, tmp_path
):
    def run(*flags: str) -> str:
        out = tmp_path / f"out{len(flags)}"
        command = MarkedCommand(
            [*flags, "score", "--model", str(tiny_model_dir), "--images", str(phantom_archive)]
            + ["--out", str(out), "--limit", "24", "--threads", "1"]
        )
        command.env = user_env(**{command.name: "1"})
        done = command.run()
        command.kill_all()
        assert done.returncode == 0, done.stdout[-5000:]
        return done.stdout

    quiet = run()
    ours, others = split_console(quiet, "scored ")
    assert len(others) <= 5, "\n".join(others)
    assert any(line.startswith("scored 24 images") for line in ours), quiet[-3000:]
    assert any("medai.score: scorer engine" in line for line in ours)
    verbose = run("--verbose")
    ours_verbose, others_verbose = split_console(verbose, "scored ")
    assert len(others_verbose) >= len(others) + 5, verbose[-5000:]
    assert "Started a local Ray instance" in verbose
    assert "Execution plan of Dataset" in verbose
    assert len(ours_verbose) == len(ours)
