"""Where the model looks: phantom lesion boxes, box files, heatmaps in the report and predict.

The phantoms record each lesion's box, so the pointing game has ground truth: a model trained
on them must point at the lesion, and the report must say so in metrics.json.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medai.boxes import BoxError, read_boxes
from medai.phantoms import BBOX_HEADER, PhantomSpec, draw_phantom, write_phantom_archive


@pytest.mark.parametrize(("profile", "share"), [("flat", 0.8), ("sphere", 0.99)])
def test_phantom_box_holds_the_lesion(profile, share):
    """The same draws with and without contrast differ by the lesion alone: it lies in its box
    (a sphere's box is its whole extent; a flat disc's soft edge spills a little past it)."""
    spec = PhantomSpec(size=128, lesion_profile=profile)
    for seed in range(6):
        drawn = draw_phantom(np.random.default_rng(seed), 128, True, spec)
        plain = draw_phantom(
            np.random.default_rng(seed), 128, True, replace(spec, lesion_contrast=0)
        )
        assert plain.lesion_box == drawn.lesion_box
        lesion = drawn.pixels.astype(np.float64) - plain.pixels.astype(np.float64)
        x, y, w, h = drawn.lesion_box
        inside = np.zeros_like(lesion, bool)
        inside[int(np.ceil(y)) : int(y + h) + 1, int(np.ceil(x)) : int(x + w) + 1] = True
        row, col = np.unravel_index(np.argmax(lesion), lesion.shape)
        assert inside[row, col]
        assert lesion[inside].sum() >= share * lesion.sum() > 0
    assert draw_phantom(np.random.default_rng(0), 128, False, spec).lesion_box is None


def test_unknown_lesion_profile_is_refused():
    with pytest.raises(ValueError, match="lesion_profile must be one of"):
        PhantomSpec(lesion_profile="cube")


def test_exposure_jitter_varies_brightness_not_the_lesion():
    """With jitter, whole-image brightness varies between phantoms far more than a lesion
    moves it (the shortcut a network would otherwise learn); the lesion box is unchanged."""
    plain, jittered = PhantomSpec(size=96), PhantomSpec(size=96, exposure_jitter=0.2)
    means = {}
    for name, spec in (("plain", plain), ("jittered", jittered)):
        drawn = [draw_phantom(np.random.default_rng(s), 96, True, spec) for s in range(12)]
        means[name] = np.std([d.pixels.mean() for d in drawn])
        boxes = [d.lesion_box for d in drawn]
        if name == "plain":
            reference = boxes
    assert boxes == reference and means["jittered"] > 4 * means["plain"]


def test_phantom_archive_boxes_every_mass_in_nih_format(tmp_path):
    write_phantom_archive(tmp_path, PhantomSpec(n_patients=12, size=64, seed=2))
    text = (tmp_path / "BBox_List_2017.csv").read_text()
    assert text.splitlines()[0] == BBOX_HEADER and text.splitlines()[1].endswith(",,,")
    boxes = read_boxes(tmp_path / "BBox_List_2017.csv")
    labels = pd.read_csv(tmp_path / "Data_Entry_2017.csv", index_col=False)
    masses = set(labels.loc[labels["Finding Labels"].str.contains("Mass"), "Image Index"])
    assert set(boxes["image_id"]) == masses and len(boxes) == len(masses) > 0
    assert (boxes["finding"] == "Mass").all()
    assert (boxes[["x", "y"]].to_numpy() >= 0).all() and (boxes["x"] + boxes["width"] <= 64).all()


def test_generic_box_columns(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("image_id,finding,x,y,width,height,reader\na.png,Mass,1,2,3.5,4,r1\n")
    boxes = read_boxes(path)
    assert boxes.iloc[0].tolist() == ["a.png", "Mass", 1.0, 2.0, 3.5, 4.0]


@pytest.mark.parametrize(
    "text, message",
    [
        ("image_id,finding,x,y\na.png,Mass,1,2\n", r"missing columns \['width', 'height'\]"),
        (BBOX_HEADER + "\na.png,Mass,1,2,3,4,,,\nb.png,Mass,1,2,-3,4,,,\n", "line 3 is not a box"),
        (BBOX_HEADER + "\na.png,Mass,1,two,3,4,,,\n", "line 2 is not a box"),
        (BBOX_HEADER + "\n,Mass,1,2,3,4,,,\n", "line 2 is not a box"),
        (BBOX_HEADER + "\n", "has no boxes"),
        ("", "cannot read it"),
    ],
)
def test_malformed_box_files_are_named(tmp_path, text, message):
    path = tmp_path / "BBox_List_2017.csv"
    path.write_text(text)
    with pytest.raises(BoxError, match=message):
        read_boxes(path)


def test_boxes_without_model_stop_the_report_before_work(tmp_path):
    from medai.cli import main

    args = ["report", "--predictions", str(tmp_path), "--labels", str(tmp_path / "l.csv")]
    assert main([*args, "--out", str(tmp_path / "out"), "--boxes", str(tmp_path / "b.csv")]) == 2
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def located(ray_session, trained_model, phantom_archive, tmp_path_factory) -> dict:
    """The trained phantom model's test split scored, then reported with --model and --boxes."""
    model_dir, card = trained_model
    folder = tmp_path_factory.mktemp("located")
    return locate(model_dir, card, phantom_archive, folder)


def locate(
    model_dir: Path, card: dict, archive: Path, folder: Path, saliency: str | None = None
) -> dict:
    """Score ``archive`` with the model, then report with ``--model`` and ``--boxes``
    (heatmaps by ``saliency``, default the report's)."""
    from medai.report import ReportConfig, run_report
    from medai.saliency import DEFAULT_METHOD
    from medai.score import ScoreConfig, run_scoring

    run_scoring(
        ScoreConfig(
            model=str(model_dir),
            images=(str(archive),),
            out=str(folder / "scores"),
            progress=False,
        )
    )
    metrics = run_report(
        ReportConfig(
            predictions=folder / "scores",
            labels=archive / "Data_Entry_2017.csv",
            out=folder / "report",
            model=model_dir,
            boxes=archive / "BBox_List_2017.csv",
            bootstrap=50,
            saliency=saliency or DEFAULT_METHOD,
        )
    )
    return {"metrics": metrics, "out": folder / "report", "card": card, "model": model_dir}


def test_pointing_game_over_the_boxed_test_images(located, phantom_archive):
    """metrics.json's localisation equals Grad-CAM + pointing_hit run here image by image.

    This fixture's model, trained without exposure jitter, can separate the classes partly by
    brightness and need not point at the lesion (README, Limitations), so this checks the
    measurement; the slow test below holds a lesion-finding model to issue 12's 0.8.
    """
    from medai.images import decode_image, image_size_of, iter_archive
    from medai.saliency import Box, gradcam, load_explainer, pointing_hit

    metrics = located["metrics"]
    (entry,) = metrics["localization"]
    boxes = read_boxes(phantom_archive / "BBox_List_2017.csv")
    test = set((phantom_archive / "test_list.txt").read_text().split())
    boxes = boxes[boxes["image_id"].isin(test)].set_index("image_id")
    assert entry["finding"] == "Mass" and entry["n"] == len(boxes) > 10 and entry["unreadable"] == 0
    explainer = load_explainer(located["model"])
    assert entry["block"] == metrics["saliency"]["block"] == explainer.block == "mixed5"
    found = {
        Path(name).name: data
        for name, data in iter_archive(str(phantom_archive / "images_001.tar.gz"))
        if Path(name).name in boxes.index
    }
    ids = sorted(found)
    images = np.stack([decode_image(found[i], explainer.image_size) for i in ids])
    heats = np.concatenate(
        [gradcam(explainer.model, images[k : k + 8]) for k in range(0, len(ids), 8)]
    )
    hits = sum(
        pointing_hit(
            heat,
            Box(*boxes.loc[i, ["x", "y", "width", "height"]].astype(float)),
            image_size_of(found[i]),
        )
        for i, heat in zip(ids, heats, strict=True)
    )
    print(f"pointing game: {entry['hits']}/{entry['n']} = {entry['pointing_hit_rate']:.3f}")
    assert entry["hits"] == hits and entry["pointing_hit_rate"] == pytest.approx(hits / len(boxes))
    low, high = entry["ci95"]
    assert 0 <= low <= entry["pointing_hit_rate"] <= high <= 1
    # A rate confidently below one half is a flag the page raises at the top.
    assert entry["flagged"] == (high < 0.5)
    page = (located["out"] / "report.html").read_text()
    assert ("Grad-CAM points inside the annotated box" in page) == entry["flagged"]
    on_disk = json.loads((located["out"] / "metrics.json").read_text())
    assert on_disk["localization"] == metrics["localization"]


def test_faithfulness_is_the_deletion_curves_of_the_boxed_images(located, phantom_archive):
    """metrics.json's faithfulness equals the deletion AUCs of the same images and maps, and
    the page shows them beside the pointing game (with the warning when no better than
    random)."""
    from medai.faithfulness import MAX_IMAGES, deletion_aucs
    from medai.images import decode_image, iter_archive
    from medai.saliency import DEFAULT_METHOD, load_explainer

    (entry,) = located["metrics"]["localization"]
    faith = entry["faithfulness"]
    assert faith["n"] == min(entry["n"], MAX_IMAGES) and faith["method"] == DEFAULT_METHOD
    assert located["metrics"]["saliency"]["method"] == DEFAULT_METHOD
    boxes = read_boxes(phantom_archive / "BBox_List_2017.csv")
    test = set((phantom_archive / "test_list.txt").read_text().split())
    wanted = set(boxes["image_id"]) & test
    explainer = load_explainer(located["model"])
    found = {
        Path(name).name: data
        for name, data in iter_archive(str(phantom_archive / "images_001.tar.gz"))
        if Path(name).name in wanted
    }
    # The report plays the images in the order of its evaluated rows; each image's random
    # order is seeded by its pixels, so the order of the images does not matter.
    images = np.stack([decode_image(found[i], explainer.image_size) for i in sorted(found)])
    deletion, random = deletion_aucs(explainer.model, images, explainer.heatmaps(images, "Mass"), 0)
    if len(images) <= MAX_IMAGES:  # else the report measured a subset in its own order
        assert faith["deletion_auc"] == pytest.approx(deletion.mean(), rel=1e-4)
        assert faith["random_deletion_auc"] == pytest.approx(random.mean(), rel=1e-4)
    assert 0 <= faith["deletion_auc"] <= 1 and 0 <= faith["random_deletion_auc"] <= 1
    assert faith["better_than_random"] == (faith["p_value"] < 0.05)
    print(f"deletion AUC {faith['deletion_auc']:.3f}, random {faith['random_deletion_auc']:.3f}")
    page = (located["out"] / "report.html").read_text()
    assert "random-order AUC" in page
    assert ("no better than random at finding" in page) == (not faith["better_than_random"])


def test_report_saliency_flag_is_checked_before_work(tmp_path):
    from medai.cli import main

    args = ["report", "--predictions", str(tmp_path), "--labels", str(tmp_path / "l.csv")]
    assert main([*args, "--out", str(tmp_path / "out"), "--saliency", "lime"]) == 2
    assert not (tmp_path / "out").exists()


def test_report_overlays_heatmaps_and_names_the_block(located):
    saliency = located["metrics"]["saliency"]
    assert saliency["heatmaps"] and saliency["localization"]
    assert saliency["model_id"] == located["card"]["model_id"]
    page = (located["out"] / "report.html").read_text()
    assert "Localisation: pointing game" in page and "<code>mixed5</code>" in page
    assert saliency["skipped"] == []


def test_report_without_model_says_heatmaps_were_skipped(located, phantom_archive, tmp_path):
    from medai.report import ReportConfig, run_report

    metrics = run_report(
        ReportConfig(
            predictions=located["out"].parent / "scores",
            labels=phantom_archive / "Data_Entry_2017.csv",
            out=tmp_path,
            bootstrap=0,
        )
    )
    assert metrics["localization"] == [] and metrics["saliency"]["block"] is None
    assert "no --model MODEL_DIR given" in metrics["saliency"]["skipped"][0]
    assert "heatmaps and localisation skipped: no --model" in (tmp_path / "report.html").read_text()


def test_predict_writes_one_heatmap_per_image_and_finding(located, phantom_archive, tmp_path):
    from PIL import Image

    from medai.cli import main

    boxes = read_boxes(phantom_archive / "BBox_List_2017.csv")
    archive = phantom_archive / "images_001.tar.gz"
    sources = [f"{archive}::images/{image_id}" for image_id in boxes["image_id"][:2]]
    out = tmp_path / "heat"
    assert main(["predict", "--model", str(located["model"]), *sources, "--heatmap", str(out)]) == 0
    written = sorted(path.name for path in out.iterdir())
    assert written == sorted(f"{Path(i).stem}_Mass.png" for i in boxes["image_id"][:2])
    image = Image.open(out / written[0])
    size = located["card"]["image_size"]
    assert image.mode == "RGB" and image.size == (size, size)
    (tmp_path / "file").write_text("")
    model = str(located["model"])
    assert main(["predict", "--model", model, sources[0], "--heatmap", str(tmp_path / "file")]) == 2
    occluded = tmp_path / "occluded"
    command = ["predict", "--model", model, sources[0], "--heatmap", str(occluded)]
    assert main([*command, "--saliency", "occlusion"]) == 0
    assert len(list(occluded.iterdir())) == 1


# Phantoms a model can only separate by finding the lesion: exposure jitter hides the overall
# brightness a lesion adds; sphere-profile lesions end at their box.
LOCALISING_PHANTOMS = PhantomSpec(
    n_patients=200,
    size=128,
    seed=1,
    exposure_jitter=0.15,
    lesion_contrast=110.0,
    lesion_profile="sphere",
)


@pytest.mark.slow  # 392 s on a 2-core AVX2 host: a 6-epoch training of its own
def test_trained_phantom_model_points_at_the_lesion(ray_session, tmp_path):
    """Grad-CAM's maximum falls in the lesion box for at least 0.8 of the boxed test lesions
    (issue 12) of a model trained by `medai train` on lesion-only phantoms. With the heatmap
    summed over the image's mirror images, ten trainings of this recipe's kind (seeds 0-4, 6
    and 12 epochs) hit 0.82-1.00 on their test lesions but one (seed 4, 6 epochs: 0.64, its
    heatmap pulled towards the mediastinum); this recipe (seed 0, 6 epochs) hit 1.00 there,
    0.97 on 203 unseen lesions, and 0.86 (38/44) after the augmentation became one warp per
    image (medai.augment, 2026-12-05). Each image's own Grad-CAM alone hit 0.39-1.00, 6 of 10 at 0.8
    or more; chance, a point anywhere in the lungs, is about 0.2.
    """
    from conftest import train_phantoms

    archive = tmp_path / "phantoms"
    write_phantom_archive(archive, LOCALISING_PHANTOMS)
    model_dir, card = train_phantoms(archive, tmp_path, num_workers=1, epochs=6)
    located = locate(model_dir, card, archive, tmp_path / "located", saliency="gradcam")
    (entry,) = located["metrics"]["localization"]
    print(f"pointing game: {entry['hits']}/{entry['n']} = {entry['pointing_hit_rate']:.3f}")
    assert entry["block"] == "mixed5" and entry["n"] >= 40
    assert entry["pointing_hit_rate"] >= 0.8


@pytest.mark.slow  # a 12-epoch training of its own: about 6 min on a 2-core host, alone
def test_default_heatmap_points_at_masses_among_distractors(ray_session, tmp_path):
    """On multi-finding phantoms with distractors (Mass lesions next to effusion haze and
    enlarged hearts, a third of the views AP: :data:`medai.phantoms.DISTRACTORS`), the
    report's default heatmap points into the Mass box for at least 0.6 of the boxed test
    lesions (issue 27's target), and deleting its hottest cells first drops the Mass score
    faster than a random order does (the report's faithfulness, paired test).

    With the former augmentation (four chained Keras resamples that blurred the grain away)
    this recipe did not learn Mass at all (validation AUC 0.47 while Effusion reached 0.95) and
    its heatmap pointed into 1 box of 35; with one warp per image (medai.augment) the same
    recipe reached Mass 0.93, Grad-CAM pointing 0.86 (30/35), deletion AUC 0.23 against 0.51
    at random (benchmarks/saliency_report.py, 2026-12-05). The first assertion names a model
    that did not learn Mass, so a failure says whether training or the heatmap is at fault."""
    from conftest import train_phantoms

    from medai.phantoms import DISTRACTORS

    archive = tmp_path / "phantoms"
    write_phantom_archive(archive, DISTRACTORS)
    model_dir, card = train_phantoms(
        archive, tmp_path, num_workers=1, epochs=12, finding="Mass,Effusion,Cardiomegaly"
    )
    located = locate(model_dir, card, archive, tmp_path / "located")
    entries = {entry["finding"]: entry for entry in located["metrics"]["localization"]}
    entry = entries["Mass"]
    faith = entry["faithfulness"]
    mass_auc = card["per_finding"]["Mass"]["val_auc"]
    assert mass_auc >= 0.8, f"the model did not learn Mass (validation AUC {mass_auc:.2f})"
    print(
        f"pointing game: {entry['hits']}/{entry['n']} = {entry['pointing_hit_rate']:.3f}; "
        f"deletion AUC {faith['deletion_auc']:.3f}, random {faith['random_deletion_auc']:.3f}"
    )
    assert entry["n"] >= 30 and entries["Effusion"]["n"] == 0
    assert entry["pointing_hit_rate"] >= 0.6
    assert faith["better_than_random"]


def test_predict_saliency_flag_is_checked_before_work(tiny_model_dir, tmp_path, capsys):
    from medai.cli import main

    image = tmp_path / "a.png"
    image.write_bytes(b"")
    command = ["predict", "--model", str(tiny_model_dir), str(image), "--heatmap", str(tmp_path)]
    assert main([*command, "--saliency", "lime"]) == 2
    assert "--saliency must be one of gradcam, hirescam, occlusion" in capsys.readouterr().err
