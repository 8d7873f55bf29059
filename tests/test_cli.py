"""The command line: YAML configs, job entry points, predict output, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from medai.cli import main, parse_args

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
    image, finding, score, predicted = lines[0].split("\t")
    assert image == str(good) and finding == "Mass"
    assert 0.0 <= float(score) <= 1.0 and predicted in ("True", "False")
    assert lines[1].startswith(f"{bad}\tMass\terror\tdecode error: empty file")


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
    assert code == 2 and "needs the column 'Finding Labels'" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


# ----------------------------------------------------------------------------- flags


@pytest.mark.parametrize("job", ["train", "score", "nightly"])
def test_images_take_several_values_or_repeat(job):
    required = {
        "train": ["--labels", "l.csv", "--out", "o"],
        "score": ["--model", "m", "--out", "o"],
        "nightly": ["--model", "m", "--store", "s"],
    }[job]
    together = parse_args([job, *required, "--images", "a", "b"])
    repeated = parse_args([job, *required, "--images", "a", "--images", "b"])
    mixed = parse_args([job, *required, "--images", "a", "b", "--images", "c"])
    assert together.images == repeated.images == ["a", "b"]
    assert mixed.images == ["a", "b", "c"]
    with pytest.raises(SystemExit):
        parse_args([job, *required, "--images"])


def test_yaml_images_as_string_or_list_and_the_command_line_wins(tmp_path, capsys):
    config = tmp_path / "score.yaml"
    config.write_text("model: m\nout: o\nimages: [a, b]\n")
    assert parse_args(["score", "--config", str(config)]).images == ["a", "b"]
    # Flags replace the YAML list; they do not add to it.
    args = parse_args(["score", "--config", str(config), "--images", "c", "d"])
    assert args.images == ["c", "d"]
    config.write_text("model: m\nout: o\nimages: a\n")
    assert parse_args(["score", "--config", str(config)]).images == ["a"]
    config.write_text("model: m\nout: o\nimages: 3\n")
    with pytest.raises(SystemExit):
        parse_args(["score", "--config", str(config)])
    assert "images must be a path or a list of paths" in capsys.readouterr().err


@pytest.mark.parametrize("job", ["score", "nightly", "predict"])
def test_engine_and_precision_flags(job):
    required = {
        "score": ["--model", "m", "--images", "a", "--out", "o"],
        "nightly": ["--model", "m", "--images", "a", "--store", "s"],
        "predict": ["--model", "m", "x.png"],
    }[job]
    defaults = parse_args([job, *required])
    assert (defaults.engine, defaults.precision) == ("auto", "fp32")
    chosen = parse_args([job, *required, "--engine", "openvino", "--precision", "int8"])
    assert (chosen.engine, chosen.precision) == ("openvino", "int8")
    with pytest.raises(SystemExit):
        parse_args([job, *required, "--engine", "onnx"])
    # training has no int8 and no engine
    with pytest.raises(SystemExit):
        parse_args(["train", "--labels", "l", "--images", "a", "--out", "o", "--precision", "int8"])


def test_max_unreadable_and_retry_errors_flags():
    train = ["train", "--labels", "l.csv", "--images", "a", "--out", "o"]
    assert parse_args(train).max_unreadable == 0.01
    assert parse_args([*train, "--max-unreadable", "0.05"]).max_unreadable == 0.05
    score = ["score", "--model", "m", "--images", "a", "--out", "o"]
    assert parse_args(score).retry_errors is False
    assert parse_args([*score, "--retry-errors"]).retry_errors is True


# ----------------------------------------------------------------------------- errors


def test_medai_errors_are_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "nope"
    code = main(
        ["report", "--predictions", str(missing), "--labels", "l.csv", "--out", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert [line for line in err.splitlines() if "error" in line] == [
        f"medai report: error: --predictions: no such folder: {missing}"
    ]
    assert "Traceback" not in err


def test_an_output_folder_that_is_a_file_stops_every_job_before_work(
    tmp_path, phantom_archive, tiny_model_dir, capsys
):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    labels, images, model = phantom_archive / "Data_Entry_2017.csv", phantom_archive, tiny_model_dir
    jobs = {
        "train": ["--labels", labels, "--images", images, "--weights", "none", "--out"],
        "score": ["--model", model, "--images", images, "--out"],
        "nightly": ["--model", model, "--images", images, "--store"],
        "report": ["--predictions", tmp_path, "--labels", labels, "--out"],
        "demo": ["--out"],
    }
    for job, flags in jobs.items():
        for out, said in (
            (a_file, f"must be a folder, but {a_file} is a file"),
            (a_file / "below", f"{a_file} is a file, not a folder"),
        ):
            assert main([job, *map(str, flags), str(out)]) == 2, job
            err = capsys.readouterr().err
            assert f"medai {job}: error: {flags[-1]}" in err and said in err, err
            assert "Traceback" not in err
    assert a_file.read_text() == "not a folder"


def test_real_bugs_keep_their_traceback(tmp_path, monkeypatch, capsys):
    import medai.report

    def buggy(config):
        return config.bootstrap + "resamples"  # a genuine TypeError inside the job

    monkeypatch.setattr(medai.report, "run_report", buggy)
    argv = ["report", "--predictions", "p", "--labels", "l.csv", "--out", str(tmp_path)]
    with pytest.raises(TypeError, match="unsupported operand"):
        main(argv)
    assert "medai report: error" not in capsys.readouterr().err


def test_max_unreadable_reaches_the_training_config(tmp_path, phantom_archive, capsys):
    labels = phantom_archive / "Data_Entry_2017.csv"
    argv = ["train", "--labels", str(labels), "--images", str(phantom_archive)]
    argv += ["--out", str(tmp_path / "m"), "--weights", "none", "--max-unreadable", "2"]
    assert main(argv) == 2
    assert "--max-unreadable must be between 0 and 1" in capsys.readouterr().err
