"""Ray job entry point: medai train.

Fine-tune InceptionV3 with Ray Train (MultiWorkerMirroredStrategy) and write a model directory.
Takes the same arguments as `medai train` (see `python jobs/train.py --help`).

Example::

    ray job submit --working-dir . -- python jobs/train.py \
        --labels Data_Entry_2017.csv --images /data/nih \
        --finding Mass --out /data/models/mass

or, with the token handling done for you, `medai submit train --address http://HEAD:8265 -- ...`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run `medai train` with these arguments; returns the exit status."""
    from medai.cli import main as medai_main

    return medai_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
