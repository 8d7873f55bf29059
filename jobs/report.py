"""Ray job entry point: medai report.

Build metrics.json, plots and a self-contained report.html from predictions and labels.
Takes the same arguments as `medai report` (see `python jobs/report.py --help`).

Example::

    ray job submit --working-dir . -- python jobs/report.py --predictions /data/predictions \
        --labels Data_Entry_2017.csv --out /data/report

or, with the token handling done for you, `medai submit report --address http://HEAD:8265 -- ...`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run `medai report` with these arguments; returns the exit status."""
    from medai.cli import main as medai_main

    return medai_main(["report", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
