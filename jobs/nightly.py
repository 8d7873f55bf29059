"""Ray job entry point: medai nightly.

Nightly incremental rescoring into a store, with a run ledger and a report refresh.
Takes the same arguments as `medai nightly` (see `python jobs/nightly.py --help`).

Example::

    ray job submit --working-dir . -- python jobs/nightly.py \
        --images /data/nih --model /data/models/mass \
        --store /data/store --labels Data_Entry_2017.csv

or, with the token handling done for you, `medai submit nightly --address http://HEAD:8265 -- ...`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run `medai nightly` with these arguments; returns the exit status."""
    from medai.cli import main as medai_main

    return medai_main(["nightly", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
