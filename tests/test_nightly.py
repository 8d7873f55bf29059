"""Nightly rescoring as days: new arrivals only, a new model rescoring all, locks, kill, ledger."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pandas as pd
import pytest
from conftest import save_untrained_model
from processes import MarkedCommand

from medai.nightly import (
    NightlyConfig,
    NightlyError,
    _store_lock,
    format_ledger,
    read_ledger,
    run_nightly,
)
from medai.phantoms import PhantomSpec, write_phantom_archive
from medai.score import prediction_files


def arrivals(folder, first_patient, archive_number, n_patients, seed):
    """Write one day's archive into ``folder/incoming`` and return its label rows."""
    staging = folder / f"day-{archive_number}"
    labels = write_phantom_archive(
        staging,
        PhantomSpec(
            n_patients=n_patients,
            size=96,
            seed=seed,
            first_patient=first_patient,
            archive_number=archive_number,
        ),
    )
    incoming = folder / "incoming"
    incoming.mkdir(exist_ok=True)
    shutil.move(str(staging / f"images_{archive_number:03d}.tar.gz"), incoming)
    return pd.read_csv(labels, index_col=False)


@pytest.mark.slow  # 102 s on a 2-core AVX2 host: three nightly runs
def test_days_new_model_and_ledger(ray_session, tiny_model_dir, tmp_path, capsys):
    store = tmp_path / "store"
    day1 = arrivals(tmp_path, 1, 1, 30, seed=1)
    labels = tmp_path / "Data_Entry_2017.csv"
    day1.to_csv(labels, index=False)
    config = NightlyConfig.of(
        images=(str(tmp_path / "incoming"),),
        model=str(tiny_model_dir),
        store=str(store),
        labels=str(labels),
        split="all",
    )
    first = run_nightly(config)
    assert (first.scored, first.skipped) == (len(day1), 0)
    assert (store / "reports" / "latest" / "report.html").exists()

    day2 = arrivals(tmp_path, 1000, 2, 20, seed=2)
    pd.concat([day1, day2]).to_csv(labels, index=False)
    second = run_nightly(config)
    assert (second.scored, second.skipped) == (len(day2), len(day1))

    new_model = save_untrained_model(tmp_path / "model-v2", seed=3)
    third = run_nightly(replace(config, scoring=replace(config.scoring, model=str(new_model))))
    assert (third.scored, third.skipped) == (len(day1) + len(day2), 0)

    frame = pd.read_parquet(store / "predictions")
    assert (
        frame.groupby("model_id")["image_id"].nunique().sort_values().tolist()
        == [len(day1) + len(day2)] * 2
    )
    assert not frame.duplicated(["model_id", "image_id"]).any()
    ledger = read_ledger(store)
    assert [r["status"] for r in ledger] == ["succeeded"] * 3
    assert [r["scored"] for r in ledger] == [len(day1), len(day2), len(day1) + len(day2)]
    table = format_ledger(store)
    assert table.count("succeeded") == 3 and first.run_id in table


def test_second_run_on_the_same_store_refuses(tiny_model_dir, tmp_path):
    arrivals(tmp_path, 1, 1, 5, seed=1)
    store = tmp_path / "store"
    config = NightlyConfig.of(
        images=(str(tmp_path / "incoming"),), model=str(tiny_model_dir), store=str(store)
    )
    with (
        _store_lock(store),
        pytest.raises(NightlyError, match="another nightly run is in progress"),
    ):
        run_nightly(config)
    assert read_ledger(store) == []


@pytest.mark.slow  # 70 s on a 2-core AVX2 host: a killed nightly process and a rerun
def test_killed_run_is_completed_by_the_next(ray_session, tiny_model_dir, tmp_path):
    arrivals(tmp_path, 1, 1, 300, seed=4)
    store = tmp_path / "store"
    predictions = store / "predictions"
    command = MarkedCommand(
        [
            "nightly",
            "--images",
            str(tmp_path / "incoming"),
            "--model",
            str(tiny_model_dir),
            "--store",
            str(store),
            "--batch-size",
            "4",
            "--rows-per-file",
            "25",
        ]
    )
    command.kill_when(lambda: predictions.exists() and bool(prediction_files(predictions)))
    assert [r["status"] for r in read_ledger(store)] == ["running"]
    partial = len(pd.read_parquet(store / "predictions"))
    result = run_nightly(
        NightlyConfig.of(
            images=(str(tmp_path / "incoming"),), model=str(tiny_model_dir), store=str(store)
        )
    )
    frame = pd.read_parquet(store / "predictions")
    assert result.skipped == partial and frame["image_id"].is_unique
    assert len(frame) == partial + result.scored
    assert [r["status"] for r in read_ledger(store)] == ["interrupted", "succeeded"]


def test_scoring_lock_inside_the_store_refuses_a_nightly_run_cleanly(tiny_model_dir, tmp_path):
    # A plain `medai score --out STORE/predictions` holds the scoring lock: the nightly run
    # gets past its own store lock (a different file), refuses, and records the failure.
    from medai.predictions import StoreBusyError, hold_lock

    arrivals(tmp_path, 1, 1, 5, seed=1)
    store = tmp_path / "store"
    config = NightlyConfig.of(
        images=(str(tmp_path / "incoming"),), model=str(tiny_model_dir), store=str(store)
    )
    with (
        hold_lock(store / "predictions"),
        pytest.raises(StoreBusyError, match="another run is writing predictions"),
    ):
        run_nightly(config)
    assert [r["status"] for r in read_ledger(store)] == ["failed"]
    with _store_lock(store):  # the failed run released the store's lock
        pass


def test_retry_errors_flag_reaches_the_config():
    import argparse

    from medai.flags import add_nightly_arguments
    from medai.nightly import config_from_args

    parser = add_nightly_arguments(argparse.ArgumentParser())
    base = ["--images", "x", "--model", "m", "--store", "s"]
    config = config_from_args(parser.parse_args(base))
    assert config.scoring.retry_errors is False
    assert config_from_args(parser.parse_args([*base, "--retry-errors"])).scoring.retry_errors
    # The scoring's options are a ScoreConfig of their own, writing into the store.
    assert config.scoring.out == "s/predictions" and config.scoring.progress is False
    assert config == NightlyConfig.of(images=("x",), model="m", store="s")
