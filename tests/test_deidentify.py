"""``medai report --deidentify``: keyed pseudonyms in the report's inputs, and its flag rules."""

from __future__ import annotations

import pandas as pd
import pytest

from medai.pseudonyms import pseudonym
from medai.report.config import ReportConfig, ReportError, check_config
from medai.report.deidentify import PSEUDONYM_CHARS, deidentify_inputs
from medai.report.inputs import Inputs, Split

KEY = b"0123456789abcdef0123456789abcdef"


def test_every_id_and_source_becomes_the_same_keyed_pseudonym_everywhere():
    predictions = pd.DataFrame(
        {
            "image_id": ["1.2.3", "1.2.4"],
            "source": ["/pacs/Doe^Jane/1.dcm", "/pacs/Doe^Jane/2.dcm"],
            "study_id": ["9.8", None],
            "score": [0.1, 0.9],
        }
    )
    labels = pd.DataFrame({"image_id": ["1.2.3", "1.2.4"], "patient_id": ["MRN1", "MRN1"]})
    inputs = Inputs((), predictions, labels, Split("test", frozenset({"1.2.3"})), {}, ("Mass",))
    masked = deidentify_inputs(inputs, KEY)
    expected = "img-" + pseudonym("1.2.3", KEY)[:PSEUDONYM_CHARS]
    assert masked.predictions["image_id"][0] == masked.labels["image_id"][0] == expected
    assert masked.split.ids == frozenset({expected})
    text = masked.predictions.to_csv() + masked.labels.to_csv()
    assert not [v for v in ("1.2.3", "1.2.4", "Doe^Jane", "9.8", "MRN1") if v in text]
    assert masked.predictions["study_id"].isna()[1]  # a null stays null
    assert masked.predictions["score"].tolist() == [0.1, 0.9]
    assert inputs.predictions["image_id"][0] == "1.2.3"  # the caller's frame is untouched


def test_deidentify_needs_no_images():
    config = ReportConfig(predictions="p", labels="l", out="o", deidentify=True)
    with pytest.raises(ReportError, match="--deidentify needs --no-images"):
        check_config(config)
    check_config(ReportConfig(predictions="p", labels="l", out="o", deidentify=True, images=False))
