"""The model alone, per engine and precision: images per second and OpenVINO start-up, measured.

Builds a random-weight model directory (random weights run as fast as trained ones), exports
its OpenVINO IR with ``medai.export``, and times ``predict`` on the same random ``uint8``
batches with TensorFlow fp32 and OpenVINO fp32, bf16 and int8 (int8 quantized here with NNCF
on random calibration images: a speed measurement only, no gate). It also compares
OpenVINO's two ways of running a batch: the latency hint with one synchronous request (what
``medai.engines`` uses) and the throughput hint with an ``AsyncInferQueue`` over sub-batches.
OpenVINO's start-up (import, IR check and compile, first batch) is timed in a fresh process
that never imports TensorFlow::

    .venv/bin/python benchmarks/openvino_probe.py --size 256 --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine_info import machine  # benchmarks/ is on sys.path when run as a script


def _rate(predict, batch: np.ndarray, repeats: int) -> float:
    predict(batch)  # warm-up: first-inference costs are measured separately
    started = time.perf_counter()
    for _ in range(repeats):
        predict(batch)
    return repeats * len(batch) / (time.perf_counter() - started)


def _async_predict(compiled, sub_batch: int):
    """Throughput hint: sub-batches in flight on an AsyncInferQueue, results in order."""
    import openvino as ov

    queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

    def predict(images: np.ndarray) -> np.ndarray:
        out = np.empty((len(images), 1), np.float32)

        def done(request, start):
            out[start : start + sub_batch] = request.get_output_tensor(0).data

        queue.set_callback(done)
        for start in range(0, len(images), sub_batch):
            queue.start_async({0: images[start : start + sub_batch]}, userdata=start)
        queue.wait_all()
        return out

    return predict


def _startup(model_dir: Path, precision: str, batch: np.ndarray) -> dict:
    """OpenVINO start-up in a fresh process: import, load_engine, first predict."""
    code = (
        "import json, sys, time\n"
        "t0 = time.perf_counter()\n"
        "import numpy as np\n"
        "from medai.engines import load_engine\n"
        "t1 = time.perf_counter()\n"
        f"engine = load_engine({str(model_dir)!r}, 'openvino', {precision!r})\n"
        "t2 = time.perf_counter()\n"
        f"engine.predict(np.zeros({batch.shape}, np.uint8))\n"
        "t3 = time.perf_counter()\n"
        "print(json.dumps({'import_s': t1 - t0, 'load_s': t2 - t1, 'first_batch_s': t3 - t2,\n"
        "                  'tensorflow_imported': 'tensorflow' in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table. Returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calibration", type=int, default=64, help="int8 calibration images")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import nncf
    import openvino as ov

    from medai.artifact import save_model_dir
    from medai.engines import load_engine, read_ir
    from medai.export import export_openvino
    from medai.model import ModelSpec, build_model

    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (args.batch, args.size, args.size, 1), dtype=np.uint8)
    rows = []
    with tempfile.TemporaryDirectory(prefix="medai-ov-probe-") as tmp:
        model_dir = Path(tmp) / "model"
        keras.utils.set_random_seed(0)
        card = {"finding": "Mass", "image_size": args.size, "head": "gap", "weights": "none"}
        model = build_model(ModelSpec(args.size, "gap", "none"))
        save_model_dir(model, model_dir, {**card, "threshold": 0.5})
        started = time.perf_counter()
        export_openvino(model_dir)
        export_seconds = time.perf_counter() - started
        for engine, precision in (
            ("tensorflow", "fp32"),
            ("openvino", "fp32"),
            ("openvino", "bf16"),
        ):
            loaded = load_engine(model_dir, engine, precision)
            rows.append(
                (f"{engine} {loaded.precision}", _rate(loaded.predict, batch, args.repeats))
            )
        core = ov.Core()
        ir = read_ir(model_dir, "fp32")
        fp32 = core.read_model(str(ir.xml))
        throughput = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32"}
        compiled = core.compile_model(fp32, "CPU", throughput)
        one_sync = _rate(lambda x: compiled(x)[0], batch, args.repeats)
        rows.append(("openvino fp32 THROUGHPUT, one sync request", one_sync))
        queued = _rate(_async_predict(compiled, 8), batch, args.repeats)
        rows.append(("openvino fp32 THROUGHPUT, AsyncInferQueue of 8-image requests", queued))
        calibration = rng.integers(0, 256, (args.calibration, args.size, args.size, 1), np.uint8)
        dataset = nncf.Dataset([x[None] for x in calibration])
        quantized = nncf.quantize(fp32, dataset, subset_size=args.calibration)
        compiled = core.compile_model(
            quantized, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        )
        int8 = _rate(lambda x: compiled(x)[0], batch, args.repeats)
        rows.append(("openvino int8 (NNCF defaults)", int8))
        startup = {p: _startup(model_dir, p, batch) for p in ("fp32", "bf16")}
    print(f"Model alone: {args.size} px random-weight model, batch {args.batch}, random uint8")
    print(f"Machine: {machine()}; openvino {ov.get_version()}")
    print("| engine and precision | img/s |\n| --- | ---: |")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} |")
    print(f"\nexport (convert + agreement + save): {export_seconds:.1f} s")
    for precision, times in startup.items():
        print(
            f"OpenVINO {precision} start-up in a fresh process: import {times['import_s']:.2f} s, "
            f"load_engine {times['load_s']:.2f} s, first batch {times['first_batch_s']:.2f} s, "
            f"TensorFlow imported: {times['tensorflow_imported']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
