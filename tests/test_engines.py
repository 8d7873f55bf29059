"""Inference engines: OpenVINO equals TensorFlow, IR integrity, engine choice, precisions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medai.engines import EngineError, gpu_visible, load_engine
from medai.export import export_openvino

SIZE = 75


def save_spread_model(out: Path, seed: int = 0) -> Path:
    """A random-weight model whose scores spread over (0, 1).

    A random network's scores all sit near 0.5 (they differ by ~1e-5), so equality to 1e-4
    would prove nothing; scaling the output layer's weights spreads its logits.
    """
    import keras

    from medai.artifact import save_model_dir
    from medai.model import ModelSpec, build_model

    keras.utils.set_random_seed(seed)
    model = build_model(ModelSpec(SIZE, "gap", "none"))
    features = keras.Model(model.inputs, model.get_layer("fc").output)
    probe = np.random.default_rng(seed).integers(0, 256, (16, SIZE, SIZE, 1), dtype=np.uint8)
    layer = model.get_layer("score")
    kernel, _ = layer.get_weights()
    logits = np.asarray(features(probe, training=False)) @ kernel
    scale = 2.0 / float(logits.std())  # logits of unit-ish spread, centred on 0
    layer.set_weights([kernel * scale, -np.full(1, float(logits.mean()) * scale)])
    card = {"finding": "Mass", "image_size": SIZE, "head": "gap", "weights": "none"}
    save_model_dir(model, out, {**card, "threshold": 0.5})
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A model directory with an fp32 OpenVINO IR (exported once for this module)."""
    folder = save_spread_model(tmp_path_factory.mktemp("engines") / "model")
    export_openvino(folder)
    return folder


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(3)
    batch = rng.integers(0, 256, (12, SIZE, SIZE, 1), dtype=np.uint8)
    batch[0], batch[1] = 0, 255
    return batch


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / "copy"))


def test_openvino_fp32_equals_tensorflow(exported, images):
    ov_engine = load_engine(exported, "openvino", "fp32")
    tf_engine = load_engine(exported, "tensorflow", "fp32")
    ov_scores, tf_scores = ov_engine.predict(images), tf_engine.predict(images)
    assert (ov_engine.name, ov_engine.precision) == ("openvino", "fp32")
    assert (tf_engine.name, tf_engine.precision) == ("tensorflow", "fp32")
    assert ov_scores.shape == tf_scores.shape == (len(images), 1)
    assert ov_scores.dtype == np.float32
    assert float(tf_scores.max() - tf_scores.min()) > 0.1, "scores must vary to prove anything"
    assert float(np.abs(ov_scores - tf_scores).max()) <= 1e-4


def test_any_batch_length(exported, images):
    engine = load_engine(exported, "openvino")
    whole = engine.predict(images)
    for n in (0, 1, 5):
        part = engine.predict(images[:n])
        assert part.shape == (n, 1)
        # fp32 kernels block the work differently by batch shape (1.3e-6 seen on one host of
        # this kind): a score agrees to 1e-5, far below any preprocessing or weight fault.
        np.testing.assert_allclose(part, whole[:n], atol=1e-5)
    with pytest.raises(ValueError, match="expected uint8 images"):
        engine.predict(images[:, :10])


def test_card_records_ir_and_keeps_model_id(exported):
    from medai.artifact import file_sha256, read_card

    card = read_card(exported)
    assert card["model_id"] == file_sha256(exported / "model.keras")
    block = card["openvino"]
    assert block["converted_from"] == card["model_id"]
    ir = exported / "openvino"
    assert block["fp32"]["sha256"] == {
        "xml": file_sha256(ir / "model.xml"),
        "bin": file_sha256(ir / "model.bin"),
    }
    assert block["fp32"]["agreement"]["max_abs_diff"] <= 1e-4
    # fp32 weights kept: fp16 compression would halve the weights file
    weights = sum(np.prod(w.shape) for w in _keras_weights(exported))
    assert (ir / "model.bin").stat().st_size >= 4 * weights * 0.95


def _keras_weights(model_dir: Path):
    from medai.artifact import load_model_dir

    return load_model_dir(model_dir).model.weights


def test_ir_sha_mismatch_refused(exported, tmp_path):
    folder = _copy(exported, tmp_path)
    with open(folder / "openvino" / "model.bin", "r+b") as handle:
        first = handle.read(1)
        handle.seek(0)
        handle.write(bytes([first[0] ^ 0xFF]))
    with pytest.raises(EngineError, match="does not match the sha256"):
        load_engine(folder, "openvino")
    with pytest.raises(EngineError, match="does not match the sha256"):
        load_engine(folder, "auto")


def test_ir_of_another_model_refused(exported, tmp_path):
    folder = _copy(exported, tmp_path)
    card = json.loads((folder / "model_card.json").read_text())
    card["openvino"]["converted_from"] = "0" * 64
    (folder / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(EngineError, match="converted from model"):
        load_engine(folder, "openvino")


def test_auto_picks_openvino_with_ir_and_tensorflow_without(exported, tiny_model_dir):
    if gpu_visible():
        pytest.skip("a GPU is visible: auto picks TensorFlow")
    assert load_engine(exported, "auto").name == "openvino"
    assert load_engine(tiny_model_dir, "auto").name == "tensorflow"


def test_gpu_hidden_by_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_visible() is False


def test_openvino_needs_an_ir(tiny_model_dir):
    with pytest.raises(EngineError, match="no fp32 OpenVINO IR"):
        load_engine(tiny_model_dir, "openvino")


def test_int8_needs_a_gated_int8_ir(exported, tiny_model_dir):
    with pytest.raises(EngineError, match="no int8 OpenVINO IR"):
        load_engine(exported, "auto", "int8")
    with pytest.raises(EngineError, match="only on --engine openvino"):
        load_engine(tiny_model_dir, "tensorflow", "int8")
    with pytest.raises(EngineError, match="--engine must be one of"):
        load_engine(exported, "onnx")


def test_bf16_runs_close_to_fp32(exported, images):
    import openvino as ov

    engine = load_engine(exported, "openvino", "bf16")
    supported = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert engine.precision == ("bf16" if supported else "fp32")
    fp32 = load_engine(exported, "openvino", "fp32").predict(images)
    assert float(np.abs(engine.predict(images) - fp32).max()) < 0.25


def test_openvino_path_never_imports_tensorflow(exported):
    code = (
        "import sys, numpy as np\n"
        "from medai.engines import load_engine\n"
        f"engine = load_engine({str(exported)!r}, 'auto', 'bf16', threads=1)\n"
        f"scores = engine.predict(np.zeros((3, {SIZE}, {SIZE}, 1), np.uint8))\n"
        "assert engine.name == 'openvino', engine.name\n"
        "assert scores.shape == (3, 1)\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_tensorflow_engine_equals_keras(tiny_model_dir, images):
    from medai.artifact import load_model_dir

    model = load_model_dir(tiny_model_dir).model
    expected = np.asarray(model(images, training=False), np.float32)
    engine = load_engine(tiny_model_dir, "tensorflow", threads=1)
    # Not bit-exact: the engine's traced graph may block fp32 sums differently from eager Keras.
    np.testing.assert_allclose(engine.predict(images), expected, atol=1e-5)


def test_compiled_model_is_cached_between_engines(exported, images, tmp_path, monkeypatch):
    """The second engine compiles from the cache the first wrote, and scores the same."""
    monkeypatch.setenv("MEDAI_OPENVINO_CACHE", str(tmp_path / "cache"))
    first = load_engine(exported, "openvino", "fp32").predict(images)
    blobs = sorted(path.name for path in (tmp_path / "cache").iterdir())
    assert blobs and any(name.endswith(".blob") for name in blobs)
    second = load_engine(exported, "openvino", "fp32").predict(images)
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == blobs
    np.testing.assert_array_equal(first, second)


def test_cache_can_be_turned_off_or_fail_softly(exported, images, tmp_path, monkeypatch, caplog):
    from medai.engines import openvino_cache_dir

    monkeypatch.setenv("MEDAI_OPENVINO_CACHE", "")
    assert openvino_cache_dir() is None
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("MEDAI_OPENVINO_CACHE", str(tmp_path / "file" / "cache"))
    assert openvino_cache_dir() is None
    assert "OpenVINO compile cache off: cannot create" in caplog.text
    assert load_engine(exported, "openvino", "fp32").predict(images[:2]).shape[0] == 2
