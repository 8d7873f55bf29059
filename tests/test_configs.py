"""Job configs from parsed flags, and their checks: every problem named at once."""

from __future__ import annotations

import argparse

import pytest

from medai.configs import config_from
from medai.export import ExportConfig, ExportError
from medai.score import ScoreConfig, ScoreError
from medai.train import TrainConfig, TrainError


def test_flags_become_a_frozen_config_field_by_field(tmp_path):
    flags = argparse.Namespace(
        model="m", images=["a", "b"], out=str(tmp_path), batch_size=8, command="score", func=None
    )
    config = config_from(ScoreConfig, flags)
    assert config == ScoreConfig(model="m", images=("a", "b"), out=str(tmp_path), batch_size=8)
    assert hash(config)  # a list became a tuple: the config stays hashable
    given = config_from(ScoreConfig, vars(flags), batch_size=4, progress=False)
    assert (given.batch_size, given.progress, given.engine) == (4, False, "auto")
    export = config_from(ExportConfig, argparse.Namespace(model_dir="d", int8=True, images=None))
    assert export == ExportConfig("d", int8=True)


def test_every_problem_is_named_in_one_error(tmp_path):
    (tmp_path / "file").write_text("x")
    config = TrainConfig(
        labels="l", images=(), out=str(tmp_path / "file"), epochs=0, batch_size=0, head="cnn"
    )
    assert len(config.problems()) == 5
    with pytest.raises(TrainError) as raised:
        config.check()
    text = str(raised.value)
    for flag in ("--epochs", "--batch-size", "--head", "--images", "--out"):
        assert flag in text
    with pytest.raises(ScoreError, match="--batch-size.*--limit"):
        ScoreConfig(model="m", images=("a",), out=str(tmp_path), batch_size=0, limit=0).check()
    with pytest.raises(ExportError, match="MODEL_DIR is required"):
        ExportConfig(" ").check()
