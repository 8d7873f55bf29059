"""The training job: labels and split, a decoded Ray dataset, Ray Train, then the model directory.

Everything that can be wrong with the inputs (flags, label file, split, images, weights) is
checked by :func:`prepare_training` before a single image is decoded or a worker started.

Images that cannot be read or decoded never reach training or validation: they are counted per
split in the card (``unreadable``), the first few are named in the log, and a truncated or
corrupt archive contributes the members read before the fault and is named. When more than
``--max-unreadable`` of the labelled train/val images are unreadable the job stops before any
worker starts, naming the worst sources. Images lost behind the fault of a broken archive are
not counted as unreadable (a tarball has no index, so nothing can name them): they are
``missing``, like any labelled image absent from ``--images``, and the archive is named.

Several findings (``--finding Mass,Effusion`` or ``all``) train one network with one output per
finding (see :mod:`medai.train_loop`). The card then lists ``findings`` in output order and a
``per_finding`` entry for each (threshold, threshold_sensitivity_90, val_auc, calibration,
counts, class_weights); its top-level keys keep the single-finding layout and describe the
first finding, except ``val_auc``, the mean over findings, so readers of single-finding cards
still work.

After the model directory is written, the network is exported to an OpenVINO IR beside it
(:func:`medai.export.export_openvino`); a failed export fails the run.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from medai.artifact import CURVES_FILE, SPLIT_FILE, read_card, save_model_dir, write_json
from medai.dicom import DEFAULT_MODALITIES
from medai.dicom_labels import resolve_labels
from medai.errors import MedaiError
from medai.flags import folder_problem
from medai.images import ImageInputs, discover_images
from medai.labels import (
    NEGATIVE_POLICIES,
    find_split_lists,
    load_labels,
    parse_findings,
    read_split_list,
)
from medai.model import HEADS, MIN_IMAGE_SIZE, ModelSpec, ensure_imagenet_weights, resolve_weights
from medai.splits import finding_columns, split_by_patient

__all__ = [
    "TrainConfig",
    "TrainPlan",
    "TrainError",
    "Inventory",
    "prepare_training",
    "take_inventory",
    "check_unreadable",
    "card_summary",
    "run_training",
]

logger = logging.getLogger("medai.train")
PRECISIONS = ("fp32", "bf16")
# Fewer positives than this in train or val are warned of: one image more or less moves the
# validation AUC and the threshold.
FEW_POSITIVES = 10


class TrainError(MedaiError, ValueError):
    """A training option or input is unusable; the message names the problem."""


@dataclass(frozen=True)
class TrainConfig:
    """The resolved options of one training run (CLI flags or YAML)."""

    labels: str
    images: tuple[str, ...]
    out: str
    finding: str = "Mass"
    negatives: str = "all-others"
    epochs: int = 20
    batch_size: int = 16
    image_size: int = 256
    head: str = "gap"
    weights: str = "imagenet"
    num_workers: int | None = None
    seed: int = 0
    resume: bool = False
    address: str | None = None
    precision: str = "fp32"
    learning_rate: float | None = None
    val_fraction: float = 0.2
    max_failures: int = 2
    max_unreadable: float = 0.01
    export_openvino: bool = True
    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    id_key: str | None = None  # the site key's file (its path, never its bytes, is recorded)

    def check(self) -> None:
        """Raise :class:`TrainError` on any option that cannot work."""
        problems = []
        if self.epochs < 1:
            problems.append("--epochs must be at least 1")
        if self.batch_size < 1:
            problems.append("--batch-size must be at least 1")
        if self.image_size < MIN_IMAGE_SIZE:
            problems.append(f"--image-size must be at least {MIN_IMAGE_SIZE} (InceptionV3)")
        if self.head not in HEADS:
            problems.append(f"--head must be one of {', '.join(HEADS)}")
        if self.negatives not in NEGATIVE_POLICIES:
            problems.append(f"--negatives must be one of {', '.join(NEGATIVE_POLICIES)}")
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be one of {', '.join(PRECISIONS)}")
        if self.num_workers is not None and self.num_workers < 1:
            problems.append("--num-workers must be at least 1")
        if not 0.0 < self.val_fraction < 1.0:
            problems.append("--val-fraction must be between 0 and 1")
        if self.learning_rate is not None and self.learning_rate <= 0:
            problems.append("--learning-rate must be positive")
        if not 0.0 <= self.max_unreadable <= 1.0:
            problems.append("--max-unreadable must be between 0 and 1")
        if not self.images:
            problems.append("--images is required")
        if problem := folder_problem("--out", self.out):
            problems.append(problem)
        if problems:
            raise TrainError("; ".join(problems))

    @property
    def findings(self) -> tuple[str, ...]:
        """The findings to learn, ordered as the outputs (see :func:`medai.labels.parse_findings`).

        A single name is taken as it is (a generic CSV's ``label`` column may name any finding),
        as :func:`medai.labels.load_labels` does.
        """
        names = [name.strip() for name in self.finding.split(",")]
        if len(names) == 1 and names[0] and names[0] != "all":
            return (names[0],)
        return parse_findings(self.finding)

    @property
    def spec(self) -> ModelSpec:
        """The architecture these options describe (one output per finding)."""
        return ModelSpec(self.image_size, self.head, self.weights, n_outputs=len(self.findings))


@dataclass(frozen=True)
class TrainPlan:
    """What a checked configuration resolved to."""

    config: TrainConfig
    split: pd.DataFrame
    inputs: ImageInputs
    test_ids: frozenset[str] = field(default_factory=frozenset)

    @property
    def findings(self) -> list[str]:
        """The findings of the label table, ordered as the model's outputs."""
        return [column.removeprefix("label_") for column in self.columns]

    @property
    def columns(self) -> list[str]:
        """The label table's per-finding columns (``label_<Finding>``), in output order."""
        return finding_columns(self.split)


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
    labels = load_labels(config.labels, config.finding, config.negatives)
    inputs = discover_images(config.images)
    # DICOM: study-level labels to images, keyed pseudonyms for patients (one header pass).
    labels = resolve_labels(labels, inputs, config.id_key, tuple(config.modalities))
    train_val_path, test_path = find_split_lists(config.labels)
    test_ids = read_split_list(test_path) if test_path else []
    train_val_ids = read_split_list(train_val_path) if train_val_path else None
    split = split_by_patient(labels, test_ids, train_val_ids, config.val_fraction, config.seed)
    _require_both_classes(split)
    if inputs.empty:
        raise TrainError(f"--images: no images or archives found in {list(config.images)}")
    if weights == "imagenet":  # last: the only check that may touch the network
        ensure_imagenet_weights()
    return TrainPlan(config, split, inputs, frozenset(test_ids))


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
    from medai.datasets import image_dataset

    usable = plan.split[plan.split["split"].isin(["train", "val"])]
    columns = plan.columns
    labels = usable[columns].astype(int).itertuples(index=False, name=None)
    labels_of = dict(zip(usable["image_id"], labels, strict=True))
    split_of = dict(zip(usable["image_id"], usable["split"], strict=True))
    # In input order: the same seed then sees the same training set and trains the same model.
    dataset = image_dataset(
        plan.inputs,
        plan.config.image_size,
        wanted=set(labels_of),
        ordered=True,
        modalities=tuple(plan.config.modalities),
    )
    dataset = dataset.map_batches(
        _attach_labels,
        fn_kwargs={"labels_of": labels_of, "split_of": split_of, "columns": columns},
        batch_format="numpy",
    )
    return dataset.materialize()


@dataclass(frozen=True)
class Inventory:
    """What reading the labelled train/val images found.

    Attributes:
        split: The split table with ``found`` (read and decoded) and ``unreadable`` columns;
            test rows count as found (training does not read them).
        unreadable: One row per unreadable labelled image: ``image_id``, ``split``,
            ``source``, ``error``.
        broken: One row per source that failed as a whole (a truncated or corrupt archive):
            ``source``, ``error``, ``read`` (images read from it before the fault).
    """

    split: pd.DataFrame
    unreadable: pd.DataFrame
    broken: pd.DataFrame


def _container(source: str) -> str:
    """The archive of an archive member, else the folder of a file."""
    from medai.images import ARCHIVE_SEP

    if ARCHIVE_SEP in source:
        return source.split(ARCHIVE_SEP, 1)[0]
    return str(Path(source).parent)


def take_inventory(seen: pd.DataFrame, split: pd.DataFrame) -> Inventory:
    """Sort the rows read for the labelled train/val images into found, unreadable and broken.

    Args:
        seen: ``image_id``, ``source`` and ``error`` of every row the image dataset produced.
        split: The split table (``image_id``, ``patient_id``, ``label``, ``split``).
    """
    wanted = split["split"].isin(["train", "val"])
    labelled = set(split.loc[wanted, "image_id"])
    ok = seen["error"] == ""
    found = set(seen.loc[ok, "image_id"])
    failed = seen[~ok & seen["image_id"].isin(labelled) & ~seen["image_id"].isin(found)]
    failed = failed.drop_duplicates("image_id")
    broken = seen[~ok & ~seen["image_id"].isin(labelled)][["source", "error"]].copy()
    containers = seen.loc[ok, "source"].map(_container)
    broken["read"] = [int((containers == source).sum()) for source in broken["source"]]
    table = split.copy()
    table["found"] = table["image_id"].isin(found) | ~wanted
    table["unreadable"] = table["image_id"].isin(set(failed["image_id"])) & wanted
    split_of = dict(zip(split["image_id"], split["split"], strict=True))
    unreadable = failed.assign(split=failed["image_id"].map(split_of))
    return Inventory(
        split=table,
        unreadable=unreadable[["image_id", "split", "source", "error"]].reset_index(drop=True),
        broken=broken.reset_index(drop=True),
    )


def _worst_sources(inventory: Inventory, limit: int = 3) -> list[str]:
    """The sources with the most unreadable images (broken archives first), as phrases."""
    phrases = [
        f"{row.source} (broken after {row.read} images: {row.error})"
        for row in inventory.broken.itertuples()
    ]
    per_source = inventory.unreadable["source"].map(_container).value_counts()
    phrases += [f"{source} ({count} unreadable)" for source, count in per_source.items()]
    return phrases[:limit]


def card_summary(card: dict) -> str:
    """The calibrated validation AUC and threshold of a card (or of one finding's entry).

    A multi-finding card's top-level AUC is the mean over its findings and its threshold the
    first finding's, so for such a card the line names the mean and no threshold.
    """
    findings = len(card.get("per_finding") or {})
    best = f" (best epoch {card['best_epoch']})" if "best_epoch" in card else ""
    if findings > 1:
        return f"mean val AUC {_four(card['val_auc'])} over {findings} findings{best}"
    return f"val AUC {_four(card['val_auc'])}, threshold {_four(card['threshold'])}{best}"


def _four(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def check_unreadable(inventory: Inventory, max_unreadable: float) -> None:
    """Log what could not be read; stop when too many labelled images are unreadable.

    Raises:
        TrainError: If the unreadable fraction of the labelled train/val images is above
            ``max_unreadable``; the message names the worst sources and the flag.
    """
    table = inventory.split
    labelled = int(table["split"].isin(["train", "val"]).sum())
    bad = len(inventory.unreadable)
    for row in inventory.unreadable.head(10).itertuples():
        logger.warning(
            "unreadable %s image %s (%s): %s", row.split, row.image_id, row.source, row.error
        )
    if bad > 10:
        logger.warning("... and %d more unreadable images", bad - 10)
    missing = int((~table["found"] & ~table["unreadable"]).sum())
    for row in inventory.broken.itertuples():
        logger.warning(
            "broken archive %s: %d images read before the fault (%s); labelled images after it "
            "are missing",
            row.source,
            row.read,
            row.error,
        )
    logger.info(
        "images: %d labelled train/val found, %d missing from --images, %d unreadable "
        "(excluded from training and validation)",
        int((table["found"] & table["split"].isin(["train", "val"])).sum()),
        missing,
        bad,
    )
    fraction = bad / labelled if labelled else 0.0
    if fraction > max_unreadable:
        raise TrainError(
            f"{bad} of {labelled} labelled train/val images ({fraction:.1%}) are unreadable, "
            f"more than --max-unreadable {max_unreadable:g}; worst sources: "
            f"{'; '.join(_worst_sources(inventory))}. Repair or replace them, or pass "
            f"--max-unreadable {math.ceil(fraction * 100) / 100:g} to train without them"
        )
    if bad or len(inventory.broken):
        logger.warning(
            "training without %d unreadable images (%.1f%% of the labelled train/val images, "
            "--max-unreadable %g)%s",
            bad,
            100 * fraction,
            max_unreadable,
            f"; broken archives: {', '.join(inventory.broken['source'])}"
            if len(inventory.broken)
            else "",
        )


def _workers(config: TrainConfig) -> tuple[int, float, bool]:
    """Number of workers, CPUs per worker, and whether workers use GPUs."""
    from medai.runtime import cluster_cpus, cluster_gpus

    gpus, cpus = int(cluster_gpus()), cluster_cpus()
    if config.num_workers:
        workers = config.num_workers
    else:
        import ray

        # Default: one worker per GPU, else one per node (a worker uses all of its node's cores).
        workers = gpus or max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
    use_gpu = gpus >= workers
    # Leave a sliver for Ray Data so that as many workers as CPUs cannot starve the pipeline.
    per_worker = max(0.25, math.floor((cpus * 0.9 / workers) * 4) / 4)
    return workers, per_worker, use_gpu


def _class_weights(train: pd.DataFrame, column: str = "label") -> dict[str, float]:
    """Loss weights ``n / (2 n_class)`` of negatives ("0") and positives ("1") of one finding,
    over the training images evaluated for it."""
    labels = train[column]
    labels = labels[labels >= 0]
    counts = labels.value_counts()
    total = float(len(labels))
    return {str(k): total / (2.0 * float(counts.get(k, 1))) for k in (0, 1)}


def _latest_checkpoint(storage: Path) -> str | None:
    """The newest complete checkpoint folder under the run storage, for ``--resume``."""
    from medai.train_loop import CHECKPOINT_STATE

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
    from medai.runtime import init_ray
    from medai.train_loop import shuffle_buffer_rows

    plan = prepare_training(config)
    out = Path(config.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "train_config.json", asdict(config))
    logger.info("training config: %s", asdict(config))
    init_ray(config.address)
    dataset = _load_images(plan)
    seen = dataset.select_columns(["image_id", "source", "error"]).to_pandas()
    inventory = take_inventory(seen, plan.split)
    check_unreadable(inventory, config.max_unreadable)
    split = inventory.split
    if not split.loc[split["split"].isin(["train", "val"]) & split["found"]].shape[0]:
        raise TrainError("none of the labelled train/val images was found in --images")
    _require_both_classes(split[split["found"]], "readable ", warn=True)
    train = split[(split["split"] == "train") & split["found"]]
    workers, per_worker, use_gpu = _workers(config)
    learning_rate = config.learning_rate or (1e-4 if config.spec.pretrained else 1e-3)
    class_weights = {
        finding: _class_weights(train, column)
        for finding, column in zip(plan.findings, plan.columns, strict=True)
    }
    loop_config = {
        "spec": asdict(replace(config.spec, n_outputs=len(plan.findings))),
        "findings": plan.findings,
        "label_columns": plan.columns,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "learning_rate": learning_rate,
        "class_weights": [[w["0"], w["1"]] for w in class_weights.values()],
        "precision": config.precision,
        "seed": config.seed,
        "cpus_per_worker": per_worker,
        "shuffle_rows": shuffle_buffer_rows(
            len(train), workers, config.image_size, config.batch_size
        ),
    }
    logger.info(
        "Ray Train: %d worker%s x %.2f CPUs%s",
        workers,
        "" if workers == 1 else "s",
        per_worker,
        " + 1 GPU" if use_gpu else "",
    )
    datasets = _training_datasets(dataset, config.seed)
    state, model = _fit(config, out, datasets, loop_config, (workers, per_worker, use_gpu))
    fields = _card_fields(config, plan, inventory, state, loop_config, workers, class_weights)
    card = save_model_dir(model, out, fields)
    columns = ["image_id", "patient_id", "split", "label"]
    columns += plan.columns if len(plan.columns) > 1 else []
    split[columns].to_csv(out / SPLIT_FILE, index=False)
    plot_training_curves(state["history"], out / CURVES_FILE, plan.findings)
    logger.info("model %s written to %s: %s", card["model_id"][:12], out, card_summary(card))
    if len(card.get("per_finding", {})) > 1:
        for finding, entry in card["per_finding"].items():
            logger.info("  %s: %s", finding, card_summary(entry))
    if config.export_openvino:
        card = _export_ir(out)
    return card


def _export_ir(out: Path) -> dict:
    """Write the OpenVINO IR beside ``model.keras``; any failure fails the run.

    Returns:
        The card as the export completed it (with its ``openvino`` block).

    Raises:
        TrainError: If the export fails, naming the model directory and the cause.
    """
    from medai.export import export_openvino

    started = time.perf_counter()
    try:
        block = export_openvino(out)
    except Exception as exc:  # whatever went wrong, the run must not end as if it had an IR
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


def _fit(config: TrainConfig, out: Path, datasets: dict, loop_config: dict, sizing: tuple):
    """Run Ray Train; returns the final loop state and the calibrated best model."""
    import keras
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from medai.train_loop import CALIBRATED_MODEL, CHECKPOINT_STATE, train_loop_per_worker

    workers, per_worker, use_gpu = sizing
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
            num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": per_worker}
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


def _counts(inventory: Inventory) -> dict:
    split = inventory.split
    counts = {}
    for name in ("train", "val", "test"):
        part = split[(split["split"] == name) & split["found"]]
        counts[name] = {
            "images": int(len(part)),
            "patients": int(part["patient_id"].nunique()),
            "positives": int((part["label"] == 1).sum()),
        }
        if name != "test":  # training never reads the test images
            counts[name]["unreadable"] = int(((split["split"] == name) & split["unreadable"]).sum())
    counts["missing"] = int((~split["found"] & ~split["unreadable"]).sum())
    counts["broken_archives"] = [
        {"source": row.source, "images_read": row.read, "error": row.error}
        for row in inventory.broken.itertuples()
    ]
    return counts


def _finding_counts(inventory: Inventory, column: str) -> dict:
    """Images evaluated for one finding, its positives and negatives, per split (found only)."""
    split = inventory.split
    counts = {}
    for name in ("train", "val", "test"):
        labels = split.loc[(split["split"] == name) & split["found"], column]
        counts[name] = {
            "images": int((labels >= 0).sum()),
            "positives": int((labels == 1).sum()),
            "negatives": int((labels == 0).sum()),
        }
    return counts


def _card_fields(
    config: TrainConfig,
    plan: TrainPlan,
    inventory: Inventory,
    state: dict,
    loop_config: dict,
    workers: int,
    class_weights: dict[str, dict[str, float]],
) -> dict:
    best, final = state["best"], state["final"]
    findings = plan.findings
    multi = {}
    if len(findings) > 1:
        multi = {
            "findings": findings,
            "per_finding": {
                finding: {
                    **{
                        key: final["per_finding"][finding][key]
                        for key in ("threshold", "threshold_sensitivity_90", "val_auc")
                    },
                    "calibration": final["per_finding"][finding]["calibration"],
                    "counts": _finding_counts(inventory, column),
                    "class_weights": class_weights[finding],
                }
                for finding, column in zip(findings, plan.columns, strict=True)
            },
            "best_by": "mean validation AUC over findings, ties by lower validation loss",
            "top_level_keys": "describe the first finding, except val_auc: the mean over "
            "findings of their calibrated validation AUCs",
        }
    return {
        "finding": findings[0],
        **multi,
        "negatives": config.negatives,
        "image_size": config.image_size,
        "head": config.head,
        "weights": config.weights,
        "precision": config.precision,
        "threshold": final["threshold"],
        "threshold_method": (
            "Youden's J on the calibrated validation probabilities of the saved (fp32) model"
        ),
        "threshold_sensitivity_90": final["threshold_sensitivity_90"],
        "val_auc": final["val_auc"],
        "calibration": final["calibration"],
        "best_epoch": best["epoch"],
        "history": state["history"],
        "counts": _counts(inventory),
        "max_unreadable": config.max_unreadable,
        "class_weights": class_weights[findings[0]],
        "class_imbalance": "per-image loss weights n/(2*n_class) from the train split"
        + ("" if len(findings) == 1 else ", per finding over the images evaluated for it"),
        "augmentation": "rotation 0.03 turn, shift 5%, zoom 10%, shear 0.05 (training only, "
        "seeded per worker)",
        "batchnorm": (
            "frozen (pretrained base)"
            if config.spec.pretrained
            else "moving statistics re-estimated over the last training batches before each "
            "validation (mean batch statistics), averaged across workers"
        ),
        "shuffle": "block order randomised every epoch + per-worker shuffle buffer of "
        f"{loop_config['shuffle_rows']} images",
        "optimizer": {
            "name": "adam",
            "learning_rate": loop_config["learning_rate"],
            "batch_size_per_worker": config.batch_size,
            "workers": workers,
        },
        "training_data": {
            "labels": str(config.labels),
            "images": list(config.images),
            "test_list_images_excluded": len(plan.test_ids),
        },
    }


def plot_training_curves(history: list[dict], path: Path, findings: str | list[str]) -> None:
    """Accuracy, loss and AUC per epoch, train vs validation, as a PNG.

    With several findings accuracy and loss are over every evaluated label, the AUC panel shows
    the mean AUC (train and validation) and each finding's validation AUC.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    findings = [findings] if isinstance(findings, str) else list(findings)
    title = findings[0] if len(findings) == 1 else f"{len(findings)} findings"
    nan = lambda value: np.nan if value is None else value  # noqa: E731
    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for axis, key, label in (
        (axes[0], "accuracy", "Accuracy"),
        (axes[1], "loss", "Loss"),
        (axes[2], "auc", "AUC" if len(findings) == 1 else "AUC (mean over findings)"),
    ):
        axis.plot(epochs, [nan(row.get(key)) for row in history], "o-", label=f"train {key}")
        axis.plot(
            epochs,
            [nan(row.get(f"val_{key}")) for row in history],
            "s-",
            lw=2.5,
            label=f"validation {key}" + ("" if len(findings) == 1 else " (mean)"),
        )
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5 on short runs
        axis.set_ylabel(label)
        axis.set_title(f"{label} per epoch ({title})")
        axis.grid(alpha=0.3)
    if len(findings) > 1:
        for finding in findings:
            values = [nan(row.get("val_auc_per_finding", {}).get(finding)) for row in history]
            axes[2].plot(epochs, values, "--", alpha=0.8, label=f"validation {finding}")
    for axis in axes:
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
