"""Training: it learns the phantoms, data parallel is real, failures recover, cards hold.

Also: unreadable inputs never reach training or validation, BatchNorm inference statistics
match the weights, and the card's threshold, AUC and calibration describe the saved model.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import PHANTOM_SIZE, TRAINED_EPOCHS
from processes import MarkedCommand

from medai.artifact import file_sha256, load_model_dir
from medai.labels import read_split_list
from medai.train import TrainConfig, TrainError, run_training


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
        "calibration",
    ):
        assert key in card, key
    assert "not for diagnosis" in card["intended_use"]
    assert [row["epoch"] for row in card["history"]] == list(range(1, epochs + 1))
    assert 0.0 <= card["threshold"] <= 1.0
    calibration = card["calibration"]
    assert calibration["fitted_on"] == "validation" and calibration["method"] in ("platt", "none")
    assert calibration["n"] == card["counts"]["val"]["images"]
    for key in ("a", "b", "val_ece_before", "val_ece_after", "val_brier_before", "val_brier_after"):
        assert isinstance(calibration[key], float), key
    # Validation saw exactly the images the card counts (no unreadable ones).
    assert all(row["val_images"] == card["counts"]["val"]["images"] for row in card["history"])
    from PIL import Image

    curves = Image.open(model_dir / "training_curves.png")  # accuracy, loss, AUC side by side
    assert curves.format == "PNG" and curves.size[0] > 2 * curves.size[1]
    assert json.loads((model_dir / "train_config.json").read_text())["epochs"] == epochs
    split = pd.read_csv(model_dir / "split.csv", dtype=str)
    assert list(split.columns) == ["image_id", "patient_id", "split", "label", "status", "source"]
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    test_ids = set(read_split_list(labels_dir / "test_list.txt"))
    assert not split.loc[split["split"].isin(["train", "val"]), "image_id"].isin(test_ids).any()
    for name in ("train", "val"):
        counted = card["counts"][name]
        assert counted["images"] + counted["unreadable"] <= int((split["split"] == name).sum())
    size = card["image_size"]
    scores = np.asarray(loaded.model(np.zeros((2, size, size, 1), np.uint8)))
    assert scores.shape == (2, 1) and np.all((scores >= 0) & (scores <= 1))
    return card


def test_every_finding_without_both_classes_is_named_at_once(phantom_archive, tmp_path, capsys):
    from medai.cli import main

    labels = phantom_archive / "Data_Entry_2017.csv"
    args = ["--labels", labels, "--images", phantom_archive, "--out", tmp_path / "m"]
    code = main(["train", *map(str, args), "--weights", "none", "--finding", "Mass,Edema,Hernia"])
    err = capsys.readouterr().err
    assert code == 2 and "need positive and negative images of every finding; 4 short" in err
    for finding in ("Edema", "Hernia"):
        for split in ("train", "val"):
            assert f"{finding} in {split}: 0 positive" in err
    assert "Mass in" not in err and not (tmp_path / "m").exists()


def test_few_positives_are_warned_of(caplog):
    from medai.train import FEW_POSITIVES, _require_both_classes

    split = pd.DataFrame(
        {
            "split": ["train"] * 40 + ["val"] * 12,
            "label_Mass": [1] * 20 + [0] * 20 + [1] * 2 + [0] * 10,
            "label_Nodule": [1] * FEW_POSITIVES + [0] * 30 + [1] * FEW_POSITIVES + [0] * 2,
        }
    )
    with caplog.at_level(logging.WARNING, logger="medai.train"):
        _require_both_classes(split, "readable ", warn=True)
    (record,) = caplog.records
    assert "few readable positive images (Mass in val: 2)" in record.getMessage()


def test_two_workers_learn_the_phantoms(trained_model, phantom_archive):
    model_dir, card = trained_model
    check_model_dir(model_dir, phantom_archive, epochs=TRAINED_EPOCHS)
    split = pd.read_csv(model_dir / "split.csv", dtype=str)
    for name in ("train", "val"):  # a clean archive: every labelled image used
        assert card["counts"][name]["images"] == int((split["split"] == name).sum())
        assert card["counts"][name]["unreadable"] == 0
    assert card["optimizer"]["workers"] == 2
    assert card["val_auc"] >= 0.9, card["history"]
    # medai train wrote the OpenVINO IR beside model.keras and measured it on validation.
    ir = card["openvino"]
    assert ir["converted_from"] == card["model_id"]
    assert (model_dir / ir["path"] / ir["fp32"]["xml"]).is_file()
    agreement = ir["fp32"]["agreement"]
    assert agreement["on"] == "validation split"
    assert agreement["images"] == card["counts"]["val"]["images"]
    # Youden thresholds sit exactly on a validation score, which a 1e-6 difference can flip.
    assert agreement["decision_agreement"] >= 0.95 and agreement["max_abs_diff"] < 1e-4
    best = max(row["val_auc"] for row in card["history"])
    assert card["history"][card["best_epoch"] - 1]["val_auc"] == best  # best kept
    # Platt scaling is monotone: the calibrated model ranks as the best epoch did.
    assert card["val_auc"] == pytest.approx(best, abs=1e-3)


def test_calibrated_card_of_the_trained_model(trained_model):
    _, card = trained_model
    calibration = card["calibration"]
    print(f"validation calibration: {calibration}, threshold {card['threshold']:.4f}")
    # Applied only when it lowers neither number; otherwise the card says why it was not.
    assert calibration["method"] == "platt" or "would raise" in calibration["reason"]
    assert calibration["val_ece_after"] <= calibration["val_ece_before"]
    assert calibration["val_brier_after"] <= calibration["val_brier_before"]
    assert 0.05 <= card["threshold"] <= 0.95
    # BatchNorm statistics re-estimated before each validation: validation accuracy at 0.5
    # follows the model instead of sticking at one class (it was 0.50 at every epoch).
    best = card["history"][card["best_epoch"] - 1]
    assert best["val_accuracy"] >= 0.75, card["history"]


@pytest.mark.slow  # 320 s on a 2-core AVX2 host: a second training
def test_one_worker_from_the_same_seed_is_comparable(trained_model, phantom_archive, tmp_path):
    _, two = trained_model
    one = run_training(
        TrainConfig(
            labels=str(phantom_archive / "Data_Entry_2017.csv"),
            images=(str(phantom_archive),),
            out=str(tmp_path / "one"),
            epochs=TRAINED_EPOCHS,
            batch_size=32,
            image_size=PHANTOM_SIZE,
            weights="none",
            num_workers=1,
            seed=0,
            export_openvino=False,  # the IR is checked on the 2-worker model
        )
    )
    print(f"val AUC: 1 worker {one['val_auc']:.4f}, 2 workers {two['val_auc']:.4f}")
    assert one["optimizer"]["workers"] == 1
    # Same global batch (1 x 32 vs 2 x 16): the two runs see the same data per step.
    assert one["val_auc"] >= 0.85 and abs(one["val_auc"] - two["val_auc"]) <= 0.1


@pytest.mark.slow  # 213 s on 2 cores: two 2-worker trainings
def test_the_same_seed_trains_the_same_model(ray_session, tmp_path):
    """Two trainings from one seed on a five-archive phantom set (archives read in parallel)
    end with the same weights, bit for bit: same machine, same worker count."""
    from medai.phantoms import PhantomSpec, write_phantom_archive

    archive = tmp_path / "phantoms"
    spec = PhantomSpec(n_patients=60, size=75, seed=1, images_per_archive=30)
    write_phantom_archive(archive, spec)
    assert len(list(archive.glob("images_*.tar.gz"))) >= 4
    weights, model_ids = [], []
    for run in range(2):
        card = run_training(
            TrainConfig(
                labels=str(archive / "Data_Entry_2017.csv"),
                images=(str(archive),),
                out=str(tmp_path / f"run{run}"),
                epochs=2,
                batch_size=8,
                image_size=75,
                weights="none",
                num_workers=2,
                seed=0,
                export_openvino=False,
            )
        )
        weights.append(load_model_dir(tmp_path / f"run{run}").model.get_weights())
        model_ids.append(card["model_id"])
        assert card["optimizer"]["workers"] == 2
    assert len(weights[0]) == len(weights[1])
    for first, second in zip(*weights, strict=True):
        np.testing.assert_array_equal(first, second)
    assert model_ids[0] == model_ids[1]  # so a rerun of the same training rescores nothing


@pytest.mark.slow  # 342 s on 2 cores (two trainings, a kill and two restarts)
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
        "--no-openvino",  # the IR is tested elsewhere; two exports would add a minute here
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
    # Each epoch's pass over the train and val datasets draws no Ray Data bars into the log.
    for line in ("Running Dataset train_", "Running Dataset val_", "execution of Dataset train_"):
        assert line not in resumed.stdout
    card4 = check_model_dir(out, phantom_archive, epochs=4)
    assert card4["history"][:3] == card["history"]


@pytest.mark.slow  # 154 s on a 2-core AVX2 host: a 2-worker training of its own
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
            export_openvino=False,
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


# --- unreadable inputs -------------------------------------------------------------------------

MESSY_SIZE = 75


def _messy_config(messy: dict, out: Path, **options) -> TrainConfig:
    return TrainConfig(
        labels=str(messy["labels"]),
        images=(str(messy["folder"]),),
        out=str(out),
        image_size=MESSY_SIZE,
        weights="none",
        batch_size=8,
        seed=0,
        **({"export_openvino": False} | options),
    )


def test_too_many_unreadable_images_stop_before_training(
    ray_session, messy_archive, tmp_path, caplog
):
    out = tmp_path / "model"
    config = _messy_config(messy_archive, out, epochs=1, num_workers=1)
    with (
        caplog.at_level(logging.WARNING, logger="medai.train"),
        pytest.raises(TrainError) as raised,
    ):
        run_training(config)
    message = str(raised.value)
    print(message)
    assert "3 of " in message and "unreadable" in message and "--max-unreadable" in message
    assert "images_001.tar.gz (3 unreadable)" in message  # the worst sources are named
    assert messy_archive["truncated"].name in message
    logged = caplog.text
    assert all(image_id in logged for image_id in messy_archive["corrupt"])
    assert f"broken archive {messy_archive['truncated']}" in logged
    assert not (out / "checkpoints").exists() and not (out / "model.keras").exists()


@pytest.mark.slow  # 104 s on a 2-core host shared with other runs; export alone: test_export
def test_a_messy_archive_trains_and_gets_its_ir(ray_session, messy_archive, tmp_path):
    """A truncated tarball plus corrupt PNGs, default --max-unreadable raised to let it train:
    the run writes the model and its OpenVINO IR (export reads as training did), and split.csv
    says exactly which images were trained and validated on."""
    out = tmp_path / "model"
    card = run_training(
        _messy_config(
            messy_archive, out, epochs=1, num_workers=1, max_unreadable=0.5, export_openvino=True
        )
    )
    agreement = card["openvino"]["fp32"]["agreement"]
    assert agreement["on"] == "validation split"
    assert agreement["images"] == card["counts"]["val"]["images"]
    assert sorted(p.name for p in (out / "openvino").iterdir()) == ["model.bin", "model.xml"]
    split = pd.read_csv(out / "split.csv", dtype={"image_id": str})
    status = dict(zip(split["image_id"], split["status"], strict=True))
    assert {status[i] for i in messy_archive["corrupt"]} == {"unreadable"}
    assert {status[i] for i in messy_archive["lost"]} == {"missing"}
    for name in ("train", "val"):
        rows = split[split["split"] == name]
        assert int((rows["status"] == "used").sum()) == card["counts"][name]["images"]
        assert int((rows["status"] == "unreadable").sum()) == card["counts"][name]["unreadable"]
    assert set(split.loc[split["split"] == "test", "status"]) == {"not read"}


@pytest.mark.slow  # 128 s on a 2-core AVX2 host: a bf16 training of its own
def test_messy_archive_trains_without_its_unreadable_images_bf16(
    ray_session, messy_archive, tmp_path
):
    """Corrupt members and a truncated tarball: excluded, counted per split, named; and with
    bf16 training the card's numbers are those of the saved fp32 model."""
    from medai.calibration import head_inputs_model
    from medai.images import decode_image
    from medai.metrics import roc_auc as safe_auc
    from medai.metrics import sensitivity_threshold, youden_threshold

    out = tmp_path / "model"
    card = run_training(
        _messy_config(
            messy_archive, out, epochs=1, num_workers=1, max_unreadable=0.1, precision="bf16"
        )
    )
    check_model_dir(out, messy_archive["folder"], epochs=1)
    split = pd.read_csv(out / "split.csv", dtype={"label": int, "image_id": str})
    split_of = dict(zip(split["image_id"], split["split"], strict=True))
    counts = card["counts"]
    for name in ("train", "val"):
        expected = sum(split_of[i] == name for i in messy_archive["corrupt"])
        assert counts[name]["unreadable"] == expected
    assert [b["source"] for b in counts["broken_archives"]] == [str(messy_archive["truncated"])]
    assert counts["missing"] == len(messy_archive["lost"])  # lost behind the fault
    # Nothing unreadable was trained or validated on.
    used = counts["train"]["images"] + counts["val"]["images"]
    labelled = int(split["split"].isin(["train", "val"]).sum())
    assert used == labelled - 3 - len(messy_archive["lost"])
    assert card["history"][0]["train_images"] <= counts["train"]["images"]
    assert card["history"][0]["val_images"] == counts["val"]["images"]

    # bf16: threshold, AUC and calibration are measured on the saved fp32 model.
    assert card["precision"] == "bf16"
    loaded = load_model_dir(out)
    val_ids = set(split.loc[split["split"] == "val", "image_id"])
    images, labels = [], []
    for archive in sorted(messy_archive["folder"].glob("images_*.tar.gz")):
        try:
            with tarfile.open(archive, "r|*") as tar:
                for member in tar:
                    name = Path(member.name).name
                    if member.isfile() and name in val_ids:
                        data = tar.extractfile(member).read()
                        try:
                            images.append(decode_image(data, MESSY_SIZE))
                        except ValueError:
                            continue
                        labels.append(int(split.loc[split["image_id"] == name, "label"].iloc[0]))
        except (tarfile.TarError, EOFError, OSError):
            pass
    x, y = np.stack(images), np.array(labels)
    assert len(y) == card["calibration"]["n"]
    scores = np.asarray(loaded.model.predict(x, batch_size=16, verbose=0), np.float64).ravel()
    # The card's scores came from the Ray worker in batches of 32 on its own threads; these
    # from batches of 16 here. fp32 kernels block sums by batch shape, so a score moves by
    # ~1e-6 (1.3e-6 seen on another host of this kind): within 1e-5. The AUC counts ranks, so
    # each positive-negative pair closer than that may flip and move it by 1 / (P * N).
    close = np.abs(scores[y == 1][:, None] - scores[y == 0][None, :]) < 1e-5
    flips = close.sum() / close.size
    assert card["val_auc"] == pytest.approx(safe_auc(y, scores), abs=flips + 1e-9)
    assert card["threshold"] == pytest.approx(youden_threshold(y, scores), abs=1e-5)
    assert card["threshold_sensitivity_90"] == pytest.approx(
        sensitivity_threshold(y, scores, 0.9), abs=1e-5
    )
    from medai.metrics import brier_score

    assert card["calibration"]["val_brier_after"] == pytest.approx(brier_score(y, scores), abs=1e-5)
    assert head_inputs_model(loaded.model).output.dtype == "float32"


def test_inventory_counts_unreadable_images_per_split():
    from medai.train import check_unreadable, take_inventory

    split = pd.DataFrame(
        {
            "image_id": ["a.png", "b.png", "c.png", "d.png", "t.png"],
            "patient_id": ["1", "2", "3", "4", "5"],
            "label": [1, 0, 1, 0, 1],
            "split": ["train", "train", "val", "val", "test"],
        }
    )
    seen = pd.DataFrame(
        {
            "image_id": ["a.png", "b.png", "c.png", "images_002.tar.gz"],
            "source": [
                "/x/images_001.tar.gz::images/a.png",
                "/x/images_001.tar.gz::images/b.png",
                "/y/c.png",
                "/x/images_002.tar.gz",
            ],
            "error": ["", "decode error: not a PNG", "", "read error: truncated archive"],
        }
    )
    inventory = take_inventory(seen, split)
    table = inventory.split.set_index("image_id")
    assert table["found"].to_dict() == {
        "a.png": True,
        "b.png": False,
        "c.png": True,
        "d.png": False,
        "t.png": True,
    }
    assert inventory.unreadable[["image_id", "split"]].values.tolist() == [["b.png", "train"]]
    assert inventory.broken[["source", "read"]].values.tolist() == [["/x/images_002.tar.gz", 0]]
    check_unreadable(inventory, max_unreadable=0.25)  # 1 of 4: at the limit, goes on
    with pytest.raises(TrainError, match=r"1 of 4 .*--max-unreadable 0\.2.*images_002\.tar\.gz"):
        check_unreadable(inventory, max_unreadable=0.2)


# --- the loop's parts ----------------------------------------------------------------------------


def test_best_epoch_by_auc_then_by_loss():
    from medai.train_loop import is_better

    best = {"val_auc": 1.0, "val_loss": 0.0082}
    assert is_better({"val_auc": 0.9, "val_loss": 0.5}, None)
    assert is_better({"val_auc": 1.0, "val_loss": 0.0029}, best)  # same AUC, surer
    assert not is_better({"val_auc": 1.0, "val_loss": 0.0214}, best)
    assert not is_better({"val_auc": 0.99, "val_loss": 0.0001}, best)  # AUC comes first
    assert is_better({"val_auc": 0.95, "val_loss": 0.3}, {"val_auc": 0.9, "val_loss": 0.1})
    # no validation AUC (one class only): only a measured loss can improve on the best
    assert not is_better({"val_auc": None, "val_loss": None}, {"val_auc": None, "val_loss": 0.2})
    assert is_better({"val_auc": None, "val_loss": 0.1}, {"val_auc": None, "val_loss": 0.2})


def test_youden_threshold_and_auc_use_unclipped_scores():
    from medai.train_loop import validation_summary

    # Scores above 1 - 1e-7 that a clip would merge into one value.
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.3, 1 - 1e-8, 1 - 1e-9, 1 - 1e-10])
    summary = validation_summary(labels, scores)
    assert summary["val_auc"] == 1.0
    assert summary["threshold"] == 1 - 1e-9
    assert np.isfinite(summary["val_loss"])


def test_batchnorm_reestimation_averages_the_batch_statistics():
    import keras
    import tensorflow as tf

    from medai.batchnorm import batchnorm_layers, make_bn_reestimation
    from medai.model import ModelSpec, build_model

    keras.utils.set_random_seed(0)
    model = build_model(ModelSpec(75, "gap", "none"))
    layers = batchnorm_layers(model)
    assert len(layers) == 94  # InceptionV3's BatchNorm layers, found inside the nested base
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (4, 75, 75, 1), dtype=np.uint8) for _ in range(3)]
    base = model.get_layer("inception_v3")
    to_base = keras.Model(model.inputs, model.get_layer("gray_to_rgb").output)
    probe = keras.Model(base.inputs, [layers[0].input, layers[-1].input])
    expected = {0: [], -1: []}
    for images in batches:  # training mode: every layer normalises with batch statistics
        first, last = probe(to_base([images]), training=True)
        for index, x in ((0, first), (-1, last)):
            x = np.asarray(x, np.float64)
            expected[index].append((x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))))
    reestimate = make_bn_reestimation(model, tf.distribute.get_strategy())
    assert reestimate(batches) == 3
    for index in (0, -1):
        mean = np.mean([m for m, _ in expected[index]], axis=0)
        variance = np.mean([v for _, v in expected[index]], axis=0)
        np.testing.assert_allclose(layers[index].moving_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            layers[index].moving_variance.numpy(), variance, rtol=1e-4, atol=1e-5
        )


def test_worker_sync_touches_only_batchnorm_statistics():
    from medai.batchnorm import batchnorm_layers, batchnorm_statistics
    from medai.model import ModelSpec, build_model

    model = build_model(ModelSpec(75, "gap", "none"))
    synced = {id(v) for v in batchnorm_statistics(model)}
    expected = {
        id(v)
        for layer in batchnorm_layers(model)
        for v in (layer.moving_mean, layer.moving_variance)
    }
    assert synced == expected
    others = [v for v in model.non_trainable_variables if id(v) not in synced]
    assert others, "the model has non-BatchNorm state (Dropout's seed) that must not be averaged"
    assert all("seed" in v.path for v in others), [v.path for v in others]


def test_each_rank_draws_its_own_augmentation():
    from medai.train_loop import augmenter_for

    images = np.random.default_rng(0).integers(0, 256, (2, 75, 75, 1)).astype(np.float32)
    rank0 = np.asarray(augmenter_for(0, 0)(images, training=True))
    rank1 = np.asarray(augmenter_for(0, 1)(images, training=True))
    again = np.asarray(augmenter_for(0, 0)(images, training=True))
    assert not np.allclose(rank0, rank1)
    np.testing.assert_array_equal(rank0, again)  # still reproducible per rank


def test_augmentation_keeps_the_grain_of_the_image():
    """One resample per image: a chain of Keras' random layers (four bilinear passes) left
    0.35 of the noise's standard deviation, so training saw smoother images than scoring does
    (medai.augment)."""
    from medai.augment import build_augmenter

    rng = np.random.default_rng(0)
    noise = (128 + 30 * rng.standard_normal((8, 128, 128, 1))).astype(np.float32)
    warped = np.asarray(build_augmenter(0)(noise, training=True))
    centre = warped[:, 40:88, 40:88, 0]
    assert not np.allclose(warped, noise)
    assert np.mean(centre.std(axis=(1, 2))) / 30 > 0.55
    assert abs(centre.mean() - 128) < 3  # a warp, not a change of brightness
    np.testing.assert_array_equal(build_augmenter(0)(noise, training=False), noise)


def test_every_epoch_shuffles_the_whole_training_set(ray_session):
    import ray

    from medai.train import _training_datasets
    from medai.train_loop import SHUFFLE_BYTES, shuffle_buffer_rows

    rows = [
        {"image_id": f"{i:04d}", "split": "train" if i % 5 else "val", "error": ""}
        for i in range(400)
    ]
    rows[7]["error"] = "decode error: not a PNG"
    dataset = ray.data.from_items(rows, override_num_blocks=20)
    datasets = _training_datasets(dataset, seed=0)
    assert "0007" not in {r["image_id"] for r in datasets["train"].iter_rows()}
    orders = [[r["image_id"] for r in datasets["train"].iter_rows()] for _ in range(2)]
    assert sorted(orders[0]) == sorted(orders[1]) and len(orders[0]) == 319
    assert orders[0] != orders[1]  # a new block order every epoch (execution)
    for split in datasets.values():  # workers run these every epoch: no bars in their logs
        assert not split.context.enable_progress_bars
        assert not split.context.print_on_execution_start
    # A worker's buffer holds its whole shard, up to the memory cap.
    assert shuffle_buffer_rows(300, 2, 96, 16) == 150
    assert shuffle_buffer_rows(80_000, 2, 256, 16) == SHUFFLE_BYTES // (256 * 256)


# --- several findings ----------------------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_learn_every_finding_of_multi_finding_phantoms(
    multi_trained_model, multi_phantom_archive
):
    from conftest import MULTI_FINDINGS

    from medai.artifact import card_findings
    from medai.splits import check_split

    model_dir, card = multi_trained_model
    findings = list(MULTI_FINDINGS)
    assert card_findings(card) == findings == card["findings"]
    per_finding = card["per_finding"]
    aucs = {f: per_finding[f]["val_auc"] for f in findings}
    print(f"per-finding calibrated validation AUC: {aucs}, mean {card['val_auc']:.4f}")
    assert all(auc >= 0.85 for auc in aucs.values()), card["history"]
    assert card["val_auc"] == pytest.approx(np.mean(list(aucs.values())))
    # Old readers still run: the top-level keys describe the first finding.
    assert card["finding"] == findings[0]
    assert card["threshold"] == per_finding[findings[0]]["threshold"]
    assert card["calibration"] == per_finding[findings[0]]["calibration"]
    assert card["optimizer"]["workers"] == 2
    split = pd.read_csv(model_dir / "split.csv", dtype={"image_id": str, "patient_id": str})
    check_split(split, read_split_list(multi_phantom_archive / "test_list.txt"))
    assert split.groupby("patient_id")["split"].nunique().max() == 1  # no patient in two splits
    for finding in findings:
        entry = per_finding[finding]
        counted = entry["counts"]
        for name in ("train", "val"):
            column = split.loc[split["split"] == name, f"label_{finding}"]
            assert counted[name]["positives"] == int((column == 1).sum()) > 0
            assert counted[name]["negatives"] == int((column == 0).sum()) > 0
        assert entry["calibration"]["n"] == counted["val"]["images"]
        assert entry["calibration"]["val_ece_after"] <= entry["calibration"]["val_ece_before"]
        assert 0.0 <= entry["threshold"] <= 1.0
        assert 0.0 <= entry["threshold_sensitivity_90"] <= 1.0
        weights = entry["class_weights"]
        n, positives = counted["train"]["images"], counted["train"]["positives"]
        assert weights["1"] == pytest.approx(n / (2 * positives))
    # History: the mean and every finding, per epoch; the best epoch is the best mean.
    for row in card["history"]:
        per = row["val_auc_per_finding"]
        assert set(per) == set(findings)
        assert row["val_auc"] == pytest.approx(np.mean(list(per.values())))
        assert set(row["auc_per_finding"]) == set(findings)
    best = max(row["val_auc"] for row in card["history"])
    assert card["history"][card["best_epoch"] - 1]["val_auc"] == best
    # The saved model has one calibrated output per finding, as the card measured them.
    loaded = load_model_dir(model_dir)
    size = card["image_size"]
    scores = np.asarray(loaded.model(np.zeros((2, size, size, 1), np.uint8)))
    assert scores.shape == (2, len(findings))
    from PIL import Image

    curves = Image.open(model_dir / "training_curves.png")  # accuracy, loss, AUC side by side
    assert curves.format == "PNG" and curves.size[0] > 2 * curves.size[1]
    # The OpenVINO IR has every output and agrees on the validation split, per finding.
    agreement = card["openvino"]["fp32"]["agreement"]
    assert agreement["on"] == "validation split" and agreement["max_abs_diff"] < 1e-4
    # Youden thresholds sit exactly on a validation score, which a 1e-6 difference can flip.
    assert agreement["decision_agreement"] >= 0.95
    assert len(agreement["auc_change_per_finding"]) == len(findings)


def test_masked_loss_ignores_labels_not_evaluated():
    """A -1 label adds nothing to the loss or the statistics of its finding."""
    import keras
    import tensorflow as tf

    from medai.model import ModelSpec, build_model
    from medai.train_loop import make_replica_step

    keras.utils.set_random_seed(0)
    # No dropout: a training-mode forward pass is deterministic, so the scores can be recomputed.
    model = build_model(ModelSpec(75, "gap", "none", dropout=0.0, n_outputs=2))
    optimizer = keras.optimizers.SGD(0.0)  # no update: the statistics describe this model
    optimizer.build(model.trainable_variables)
    step = tf.function(make_replica_step(model, optimizer, lambda x, training: x, 4))
    images = np.random.default_rng(0).integers(0, 256, (4, 75, 75, 1), dtype=np.uint8)
    labels = np.array([[1, 0], [0, -1], [1, -1], [0, 1]], np.float32)
    weights = np.where(labels >= 0, 1.0, 0.0).astype(np.float32)
    stats = np.asarray(step(images, labels, weights), np.float64)
    scores = np.clip(np.asarray(model(images, training=True), np.float64), 1e-7, 1 - 1e-7)
    evaluated = labels >= 0
    y, p = labels[evaluated], scores[evaluated]
    expected = -np.sum(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert stats[0] == pytest.approx(expected, rel=1e-4)
    assert stats[2] == 6 and stats[3] == 4  # evaluated labels, images
    # Per finding: its positives' and negatives' histograms hold exactly its evaluated labels.
    bins = (len(stats) - 4) // 4
    counts = stats[4:].reshape(2, 2, bins).sum(axis=2)
    np.testing.assert_array_equal(counts, [[2, 2], [1, 1]])


def test_a_failed_openvino_export_fails_the_run(tiny_model_dir, tmp_path):
    """An export that fails (here: model.keras no longer matches its card) is a TrainError."""
    import shutil

    from medai.artifact import CARD_FILE
    from medai.train import _export_ir

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    card = json.loads((model_dir / CARD_FILE).read_text())
    (model_dir / CARD_FILE).write_text(json.dumps({**card, "model_id": "0" * 64}))
    with pytest.raises(TrainError, match="OpenVINO export failed.*does not match model_id"):
        _export_ir(model_dir)
    assert not (model_dir / "openvino").exists()
