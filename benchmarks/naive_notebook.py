"""The naive notebook way to score an image archive: one process, serial, no medai.

``tarfile`` streams each archive, PIL decodes (``convert('L')``, ``resize(256)``) and
``model.predict`` scores one batch at a time. :func:`naive_notebook` is measurement (a) of
``score_throughput.py``; run as a script it is the whole notebook (imports, model load, loop),
so that its wall time compares with the whole ``medai score`` command::

    .venv/bin/python benchmarks/naive_notebook.py MODEL_DIR ARCHIVE.tar.gz [...]

It prints ``images seconds`` of the loop alone (the caller times the whole process).
"""

from __future__ import annotations

import io
import sys
import tarfile
import time

import numpy as np

IMAGE_SIZE = 256


def naive_notebook(model, archives: list[str], batch_size: int) -> tuple[int, float]:
    """(a): tarfile + PIL + ``model.predict`` per batch, serially. Returns ``(images, s)``."""
    from PIL import Image

    started = time.perf_counter()
    images, batch = 0, []
    for archive in archives:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if not member.isfile() or not member.name.endswith(".png"):
                    continue
                image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("L")
                image = image.resize((IMAGE_SIZE, IMAGE_SIZE))
                batch.append(np.asarray(image, dtype=np.uint8)[..., None])
                if len(batch) == batch_size:
                    model.predict(np.stack(batch), verbose=0)
                    images, batch = images + len(batch), []
    if batch:
        model.predict(np.stack(batch), verbose=0)
        images += len(batch)
    return images, time.perf_counter() - started


def main(argv: list[str]) -> int:
    """Load ``MODEL_DIR/model.keras`` and score the archives; prints ``images seconds``."""
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    import keras

    model = keras.saving.load_model(f"{argv[0]}/model.keras", compile=False)
    images, seconds = naive_notebook(model, argv[1:], batch_size=32)
    print(images, f"{seconds:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
