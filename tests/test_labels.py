"""Label files: the real NIH quirks, generic CSVs, and clear errors before any work."""

from __future__ import annotations

import logging

import pytest

from medai.labels import (
    NIH_FINDINGS,
    LabelError,
    find_split_lists,
    label_columns,
    labelled_findings,
    load_labels,
    parse_findings,
    read_split_list,
)
from medai.phantoms import NIH_HEADER


def write(tmp_path, text, name="labels.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def nih(tmp_path, rows):
    return write(tmp_path, NIH_HEADER + "\n" + "\n".join(rows) + "\n", "Data_Entry_2017.csv")


ROWS = [
    "00000001_000.png,Mass,0,1,58,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,Effusion|Mass,1,1,58,M,PA,2894,2729,0.143,0.143",
    "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.168,0.168",
    "00000003_000.png,Cardiomegaly,0,3,74,F,PA,2500,2048,0.168,0.168",
]


def test_nih_header_quirks_and_multi_label(tmp_path):
    table = load_labels(nih(tmp_path, ROWS), "Mass")
    assert list(table.columns) == [
        "image_id",
        "patient_id",
        "findings",
        "label_Mass",
        "label",
        "age",
        "sex",
        "view",
        "follow_up",
    ]
    assert table["label"].equals(table["label_Mass"])
    assert table.set_index("image_id")["label"].to_dict() == {
        "00000001_000.png": 1,
        "00000001_001.png": 1,
        "00000002_000.png": 0,
        "00000003_000.png": 0,
    }
    assert table["patient_id"].tolist() == ["1", "1", "2", "3"]


def test_negatives_policy_no_finding_drops_other_findings(tmp_path):
    table = load_labels(nih(tmp_path, ROWS), "Mass", negatives="no-finding")
    assert set(table["image_id"]) == {"00000001_000.png", "00000001_001.png", "00000002_000.png"}


def test_unknown_finding_lists_valid_ones(tmp_path):
    with pytest.raises(LabelError) as err:
        load_labels(nih(tmp_path, ROWS), "Tumour")
    assert "Tumour" in str(err.value) and all(f in str(err.value) for f in NIH_FINDINGS)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "empty label file"),
        ("\n\n", "empty label file"),
        ("foo,bar\n1,2\n", "unrecognised label file"),
        ("image,lbl\na.png,1\n", "a generic label file needs the column 'label' \\(or one"),
        ("image,label\na.png,2\n", "label must be 0 or 1"),
        ("image,label\na.png,1\na.png,0\n", "duplicated image ids"),
        ("image,label\na.png,\n", "empty value"),
        ("image,label\n", "no labelled images"),
    ],
)
def test_malformed_files_raise_clear_errors(tmp_path, text, expected):
    with pytest.raises(LabelError, match=expected):
        load_labels(write(tmp_path, text), "Mass")


def test_missing_file_and_bad_policy(tmp_path):
    with pytest.raises(LabelError, match="not found"):
        load_labels(tmp_path / "nope.csv")
    with pytest.raises(LabelError, match="--negatives"):
        load_labels(nih(tmp_path, ROWS), "Mass", negatives="some")


def test_nih_missing_columns_is_an_error(tmp_path):
    path = write(tmp_path, "Image Index,Finding Labels\n00000001_000.png,Mass\n")
    with pytest.raises(LabelError, match="an NIH label file needs the column 'Patient ID'"):
        load_labels(path, "Mass")


def test_unknown_nih_label_value(tmp_path):
    rows = ["00000001_000.png,Masss,0,1,58,M,PA,2682,2749,0.143,0.143"]
    with pytest.raises(LabelError, match="Masss"):
        load_labels(nih(tmp_path, rows), "Mass")


def test_generic_csv_with_paths_and_patients(tmp_path):
    path = write(tmp_path, "image,label,patient_id\nsub/a.png,1,p1\nb.jpg,0,p2\n")
    table = load_labels(path)
    assert table["image_id"].tolist() == ["a.png", "b.jpg"]
    assert table["label"].tolist() == [1, 0] and table["patient_id"].tolist() == ["p1", "p2"]


def test_real_sample_labels_and_lists(sample_dir):
    table = load_labels(sample_dir / "Data_Entry_2017.csv", "Mass")
    assert len(table) == 113 and int(table["label"].sum()) == 3
    train_val, test = find_split_lists(sample_dir / "Data_Entry_2017.csv")
    assert len(read_split_list(train_val)) == 101 and len(read_split_list(test)) == 12


def test_generic_csv_without_patient_id_warns_about_leaks(tmp_path, caplog):
    path = write(tmp_path, "image,label\na.png,1\nb.png,0\n")
    with caplog.at_level(logging.WARNING, logger="medai.labels"):
        table = load_labels(path)
    assert table["patient_id"].tolist() == ["a.png", "b.png"]
    [record] = [r for r in caplog.records if r.name == "medai.labels"]
    message = record.getMessage()
    assert record.levelno == logging.WARNING and str(path) in message
    assert "each image is treated as its own patient" in message
    assert "leak across train and validation" in message

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medai.labels"):
        load_labels(write(tmp_path, "image,label,patient_id\na.png,1,p1\n", "with.csv"))
    assert not [r for r in caplog.records if r.name == "medai.labels"]


# ----------------------------------------------------------------------------- several findings


def test_parse_findings_lists_all_and_errors():
    assert parse_findings("Mass") == ("Mass",)
    assert parse_findings(" Mass , Nodule,Effusion ") == ("Mass", "Nodule", "Effusion")
    assert parse_findings("all") == NIH_FINDINGS and len(NIH_FINDINGS) == 14
    assert parse_findings("mass,PLEURAL_THICKENING") == ("Mass", "Pleural_Thickening")
    assert parse_findings("ALL") == NIH_FINDINGS
    with pytest.raises(LabelError, match="more than once"):
        parse_findings("Mass,Nodule,Mass")
    with pytest.raises(LabelError, match="'Mass' more than once"):
        parse_findings("Mass,mass")
    with pytest.raises(LabelError) as err:
        parse_findings("Mass,Tumour")
    assert "Tumour" in str(err.value) and all(f in str(err.value) for f in NIH_FINDINGS)
    with pytest.raises(LabelError, match="empty name"):
        parse_findings("Mass,,Nodule")


MULTI_ROWS = [
    "00000001_000.png,Mass,0,1,58,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,Effusion|Mass,1,1,058Y,M,AP,2894,2729,0.143,0.143",
    "00000002_000.png,No Finding,0,2,81,F,PA,2500,2048,0.168,0.168",
    "00000003_000.png,Cardiomegaly,0,3,74,F,PA,2500,2048,0.168,0.168",
    "00000004_000.png,Nodule|Effusion,2,4,40,M,PA,2500,2048,0.168,0.168",
]


def test_multi_label_table_all_others(tmp_path):
    table = load_labels(nih(tmp_path, MULTI_ROWS), "Mass,Nodule,Effusion").set_index("image_id")
    assert label_columns(("Mass", "Nodule", "Effusion")) == [
        "label_Mass",
        "label_Nodule",
        "label_Effusion",
    ]
    assert table[["label_Mass", "label_Nodule", "label_Effusion"]].to_numpy().tolist() == [
        [1, 0, 0],
        [1, 0, 1],
        [0, 0, 0],
        [0, 0, 0],
        [0, 1, 1],
    ]
    assert (table["label"] == table["label_Mass"]).all()  # the first finding's column
    assert table["label_Mass"].dtype == "int8"


def test_multi_label_no_finding_marks_other_findings_not_evaluated(tmp_path):
    path = nih(tmp_path, MULTI_ROWS)
    table = load_labels(path, ("Mass", "Nodule"), negatives="no-finding").set_index("image_id")
    # Cardiomegaly-only is -1 for both findings, so it is dropped altogether.
    assert "00000003_000.png" not in table.index
    assert table[["label_Mass", "label_Nodule"]].to_dict("index") == {
        "00000001_000.png": {"label_Mass": 1, "label_Nodule": -1},
        "00000001_001.png": {"label_Mass": 1, "label_Nodule": -1},
        "00000002_000.png": {"label_Mass": 0, "label_Nodule": 0},
        "00000004_000.png": {"label_Mass": -1, "label_Nodule": 1},
    }
    # One finding: the same images as the single-finding no-finding policy always kept.
    single = load_labels(path, "Mass", negatives="no-finding")
    assert set(single["image_id"]) == {"00000001_000.png", "00000001_001.png", "00000002_000.png"}
    assert set(single["label"]) == {0, 1}


def test_all_findings_and_metadata(tmp_path):
    table = load_labels(nih(tmp_path, MULTI_ROWS), "all")
    assert [c for c in table.columns if c.startswith("label_")] == label_columns(NIH_FINDINGS)
    assert table["age"].tolist() == [58, 58, 81, 74, 40]  # "058Y" normalised
    assert table["sex"].tolist() == ["M", "M", "F", "F", "M"]
    assert table["view"].tolist() == ["PA", "AP", "PA", "PA", "PA"]
    assert table["follow_up"].tolist() == [0, 1, 0, 0, 2]


def test_generic_csv_with_one_column_per_finding(tmp_path):
    path = write(
        tmp_path,
        "image,Mass,Nodule,patient_id,sex,age,view\n"
        "a.png,1,0,p1,f,33,pa\nb.png,0,1,p2,M,50,AP\nc.png,0,0,p2,,,\n",
    )
    assert labelled_findings(path) == ("Mass", "Nodule")
    table = load_labels(path, "Nodule,Mass")
    assert table["label_Nodule"].tolist() == [0, 1, 0]
    assert table["label_Mass"].tolist() == [1, 0, 0]
    assert table["label"].tolist() == [0, 1, 0]  # the first finding asked for: Nodule
    # Every finding column is in `findings`, asked for or not (the failure table lists them).
    assert load_labels(path, "Mass")["findings"].tolist() == ["Mass", "Nodule", "No Finding"]
    assert table["sex"].tolist()[:2] == ["F", "M"] and table["sex"].isna().tolist()[2]
    assert table["age"].tolist()[:2] == [33, 50] and table["view"].tolist()[:2] == ["PA", "AP"]
    with pytest.raises(LabelError, match=r"no column for finding\(s\) \['Effusion'\]"):
        load_labels(path, "Mass,Effusion")
    bad = write(tmp_path, "image,Mass\na.png,2\n", "bad.csv")
    with pytest.raises(LabelError, match=r"label \(Mass\) must be 0 or 1"):
        load_labels(bad, "Mass")


def test_generic_label_column_holds_one_finding(tmp_path):
    path = write(tmp_path, "image,label,patient_id\na.png,1,p1\nb.png,0,p2\n")
    assert labelled_findings(path) is None
    assert load_labels(path, "Nodule")["label_Nodule"].tolist() == [1, 0]
    with pytest.raises(LabelError, match="no column for finding"):
        load_labels(path, "Mass,Nodule")
