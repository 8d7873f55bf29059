"""Scoring throughput: a naive notebook loop vs the model alone vs ``medai score``, per engine.

Everything is measured in one run, on the same images and the same untrained 256 px model
(throughput does not depend on the weights):

(a) the naive notebook way, in one process: stream the tarballs with ``tarfile``, PIL
    ``open -> convert('L') -> resize(256)`` -> ``uint8`` -> ``model.predict`` per batch,
    serially; timed end to end, reading included (model load reported apart).
(b) the model alone (the ceiling): a pre-decoded ``uint8`` batch through a ``tf.function``
    predict, steady state (also under ``mixed_bfloat16``, for reference).
(c) ``medai score --engine tensorflow`` fp32 and (d) bf16, via :func:`medai.score.run_scoring`.
    End to end is ``ScoreSummary.seconds`` (also shown with Ray's start-up added). Steady
    state comes from the Parquet ``scored_at`` column, one write time per file: files written
    together form one output burst, and the rate is rows after the first burst / (last - first
    burst time), so start-up (actor start, model load, tracing) is excluded. The fp32 marginal
    rate of the memory pair (extra images / extra seconds) is printed as a cross-check.

OpenVINO (issue 11): the model directory gets its fp32 IR (``medai.export``) and an int8 IR
quantized here with NNCF on decoded sample images and marked accepted for *speed only* (an
untrained model has no validation AUC to gate on; ``bf16_agreement.py`` measures agreement on
a trained one). (b) gains the bare OpenVINO fp32/bf16/int8 rates on the same batch, and the
pipeline rows (e) fp32, (f) bf16 and (g) int8 run ``medai score --engine openvino``, each
with its start to first output (scorer actor start, IR check and compile, first batches
written). (h) scores the same images with a 14-finding model (the same network with a
14-output head, its own IR; ``auto`` engine, fp32) against the single-finding model (e):
issue 10's 14-vs-1 cost.

Whole commands: the naive notebook as a script (``naive_notebook.py``: imports, model load,
loop) and the ``medai score`` command (imports, local Ray start, scoring), each a cold process
timed by wall clock on the same inputs: what a user waits for either way; ``medai score``
runs twice, with ``--engine tensorflow`` (fp32) and with ``--precision bf16`` (auto: OpenVINO).

CPU bound: the model's CPU seconds per image in (b) and ``decode_image``'s on one thread,
with ``cores / (model + decode)``, the most images/s any pipeline that decodes on the same
cores can reach, and the ratios that bound implies for (c)/(b) and (d)/(c).

Peak memory: the RSS sum of the driver and of every Ray process (recognised by a marker
environment variable set before Ray starts; ``/proc`` sampled every 0.2 s) during fp32 runs
at N and at ``--memory-scale`` x N inputs, run last, back to back, each after the previous
scorer actor has exited, so that both see the same long-lived Ray processes.

Inputs are the shared real sample (113 NIH 1024x1024 PNGs, ``../shared/data/
chestxray8-sample/images_001.tar.gz`` from the repo root) copied under distinct names into
temporary ``.tar.gz`` files of up to 113 images until ``--inputs`` are reached; the scaled set
hard-links those tarballs ``--memory-scale`` times (member names repeat, sources differ).
``--phantoms`` uses generated 1024 px phantoms instead. (a) and (b) run in a separate process
before Ray starts, with TensorFlow sized as the scorer actor sizes itself (all cores).

Full run (about 30 minutes on 2 cores; run it on a quiet machine)::

    .venv/bin/python benchmarks/score_throughput.py --inputs 1000 --memory-scale 10

Smoke run (about two minutes)::

    .venv/bin/python benchmarks/score_throughput.py --quick
"""

from __future__ import annotations

import argparse
import io
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path, PurePosixPath

import numpy as np
from machine_info import machine  # benchmarks/ is on sys.path when run as a script
from naive_notebook import naive_notebook
from presets import add_quick_flag, parse_with_presets

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "chestxray8-sample" / "images_001.tar.gz"
IMAGE_SIZE = 256
PHANTOM_SIZE = 1024
SAMPLE_IMAGES = 113
MARKER = "MEDAI_SCORE_BENCH_MARKER"
QUICK = {"inputs": 48, "memory_scale": 2, "batch_size": 8, "rows_per_file": 8, "ceiling_batches": 3}
FULL = {
    "inputs": 1000,
    "memory_scale": 10,
    "batch_size": 32,
    "rows_per_file": 64,
    "ceiling_batches": 10,
}

# Targets of the issue, on a 2-core machine (required ratios; see report_lines).
TARGET_C_VS_B = 0.85
TARGET_C_VS_A = 1.2
TARGET_D_VS_C = 1.7
TARGET_MEMORY = 1.15
TARGET_E2E_VS_A = 1.0
# Issue 11 (OpenVINO) and issue 10 (14 findings in one pass).
TARGET_OV_BF16_VS_C = 1.8
TARGET_OV_FP32_VS_C = 1.1
TARGET_OV_FIRST_OUTPUT = 3.0
TARGET_BF16_E2E_VS_A = 2.0
TARGET_14_VS_1 = 1.1
N_FINDINGS = 14


# ----------------------------------------------------------------------------- inputs


def read_sample(path: Path) -> list[tuple[str, bytes]]:
    """The ``(member name, PNG bytes)`` of the sample archive, in archive order."""
    from medai.images import iter_archive

    return list(iter_archive(str(path)))


def make_phantoms(folder: Path, images: int) -> list[tuple[str, bytes]]:
    """About ``images`` generated 1024 px phantom PNGs (1-3 per patient)."""
    from medai.images import iter_archive
    from medai.phantoms import PhantomSpec, write_phantom_archive

    write_phantom_archive(
        folder, PhantomSpec(n_patients=max(2, math.ceil(images / 2)), size=PHANTOM_SIZE, seed=0)
    )
    return list(iter_archive(str(folder / "images_001.tar.gz")))


def write_inputs(base: list[tuple[str, bytes]], count: int, folder: Path) -> list[Path]:
    """Write ``count`` images as tarballs of ``len(base)`` members, each copy under new names.

    Returns:
        The tarballs written, ``images_001.tar.gz`` ... in order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    archives: list[Path] = []
    written = 0
    while written < count:
        copy = len(archives)
        path = folder / f"images_{copy + 1:03d}.tar.gz"
        take = base[: count - written]
        with tarfile.open(path, "w:gz", compresslevel=1) as tar:
            for name, data in take:
                info = tarfile.TarInfo(f"images/c{copy:03d}_{PurePosixPath(name).name}")
                info.size, info.mtime = len(data), 1504999999
                tar.addfile(info, io.BytesIO(data))
        written += len(take)
        archives.append(path)
    return archives


def link_copies(archives: list[Path], copies: int, folder: Path) -> list[Path]:
    """``copies`` hard links (copies across devices) of every tarball, under distinct names."""
    folder.mkdir(parents=True, exist_ok=True)
    linked = []
    for copy in range(copies):
        for archive in archives:
            target = folder / f"r{copy:03d}_{archive.name}"
            try:
                os.link(archive, target)
            except OSError:
                shutil.copyfile(archive, target)
            linked.append(target)
    return linked


# ------------------------------------------------------- (a) and (b), in a separate process


def _timed_predict(predict, batch: np.ndarray, batches: int) -> tuple[float, float]:
    """``(images/s, CPU seconds per image)`` of ``batches`` calls after two warm-up calls."""
    for _ in range(2):
        np.asarray(predict(batch))
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        np.asarray(predict(batch))
    images = batches * len(batch)
    return images / (time.perf_counter() - started), (time.process_time() - cpu) / images


def decode_cpu_seconds(archive: str) -> float:
    """CPU seconds per image of medai's ``decode_image`` over one archive, one thread."""
    from medai.images import decode_image, iter_archive

    blobs = [data for _, data in iter_archive(archive)]
    cpu = time.process_time()
    for data in blobs:
        decode_image(data, IMAGE_SIZE)
    return (time.process_time() - cpu) / len(blobs)


def in_process_baselines(
    model_dir: str, archives: list[str], batch_size: int, ceiling_batches: int
) -> dict:
    """Save the untrained model, then measure (a) and (b) in this (fresh) process.

    TensorFlow is sized exactly as :class:`medai.score.Scorer` sizes itself (all the cores
    this process may use).
    """
    from medai.runtime import configure_tensorflow

    threads = len(os.sched_getaffinity(0))
    configure_tensorflow(threads)
    import keras
    import tensorflow as tf

    from medai.artifact import MODEL_FILE, save_model_dir
    from medai.engines import load_engine
    from medai.export import export_openvino
    from medai.images import decode_image, iter_archive
    from medai.model import ModelSpec, build_model, rebuild_with_policy

    keras.utils.set_random_seed(0)
    spec = ModelSpec(IMAGE_SIZE, "gap", "none")
    card = {"finding": "Mass", "image_size": IMAGE_SIZE, "head": "gap", "weights": "none"}
    single = build_model(spec)
    save_model_dir(single, model_dir, {**card, "threshold": 0.5})
    save_multi_finding(single, f"{model_dir}-{N_FINDINGS}", card)
    started = time.perf_counter()
    export_openvino(model_dir)
    export_seconds = time.perf_counter() - started
    export_openvino(f"{model_dir}-{N_FINDINGS}")
    keras.backend.clear_session()

    started = time.perf_counter()
    model = keras.saving.load_model(Path(model_dir) / MODEL_FILE, compile=False)
    load_seconds = time.perf_counter() - started
    naive_images, naive_seconds = naive_notebook(model, archives, batch_size)

    decoded = []
    for _, data in iter_archive(archives[0]):
        decoded.append(decode_image(data, IMAGE_SIZE))
        if len(decoded) == batch_size:
            break
    batch = np.stack([decoded[i % len(decoded)] for i in range(batch_size)])
    predict = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    started = time.perf_counter()
    np.asarray(predict(batch))
    trace_seconds = time.perf_counter() - started
    ceiling, model_cpu = _timed_predict(predict, batch, ceiling_batches)
    bf16_model = rebuild_with_policy(model, spec, "mixed_bfloat16")
    bf16_predict = tf.function(lambda x: bf16_model(x, training=False), reduce_retracing=True)
    ceiling_bf16, model_cpu_bf16 = _timed_predict(bf16_predict, batch, ceiling_batches)
    calibration = [decode_image(data, IMAGE_SIZE) for _, data in iter_archive(archives[0])]
    write_speed_only_int8(model_dir, np.stack(calibration[:INT8_CALIBRATION]))
    openvino = {}
    for precision in ("fp32", "bf16", "int8"):
        engine = load_engine(model_dir, "openvino", precision, threads)
        rate, cpu = _timed_predict(engine.predict, batch, ceiling_batches)
        openvino[precision] = {"rate": rate, "cpu": cpu, "ran": engine.precision}
    return {
        "openvino": openvino,
        "export_seconds": export_seconds,
        "model_cpu": model_cpu,
        "model_cpu_bf16": model_cpu_bf16,
        "decode_cpu": decode_cpu_seconds(archives[0]),
        "threads": tf.config.threading.get_intra_op_parallelism_threads() or threads,
        "load_seconds": load_seconds,
        "trace_seconds": trace_seconds,
        "naive_images": naive_images,
        "naive_seconds": naive_seconds,
        "ceiling": ceiling,
        "ceiling_bf16": ceiling_bf16,
    }


def save_multi_finding(model, out: str, card: dict) -> None:
    """``model`` with a ``N_FINDINGS``-output head (the same network and image size)."""
    import keras

    from medai.artifact import save_model_dir
    from medai.labels import NIH_FINDINGS

    findings = list(NIH_FINDINGS)[:N_FINDINGS]
    head = keras.layers.Dense(N_FINDINGS, activation="sigmoid", dtype="float32", name="score")
    multi = keras.Model(model.input, head(model.get_layer("dropout").output))
    per_finding = {f: {"threshold": 0.5} for f in findings}
    save_model_dir(
        multi,
        out,
        {**card, "findings": findings, "finding": findings[0], "per_finding": per_finding}
        | {"threshold": 0.5},
    )


INT8_CALIBRATION = 64


def write_speed_only_int8(model_dir: str, calibration: np.ndarray) -> None:
    """Quantize the fp32 IR with NNCF and record it as accepted, for speed measurement only.

    The card says so (``gate.accepted_for``): this untrained model has no validation split
    to gate on, and int8's agreement is measured on a trained model by ``bf16_agreement.py``.
    """
    import nncf
    import openvino as ov

    from medai.card import read_card, write_card
    from medai.engines import IR_FILES, ir_files
    from medai.files import file_sha256

    xml, _ = ir_files(model_dir, "fp32")
    fp32 = ov.Core().read_model(str(xml))
    dataset = nncf.Dataset([image[None] for image in calibration])
    quantized = nncf.quantize(
        fp32, dataset, subset_size=len(calibration), preset=nncf.QuantizationPreset.MIXED
    )
    int8_xml, int8_bin = ir_files(model_dir, "int8")
    ov.save_model(quantized, int8_xml, compress_to_fp16=False)
    card = read_card(model_dir)
    card["openvino"]["int8"] = {
        "xml": IR_FILES["int8"][0],
        "bin": IR_FILES["int8"][1],
        "sha256": {"xml": file_sha256(int8_xml), "bin": file_sha256(int8_bin)},
        "gate": {"accepted": True, "accepted_for": "benchmark speed only, not gated"},
    }
    write_card(model_dir, card)


# ------------------------------------------------------------------------------ memory


def _start_time(pid: str) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            # Field 22 (start time); the command name in field 2 may contain spaces.
            return handle.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _rss_bytes(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


class RssSampler:
    """Sum of RSS of this process and of every process started with ``MARKER=<token>``.

    Processes are recognised by ``(pid, start time)`` so that a recycled pid is re-checked.
    Shared pages (e.g. Ray's object store) count once per process that maps them, so the sum
    is an upper bound; it is the same measure at every input count.
    """

    def __init__(self, token: str, interval: float = 0.2):
        self._needle = f"{MARKER}={token}".encode()
        self._interval = interval
        self._known: dict[tuple[str, str], bool] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak = 0
        self.peak_processes = 0

    def _marked(self, pid: str, started: str) -> bool:
        key = (pid, started)
        if key not in self._known:
            try:
                with open(f"/proc/{pid}/environ", "rb") as handle:
                    self._known[key] = self._needle in handle.read()
            except OSError:
                return False
        return self._known[key]

    def sample(self) -> tuple[int, int]:
        """``(total RSS bytes, processes counted)`` now."""
        own = str(os.getpid())
        total, count = _rss_bytes(own), 1
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or pid == own:
                continue
            started = _start_time(pid)
            if started is not None and self._marked(pid, started):
                total += _rss_bytes(pid)
                count += 1
        return total, count

    def _run(self) -> None:
        while not self._stop.is_set():
            total, count = self.sample()
            if total > self.peak:
                self.peak, self.peak_processes = total, count
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self.peak = self.peak_processes = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# ---------------------------------------------------------------------- (c) and (d)


def settle(sampler: RssSampler, quiet: float = 3.0, timeout: float = 30.0) -> int:
    """Wait until the marked processes stop changing (a finished actor takes seconds to exit).

    Returns:
        The total RSS once settled (or at the timeout).
    """
    deadline = time.monotonic() + timeout
    last_total, last_count = sampler.sample()
    stable_since = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - stable_since < quiet:
        time.sleep(0.5)
        total, count = sampler.sample()
        if count != last_count or abs(total - last_total) > 32 * 1024**2:
            stable_since = time.monotonic()
        last_total, last_count = total, count
    return last_total


@dataclass
class ScoreRun:
    """One ``medai score`` run and what was measured of it."""

    label: str
    inputs: int
    seconds: float = 0.0
    startup_seconds: float = 0.0
    first_output_seconds: float | None = None
    steady: float | None = None
    output_events: int = 0
    idle_rss: int = 0
    peak_rss: int = 0
    peak_processes: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def end_to_end(self) -> float:
        """Images/s over the whole run, its start-up included."""
        return self.inputs / self.seconds if self.seconds else 0.0


def output_events(out: Path, gap: float = 0.25, findings: int = 1) -> list[tuple[datetime, int]]:
    """``(time, images)`` of each burst of prediction files, oldest first.

    Every file carries one ``scored_at`` (its write time). Files written within ``gap``
    seconds of each other come from the same scorer output block and form one event. A
    model with several findings writes one row per image and finding: rows / ``findings``.
    """
    import pyarrow.parquet as pq

    from medai.score import prediction_files

    files = []
    for path in prediction_files(out):
        column = pq.read_table(path, columns=["scored_at"])["scored_at"].to_pylist()
        files.append((max(column), len(column) // findings))
    events: list[tuple[datetime, int]] = []
    for when, rows in sorted(files):
        if events and (when - events[-1][0]).total_seconds() <= gap:
            events[-1] = (when, events[-1][1] + rows)
        else:
            events.append((when, rows))
    return events


def steady_rate(events: list[tuple[datetime, int]]) -> float | None:
    """Rows after the first event / time from the first to the last event (needs 3 events)."""
    if len(events) < 3:
        return None
    span = (events[-1][0] - events[0][0]).total_seconds()
    return sum(rows for _, rows in events[1:]) / span if span > 0 else None


def score_run(
    label: str,
    folder: Path,
    out: Path,
    inputs: int,
    precision: str,
    args: argparse.Namespace,
    model_dir: Path,
    sampler: RssSampler,
    engine: str = "tensorflow",
    findings: int = 1,
) -> ScoreRun:
    """Run :func:`medai.score.run_scoring` once, sampling memory, and time it."""
    from medai.score import ScoreConfig, run_scoring

    config = ScoreConfig(
        model=str(model_dir),
        images=(str(folder),),
        out=str(out),
        batch_size=args.batch_size,
        precision=precision,
        engine=engine,
        rows_per_file=args.rows_per_file,
        progress=False,
    )
    print(f"{label}: medai score --engine {engine} {precision}, {inputs} inputs ...", flush=True)
    run = ScoreRun(label, inputs, idle_rss=settle(sampler))
    began = datetime.now(timezone.utc)
    with sampler:
        summary = run_scoring(config)
    run.peak_rss, run.peak_processes = sampler.peak, sampler.peak_processes
    run.seconds, run.startup_seconds = summary.seconds, summary.startup_seconds
    if summary.scored + summary.errors != inputs:
        run.notes.append(f"{label}: {summary.scored + summary.errors} rows for {inputs} inputs")
    events = output_events(out, findings=findings)
    run.output_events = len(events)
    if events:
        run.first_output_seconds = (events[0][0] - began).total_seconds()
    run.steady = steady_rate(events)
    if run.steady is None:
        run.notes.append(
            f"{label}: {len(events)} output bursts, too few for a steady state "
            "(more --inputs or fewer --rows-per-file)"
        )
    return run


@dataclass
class ScorerResults:
    """All ``medai score`` measurements of one benchmark run."""

    ray_start: float
    fp32: ScoreRun
    bf16: ScoreRun
    ov_fp32: ScoreRun
    ov_bf16: ScoreRun
    ov_int8: ScoreRun
    multi: ScoreRun
    memory_1x: ScoreRun
    memory_scaled: ScoreRun

    @property
    def marginal_fp32(self) -> float | None:
        """fp32 images/s from the extra inputs of the scaled run (start-up cancels out)."""
        extra = self.memory_scaled.inputs - self.memory_1x.inputs
        seconds = self.memory_scaled.seconds - self.memory_1x.seconds
        return extra / seconds if extra > 0 and seconds > 0 else None


def run_scorer(args: argparse.Namespace, root: Path, model_dir: Path) -> ScorerResults:
    """Start Ray once; run (c)-(h), then TensorFlow fp32 at 1x and Mx inputs for memory.

    The memory pair runs after the others so that both find the same long-lived Ray Data
    helper actors already started, and each waits for the previous scorer actor to exit.
    """
    import ray

    from medai.cpus import usable_cpus
    from medai.runtime import init_ray

    token = uuid.uuid4().hex
    os.environ[MARKER] = token  # inherited by the Ray processes started below
    sampler = RssSampler(token)
    started = time.perf_counter()
    init_ray(num_cpus=usable_cpus(), dashboard=False)  # the CPUs medai score may use
    ray_start = time.perf_counter() - started
    ray.data.DataContext.get_current().enable_progress_bars = False
    common = {"args": args, "model_dir": model_dir, "sampler": sampler}
    ov = {**common, "engine": "openvino"}
    multi = {
        **common,
        "model_dir": Path(f"{model_dir}-{N_FINDINGS}"),
        "engine": "auto",
        "findings": N_FINDINGS,
    }
    inputs, scaled = root / "inputs", root / "inputs_scaled"
    n, scale = args.inputs, args.memory_scale
    try:
        return ScorerResults(
            ray_start,
            score_run("(c) tensorflow fp32", inputs, root / "out_c", n, "fp32", **common),
            score_run("(d) tensorflow bf16", inputs, root / "out_d", n, "bf16", **common),
            score_run("(e) openvino fp32", inputs, root / "out_e", n, "fp32", **ov),
            score_run("(f) openvino bf16", inputs, root / "out_f", n, "bf16", **ov),
            score_run("(g) openvino int8", inputs, root / "out_g", n, "int8", **ov),
            score_run(f"(h) {N_FINDINGS} findings", inputs, root / "out_h", n, "fp32", **multi),
            score_run("fp32 1x", inputs, root / "out_1x", n, "fp32", **common),
            score_run(f"fp32 {scale}x", scaled, root / "out_mx", n * scale, "fp32", **common),
        )
    finally:
        ray.shutdown()
        os.environ.pop(MARKER, None)


# ------------------------------------------------------------------ whole commands


def _timed_command(command: list[str]) -> tuple[float, str]:
    """Wall seconds and stdout of a command run to completion (it must succeed)."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, done.stdout


def whole_commands(model_dir: Path, folder: Path, out: Path) -> dict:
    """Wall seconds of cold processes on the same inputs: the naive notebook script (imports,
    model load, loop) and the ``medai score`` command (imports, local Ray start, scoring), with
    TensorFlow fp32 and with ``--precision bf16`` (auto: OpenVINO). This is what a user waits
    for either way."""
    archives = sorted(str(a) for a in folder.glob("*.tar.gz"))
    naive, stdout = _timed_command(
        [sys.executable, str(REPO / "benchmarks" / "naive_notebook.py"), str(model_dir), *archives]
    )
    images = int(stdout.split()[0])
    medai = [sys.executable, "-m", "medai.cli", "score", "--model", str(model_dir)]
    medai += ["--images", str(folder), "--no-progress"]
    tensorflow, _ = _timed_command([*medai, "--out", f"{out}-tf", "--engine", "tensorflow"])
    bf16, _ = _timed_command([*medai, "--out", f"{out}-bf16", "--precision", "bf16"])
    return {"images": images, "naive": naive, "medai": tensorflow, "medai_bf16": bf16}


# ----------------------------------------------------------------------------- report


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


_COMPARE = {">=": float.__ge__, "<=": float.__le__, ">": float.__gt__}


def _check(value: float | None, sign: str, required: float) -> tuple[str, str]:
    """``(measured, PASS/FAIL)`` of ``value <sign> required``."""
    if value is None:
        return "n/a", "n/a"
    return f"{value:.2f}x", "PASS" if _COMPARE[sign](float(value), required) else "FAIL"


def _table(header: tuple[str, ...], align: str, rows: list[tuple]) -> list[str]:
    """Markdown table lines; ``align`` has one ``l``/``r`` per column."""
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |",
    ]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def cpu_bounds(base: dict) -> list[tuple[str, str]]:
    """What the measured CPU costs allow when decoding shares the model's cores.

    Every image costs its decode plus its model CPU time, and the pipeline has the same cores
    as (b); so no pipeline can exceed ``cores / (model + decode)`` images/s.
    """
    cores = len(os.sched_getaffinity(0))
    fp32 = _bound(cores, base["model_cpu"], base)
    bf16 = _bound(cores, base["model_cpu_bf16"], base)
    return [
        ("model CPU per image, fp32 (ms, all threads, from (b))", _num(1e3 * base["model_cpu"])),
        ("model CPU per image, bf16 (ms)", _num(1e3 * base["model_cpu_bf16"])),
        ("decode_image CPU per image (ms, one thread)", _num(1e3 * base["decode_cpu"])),
        (f"bound for any fp32 pipeline on {cores} cores (img/s)", _num(fp32)),
        ("bound / (b): the highest (c)/(b) possible here", f"{fp32 / base['ceiling']:.2f}x"),
        (f"bound for any bf16 pipeline on {cores} cores (img/s)", _num(bf16)),
        ("bf16 bound / fp32 bound: the highest (d)/(c) possible here", f"{bf16 / fp32:.2f}x"),
        *_openvino_bounds(base, cores, fp32),
    ]


def _bound(cores: int, model_cpu: float, base: dict) -> float:
    """Images/s when every image costs ``model_cpu`` plus ``decode_image`` on ``cores``."""
    return cores / (model_cpu + base["decode_cpu"])


def _openvino_bounds(base: dict, cores: int, tf_fp32: float) -> list[tuple[str, str]]:
    """The same bound for OpenVINO pipelines, and the (e)/(c) and (f)/(c) it allows."""
    rows = []
    for precision, row in (("fp32", "(e)"), ("bf16", "(f)")):
        measured = base["openvino"][precision]
        bound = _bound(cores, measured["cpu"], base)
        ran = measured["ran"]
        rows += [
            (f"model CPU per image, OpenVINO {ran} (ms)", _num(1e3 * measured["cpu"])),
            (f"bound for any OpenVINO {ran} pipeline (img/s)", _num(bound)),
            (f"its bound / TensorFlow fp32 bound: highest {row}/(c)", f"{bound / tf_fp32:.2f}x"),
        ]
    return rows


def report_lines(
    args: argparse.Namespace,
    source: str,
    base: dict,
    res: ScorerResults,
    whole: dict,
) -> list[str]:
    """The measured numbers, the targets with PASS/FAIL, start-up and memory, as Markdown."""
    from medai.cpus import usable_cpus

    n, fp32, bf16 = args.inputs, res.fp32, res.bf16
    naive = base["naive_images"] / base["naive_seconds"]
    naive_load = base["naive_seconds"] + base["load_seconds"]
    with_ray = fp32.seconds + res.ray_start
    gib = 1024.0**3
    speeds = [
        (
            "(a) naive notebook: tarfile + PIL + model.predict, serial",
            n,
            _num(base["naive_seconds"]),
            _num(naive),
        ),
        ("(a) naive, model load included", n, _num(naive_load), _num(n / naive_load)),
        (
            "(b) model alone: in-memory uint8 batch, tf.function, fp32 (ceiling)",
            "",
            "",
            _num(base["ceiling"]),
        ),
        ("(b) model alone, bf16 (reference)", "", "", _num(base["ceiling_bf16"])),
        *[
            (f"(b) model alone, OpenVINO {p} (ran {o['ran']})", "", "", _num(o["rate"]))
            for p, o in base["openvino"].items()
        ],
        ("(c) medai score fp32, steady state", "", "", _num(fp32.steady)),
        ("(c) medai score fp32, end to end", n, _num(fp32.seconds), _num(fp32.end_to_end)),
        ("(c) medai score fp32, end to end + Ray start-up", n, _num(with_ray), _num(n / with_ray)),
        (
            f"(c) medai score fp32, marginal: extra images of the {args.memory_scale}x run / "
            "extra seconds",
            "",
            "",
            _num(res.marginal_fp32),
        ),
        ("(d) medai score bf16, steady state", "", "", _num(bf16.steady)),
        ("(d) medai score bf16, end to end", n, _num(bf16.seconds), _num(bf16.end_to_end)),
        *[
            row
            for run in (res.ov_fp32, res.ov_bf16, res.ov_int8, res.multi)
            for row in (
                (f"{run.label}, steady state", "", "", _num(run.steady)),
                (f"{run.label}, end to end", n, _num(run.seconds), _num(run.end_to_end)),
            )
        ],
        (
            "(a) naive notebook script, whole process: imports, model load, loop",
            whole["images"],
            _num(whole["naive"]),
            _num(whole["images"] / whole["naive"]),
        ),
        (
            "(c) `medai score --engine tensorflow` command, whole process: imports, local Ray "
            "start, scoring",
            whole["images"],
            _num(whole["medai"]),
            _num(whole["images"] / whole["medai"]),
        ),
        (
            "(f) `medai score --precision bf16` command (auto: OpenVINO), whole process",
            whole["images"],
            _num(whole["medai_bf16"]),
            _num(whole["images"] / whole["medai_bf16"]),
        ),
    ]
    memory_ratio = _ratio(res.memory_scaled.peak_rss, res.memory_1x.peak_rss)
    checks = [
        ("(c) steady / (b)", _ratio(fp32.steady, base["ceiling"]), ">=", TARGET_C_VS_B),
        ("(c) steady / (a)", _ratio(fp32.steady, naive), ">=", TARGET_C_VS_A),
        ("(d) steady / (c) steady", _ratio(bf16.steady, fp32.steady), ">=", TARGET_D_VS_C),
        (f"peak RSS at {args.memory_scale}x / 1x inputs", memory_ratio, "<=", TARGET_MEMORY),
        (
            f"`medai score` / naive script, whole processes, {whole['images']} images "
            "(speed: inverse time ratio)",
            _ratio(whole["naive"], whole["medai"]),
            ">",
            TARGET_E2E_VS_A,
        ),
        (
            "(f) OpenVINO bf16 steady / (c) TensorFlow fp32 steady",
            _ratio(res.ov_bf16.steady, fp32.steady),
            ">=",
            TARGET_OV_BF16_VS_C,
        ),
        (
            "(e) OpenVINO fp32 steady / (c) TensorFlow fp32 steady",
            _ratio(res.ov_fp32.steady, fp32.steady),
            ">=",
            TARGET_OV_FP32_VS_C,
        ),
        (
            f"`medai score --precision bf16` / naive script, whole processes, "
            f"{whole['images']} images (speed)",
            _ratio(whole["naive"], whole["medai_bf16"]),
            ">=",
            TARGET_BF16_E2E_VS_A,
        ),
        (
            f"(h) {N_FINDINGS}-finding / (e) single-finding model, end-to-end time, same images "
            f"({N_FINDINGS} single models: {N_FINDINGS}x)",
            _ratio(res.multi.seconds, res.ov_fp32.seconds),
            "<=",
            TARGET_14_VS_1,
        ),
    ]
    targets = []
    for name, value, sign, required in checks:
        measured, verdict = _check(value, sign, required)
        targets.append((name, measured, f"{sign} {required:.2f}x", verdict))
    first = res.ov_bf16.first_output_seconds
    targets.append(
        (
            "(f) OpenVINO bf16 pipeline: start to first output (s)",
            _num(first, 2),
            f"<= {TARGET_OV_FIRST_OUTPUT:.1f} s",
            "n/a" if first is None else ("PASS" if first <= TARGET_OV_FIRST_OUTPUT else "FAIL"),
        )
    )
    startup = [
        (f"Ray start (init_ray, local, {usable_cpus()} CPUs)", _num(res.ray_start)),
        ("model load, one process (keras.saving.load_model)", _num(base["load_seconds"])),
        ("first predict incl. tracing, one process", _num(base["trace_seconds"])),
        (
            "medai export (convert, agreement, save the fp32 IR), one process",
            _num(base["export_seconds"]),
        ),
    ]
    for run in (fp32, bf16, res.ov_fp32, res.ov_bf16, res.ov_int8, res.multi):
        startup += [
            (
                f"{run.label}: run start-up until the pipeline starts (startup_seconds)",
                _num(run.startup_seconds, 2),
            ),
            (
                f"{run.label}: start to first output (actor start, model load, first batches)",
                _num(run.first_output_seconds),
            ),
        ]
    memory = [
        (
            run.label,
            run.inputs,
            f"{run.idle_rss / gib:.2f}",
            f"{run.peak_rss / gib:.2f}",
            f"{(run.peak_rss - run.idle_rss) / gib:.2f}",
            run.peak_processes,
            _num(run.end_to_end),
            _num(run.steady),
        )
        for run in (res.memory_1x, res.memory_scaled)
    ]
    lines = [
        f"Scoring throughput: {IMAGE_SIZE} px InceptionV3 (untrained weights), batch "
        f"{args.batch_size}, {n} inputs from {source}",
        f"Machine: {machine()}",
        f"TensorFlow intra-op threads: {base['threads']} in (a)/(b) and in the scorer actor "
        f"(medai's default: the node's cores). Prediction files of {args.rows_per_file} rows.",
        "",
        *_table(("measurement", "images", "seconds", "images/s"), "lrrr", speeds),
        "",
        *_table(("target", "measured", "required", "result"), "lrrl", targets),
        "",
        *_table(("CPU cost and the bound it sets", "value"), "lr", cpu_bounds(base)),
        "",
        *_table(("start-up", "seconds"), "lr", startup),
        "",
        *_table(
            (
                "memory, medai score fp32 (driver + all Ray processes, RSS sum)",
                "inputs",
                "idle GiB",
                "peak GiB",
                "peak - idle GiB",
                "processes",
                "e2e img/s",
                "steady img/s",
            ),
            "lrrrrrrr",
            memory,
        ),
    ]
    runs = (fp32, bf16, res.ov_fp32, res.ov_bf16, res.ov_int8, res.multi)
    notes = [note for run in (*runs, res.memory_1x, res.memory_scaled) for note in run.notes]
    notes.append(
        "(g) and (b) int8: an IR quantized on sample images and accepted for speed only "
        "(no gate on an untrained model)"
    )
    if args.quick:
        notes.append("--quick: tiny input counts; the ratios and verdicts mean nothing")
    return lines + [""] + [f"note: {note}" for note in notes]


# ------------------------------------------------------------------------------- main


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, help=f"images to score (default {FULL['inputs']})")
    parser.add_argument(
        "--memory-scale",
        type=int,
        help=f"input multiple of the memory run (default {FULL['memory_scale']})",
    )
    parser.add_argument("--batch-size", type=int, help=f"default {FULL['batch_size']}")
    parser.add_argument(
        "--rows-per-file",
        type=int,
        help="rows per Parquet file, the granularity of the steady-state timing "
        f"(default {FULL['rows_per_file']})",
    )
    parser.add_argument(
        "--ceiling-batches",
        type=int,
        help=f"timed batches of (b) (default {FULL['ceiling_batches']})",
    )
    parser.add_argument(
        "--sample",
        type=Path,
        default=SAMPLE,
        help="the ChestX-ray8 sample tarball (default: ../shared/data/"
        "chestxray8-sample/images_001.tar.gz from the repo root)",
    )
    parser.add_argument(
        "--phantoms",
        action="store_true",
        help=f"use generated {PHANTOM_SIZE} px phantoms instead of the sample",
    )
    add_quick_flag(parser, QUICK)
    args = parse_with_presets(parser, argv, QUICK, FULL)
    for key in FULL:
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the scoring benchmark and print its tables. Returns the exit status."""
    args = _parse(argv)
    if not args.phantoms and not args.sample.is_file():
        print(
            f"error: the ChestX-ray8 sample is not at {args.sample}; pass --sample PATH, "
            f"or --phantoms to use generated {PHANTOM_SIZE} px phantoms",
            file=sys.stderr,
        )
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="medai-score-bench-") as tmp:
        root = Path(tmp)
        if args.phantoms:
            base = make_phantoms(root / "phantoms", min(args.inputs, SAMPLE_IMAGES))
            source = f"{len(base)} generated {PHANTOM_SIZE} px phantoms, repeated"
        else:
            base = read_sample(args.sample)
            source = f"the {len(base)} real images of {args.sample.name}, repeated"
        archives = write_inputs(base, args.inputs, root / "inputs")
        link_copies(archives, args.memory_scale, root / "inputs_scaled")
        model_dir = root / "model"
        print(
            f"inputs ready ({args.inputs} and {args.inputs * args.memory_scale} images); "
            "(a) and (b) in a separate process ...",
            flush=True,
        )
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            baselines = pool.submit(
                in_process_baselines,
                str(model_dir),
                [str(a) for a in archives],
                args.batch_size,
                args.ceiling_batches,
            ).result()
        results = run_scorer(args, root, model_dir)
        print("whole commands: the naive notebook script, then medai score ...", flush=True)
        whole = whole_commands(model_dir, root / "inputs", root / "out_cli")
    print("\n".join(report_lines(args, source, baselines, results, whole)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
