"""The training job: labels and split, a decoded Ray dataset, Ray Train, then the model directory.

Everything that can be wrong with the inputs (flags, label file, split, images, weights) is
checked by :func:`prepare_training` before a single image is decoded or a worker started.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from medai.artifact import CURVES_FILE, SPLIT_FILE, save_model_dir, write_json
from medai.errors import MedaiError
from medai.images import ImageInputs, discover_images
from medai.labels import NEGATIVE_POLICIES, find_split_lists, load_labels, read_split_list
from medai.model import HEADS, MIN_IMAGE_SIZE, ModelSpec, ensure_imagenet_weights, resolve_weights
from medai.splits import split_by_patient

__all__ = ["TrainConfig", "TrainPlan", "TrainError", "prepare_training", "run_training"]

logger = logging.getLogger("medai.train")
PRECISIONS = ("fp32", "bf16")


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
        if not self.images:
            problems.append("--images is required")
        if problems:
            raise TrainError("; ".join(problems))

    @property
    def spec(self) -> ModelSpec:
        """The architecture these options describe."""
        return ModelSpec(self.image_size, self.head, self.weights)


@dataclass(frozen=True)
class TrainPlan:
    """What a checked configuration resolved to."""

    config: TrainConfig
    split: pd.DataFrame
    inputs: ImageInputs
    test_ids: frozenset[str] = field(default_factory=frozenset)


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
    train_val_path, test_path = find_split_lists(config.labels)
    test_ids = read_split_list(test_path) if test_path else []
    train_val_ids = read_split_list(train_val_path) if train_val_path else None
    split = split_by_patient(labels, test_ids, train_val_ids, config.val_fraction, config.seed)
    for name in ("train", "val"):
        part = split[split["split"] == name]
        if part.empty or part["label"].nunique() < 2:
            raise TrainError(
                f"the {name} split needs positive and negative images of {config.finding!r}; "
                f"it has {int(part['label'].sum())} positives among {len(part)} images"
            )
    inputs = discover_images(config.images)
    if inputs.empty:
        raise TrainError(f"--images: no images or archives found in {list(config.images)}")
    if weights == "imagenet":  # last: the only check that may touch the network
        ensure_imagenet_weights()
    return TrainPlan(config, split, inputs, frozenset(test_ids))


def _attach_labels(batch: dict, label_of: dict, split_of: dict) -> dict:
    batch["label"] = [label_of[i] for i in batch["image_id"]]
    batch["split"] = [split_of[i] for i in batch["image_id"]]
    return batch


def _load_images(plan: TrainPlan):
    """Decode the labelled train/val images once (materialised: epochs re-read it)."""
    from medai.datasets import image_dataset

    usable = plan.split[plan.split["split"].isin(["train", "val"])]
    label_of = dict(zip(usable["image_id"], usable["label"].astype(int), strict=True))
    split_of = dict(zip(usable["image_id"], usable["split"], strict=True))
    dataset = image_dataset(plan.inputs, plan.config.image_size, wanted=set(label_of))
    dataset = dataset.map_batches(
        _attach_labels, fn_kwargs={"label_of": label_of, "split_of": split_of}, batch_format="numpy"
    )
    return dataset.materialize()


def _found(dataset, split: pd.DataFrame) -> pd.DataFrame:
    """Mark which labelled images were read; log errors and missing images."""
    seen = dataset.select_columns(["image_id", "error"]).to_pandas()
    bad = seen[seen["error"] != ""]
    for row in bad.head(10).itertuples():
        logger.warning("unusable image %s: %s", row.image_id, row.error)
    ok = set(seen.loc[seen["error"] == "", "image_id"])
    split = split.copy()
    split["found"] = split["image_id"].isin(ok) | (split["split"] == "test")
    missing = split[~split["found"]]
    logger.info(
        "images: %d labelled train/val found, %d missing from the archive, %d unreadable",
        int(split["found"].sum() - (split["split"] == "test").sum()),
        len(missing) - len(bad),
        len(bad),
    )
    return split


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


def _class_weights(train: pd.DataFrame) -> dict[str, float]:
    counts = train["label"].value_counts()
    total = float(len(train))
    return {str(k): total / (2.0 * float(counts.get(k, 1))) for k in (0, 1)}


def _latest_checkpoint(storage: Path) -> str | None:
    """The newest complete checkpoint folder under the run storage, for ``--resume``."""
    from medai.train_loop import CHECKPOINT_STATE

    candidates = sorted(
        (p for p in storage.glob("*/checkpoint_*") if (p / CHECKPOINT_STATE).exists()),
        key=lambda p: json.loads((p / CHECKPOINT_STATE).read_text())["epoch"],
    )
    return str(candidates[-1]) if candidates else None


def run_training(config: TrainConfig) -> dict:
    """Train a model and write the model directory.

    Args:
        config: The training options.

    Returns:
        The model card.
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from medai.runtime import init_ray
    from medai.train_loop import BEST_MODEL, CHECKPOINT_STATE, train_loop_per_worker

    plan = prepare_training(config)
    out = Path(config.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "train_config.json", asdict(config))
    logger.info("training config: %s", asdict(config))
    init_ray(config.address)
    dataset = _load_images(plan)
    split = _found(dataset, plan.split)
    if not split.loc[split["split"].isin(["train", "val"]), "found"].any():
        raise TrainError("none of the labelled train/val images was found in --images")
    train = split[(split["split"] == "train") & split["found"]]
    workers, per_worker, use_gpu = _workers(config)
    learning_rate = config.learning_rate or (1e-4 if config.spec.pretrained else 1e-3)
    loop_config = {
        "spec": asdict(config.spec),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "learning_rate": learning_rate,
        "class_weights": _class_weights(train),
        "precision": config.precision,
        "seed": config.seed,
        "cpus_per_worker": per_worker,
    }
    logger.info(
        "Ray Train: %d workers x %.2f CPUs%s", workers, per_worker, " + 1 GPU" if use_gpu else ""
    )
    storage = out / "checkpoints"
    resume_from = _latest_checkpoint(storage) if config.resume else None
    if config.resume and resume_from is None:
        logger.warning("--resume: no checkpoint under %s; starting from epoch 1", storage)
    elif not config.resume and storage.exists():
        shutil.rmtree(storage)
    # Split and materialise before workers start: with as many workers as CPUs, no CPU would be
    # left for Ray Data tasks during training and the run would hang.
    datasets = {
        name: dataset.filter(expr=f"split == '{name}'").materialize() for name in ("train", "val")
    }
    # Ray Train V2 dropped resume_from_checkpoint: the loop falls back to this path itself.
    loop_config["resume_from"] = resume_from
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
        import keras

        model = keras.saving.load_model(Path(folder) / BEST_MODEL, compile=False)
    card = save_model_dir(
        model, out, _card_fields(config, plan, split, state, loop_config, workers)
    )
    split[["image_id", "patient_id", "split", "label"]].to_csv(out / SPLIT_FILE, index=False)
    plot_training_curves(state["history"], out / CURVES_FILE, config.finding)
    logger.info(
        "model %s written to %s (best epoch %d, val AUC %s)",
        card["model_id"][:12],
        out,
        state["best"]["epoch"],
        state["best"]["val_auc"],
    )
    return card


def _read_state(path: Path) -> dict:
    return json.loads(path.read_text())


def _counts(split: pd.DataFrame) -> dict:
    counts = {}
    for name in ("train", "val", "test"):
        part = split[(split["split"] == name) & split["found"]]
        counts[name] = {
            "images": int(len(part)),
            "patients": int(part["patient_id"].nunique()),
            "positives": int(part["label"].sum()),
        }
    counts["missing"] = int((~split["found"]).sum())
    return counts


def _card_fields(
    config: TrainConfig,
    plan: TrainPlan,
    split: pd.DataFrame,
    state: dict,
    loop_config: dict,
    workers: int,
) -> dict:
    best = state["best"]
    return {
        "finding": config.finding,
        "negatives": config.negatives,
        "image_size": config.image_size,
        "head": config.head,
        "weights": config.weights,
        "precision": config.precision,
        "threshold": best["threshold"],
        "threshold_method": "Youden's J on the validation split",
        "threshold_sensitivity_90": best["threshold_sensitivity_90"],
        "val_auc": best["val_auc"],
        "best_epoch": best["epoch"],
        "history": state["history"],
        "counts": _counts(split),
        "class_weights": loop_config["class_weights"],
        "class_imbalance": "per-image loss weights n/(2*n_class) from the train split",
        "augmentation": "rotation 0.03 turn, shift 5%, zoom 10%, shear 0.05 (training only)",
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


def plot_training_curves(history: list[dict], path: Path, finding: str) -> None:
    """Accuracy and loss per epoch, train vs validation, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, label in ((axes[0], "accuracy", "Accuracy"), (axes[1], "loss", "Loss")):
        axis.plot(epochs, [row[key] for row in history], "o-", label=f"train {key}")
        axis.plot(epochs, [row[f"val_{key}"] for row in history], "s-", label=f"validation {key}")
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.set_title(f"{label} per epoch ({finding})")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
