"""The report job: score Parquet files + labels -> metrics.json, PNG plots and report.html.

``medai score`` writes one row per image, finding and model (:mod:`medai.predictions`). The
report joins those rows to the label table by ``image_id`` (each finding to its own
``label_<Finding>`` column), keeps the chosen split (by default the images the model never
saw), and for every model and finding writes its ranking and calibration metrics (AUC, average
precision, Brier score, ECE, with bootstrap CIs for AUC and ECE), its operating points at the
model threshold and at the Youden-optimal threshold, its metrics per subgroup (sex, age band,
view, follow-up; flagged when the subgroup's AUC CI lies below the overall AUC), a failure
analysis (the most confident false positives and missed positives) and plots; models that
scored the same images are compared finding by finding (paired bootstrap and DeLong's test).
An image is called positive when ``score >= threshold`` in float32
(:func:`medai.card.is_positive`, the rule of Parquet's ``predicted`` column).

Nothing is dropped silently: per model and finding the rows are accounted for as
``n_rows = n_duplicates + n_outside_split + n_errors + n_unlabeled + n``, and every metric
that is undefined on the data is ``null`` with an entry in ``reasons``. All input problems
raise :class:`ReportError` before any output is written.

Modules, one per concern: :mod:`~medai.report.config` (options and flags),
:mod:`~medai.report.inputs` (reading and checking inputs), :mod:`~medai.report.accounting`
(rows per model and finding), :mod:`~medai.report.evaluation` (metrics per finding, model
comparison), :mod:`~medai.report.subgroups`, :mod:`~medai.report.examples` (example images and
failure analysis), :mod:`~medai.report.saliency` (Grad-CAM of the examples and the pointing
game, with ``--model MODEL_DIR``), :mod:`~medai.report.figures`, :mod:`~medai.report.render`
(the Jinja2 page) and :mod:`~medai.report.driver` (:func:`run_report`). The intended-use text is
the model card's (:data:`medai.card.INTENDED_USE`).
"""

from medai.card import INTENDED_USE
from medai.report.config import (
    SPLIT_HELP,
    SPLITS,
    ReportConfig,
    ReportError,
    add_report_arguments,
    build_report_parser,
    check_config,
    config_from_args,
)
from medai.report.driver import run_report
from medai.report.inputs import OPTIONAL_COLUMNS, REQUIRED_COLUMNS

__all__ = [
    "INTENDED_USE",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "SPLITS",
    "SPLIT_HELP",
    "ReportConfig",
    "ReportError",
    "add_report_arguments",
    "build_report_parser",
    "check_config",
    "config_from_args",
    "run_report",
]
