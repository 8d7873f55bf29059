"""The console: medai's own lines, and the libraries' logs only when asked for.

A job's console shows medai's log lines (``HH:MM:SS LEVEL medai.<module>: ...``), its result
line, warnings and errors; progress bars only on a terminal. ``--verbose`` (or
``MEDAI_VERBOSE=1``) brings back what the libraries print at INFO: Ray's start-up lines, Ray
Data's execution plans and progress, Ray Train's worker-group lines, TensorFlow's C++ banners.
Quiet or not, Ray keeps every worker's output in its session folder
(``/tmp/ray/session_latest/logs``) and Ray Data its log (``.../logs/ray-data``).

The settings travel as environment variables, so the Ray processes a local ``ray.init``
starts inherit them; Ray forwards each worker's output to the driver, which keeps only
medai's lines (``RAY_DEDUP_LOGS_SKIP_REGEX``, read when Ray is imported). GPUs stay visible:
only the CUDA probe's log lines go, never a device.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

__all__ = [
    "VERBOSE_ENV",
    "MEDAI_LINE",
    "is_verbose",
    "console_env",
    "setup_console",
    "setup_logging",
    "quiet_ray_data",
    "ray_logging_level",
]

VERBOSE_ENV = "MEDAI_VERBOSE"
# The start of every medai log line (see setup_logging), wherever it was written.
MEDAI_LINE = r"\d\d:\d\d:\d\d [A-Z]+ medai[.:]"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_DATE_FORMAT = "%H:%M:%S"
_HANDLER = "medai"
# absl's native log lines (``I0000 00:00:1796475938.222009  6336 port.cc:153] ...``) and its
# banner, written straight to file descriptor 2 while TensorFlow's libraries load, before any
# log level applies: oneDNN's notice, "Could not find cuda drivers" on CPU-only hosts.
_NATIVE_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "
)


def is_verbose() -> bool:
    """Whether the libraries' logs are wanted (``MEDAI_VERBOSE`` set to 1, true or yes)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def console_env(verbose: bool) -> dict[str, str]:
    """The environment that quiets the libraries in this process and the Ray processes it starts.

    ``TF_CPP_MIN_LOG_LEVEL=3`` drops TensorFlow's C++ INFO to ERROR lines (cuInit failures on
    CPU-only workers among them); the skip pattern makes the driver print only those lines
    of Ray's workers that are medai's. Nothing when ``verbose``.
    """
    if verbose:
        return {}
    return {"TF_CPP_MIN_LOG_LEVEL": "3", "RAY_DEDUP_LOGS_SKIP_REGEX": f"^(?!{MEDAI_LINE})"}


def setup_console(verbose: bool = False) -> None:
    """Set up a job's console; call first, before Ray or TensorFlow are imported.

    Args:
        verbose: Show the libraries' logs too (``MEDAI_VERBOSE=1`` does the same).

    Variables the user set keep their values.
    """
    if verbose:
        os.environ[VERBOSE_ENV] = "1"  # for the Ray processes too
    verbose = is_verbose()
    for key, value in console_env(verbose).items():
        os.environ.setdefault(key, value)
    setup_logging()
    if not verbose and "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def setup_logging(level: int = logging.INFO) -> None:
    """One readable format for medai's own log lines, in the driver and in Ray workers.

    In the driver the root logger gets the handler (as ``logging.basicConfig``: not when
    one is there already) at WARNING, or INFO when verbose, and medai's loggers log from
    ``level``. In a Ray worker, where Ray Train formats the root logger its own way, medai's
    logger gets its own handler, so that its lines keep the format the driver lets through.
    """
    medai = logging.getLogger("medai")
    medai.setLevel(level)
    if _in_ray_worker():
        if not any(handler.get_name() == _HANDLER for handler in medai.handlers):
            handler = logging.StreamHandler()
            handler.set_name(_HANDLER)
            handler.setFormatter(logging.Formatter(_FORMAT, _DATE_FORMAT))
            medai.addHandler(handler)
        medai.propagate = False
        return
    logging.basicConfig(
        level=logging.INFO if is_verbose() else logging.WARNING,
        format=_FORMAT,
        datefmt=_DATE_FORMAT,
    )


def ray_logging_level() -> int:
    """The driver's ``ray`` logger level: its INFO lines (start-up, dashboard) only if verbose."""
    return logging.INFO if is_verbose() else logging.WARNING


def quiet_ray_data() -> None:
    """Ray Data's console handler from WARNING up, unless verbose: no execution plans, no
    progress dumps in logs. Its session log file keeps every line. Call after importing
    ``ray.data`` (which configures its loggers)."""
    if is_verbose():
        return
    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console":  # Ray Data's default logging config names it so
            handler.setLevel(logging.WARNING)


def _in_ray_worker() -> bool:
    if "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Import TensorFlow, once, with absl's native banner lines dropped from stderr."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            load = spec.loader.exec_module

            def exec_module(module):
                with _native_noise_dropped():
                    load(module)

            spec.loader.exec_module = exec_module  # this spec's own loader object
        return spec


@contextlib.contextmanager
def _native_noise_dropped():
    """Send file descriptor 2 to a temporary file meanwhile, then replay all but absl's lines.

    Python's own writes to stderr in that time (other threads' too) are replayed in order.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode(errors="replace")
            kept = [line for line in text.splitlines(True) if not _NATIVE_NOISE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
