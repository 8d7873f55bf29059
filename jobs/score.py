"""Ray job entry point: medai score.

Score image archives with Ray Data into Parquet (incremental: reruns skip scored images).
Takes the same arguments as `medai score` (see `python jobs/score.py --help`).

Example::

    ray job submit --working-dir . -- python jobs/score.py \
        --model /data/models/mass --images /data/nih \
        --out /data/predictions

or, with the token handling done for you, `medai submit score --address http://HEAD:8265 -- ...`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run `medai score` with these arguments; returns the exit status."""
    from medai.cli import main as medai_main

    return medai_main(["score", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
