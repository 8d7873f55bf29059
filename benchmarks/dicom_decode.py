"""DICOM decoding cost: per transfer syntax against PNG, and a whole ``medai score`` of a DICOM
folder against its PNG twins.

(a) Decode: the same phantom pixels (``--source`` px square, 8-bit and 12-bit) are written as
    a PNG and as a DICOM file in every transfer syntax medai reads (``tests/dicom_kit.py``:
    pydicom's encoders and dcmtk's ``dcmcjpeg``), and :func:`medai.images.decode_image` turns
    each into the model's ``--image-size`` input on one thread: the median of ``--repeat``
    decodes, in ms per image, with the ratio to the PNG of the same pixels.
(b) Whole scoring: ``--images`` phantoms as a folder of DICOM files (cycling through the
    syntaxes of (a) that hospitals' CR/DX archives hold, lossless and lossy) and as a folder
    of their PNG twins, each scored by :func:`medai.score.run_scoring` with the same untrained
    model on a local Ray started once. Each folder is scored ``--rounds`` times, alternating,
    each into a fresh output folder; the table gives each run's ``ScoreSummary.seconds`` and
    the ratio of the medians (issue 25's target: at most 1.5).

Run: ``PYTHONPATH=. python benchmarks/dicom_decode.py`` (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import dicom_kit as kit  # noqa: E402  (the tests' DICOM builder: one encoder for both)

# What CR/DX archives hold: uncompressed, JPEG Lossless SV1, JPEG 2000, JPEG-LS, RLE, and
# lossy JPEG / JPEG 2000 from some PACS exports.
SCORE_SYNTAXES = ("explicit", "jpeg-sv1", "j2k", "jpegls", "rle", "jpeg-baseline", "j2k-lossy")


def _median_ms(data: bytes, size: int, repeat: int) -> float:
    from medai.images import decode_image

    decode_image(data, size)  # warm: imports and codec initialisation
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        decode_image(data, size)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def decode_table(source: int, size: int, repeat: int) -> list[tuple[str, int, float, float]]:
    """``(syntax, bits, ms, ratio to PNG)`` for every syntax at 8 and 12 bits."""
    rows = []
    for bits in (8, 12):
        pixels = kit.phantom_pixels(source, seed=bits, bits=bits)
        png = _median_ms(kit.png_bytes(pixels), size, repeat)
        rows.append(("PNG", bits, png, 1.0))
        ds = kit.dataset(pixels, bits_stored=bits)
        for syntax in kit.SYNTAXES:
            if syntax in ("jpeg-baseline", "jpeg-extended") and bits > 8:
                continue  # 8-bit processes; 12-bit extended has no MIT/BSD decoder
            ms = _median_ms(kit.to_bytes(ds, syntax), size, repeat)
            rows.append((syntax, bits, ms, ms / png))
    return rows


def _model(folder: Path, size: int) -> Path:
    import keras

    from medai.artifact import save_model_dir
    from medai.model import ModelSpec, build_model

    keras.utils.set_random_seed(0)
    fields = {"finding": "Mass", "image_size": size, "head": "gap", "weights": "none"}
    save_model_dir(build_model(ModelSpec(size, "gap", "none")), folder, fields | {"threshold": 0.5})
    return folder


def _folders(root: Path, count: int, source: int) -> tuple[Path, Path]:
    dicoms, pngs = {}, {}
    for index in range(count):
        pixels = kit.phantom_pixels(source, seed=100 + index)
        syntax = SCORE_SYNTAXES[index % len(SCORE_SYNTAXES)]
        dicoms[f"{index:04d}.dcm"] = kit.to_bytes(kit.dataset(pixels), syntax)
        pngs[f"{index:04d}.png"] = kit.png_bytes(pixels)
    kit.write_dicoms(root / "dicom", dicoms)
    kit.write_dicoms(root / "png", pngs)
    return root / "dicom", root / "png"


def score_ratio(root: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds of each ``run_scoring`` of the DICOM and the PNG folder, alternating."""
    from medai.runtime import init_ray
    from medai.score import ScoreConfig, run_scoring

    model = _model(root / "model", args.image_size)
    folders = dict(zip(("DICOM", "PNG"), _folders(root, args.images, args.source), strict=True))
    init_ray()
    seconds: dict[str, list[float]] = {"DICOM": [], "PNG": []}
    for round_ in range(args.rounds):
        order = ("PNG", "DICOM") if round_ % 2 else ("DICOM", "PNG")
        for name in order:
            out = root / f"out-{name}-{round_}"
            config = ScoreConfig(str(model), (str(folders[name]),), str(out), progress=False)
            summary = run_scoring(config)
            assert summary.scored == args.images and not summary.errors, summary.line()
            seconds[name].append(summary.seconds)
    return seconds


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=int, default=1024, help="phantom px (default 1024)")
    parser.add_argument("--image-size", type=int, default=256, help="model input (default 256)")
    parser.add_argument("--repeat", type=int, default=15, help="decodes per syntax (default 15)")
    parser.add_argument("--images", type=int, default=56, help="images per folder (default 56)")
    parser.add_argument("--rounds", type=int, default=2, help="scorings per folder (default 2)")
    parser.add_argument("--no-score", action="store_true", help="decode table only")
    parser.add_argument("--no-decode", action="store_true", help="whole scoring only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if not args.no_decode:
        print(f"(a) decode_image, {args.source} px -> {args.image_size} px, one thread, median ms")
        print(f"{'syntax':<15}{'bits':>5}{'ms/image':>10}{'x PNG':>8}")
        for syntax, bits, ms, ratio in decode_table(args.source, args.image_size, args.repeat):
            print(f"{syntax:<15}{bits:>5}{ms:>10.1f}{ratio:>8.2f}", flush=True)
    if args.no_score:
        return 0
    with tempfile.TemporaryDirectory() as folder:
        seconds = score_ratio(Path(folder), args)
    print(
        f"\n(b) medai score, {args.images} images of {args.source} px, {args.image_size} px model"
    )
    for name, runs in seconds.items():
        print(f"{name:<6} " + ", ".join(f"{s:.1f} s" for s in runs))
    ratio = np.median(seconds["DICOM"]) / np.median(seconds["PNG"])
    print(f"DICOM / PNG (medians): {ratio:.2f} (target <= 1.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
