"""The model directory's identity: model_id is the sha256 of model.keras, and only the weights."""

from __future__ import annotations

import json
import time

import numpy as np
from conftest import save_untrained_model

from medai.artifact import load_model_dir


def _model_id(folder) -> str:
    return json.loads((folder / "model_card.json").read_text())["model_id"]


def _saved(folder, seed: int):
    import keras

    # Layer names count up within a process; a fresh session names them as a new process would.
    keras.backend.clear_session()
    return save_untrained_model(folder, seed=seed)


def test_the_same_weights_saved_twice_get_one_model_id(tmp_path):
    first = _saved(tmp_path / "first", seed=0)
    time.sleep(2.1)  # past the save time's resolution (seconds; two in a zip entry's stamp)
    again = _saved(tmp_path / "again", seed=0)
    other = _saved(tmp_path / "other", seed=1)
    assert _model_id(first) == _model_id(again) != _model_id(other)
    # The rewritten file still loads, and verifies, as the same network.
    one, two = load_model_dir(first).model, load_model_dir(again).model
    for a, b in zip(one.get_weights(), two.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
