"""Scoring multi-finding models and with the OpenVINO engine: one forward pass per image, one
row per image and finding, OpenVINO equal to TensorFlow in Parquet, clear engine errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from images_kit import broken_variants, png, write_files

from medai.engines import EngineError
from medai.score import ScoreConfig, prediction_files, run_scoring

SIZE = 75
FINDINGS = ["Mass", "Nodule", "Effusion"]
THRESHOLDS = [0.3, 0.5, 0.7]
KEY = ["model_id", "image_id", "finding"]


def save_multi_model(out: Path, findings: list[str], thresholds: list[float], seed: int = 0):
    """A random-weight model with one sigmoid output per finding, saved as a model directory.

    The head's weights are scaled so that each output's scores spread over (0, 1): a random
    network's scores all sit near 0.5, where equality to 1e-4 would prove nothing.
    """
    import keras

    from medai.artifact import save_model_dir
    from medai.model import ModelSpec, build_model

    keras.utils.set_random_seed(seed)
    base = build_model(ModelSpec(SIZE, "gap", "none"))
    k = len(findings)
    head = keras.layers.Dense(k, activation="sigmoid", dtype="float32", name="score")
    model = keras.Model(base.input, head(base.get_layer("dropout").output))
    features = keras.Model(model.inputs, model.get_layer("fc").output)
    probe = np.stack([varied_image(i, SIZE, seed) for i in range(16)])[..., None]
    kernel, _ = head.get_weights()
    logits = np.asarray(features(probe, training=False)) @ kernel
    scale = 2.0 / logits.std(axis=0)
    head.set_weights([kernel * scale, -logits.mean(axis=0) * scale])
    card = {
        "findings": list(findings),
        "finding": findings[0],
        "per_finding": {f: {"threshold": t} for f, t in zip(findings, thresholds, strict=True)},
        "image_size": SIZE,
        "head": "gap",
        "weights": "none",
        "threshold": thresholds[0],
    }
    save_model_dir(model, out, card)
    return out


def varied_image(i: int, size: int, seed: int) -> np.ndarray:
    """Noise whose brightness grows with ``i``: images a random network scores differently."""
    rng = np.random.default_rng(seed + i)
    return rng.integers(0, 16 + 15 * i, (size, size), dtype=np.uint8)


@pytest.fixture(scope="module")
def multi_model(tmp_path_factory) -> Path:
    """A 3-finding model directory with its fp32 OpenVINO IR."""
    from medai.export import export_openvino

    folder = save_multi_model(tmp_path_factory.mktemp("multi") / "model", FINDINGS, THRESHOLDS)
    export_openvino(folder)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Twelve distinct PNGs and two unreadable files."""
    files = {f"img{i:02d}.png": png(varied_image(i, 64, seed=5)) for i in range(12)}
    broken = dict(list(broken_variants().items())[:2])
    folder = tmp_path_factory.mktemp("images")
    write_files(folder, {**files, **broken})
    return folder


@pytest.fixture(scope="module")
def scored(ray_session, multi_model, images, tmp_path_factory) -> dict[str, Path]:
    """The same images scored with each engine (fp32)."""
    root = tmp_path_factory.mktemp("scored")
    outs = {}
    for engine in ("tensorflow", "openvino"):
        outs[engine] = root / engine
        score(multi_model, images, outs[engine], engine=engine)
    return outs


def score(model, images, out, **kwargs):
    return run_scoring(
        ScoreConfig(model=str(model), images=(str(images),), out=str(out), progress=False, **kwargs)
    )


def n_images(images: Path) -> tuple[int, int]:
    """(readable, unreadable) images of the fixture folder."""
    broken = sum(1 for p in images.iterdir() if not p.name.startswith("img"))
    return len(list(images.iterdir())) - broken, broken


def test_one_row_per_image_and_finding_with_its_threshold(scored, images):
    good, bad = n_images(images)
    frame = pd.read_parquet(scored["openvino"])
    assert len(frame) == (good + bad) * len(FINDINGS)
    assert not frame.duplicated(KEY).any()
    in_order = frame.groupby("image_id")["finding"].apply(list)
    assert all(found == FINDINGS for found in in_order)  # the model's output order
    limits = frame["finding"].map(dict(zip(FINDINGS, THRESHOLDS, strict=True)))
    assert (frame["threshold"] == limits.astype(np.float32)).all()
    ok = frame[frame["error"].isna()]
    assert (ok["predicted"] == (ok["score"] >= ok["threshold"])).all()
    assert ok["predicted"].nunique() == 2  # the thresholds cut through the spread scores
    # an unreadable image: one error row per finding, the same text in each
    errors = frame[frame["error"].notna()]
    assert len(errors) == bad * len(FINDINGS) and errors["score"].isna().all()
    assert (errors.groupby("image_id")["error"].nunique() == 1).all()
    assert all(found == FINDINGS for found in errors.groupby("image_id")["finding"].apply(list))


def test_openvino_scores_in_parquet_equal_tensorflow(scored):
    tf = pd.read_parquet(scored["tensorflow"]).set_index(["image_id", "finding"]).sort_index()
    ov = pd.read_parquet(scored["openvino"]).set_index(["image_id", "finding"]).sort_index()
    assert tf.index.equals(ov.index)
    ok = tf["error"].isna()
    assert float(tf.loc[ok, "score"].max() - tf.loc[ok, "score"].min()) > 0.3
    assert float((tf.loc[ok, "score"] - ov.loc[ok, "score"]).abs().max()) <= 1e-4
    assert (tf.loc[ok, "predicted"] == ov.loc[ok, "predicted"]).mean() >= 0.95
    # each row records what ran; model_id stays the sha256 of model.keras
    assert set(zip(tf["engine"], tf["precision"], strict=True)) == {("tensorflow", "fp32")}
    assert set(zip(ov["engine"], ov["precision"], strict=True)) == {("openvino", "fp32")}
    assert tf["model_id"].nunique() == 1 and (tf["model_id"] == ov["model_id"]).all()


def test_rerun_skips_complete_images_and_rescores_partial_ones(
    ray_session, multi_model, images, scored, tmp_path
):
    import duckdb

    out = Path(shutil.copytree(scored["openvino"], tmp_path / "out"))
    good, bad = n_images(images)
    again = score(multi_model, images, out)  # auto: the IR exists, so OpenVINO
    assert (again.scored, again.errors, again.skipped) == (0, 0, good + bad)  # decode errors final
    # A folder left with some findings of some images (rows lost between files): those
    # images are scored again whole and reconcile keeps one row per key.
    path = prediction_files(out)[0]
    table = pq.read_table(path).to_pandas()
    partial = sorted(table.loc[table["error"].isna(), "image_id"].unique())[:2]
    drop = table["image_id"].isin(partial) & (table["finding"] == "Nodule")
    pq.write_table(pq.read_table(path).filter(pa_mask(~drop.to_numpy())), path, compression="zstd")
    third = score(multi_model, images, out)
    assert third.scored == len(partial) and third.skipped == good + bad - len(partial)
    frame = pd.read_parquet(out)
    assert len(frame) == (good + bad) * len(FINDINGS) and not frame.duplicated(KEY).any()
    rows, keys = duckdb.sql(
        f"select count(*), count(distinct (model_id, image_id, finding)) "
        f"from read_parquet('{out}/*.parquet')"
    ).fetchall()[0]
    assert rows == keys == len(frame)


def pa_mask(values: np.ndarray):
    import pyarrow as pa

    return pa.array(values, pa.bool_())


def test_predict_prints_one_line_per_image_and_finding_like_the_batch_job(
    scored, multi_model, images, capsys
):
    from medai.cli import main

    batch = pd.read_parquet(scored["openvino"]).set_index(["image_id", "finding"])
    paths = [str(images / "img00.png"), str(images / "img01.png")]
    assert main(["predict", "--model", str(multi_model), *paths]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(paths) * len(FINDINGS)
    for line in lines:
        image, finding, value, predicted = line.split("\t")
        row = batch.loc[(Path(image).name, finding)]
        assert float(value) == pytest.approx(float(row["score"]), abs=1e-5)
        assert predicted == str(bool(row["predicted"]))
    assert main(["predict", "--model", str(multi_model), "--json", *paths]) == 0
    objects = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [(o["image"], o["finding"]) for o in objects] == [
        (p, f) for p in paths for f in FINDINGS
    ]
    assert {(o["engine"], o["precision"]) for o in objects} == {("openvino", "fp32")}


def test_engine_errors_stop_before_work(tiny_model_dir, multi_model, images, tmp_path, capsys):
    from medai.cli import main

    out = tmp_path / "out"
    args = ["score", "--images", str(images), "--out", str(out)]
    assert main([*args, "--model", str(tiny_model_dir), "--engine", "openvino"]) == 2
    assert "no fp32 OpenVINO IR; run medai export" in capsys.readouterr().err
    assert main([*args, "--model", str(multi_model), "--precision", "int8"]) == 2
    assert "no int8 OpenVINO IR; run medai export --int8" in capsys.readouterr().err
    assert main([*args, "--model", str(tiny_model_dir), "--precision", "int8"]) == 2
    assert not out.exists()
    with pytest.raises(EngineError, match="only on --engine openvino"):
        score(multi_model, images, out, engine="tensorflow", precision="int8")
    # an int8 IR the gate did not accept is refused too
    refused = Path(shutil.copytree(multi_model, tmp_path / "refused"))
    card = json.loads((refused / "model_card.json").read_text())
    card["openvino"]["int8"] = {**card["openvino"]["fp32"], "gate": {"accepted": False}}
    (refused / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(EngineError, match="not accepted by the export gate"):
        score(refused, images, out, precision="int8")
    assert not out.exists()


def test_a_changed_model_file_or_ir_stops_before_work(multi_model, images, tmp_path, capsys):
    from medai.cli import main

    out = tmp_path / "out"
    for name, engine in (("model.keras", "tensorflow"), ("openvino/model.bin", "openvino")):
        changed = Path(shutil.copytree(multi_model, tmp_path / name.replace("/", "_")))
        with open(changed / name, "r+b") as handle:
            handle.truncate(1000)  # a copy cut short
        args = ["--model", str(changed), "--images", str(images), "--out", str(out)]
        assert main(["score", *args, "--engine", engine]) == 2
        assert f"{changed / name} does not match" in capsys.readouterr().err
        assert not out.exists()  # refused before the lock, the config or Ray


def test_export_command_round_trip(tiny_model_dir, tmp_path, capsys):
    from medai.artifact import read_card
    from medai.cli import main
    from medai.engines import load_engine

    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    assert main(["export", str(folder)]) == 0
    block = json.loads(capsys.readouterr().out)
    assert block == read_card(folder)["openvino"]
    assert block["converted_from"] == read_card(folder)["model_id"]
    assert load_engine(folder, "auto").name == "openvino"
    # an export refused prints one error line and exits 2, writing nothing more
    before = (folder / "model_card.json").read_text()
    assert main(["export", str(folder), "--int8"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("medai export: error: ")
    assert (folder / "model_card.json").read_text() == before


def test_nightly_with_a_multi_finding_model(ray_session, multi_model, images, tmp_path):
    from medai.nightly import NightlyConfig, read_ledger, run_nightly

    good, bad = n_images(images)
    names = sorted(p.name for p in images.iterdir())
    findings = ["Mass|Effusion", "Nodule", "No Finding"]
    labels = tmp_path / "Data_Entry_2017.csv"
    pd.DataFrame(
        {
            "Image Index": names,
            "Finding Labels": [findings[i % 3] for i in range(len(names))],
            "Follow-up #": 0,
            "Patient ID": range(1, len(names) + 1),
            "Patient Age": 50,
            "Patient Gender": "F",
            "View Position": "PA",
        }
    ).to_csv(labels, index=False)
    store = tmp_path / "store"
    config = NightlyConfig.of(
        images=(str(images),),
        model=str(multi_model),
        store=str(store),
        labels=str(labels),
        split="all",
    )
    first = run_nightly(config)
    second = run_nightly(config)
    assert (first.scored, first.errors, second.scored, second.skipped) == (good, bad, 0, good + bad)
    frame = pd.read_parquet(store / "predictions")
    assert len(frame) == (good + bad) * len(FINDINGS) and not frame.duplicated(KEY).any()
    assert [r["status"] for r in read_ledger(store)] == ["succeeded"] * 2
    metrics = json.loads((store / "reports" / "latest" / "metrics.json").read_text())
    assert all(f in json.dumps(metrics) for f in FINDINGS)
