"""Training: it learns the phantoms, data parallel is real, failures recover, cards hold."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import PHANTOM_SIZE
from processes import MarkedCommand

from medai.artifact import file_sha256, load_model_dir
from medai.labels import read_split_list
from medai.train import TrainConfig, run_training


def train_argv(archive: Path, out: Path, *flags: str) -> list[str]:
    """``medai train`` arguments for a phantom archive in the NIH layout."""
    labels = str(archive / "Data_Entry_2017.csv")
    return ["train", "--labels", labels, "--images", str(archive), "--out", str(out), *flags]


def check_model_dir(model_dir: Path, labels_dir: Path, epochs: int) -> dict:
    """Everything the model directory promises, checked against the data it came from."""
    loaded = load_model_dir(model_dir)
    card = loaded.card
    assert card["model_id"] == file_sha256(model_dir / "model.keras")
    for key in (
        "finding",
        "negatives",
        "image_size",
        "preprocessing",
        "head",
        "weights",
        "threshold",
        "threshold_sensitivity_90",
        "val_auc",
        "history",
        "counts",
        "package_versions",
        "created_at",
        "intended_use",
        "class_weights",
    ):
        assert key in card, key
    assert "not for diagnosis" in card["intended_use"]
    assert [row["epoch"] for row in card["history"]] == list(range(1, epochs + 1))
    assert 0.0 <= card["threshold"] <= 1.0
    assert (model_dir / "training_curves.png").stat().st_size > 1000
    assert json.loads((model_dir / "train_config.json").read_text())["epochs"] == epochs
    split = pd.read_csv(model_dir / "split.csv", dtype=str)
    assert list(split.columns) == ["image_id", "patient_id", "split", "label"]
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    test_ids = set(read_split_list(labels_dir / "test_list.txt"))
    assert not split.loc[split["split"].isin(["train", "val"]), "image_id"].isin(test_ids).any()
    for name in ("train", "val"):
        assert card["counts"][name]["images"] == int((split["split"] == name).sum())
    size = card["image_size"]
    scores = np.asarray(loaded.model(np.zeros((2, size, size, 1), np.uint8)))
    assert scores.shape == (2, 1) and np.all((scores >= 0) & (scores <= 1))
    return card


def test_two_workers_learn_the_phantoms(trained_model, phantom_archive):
    model_dir, card = trained_model
    check_model_dir(model_dir, phantom_archive, epochs=4)
    assert card["optimizer"]["workers"] == 2
    assert card["val_auc"] >= 0.9, card["history"]
    assert card["val_auc"] == max(row["val_auc"] for row in card["history"])  # best kept


def test_one_worker_from_the_same_seed_is_comparable(trained_model, phantom_archive, tmp_path):
    _, two = trained_model
    one = run_training(
        TrainConfig(
            labels=str(phantom_archive / "Data_Entry_2017.csv"),
            images=(str(phantom_archive),),
            out=str(tmp_path / "one"),
            epochs=4,
            batch_size=32,
            image_size=PHANTOM_SIZE,
            weights="none",
            num_workers=1,
            seed=0,
        )
    )
    print(f"val AUC: 1 worker {one['val_auc']:.4f}, 2 workers {two['val_auc']:.4f}")
    assert one["optimizer"]["workers"] == 1
    # Same global batch (1 x 32 vs 2 x 16): the two runs see the same data per step.
    assert one["val_auc"] >= 0.85 and abs(one["val_auc"] - two["val_auc"]) <= 0.1


def test_killed_worker_restarts_from_checkpoint_then_resume(phantom_archive, tmp_path):
    out = tmp_path / "model"
    args = [
        "train",
        "--labels",
        str(phantom_archive / "Data_Entry_2017.csv"),
        "--images",
        str(phantom_archive),
        "--out",
        str(out),
        "--image-size",
        "96",
        "--weights",
        "none",
        "--num-workers",
        "2",
        "--batch-size",
        "16",
    ]
    command = MarkedCommand([*args, "--epochs", "3"])
    process = command.start(capture=True)
    killed = None
    deadline = time.time() + 400
    while time.time() < deadline and process.poll() is None and killed is None:
        # Kill only once the controller has registered a checkpoint (its snapshot file).
        if list((out / "checkpoints").glob("*/checkpoint_manager_snapshot.json")):
            workers = command.pids(b"RayTrainWorker")
            if workers:
                killed = workers[-1]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    output, _ = process.communicate(timeout=600)
    assert killed is not None, "no checkpoint/worker to kill:\n" + output[-3000:]
    assert process.returncode == 0, output[-5000:]
    assert "resumed from checkpoint" in output
    card = check_model_dir(out, phantom_archive, epochs=3)
    # --resume: continue from the last checkpoint for one more epoch only.
    resumed = MarkedCommand([*args, "--epochs", "4", "--resume"]).run()
    assert resumed.returncode == 0, resumed.stdout[-5000:]
    assert "resumed from checkpoint after epoch 3" in resumed.stdout
    assert resumed.stdout.count("epoch 4/4") >= 1 and "epoch 1/4" not in resumed.stdout
    card4 = check_model_dir(out, phantom_archive, epochs=4)
    assert card4["history"][:3] == card["history"]


def test_one_epoch_on_the_real_sample(ray_session, sample_dir, tmp_path):
    card = run_training(
        TrainConfig(
            labels=str(sample_dir / "Data_Entry_2017.csv"),
            images=(str(sample_dir),),
            out=str(tmp_path / "real"),
            epochs=1,
            image_size=96,
            weights="none",
            num_workers=2,
        )
    )
    check_model_dir(tmp_path / "real", sample_dir, epochs=1)
    assert card["counts"]["train"]["images"] + card["counts"]["val"]["images"] == 101
    assert card["counts"]["missing"] == 0


def test_imagenet_unavailable_stops_before_work(tmp_path, phantom_archive):
    from medai.cli import main

    if (
        Path.home()
        / ".keras"
        / "models"
        / "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ).exists():
        pytest.skip("ImageNet weights are cached on this machine; the offline error cannot occur")
    code = main(train_argv(phantom_archive, tmp_path / "m", "--weights", "imagenet"))
    assert code == 2
    assert not (tmp_path / "m").exists()  # nothing started, nothing written


def test_local_weights_file_is_loaded(tmp_path):
    import keras

    from medai.model import ModelSpec, build_model

    base = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(75, 75, 3))
    path = tmp_path / "inception_notop.weights.h5"
    base.save_weights(path)
    model = build_model(ModelSpec(75, "gap", str(path)))
    loaded = model.get_layer("inception_v3").get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(loaded, base.get_weights(), strict=True))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--epochs", "0"], "--epochs"),
        (["--image-size", "50"], "--image-size"),
        (["--finding", "Tumour"], "valid NIH findings"),
        (["--weights", "/no/such/file.h5"], "no such weights file"),
    ],
)
def test_bad_flags_stop_before_work(tmp_path, phantom_archive, capsys, flags, message):
    from medai.cli import main

    code = main(train_argv(phantom_archive, tmp_path / "m", *flags))
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_flatten_head_is_the_larger_original_design():
    from medai.model import ModelSpec, build_model

    gap = build_model(ModelSpec(256, "gap", "none")).count_params()
    flatten = build_model(ModelSpec(256, "flatten", "none")).count_params()
    print(f"parameters at 256 px: gap {gap:,}, flatten {flatten:,}")
    assert flatten > 3 * gap
