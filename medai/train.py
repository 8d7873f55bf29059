"""The training job: labels and split, a decoded Ray dataset, Ray Train, then the model directory.

Everything that can be wrong with the inputs (flags, label file, split, images, weights) is
checked by :func:`prepare_training` before a single image is decoded or a worker started.

Images that cannot be read or decoded never reach training or validation
(:mod:`medai.inventory` counts and names them; ``split.csv`` flags them). Several findings
(``--finding Mass,Effusion`` or ``all``) train one network with one output per finding (see
:mod:`medai.train_loop`); :mod:`medai.train_card` describes the card fields a run writes.

``--images`` may name DICOMweb servers (``dicomweb+https://HOST/dicom-web[?filters]``) beside
folders: their logins are checked and their instances listed (QIDO) before any work; only the
labelled instances are retrieved (WADO-RS, :func:`medai.pacs_data.pacs_dataset`), in listing
order, and ``split.csv`` records their WADO-RS URLs, from which the export reads them again.

After the model directory is written, the network is exported to an OpenVINO IR beside it
(:func:`medai.export.export_openvino`); a failed export fails the run.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from medai.artifact import save_model_dir
from medai.card import CURVES_FILE, card_line, read_card, write_split
from medai.cpus import WorkerPlan
from medai.dicom_codecs import warn_missing_codecs
from medai.dicom_labels import resolve_labels
from medai.dicomweb import is_dicomweb, parse_source
from medai.errors import MedaiError
from medai.files import write_json
from medai.images import ImageInputs, discover_images
from medai.inventory import (
    Inventory,
    check_unreadable,
    class_weights_of,
    take_inventory,
)
from medai.labels import find_split_lists, load_labels, read_split_list
from medai.model import ensure_imagenet_weights, resolve_weights
from medai.pacs_data import PacsListing, check_servers, list_new_instances, pacs_dataset
from medai.report.training_curves import write_training_curves
from medai.splits import finding_columns, split_by_patient
from medai.train_card import card_fields
from medai.train_config import PRECISIONS, TrainConfig, TrainError, TrainPlan

__all__ = [
    "PRECISIONS",
    "TrainConfig",
    "TrainPlan",
    "TrainError",
    "Inventory",
    "prepare_training",
    "take_inventory",
    "check_unreadable",
    "run_training",
]

logger = logging.getLogger("medai.train")
# Fewer positives than this in train or val are warned of: one image more or less moves the
# validation AUC and the threshold.
FEW_POSITIVES = 10


def prepare_training(config: TrainConfig) -> TrainPlan:
    """Check every option and input and make the patient-level split; no image is decoded.

    Raises:
        TrainError, LabelError, SplitError, ImageError, WeightsError: naming the problem.
    """
    config.check()
    weights = resolve_weights(config.weights)
    out = Path(config.out)
    if (out / "model.keras").exists() and not config.resume:
        logger.warning("%s already holds a model; it will be replaced", out)
    check_servers(config.images, config.pacs)  # a refused login stops the run before work
    labels = load_labels(config.labels, config.finding, config.negatives)
    files = [i for i in config.images if not is_dicomweb(i)]
    inputs = discover_images(files) if files else ImageInputs()
    listing = _list_pacs(config)
    warn_missing_codecs()
    # DICOM: study-level labels to images, keyed pseudonyms for patients (one header pass;
    # DICOMweb instances from their QIDO listing).
    labels = resolve_labels(
        labels, inputs, config.id_key, tuple(config.modalities), listing, config.ca_bundle
    )
    train_val_path, test_path = find_split_lists(config.labels)
    test_ids = read_split_list(test_path) if test_path else []
    train_val_ids = read_split_list(train_val_path) if train_val_path else None
    split = split_by_patient(labels, test_ids, train_val_ids, config.val_fraction, config.seed)
    _require_both_classes(split)
    if inputs.empty and not listing.count:
        raise TrainError(f"--images: no images or archives found in {list(config.images)}")
    if weights == "imagenet":  # last: the only check that may touch the network
        ensure_imagenet_weights()
    return TrainPlan(config, split, inputs, frozenset(test_ids), listing)


def _list_pacs(config: TrainConfig) -> PacsListing:
    """The radiograph instances of the DICOMweb sources of ``--images`` (QIDO, page by page)."""
    sources = [parse_source(i, config.allow_insecure_http) for i in config.images if is_dicomweb(i)]
    if not sources:
        return PacsListing()
    modalities = tuple(config.modalities)
    return list_new_instances(sources, frozenset(), None, config.ca_bundle, modalities)


def _require_both_classes(split: pd.DataFrame, usable: str = "", warn: bool = False) -> None:
    """Raise :class:`TrainError` unless train and val each hold positives and negatives of every
    finding (among the images evaluated for it), naming every finding that does not.

    Args:
        split: The labelled train/val/test images, one ``label_*`` column per finding.
        usable: A word for the images counted (``"readable "``), said in the messages.
        warn: Log a warning for a finding with fewer than :data:`FEW_POSITIVES` positives in
            a split: its validation AUC, calibration and threshold rest on those few images.
    """
    problems, few = [], []
    for column in finding_columns(split):
        finding = column.removeprefix("label_")
        for name in ("train", "val"):
            labels = split.loc[split["split"] == name, column]
            positives, negatives = int((labels == 1).sum()), int((labels == 0).sum())
            if not positives or not negatives:
                problems.append(f"{finding} in {name}: {positives} positive, {negatives} negative")
            elif positives < FEW_POSITIVES:
                few.append(f"{finding} in {name}: {positives}")
    if problems:
        raise TrainError(
            f"the train and val splits need {usable}positive and negative images of every "
            f"finding; {len(problems)} short: " + "; ".join(problems)
        )
    if warn and few:
        logger.warning(
            "few %spositive images (%s): the validation AUC, calibration and threshold rest "
            "on them",
            usable,
            "; ".join(few),
        )


def _attach_labels(batch: dict, labels_of: dict, split_of: dict, columns: list[str]) -> dict:
    # A broken archive's error row is named after the archive, not a labelled image.
    missing = (-1,) * len(columns)
    rows = [labels_of.get(i, missing) for i in batch["image_id"]]
    for index, column in enumerate(columns):
        batch[column] = np.array([row[index] for row in rows], dtype=np.int8)
    batch["label"] = batch[columns[0]]
    batch["split"] = [split_of.get(i, "") for i in batch["image_id"]]
    return batch


def _load_images(plan: TrainPlan):
    """Decode the labelled train/val images once (materialised: epochs re-read it)."""
    usable = plan.split[plan.split["split"].isin(["train", "val"])]
    columns = plan.columns
    labels = usable[columns].astype(int).itertuples(index=False, name=None)
    labels_of = dict(zip(usable["image_id"], labels, strict=True))
    split_of = dict(zip(usable["image_id"], usable["split"], strict=True))
    # In input order: the same seed then sees the same training set and trains the same model.
    dataset = _labelled_images(plan, set(labels_of))
    dataset = dataset.map_batches(
        _attach_labels,
        fn_kwargs={"labels_of": labels_of, "split_of": split_of, "columns": columns},
        batch_format="numpy",
    )
    return dataset.materialize()


def _labelled_images(plan: TrainPlan, wanted: set[str]):
    """The decoded dataset of the wanted images: the files' (in input order) and DICOMweb's (in
    listing order; only wanted instances retrieved), blocks of each taken in turn."""
    from medai.datasets import image_dataset

    config, modalities = plan.config, tuple(plan.config.modalities)
    parts = []
    if not plan.inputs.empty:
        size = config.image_size
        parts.append(image_dataset(plan.inputs, size, wanted, ordered=True, modalities=modalities))
    web = pacs_dataset(
        plan.listing,
        config.image_size,
        config.max_requests,
        config.ca_bundle,
        modalities=modalities,
        wanted=wanted,
        ordered=True,
    )
    parts += [web] if web is not None else []
    if not parts:
        raise TrainError("none of the labelled train/val images was found in --images")
    dataset = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    dataset.context.execution_options.preserve_order = True
    return dataset


def _latest_checkpoint(storage: Path) -> str | None:
    """The newest complete checkpoint folder under the run storage, for ``--resume``."""
    from medai.checkpoints import CHECKPOINT_STATE

    candidates = sorted(
        (p for p in storage.glob("*/checkpoint_*") if (p / CHECKPOINT_STATE).exists()),
        key=lambda p: json.loads((p / CHECKPOINT_STATE).read_text())["epoch"],
    )
    return str(candidates[-1]) if candidates else None


def _training_datasets(dataset, seed: int) -> dict:
    """The usable train and val rows, materialised; the train blocks reshuffled every epoch.

    Everything runs before workers start: with as many workers as CPUs no CPU would be left
    for Ray Data tasks during training and the run would hang. Randomising the block order
    needs no task (it reorders references) and draws a new order at every execution, i.e.
    every epoch; the workers' shard-sized shuffle buffers mix the rows within and across
    blocks (see :func:`medai.train_loop.shuffle_buffer_rows`).
    """
    from ray.data import RandomSeedConfig
    from ray.data.expressions import col

    usable = {
        name: dataset.filter(expr=(col("split") == name) & (col("error") == "")).materialize()
        for name in ("train", "val")
    }
    usable["train"] = usable["train"].randomize_block_order(
        seed=RandomSeedConfig(seed=seed, reseed_after_execution=True)
    )
    for materialized in usable.values():
        # Workers run these once per epoch: Ray Data's bars and start lines, drawn into the
        # workers' logs between medai's epoch lines, said nothing those lines do not.
        materialized.context.enable_progress_bars = False
        materialized.context.print_on_execution_start = False
    return usable


def run_training(config: TrainConfig) -> dict:
    """Train a model and write the model directory.

    Args:
        config: The training options.

    Returns:
        The model card.

    Raises:
        TrainError: (besides the checks of :func:`prepare_training`) when no labelled image is
            readable or more than ``config.max_unreadable`` of them are unreadable.
    """
    from medai.cpus import plan_workers
    from medai.runtime import init_ray

    plan = prepare_training(config)
    out = Path(config.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "train_config.json", asdict(config))
    logger.info("training config: %s", asdict(config))
    init_ray(config.address)
    dataset = _load_images(plan)
    inventory = _checked_inventory(dataset, plan)
    sizing = plan_workers(config.num_workers)
    loop_config = _loop_config(plan, inventory, sizing)
    logger.info(
        "Ray Train: %d worker%s x %.2f CPUs%s",
        sizing.workers,
        "" if sizing.workers == 1 else "s",
        sizing.cpus_per_worker,
        " + 1 GPU" if sizing.use_gpu else "",
    )
    datasets = _training_datasets(dataset, config.seed)
    state, model = _fit(config, out, datasets, loop_config, sizing)
    fields = card_fields(config, plan, inventory, state, loop_config)
    card = save_model_dir(model, out, fields)
    write_split(out, inventory.split, plan.columns)
    write_training_curves(out / CURVES_FILE, state["history"], plan.findings)
    logger.info("model %s written to %s: %s", card["model_id"][:12], out, card_line(card))
    if len(card.get("per_finding", {})) > 1:
        for finding, entry in card["per_finding"].items():
            logger.info("  %s: %s", finding, card_line(entry))
    if config.export_openvino:
        card = _export_ir(out, (config.allow_insecure_http, config.ca_bundle))
    return card


def _checked_inventory(dataset, plan: TrainPlan) -> Inventory:
    """What reading found; stops when too much is unreadable or a class is short."""
    seen = dataset.select_columns(["image_id", "source", "error"]).to_pandas()
    inventory = take_inventory(seen, plan.split)
    check_unreadable(inventory, plan.config.max_unreadable)
    split = inventory.split
    if not split.loc[split["split"].isin(["train", "val"]) & split["found"]].shape[0]:
        raise TrainError("none of the labelled train/val images was found in --images")
    _require_both_classes(split[split["found"]], "readable ", warn=True)
    return inventory


def _loop_config(plan: TrainPlan, inventory: Inventory, sizing: WorkerPlan) -> dict:
    """The training loop's configuration (see :func:`medai.train_loop.train_loop_per_worker`)."""
    from medai.train_loop import shuffle_buffer_rows

    config, split = plan.config, inventory.split
    train = split[(split["split"] == "train") & split["found"]]
    class_weights = {
        finding: class_weights_of(train, column)
        for finding, column in zip(plan.findings, plan.columns, strict=True)
    }
    return {
        "spec": asdict(replace(config.spec, n_outputs=len(plan.findings))),
        "findings": plan.findings,
        "label_columns": plan.columns,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate or (1e-4 if config.spec.pretrained else 1e-3),
        "class_weights": [[w["0"], w["1"]] for w in class_weights.values()],
        "class_weights_by_finding": class_weights,
        "precision": config.precision,
        "seed": config.seed,
        "workers": sizing.workers,
        "cpus_per_worker": sizing.cpus_per_worker,
        "shuffle_rows": shuffle_buffer_rows(
            len(train), sizing.workers, config.image_size, config.batch_size
        ),
    }


def _export_ir(out: Path, web: tuple[bool, str | None] = (False, None)) -> dict:
    """Write the OpenVINO IR beside ``model.keras``; a failed export fails the run.

    ``web``: ``(allow_insecure_http, ca_bundle)``, to retrieve validation images trained on
    from DICOMweb again.

    Returns:
        The card as the export completed it (with its ``openvino`` block).

    Raises:
        TrainError: If the export fails on its inputs (a medai error: the model directory,
            the images) or on the disk, naming the model directory and the cause. Anything
            else is a bug and keeps its traceback.
    """
    from medai.export import export_openvino

    started = time.perf_counter()
    try:
        block = export_openvino(out, web=web)
    except (MedaiError, OSError) as exc:
        raise TrainError(
            f"the model was written to {out} but its OpenVINO export failed: {exc}; "
            f"retry with: medai export --model {out}"
        ) from exc
    agreement = block["fp32"]["agreement"]
    logger.info(
        "OpenVINO IR written to %s in %.1f s (max |score - model.keras| %.2g on %d %s)",
        out / block["path"],
        time.perf_counter() - started,
        agreement["max_abs_diff"],
        agreement["images"],
        agreement["on"],
    )
    return read_card(out)


def _fit(config: TrainConfig, out: Path, datasets: dict, loop_config: dict, sizing: WorkerPlan):
    """Run Ray Train; returns the final loop state and the calibrated best model."""
    import keras
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from medai.checkpoints import CALIBRATED_MODEL, CHECKPOINT_STATE
    from medai.train_loop import train_loop_per_worker

    storage = out / "checkpoints"
    resume_from = _latest_checkpoint(storage) if config.resume else None
    if config.resume and resume_from is None:
        logger.warning("--resume: no checkpoint under %s; starting from epoch 1", storage)
    elif not config.resume and storage.exists():
        shutil.rmtree(storage)
    # Ray Train V2 dropped resume_from_checkpoint: the loop falls back to this path itself.
    loop_config = {**loop_config, "resume_from": resume_from}
    trainer = TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=sizing.workers,
            use_gpu=sizing.use_gpu,
            resources_per_worker={"CPU": sizing.cpus_per_worker},
        ),
        datasets=datasets,
        # Every worker evaluates the whole validation set (see medai.train_loop).
        dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(
            name=f"run-{pd.Timestamp.now(tz='UTC'):%Y%m%dT%H%M%S}",
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder:
        state = _read_state(Path(folder) / CHECKPOINT_STATE)
        model = keras.saving.load_model(Path(folder) / CALIBRATED_MODEL, compile=False)
    return state, model


def _read_state(path: Path) -> dict:
    return json.loads(path.read_text())
