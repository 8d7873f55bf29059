"""The report's heatmaps on models ``medai train`` made: issue 27's own recipe, per method.

``saliency_methods.py`` trains with a plain one-process Keras loop; this script trains the
way a user does, with :func:`medai.train.run_training` (Ray Train, ``--num-workers`` workers,
medai's augmentation, class weights and BatchNorm re-estimation), on multi-finding phantoms
with distractors (:data:`medai.phantoms.DISTRACTORS`: Mass lesions anywhere in the lung next
to effusion haze and enlarged hearts, a third of the views AP) or, with ``--kind lesion``,
on the lesion-only phantoms of the slow pointing-game test (Mass alone). It then scores the
archive and runs ``medai report --boxes --model`` once per saliency method. For each
training and method it prints the Mass entry of metrics.json's ``localization``: the
pointing game over the boxed test lesions, the report's faithfulness (deletion AUC against
random order, the paired test), the report's wall time, and the seconds of one heatmap
(timed on :data:`TIMED_IMAGES` other phantoms). Model directories are kept under ``--cache``
(a second run only reports).

    nice -n 10 python benchmarks/saliency_report.py --seeds 0 1 --size 128 --workers 2 \\
        --epochs 8 --cache /tmp/medai-saliency-report
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

FINDINGS = "Mass,Effusion,Cardiomegaly"
TIMED_IMAGES = 10  # heatmaps timed per method (on phantoms of the model's kind)


def trained(folder: Path, seed: int, args) -> tuple[Path, Path, dict]:
    """The phantom archive and model directory of one seed (made when absent)."""
    from medai.phantoms import write_phantom_archive
    from medai.train import TrainConfig, run_training

    archive, model = folder / "phantoms", folder / "model"
    if not (archive / "Data_Entry_2017.csv").exists():
        write_phantom_archive(archive, phantoms(args, seed))
    if not (model / "model_card.json").exists():
        started = time.perf_counter()
        run_training(
            TrainConfig(
                labels=str(archive / "Data_Entry_2017.csv"),
                images=(str(archive),),
                out=str(model),
                finding=findings(args),
                image_size=args.size,
                weights="none",
                num_workers=args.workers,
                epochs=args.epochs,
                batch_size=16,
                seed=seed,
                export_openvino=False,
            )
        )
        print(f"seed {seed}: trained in {time.perf_counter() - started:.0f} s", flush=True)
    card = json.loads((model / "model_card.json").read_text())
    return archive, model, card


def findings(args) -> str:
    """The findings trained: ``--findings`` on distractor phantoms, Mass on lesion-only ones."""
    return args.findings if args.kind == "distractors" else "Mass"


def phantoms(args, seed: int):
    """The phantom kind's spec at ``--size`` with ``--patients`` patients."""
    from dataclasses import replace

    from saliency_methods import phantom_spec

    return replace(phantom_spec(args.kind, args.size, seed), n_patients=args.patients)


def seconds_per_image(model: Path, method: str, args, seed: int) -> float:
    """Wall seconds of one heatmap of Mass with ``method``, over :data:`TIMED_IMAGES` images
    (the graph traced before timing)."""
    from saliency_methods import draw_set

    from medai.saliency import load_explainer

    explainer = load_explainer(model, method)
    spec = phantoms(args, seed + 2000)
    images = draw_set(spec, TIMED_IMAGES, np.random.default_rng(seed + 2000))["images"]
    explainer.heatmaps(images[:1], "Mass")
    started = time.perf_counter()
    explainer.heatmaps(images, "Mass")
    return (time.perf_counter() - started) / len(images)


def report(folder: Path, archive: Path, model: Path, method: str) -> tuple[dict, float]:
    """Score once, then report with ``method``'s heatmaps; the Mass localisation entry."""
    from medai.report import ReportConfig, run_report
    from medai.score import ScoreConfig, run_scoring

    scores = folder / "scores"
    if not scores.exists():
        run_scoring(
            ScoreConfig(model=str(model), images=(str(archive),), out=str(scores), progress=False)
        )
    started = time.perf_counter()
    metrics = run_report(
        ReportConfig(
            predictions=scores,
            labels=archive / "Data_Entry_2017.csv",
            out=folder / f"report_{method}",
            model=model,
            boxes=archive / "BBox_List_2017.csv",
            bootstrap=50,
            saliency=method,
        )
    )
    seconds = time.perf_counter() - started
    entry = {e["finding"]: e for e in metrics["localization"]}["Mass"]
    return entry, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("distractors", "lesion"), default="distractors")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--methods", nargs="+", default=["gradcam", "hirescam"])
    parser.add_argument("--findings", default=FINDINGS, help="the findings trained (--finding)")
    parser.add_argument("--patients", type=int, default=200, help="as DISTRACTORS")
    parser.add_argument("--cache", default="/tmp/medai-saliency-report")
    args = parser.parse_args()
    from medai.runtime import quiet_tensorflow

    quiet_tensorflow()
    rows = []
    for seed in args.seeds:
        name = f"{args.size}px_{args.workers}w_{args.epochs}ep_{args.patients}p_{findings(args)}"
        name = name if args.kind == "distractors" else f"lesion_{name}"
        folder = Path(args.cache) / f"{name}_seed{seed}".replace(",", "+")
        archive, model, card = trained(folder, seed, args)
        aucs = {f: round(e["val_auc"], 3) for f, e in card.get("per_finding", {}).items()}
        aucs = aucs or {"Mass": round(card["val_auc"], 3)}  # a one-finding card
        for method in args.methods:
            entry, seconds = report(folder, archive, model, method)
            faith = entry.get("faithfulness") or {}
            row = {
                "seed": seed,
                "method": method,
                "val_auc": aucs,
                "n": entry["n"],
                "pointing": entry["pointing_hit_rate"],
                "deletion": faith.get("deletion_auc"),
                "random": faith.get("random_deletion_auc"),
                "better": faith.get("better_than_random"),
                "report_s": round(seconds, 1),
                "s_per_image": round(seconds_per_image(model, method, args, seed), 3),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        "| seed | method | val AUC | n | pointing | deletion AUC | random | better | report s "
        "| s/image |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['seed']} | {r['method']} | {r['val_auc']} | {r['n']} | {r['pointing']:.2f} "
            f"| {r['deletion']:.3f} | {r['random']:.3f} | {r['better']} | {r['report_s']} "
            f"| {r['s_per_image']} |"
        )


if __name__ == "__main__":
    main()
