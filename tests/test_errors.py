"""How a command reports what the user can act on: bad input, Ctrl-C, a full or read-only disk.

The disks are real: a small or read-only tmpfs mounted in a private user and mount namespace
(``unshare``), so nothing is mounted on the host and the job writes to a real file system.
"""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from processes import MarkedCommand

from medai.errors import MedaiError, run_reported, storage_fault

# Mount a tmpfs with options $1 on $2, run the rest, then copy what it kept to $3 (the
# namespace, and the tmpfs with it, ends with the command).
ON_TMPFS = (
    'mount -t tmpfs -o "$1" medai-test "$2" || exit 97; dir="$2"; keep="$3"; shift 3; '
    '"$@"; status=$?; cp -a "$dir/." "$keep/"; exit $status'
)


def on_tmpfs(options: str, folder: Path, keep: Path) -> list[str]:
    """The command prefix that runs a command with ``folder`` on a tmpfs of ``options``."""
    folder.mkdir(parents=True, exist_ok=True)
    keep.mkdir(parents=True, exist_ok=True)
    unshare = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", ON_TMPFS]
    return [*unshare, "sh", options, str(folder), str(keep)]


@pytest.fixture(scope="module")
def tmpfs_available(tmp_path_factory) -> None:
    probe = tmp_path_factory.mktemp("probe")
    try:
        done = subprocess.run(
            [*on_tmpfs("size=64k", probe / "disk", probe / "kept"), "true"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        pytest.skip("no unshare(1) here to mount a private tmpfs")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {done.stderr.strip()}")


def test_a_full_disk_is_found_behind_ray_and_ray_data_wrappers():
    import traceback

    import ray.cloudpickle as pickle
    from ray.exceptions import RayTaskError, UserCodeException

    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError as exc:
            raise UserCodeException("UDF failed to process a data block.") from exc
    except UserCodeException as exc:
        text = "".join(traceback.format_exception(exc))
        wrapped = RayTaskError("write_predictions", text, exc).as_instanceof_cause()
    assert storage_fault(wrapped) is full  # raised in this process: the chain holds it
    # As a task's error reaches the driver: pickled, which keeps no __cause__.
    arrived = pickle.loads(pickle.dumps(wrapped))
    assert arrived.cause.__cause__ is None
    assert storage_fault(arrived).errno == errno.ENOSPC
    read_only = OSError(errno.EROFS, "Read-only file system", "/out/x.parquet")
    assert storage_fault(RayTaskError("f", "tb", read_only)) is read_only
    assert storage_fault(FileNotFoundError(errno.ENOENT, "missing")) is None  # an input's fault
    assert storage_fault(RayTaskError("f", "OSError: [Errno 2] missing", ValueError())) is None
    assert storage_fault(ValueError("a bug")) is None


def test_one_handler_for_every_command(capsys):
    def fails(exc: BaseException):
        def job() -> int:
            raise exc

        return job

    assert run_reported("score", fails(MedaiError("--images: nothing there"))) == 2
    assert capsys.readouterr().err == "medai score: error: --images: nothing there\n"
    assert run_reported("train", fails(KeyboardInterrupt()), "; add --resume") == 130
    assert capsys.readouterr().err == "medai train: interrupted; add --resume\n"
    disk = OSError(errno.ENOSPC, "No space left on device", "/out/a.parquet")
    assert run_reported("report", fails(disk)) == 1
    assert capsys.readouterr().err == (
        "medai report: stopped: no space left on the output disk (/out/a.parquet); "
        "run the same command again to go on\n"
    )
    with pytest.raises(TypeError):  # a bug keeps its traceback
        run_reported("report", fails(TypeError("unsupported operand")))
    with pytest.raises(OSError, match="missing"):  # so does any other OSError
        run_reported("report", fails(FileNotFoundError(errno.ENOENT, "missing")))


def score_on_tmpfs(options: str, model: Path, images: Path, tmp_path: Path):
    """Run ``medai score`` with --out on a tmpfs; returns (process, kept copy of the output)."""
    out, kept = tmp_path / "disk", tmp_path / "kept"
    command = MarkedCommand(
        ["score", "--model", str(model), "--images", str(images), "--out", str(out)]
        + ["--rows-per-file", "8", "--batch-size", "8", "--threads", "1", "--no-progress"]
    )
    command.args = [*on_tmpfs(options, out, kept), *command.args]
    try:
        return command.run(), kept
    finally:
        command.kill_all()


def assert_one_clean_line(done: subprocess.CompletedProcess, start: str, end: str) -> None:
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert done.returncode == 1, done.stdout[-5000:]
    assert lines[-1].startswith(start) and lines[-1].endswith(end), done.stdout[-3000:]
    assert "Traceback" not in done.stdout, done.stdout[-5000:]


KEPT = "; the prediction files written so far are kept: run the same command to go on"


def test_a_read_only_output_stops_score_in_one_line(
    tmpfs_available, tiny_model_dir, phantom_archive, tmp_path
):
    done, kept = score_on_tmpfs("ro", tiny_model_dir, phantom_archive, tmp_path)
    read_only = "medai score: stopped: the output is on a read-only file system"
    assert_one_clean_line(done, f"{read_only} ({tmp_path / 'disk'}/", KEPT)
    assert not list(kept.iterdir())


# 133 s (and 84 s of fixtures) on the shared 2-core host under load; the read-only test and the
# pickled Ray error above are its cheaper default-run checks.
@pytest.mark.slow
def test_a_disk_that_fills_mid_run_stops_score_in_one_line_and_keeps_its_files(
    tmpfs_available, tiny_model_dir, phantom_archive, tmp_path
):
    # 40 KiB: the card, the config and the lock, then a few 8-row files (a page each).
    done, kept = score_on_tmpfs("size=40k", tiny_model_dir, phantom_archive, tmp_path)
    assert_one_clean_line(done, "medai score: stopped: no space left on the output disk", KEPT)
    files = sorted(kept.glob("predictions-*.parquet"))
    assert files, done.stdout[-3000:]
    rows = pd.concat([pd.read_parquet(f) for f in files])  # every kept file is whole
    total = len(pd.read_csv(phantom_archive / "Data_Entry_2017.csv", index_col=False))
    assert 0 < len(rows) < total and not rows.duplicated(["model_id", "image_id"]).any()
