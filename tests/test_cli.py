"""The command line: YAML configs, job entry points, predict output, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from medai.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("job", ["train", "score", "report", "nightly"])
def test_job_entrypoints_answer_help(job):
    result = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / f"{job}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and f"medai {job}" in result.stdout


def test_yaml_config_supplies_options_and_flags_win(tmp_path, phantom_archive, capsys):
    config = tmp_path / "train.yaml"
    config.write_text(
        f"labels: {phantom_archive / 'Data_Entry_2017.csv'}\nimages: {phantom_archive}\n"
        f"out: {tmp_path / 'm'}\nimage-size: 60\nweights: none\n"
    )
    assert main(["train", "--config", str(config)]) == 2  # 60 px is refused, from the YAML
    assert "--image-size must be at least 75" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--image-size", "80", "--epochs", "0"]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err


def test_yaml_unknown_key_is_an_error(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("modle: x\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["score", "--config", str(config)])
    assert exit_info.value.code == 2 and "unknown option 'modle'" in capsys.readouterr().err


def test_predict_prints_score_and_errors(tiny_model_dir, tmp_path, capsys):
    from images_kit import valid_variants

    good = tmp_path / "good.png"
    good.write_bytes(valid_variants()["gray.png"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    assert main(["predict", "--model", str(tiny_model_dir), str(good), str(bad)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    image, score, predicted = lines[0].split("\t")
    assert image == str(good) and 0.0 <= float(score) <= 1.0 and predicted in ("True", "False")
    assert lines[1].startswith(f"{bad}\terror\tempty file")


def test_malformed_label_file_stops_train_before_work(tmp_path, phantom_archive, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("Image Index,Patient ID\nx.png,1\n")
    code = main(
        [
            "train",
            "--labels",
            str(labels),
            "--images",
            str(phantom_archive),
            "--out",
            str(tmp_path / "m"),
            "--weights",
            "none",
        ]
    )
    assert code == 2 and "unrecognised label file" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
