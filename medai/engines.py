"""Inference engines: one small interface over OpenVINO and TensorFlow for a model directory.

:func:`load_engine` returns an object with ``predict(uint8 images (N, size, size, 1)) ->
float32 (N, n_outputs)``, ``name`` (``openvino`` or ``tensorflow``) and ``precision`` (what
actually runs: a bf16 request on a CPU without bf16 runs, and says, ``fp32``).

OpenVINO runs the IR that :mod:`medai.export` writes to ``MODEL_DIR/openvino/``. Its files are
hashed and checked against the card before they are compiled (the very bytes hashed are the
ones compiled, so nothing can change in between), and the OpenVINO path never imports
TensorFlow: that import alone costs a scorer process seconds of start-up. ``auto`` picks
OpenVINO when no GPU is visible to this process and the IR exists, TensorFlow otherwise.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from medai.artifact import file_sha256, read_card
from medai.errors import MedaiError

__all__ = [
    "ENGINES",
    "PRECISIONS",
    "IR_DIR",
    "IR_FILES",
    "EngineError",
    "Engine",
    "IrFiles",
    "ir_files",
    "check_ir",
    "read_ir",
    "verify_ir",
    "gpu_visible",
    "resolve_engine",
    "load_engine",
    "OpenVINOEngine",
    "TensorFlowEngine",
]

logger = logging.getLogger("medai.engines")

ENGINES = ("auto", "openvino", "tensorflow")
PRECISIONS = ("fp32", "bf16", "int8")
IR_DIR = "openvino"
# One IR per stored weight precision; bf16 is a compile-time hint on the fp32 IR.
IR_FILES = {"fp32": ("model.xml", "model.bin"), "int8": ("model-int8.xml", "model-int8.bin")}
CARD_KEY = "openvino"


class EngineError(MedaiError, ValueError):
    """An engine or precision cannot be used with this model directory; the message says why."""


class Engine(Protocol):
    """What the scorer and ``predict`` call, whichever engine runs underneath."""

    name: str
    precision: str
    n_outputs: int

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Scores of a ``uint8`` batch ``(N, size, size, 1)`` as ``float32 (N, n_outputs)``."""
        ...


@dataclass(frozen=True)
class IrFiles:
    """An IR's files and contents, read once and checked against the card.

    Attributes:
        xml: Path of the IR's ``.xml``.
        bin: Path of the IR's ``.bin``.
        xml_bytes: The ``.xml`` as read (and hashed).
        bin_bytes: The ``.bin`` as read (and hashed).
    """

    xml: Path
    bin: Path
    xml_bytes: bytes
    bin_bytes: bytes


def ir_files(model_dir: str | Path, precision: str) -> tuple[Path, Path]:
    """Paths of the ``.xml`` and ``.bin`` of a model directory's IR for a stored precision."""
    xml, weights = IR_FILES["int8" if precision == "int8" else "fp32"]
    folder = Path(model_dir) / IR_DIR
    return folder / xml, folder / weights


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _ir_entry(card: dict, stored: str) -> dict | None:
    """The card's record of the IR stored in ``stored`` precision, if any."""
    block = card.get(CARD_KEY) or {}
    return block.get(stored)


def check_ir(model_dir: str | Path, precision: str, card: dict) -> tuple[Path, Path, dict]:
    """Check what the card says of an IR, without reading it: for a clear error before work.

    Returns:
        The IR's ``.xml`` and ``.bin`` paths and the card's record of it.

    Raises:
        EngineError: If the card has no such IR, the IR was converted from another
            ``model.keras``, an int8 IR was not accepted by the export gate, or a file is missing.
    """
    stored = "int8" if precision == "int8" else "fp32"
    entry = _ir_entry(card, stored)
    if entry is None:
        hint = "medai export --int8" if stored == "int8" else "medai export"
        raise EngineError(f"{model_dir}: the card records no {stored} OpenVINO IR; run {hint}")
    block = card[CARD_KEY]
    if block.get("converted_from") != card["model_id"]:
        raise EngineError(
            f"{model_dir}: the OpenVINO IR was converted from model "
            f"{str(block.get('converted_from'))[:12]}, not {card['model_id'][:12]}; "
            "run medai export again"
        )
    if stored == "int8" and not entry.get("gate", {}).get("accepted"):
        raise EngineError(f"{model_dir}: the int8 IR was not accepted by the export gate")
    xml, weights = ir_files(model_dir, stored)
    for path in (xml, weights):
        if not path.is_file():
            raise EngineError(f"{path} is missing; run medai export again")
    return xml, weights, entry


def read_ir(model_dir: str | Path, precision: str, card: dict | None = None) -> IrFiles:
    """Read an IR and check it against the model card.

    Args:
        model_dir: The model directory.
        precision: ``fp32``, ``bf16`` (both read the fp32 IR) or ``int8``.
        card: The parsed card (read from ``model_dir`` if not given).

    Raises:
        EngineError: As :func:`check_ir`, or if a file's sha256 differs from the card's.
    """
    card = read_card(model_dir) if card is None else card
    xml, weights, entry = check_ir(model_dir, precision, card)
    contents = []
    for path, key in ((xml, "xml"), (weights, "bin")):
        data = path.read_bytes()
        if _sha256(data) != entry["sha256"][key]:
            raise EngineError(_not_the_carded(path))
        contents.append(data)
    return IrFiles(xml, weights, contents[0], contents[1])


def verify_ir(model_dir: str | Path, precision: str, card: dict) -> None:
    """:func:`check_ir`, and each IR file's sha256 against the card's: before work starts.

    Raises:
        EngineError: As :func:`read_ir`.
    """
    xml, weights, entry = check_ir(model_dir, precision, card)
    for path, key in ((xml, "xml"), (weights, "bin")):
        if file_sha256(path) != entry["sha256"][key]:
            raise EngineError(_not_the_carded(path))


def _not_the_carded(path: Path) -> str:
    return f"{path} does not match the sha256 in the model card; refusing it"


def gpu_visible() -> bool:
    """Whether this process may use a GPU, found without importing TensorFlow.

    Inside a Ray task or actor, Ray's assignment decides: Ray 2.60 leaves
    ``CUDA_VISIBLE_DEVICES`` untouched for an actor given no GPU, so a CPU actor on a GPU node
    still sees every device. Elsewhere, ``CUDA_VISIBLE_DEVICES`` set to nothing (or ``-1``)
    hides the GPUs, and otherwise any ``/dev/nvidia<N>`` device file counts as a GPU.
    """
    assigned = _ray_assigned_gpus()
    if assigned is not None:
        return assigned > 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "NoDevFiles"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def _ray_assigned_gpus() -> float | None:
    """GPUs Ray assigned to this worker, or ``None`` outside a Ray worker (never imports Ray)."""
    from medai.cpus import assigned_resources

    assigned = assigned_resources()
    return None if assigned is None else float(assigned.get("GPU", 0.0))


def resolve_engine(model_dir: str | Path, engine: str, precision: str, card: dict) -> str:
    """The engine ``auto`` stands for, or ``engine`` itself after checking the combination.

    ``auto`` is OpenVINO when no GPU is visible and the card records an IR for the precision,
    else TensorFlow; int8 exists only as an OpenVINO IR, so int8 always means OpenVINO.

    Raises:
        EngineError: On an unknown engine or precision, or int8 asked of TensorFlow.
    """
    if engine not in ENGINES:
        raise EngineError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if precision not in PRECISIONS:
        raise EngineError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "int8":
        if engine == "tensorflow":
            raise EngineError("--precision int8 runs only on --engine openvino (or auto)")
        return "openvino"
    if engine != "auto":
        return engine
    stored = _ir_entry(card, "fp32")
    has_ir = stored is not None and ir_files(model_dir, "fp32")[0].is_file()
    return "openvino" if has_ir and not gpu_visible() else "tensorflow"


def load_engine(
    model_dir: str | Path,
    engine: str = "auto",
    precision: str = "fp32",
    threads: int | None = None,
) -> Engine:
    """Load a model directory into an inference engine.

    Args:
        model_dir: A model directory (``model.keras``, ``model_card.json``, maybe ``openvino/``).
        engine: ``auto``, ``openvino`` or ``tensorflow``.
        precision: ``fp32``, ``bf16`` or ``int8`` (OpenVINO only, from a gated int8 IR).
        threads: CPU threads for inference; ``None`` leaves the engine's default.

    Returns:
        An engine with ``predict``, ``name`` and ``precision``.

    Raises:
        EngineError: If the engine, precision or IR cannot be used.
        ModelDirError: If the model directory is incomplete.

    Example:
        >>> engine = load_engine("models/mass", precision="bf16")  # doctest: +SKIP
        >>> engine.name, engine.precision
        ('openvino', 'bf16')
    """
    card = read_card(model_dir)
    chosen = resolve_engine(model_dir, engine, precision, card)
    if threads is not None and threads < 1:
        raise EngineError("--threads must be at least 1")
    if chosen == "openvino":
        return OpenVINOEngine(model_dir, precision, threads, card)
    return TensorFlowEngine(model_dir, precision, threads)


def _check_batch(images: np.ndarray, size: int) -> np.ndarray:
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if images.ndim != 4 or images.shape[1:] != (size, size, 1):
        raise ValueError(f"expected uint8 images (N, {size}, {size}, 1), got {images.shape}")
    return images


def openvino_cache_dir() -> str | None:
    """Where compiled OpenVINO models are kept between processes; ``None``: compile afresh.

    ``MEDAI_OPENVINO_CACHE`` names the folder (set but empty: no cache); by default
    ``$XDG_CACHE_HOME/medai/openvino`` (``~/.cache/medai/openvino``). A cached bf16 InceptionV3
    compiles in 0.17 s instead of 0.5-0.6 s, once per scorer actor. OpenVINO keys each blob
    on the model, the device and the compile options, so a changed IR never meets a stale
    blob. A folder that cannot be created costs only the speed-up (a warning says so).
    """
    configured = os.environ.get("MEDAI_OPENVINO_CACHE")
    if configured == "":
        return None
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medai"
    folder = Path(configured) if configured else default / "openvino"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        logger.warning("OpenVINO compile cache off: cannot create %s (%s)", folder, exc)
        return None
    return str(folder)


def _cpu_supports_bf16(core) -> bool:
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVINOEngine:
    """OpenVINO on the CPU: a latency-hinted compiled IR and one synchronous request.

    A batch is one inference with a dynamic batch dimension. The latency hint with one sync
    request measured faster here than the throughput hint with an ``AsyncInferQueue`` over
    sub-batches (see ``benchmarks/openvino_probe.py``), and much faster than the throughput
    hint with a single sync request, which leaves most of its streams idle.
    """

    name = "openvino"

    def __init__(self, model_dir: str | Path, precision: str, threads: int | None, card: dict):
        import openvino as ov

        ir = read_ir(model_dir, precision, card)
        core = ov.Core()
        # Explicit f32 for fp32/int8: OpenVINO defaults to bf16 on CPUs with AMX.
        hint = "f32"
        self.precision = precision
        if precision == "bf16":
            if _cpu_supports_bf16(core):
                hint = "bf16"
            else:
                logger.warning("this CPU has no bf16 support in OpenVINO; running fp32 instead")
                self.precision = "fp32"
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        cache = openvino_cache_dir()
        if cache is not None:
            config["CACHE_DIR"] = cache
        model = core.read_model(ir.xml_bytes, ov.Tensor(np.frombuffer(ir.bin_bytes, np.uint8)))
        self._compiled = core.compile_model(model, "CPU", config)
        self._request = self._compiled.create_infer_request()
        self.size = int(card["image_size"])
        self.n_outputs = int(self._compiled.output(0).get_partial_shape()[1].get_length())
        self.ir_sha256 = _sha256(ir.xml_bytes + ir.bin_bytes)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Scores of a ``uint8`` batch ``(N, size, size, 1)`` as ``float32 (N, n_outputs)``."""
        images = _check_batch(images, self.size)
        if len(images) == 0:
            return np.zeros((0, self.n_outputs), np.float32)
        self._request.infer({0: images}, share_inputs=True)
        # The request reuses its output buffer: copy before the next batch overwrites it.
        return np.array(self._request.get_output_tensor(0).data, dtype=np.float32, copy=True)


class TensorFlowEngine:
    """The Keras model under ``tf.function``: the GPU engine, and the CPU one without an IR."""

    name = "tensorflow"

    def __init__(self, model_dir: str | Path, precision: str, threads: int | None):
        from medai.cpus import usable_cpus
        from medai.runtime import configure_tensorflow

        configure_tensorflow(threads or usable_cpus())
        import tensorflow as tf

        from medai.artifact import load_model_dir
        from medai.model import rebuild_with_policy

        loaded = load_model_dir(model_dir)
        model = loaded.model
        self.n_outputs = int(model.outputs[0].shape[-1])
        if precision == "bf16":
            model = rebuild_with_policy(model, _spec(loaded.card, self.n_outputs), "mixed_bfloat16")
        self.precision = precision
        self.size = int(loaded.card["image_size"])
        # One graph for every batch length: Ray Data hands over short batches wherever input
        # blocks end, and padding them to the full batch size wasted up to a third of the
        # model's time on the NIH-layout benchmark.
        signature = tf.TensorSpec((None, self.size, self.size, 1), tf.uint8)
        self._predict = tf.function(lambda x: model(x, training=False), input_signature=[signature])
        self._predict.get_concrete_function()  # trace now, without running a dummy batch

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Scores of a ``uint8`` batch ``(N, size, size, 1)`` as ``float32 (N, n_outputs)``."""
        images = _check_batch(images, self.size)
        if len(images) == 0:
            return np.zeros((0, self.n_outputs), np.float32)
        return np.asarray(self._predict(images), dtype=np.float32).reshape(len(images), -1)


def _spec(card: dict, n_outputs: int):
    """The architecture of a card's model, for rebuilding it under another dtype policy."""
    from medai.model import ModelSpec

    spec = ModelSpec(int(card["image_size"]), card.get("head", "gap"), "none")
    return replace(spec, n_outputs=n_outputs)
