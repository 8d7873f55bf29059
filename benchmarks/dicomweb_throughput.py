"""Scoring from a loopback Orthanc (DICOMweb) against scoring the same DICOM files on disk.

Writes ``--images`` phantom chest radiographs as part-10 files (16-bit, ``--size`` px, named by
SOP Instance UID), stores the same files in a real Orthanc started here on a free loopback port
(``tests/pacs_kit.py``: authentication on, storage in a temporary folder), builds one untrained
model (throughput does not depend on the weights), then runs ``medai score`` once on the folder
and once on ``dicomweb+http://127.0.0.1:PORT/dicom-web`` (``--max-requests`` in flight), each
into a fresh output folder, and prints images/s of both (``ScoreSummary``: images scored or
failed per second of wall time, Ray's start excluded since it is started before either) and
their ratio. Both runs decode with ``medai.images.decode_image``: the numbers mean something
only where it decodes DICOM (the DICOM decoder of issue 25); rows that failed are counted and
printed so that a run without it is visibly void.

    .venv/bin/python benchmarks/dicomweb_throughput.py --images 300
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the Orthanc kit the tests use (not a package)


def _model(folder: Path, size: int) -> Path:
    import keras

    from medai.artifact import save_model_dir
    from medai.model import ModelSpec, build_model

    keras.utils.set_random_seed(0)
    spec = {"finding": "Mass", "image_size": size, "head": "gap", "weights": "none"}
    save_model_dir(build_model(ModelSpec(size, "gap", "none")), folder, spec | {"threshold": 0.5})
    return folder


def _files(folder: Path, count: int, size: int) -> list[bytes]:
    import pydicom
    from pacs_kit import chest_dicom

    folder.mkdir(parents=True)
    files = []
    for seed in range(count):
        data = chest_dicom(seed, size=size, bits=16, lesion=seed % 2 == 0)
        uid = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID
        (folder / f"{uid}.dcm").write_bytes(data)
        files.append(data)
    return files


def _score(model: Path, images: str, out: Path, max_requests: int):
    from medai.pacs_data import PacsOptions
    from medai.score import ScoreConfig, run_scoring

    config = ScoreConfig(
        model=str(model),
        images=(images,),
        out=str(out),
        progress=False,
        pacs=PacsOptions(max_requests=max_requests),
    )
    return run_scoring(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="pixels of the stored images")
    parser.add_argument("--model-size", type=int, default=128)
    parser.add_argument("--max-requests", type=int, default=4)
    args = parser.parse_args(argv)

    from pacs_kit import orthanc_missing, start_orthanc, upload

    from medai.runtime import init_ray

    if reason := orthanc_missing():
        print(f"skipped: {reason}")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = _model(root / "model", args.model_size)
        files = _files(root / "files", args.images, args.size)
        server = start_orthanc(root / "orthanc")
        try:
            started = time.perf_counter()
            upload(server, files)
            print(
                f"stored {len(files)} instances in Orthanc in {time.perf_counter() - started:.1f} s"
            )
            init_ray()
            disk = _score(model, str(root / "files"), root / "out-files", args.max_requests)
            pacs = _score(model, server.dicomweb, root / "out-pacs", args.max_requests)
        finally:
            server.stop()
    for name, summary in (("files on disk", disk), ("DICOMweb (loopback Orthanc)", pacs)):
        print(
            f"{name:28s} {summary.images_per_second:7.1f} images/s  "
            f"({summary.scored} scored, {summary.errors} errors, {summary.seconds:.1f} s)"
        )
    if disk.images_per_second:
        print(f"DICOMweb / files: {pacs.images_per_second / disk.images_per_second:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
